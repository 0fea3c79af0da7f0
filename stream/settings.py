"""Worker and sink settings: defaults < config file (TOML or YAML) < environment < flags.

The environment uses ``SHIFTSTREAM_<FIELD>`` (upper case), e.g. ``SHIFTSTREAM_BATCH_SIZE=1``;
``SHIFTSTREAM_CONFIG`` names the config file. Lists are comma-separated in the environment
(``SHIFTSTREAM_MODELS=pop,sasrec,ttt4rec:frozen``) and mappings are ``name=value`` pairs
(``SHIFTSTREAM_CHECKPOINTS=sasrec=ck/sasrec.safetensors,ttt4rec=ck/ttt4rec.safetensors``).

>>> s = Settings.load(environ={"SHIFTSTREAM_BATCH_SIZE": "8", "SHIFTSTREAM_MODELS": "pop,sasrec"})
>>> s.batch_size, s.models
(8, ['pop', 'sasrec'])
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

import tomllib
import yaml

ENV_PREFIX = "SHIFTSTREAM_"
CONFIG_ENV = "SHIFTSTREAM_CONFIG"


class SettingsError(ValueError):
    """A setting that cannot be used; the message names it."""


@dataclass
class Settings:
    bootstrap: str = ""  # empty: stream.bootstrap.resolve_bootstrap (KAFKA_BOOTSTRAP, default)
    app_id: str = "shiftstream"  # Faust app id = consumer group; names the changelog topic
    interactions_topic: str = "interactions"
    predictions_topic: str = "predictions"
    dead_letter_topic: str = "interactions-dead"
    partitions: int = 4  # used when the interactions topic does not exist yet
    models: list[str] = field(default_factory=lambda: ["pop", "sasrec", "ttt4rec"])
    checkpoints: dict[str, str] = field(default_factory=dict)  # registry name -> file
    checkpoint_dir: str = "checkpoints"  # fallback: <dir>/<name>.safetensors
    device: str = "auto"  # auto = CUDA when present
    dtype: str = "float64"  # float64: batch-size-independent ranks; float32: faster
    torch_threads: int = 1  # torch intra-op threads in the worker; 0 = torch's default
    model_processes: int = -1  # model step in N child processes, users sharded; 0: a thread;
    # -1 (auto): 1 on a GPU, else 2 (see model_process_count)
    batch_size: int = 256  # micro-batch: at most this many events ...
    max_wait_ms: float = 50.0  # ... or what arrived within this time
    candidates: str = "seen"  # "seen" (first seen before the event) or "all" (catalogue)
    exclude_seen: bool = True
    popularity_refresh_s: float = 86_400.0  # popularity snapshot grid (event time)
    popularity_window_s: float = 0.0  # counts over this much event time; 0 = all history
    view_timeout_s: float = 120.0  # longest wait for the global view to catch up
    session_timeout_s: float = 10.0  # Kafka group session; raise it when batches take long
    passthrough: bool = False  # benchmark baseline: decode and forward, no model work
    window_s: float = 7 * 86_400.0  # sink: tumbling event-time window size
    half_life_s: float = 7 * 86_400.0  # sink: event-time fading half-life
    sink_flush_s: float = 30.0  # sink: rewrite the Parquet files at most this often (FlushSchedule)

    @classmethod
    def load(
        cls,
        path: str | Path | None = None,
        environ: Mapping[str, str] | None = None,
        overrides: Mapping[str, Any] | None = None,
    ) -> Settings:
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        config_path = path or env.get(CONFIG_ENV)
        if config_path:
            values.update(read_config_file(Path(config_path)))
        hints = get_type_hints(cls)
        for f in dataclasses.fields(cls):
            raw = env.get(ENV_PREFIX + f.name.upper())
            if raw is not None and raw != "":
                values[f.name] = _parse_env(f.name, raw, hints[f.name])
        values.update({k: v for k, v in (overrides or {}).items() if v is not None})
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise SettingsError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        if self.batch_size < 1:
            raise SettingsError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.max_wait_ms <= 0:
            raise SettingsError(f"max_wait_ms must be positive, got {self.max_wait_ms}")
        if self.candidates not in ("seen", "all"):
            raise SettingsError(f"candidates must be 'seen' or 'all', got {self.candidates!r}")
        if self.dtype not in ("float32", "float64"):
            raise SettingsError(f"dtype must be float32 or float64, got {self.dtype!r}")
        if self.device not in ("auto", "cpu") and not self.device.startswith("cuda"):
            raise SettingsError(f"device must be auto, cpu or cuda[:N], got {self.device!r}")
        if self.model_processes < -1:
            raise SettingsError(
                f"model_processes must be 0 or more, or -1 (auto), got {self.model_processes}"
            )
        if self.partitions < 1:
            raise SettingsError(f"partitions must be at least 1, got {self.partitions}")
        if not self.models:
            raise SettingsError("no models configured")

    def model_process_count(self) -> int:
        """``model_processes`` with auto (-1) resolved: one child on a GPU, where each child
        would hold its own CUDA context and copy of the models, else two (the model step and
        Faust's event loop then use two cores)."""
        if self.model_processes >= 0:
            return self.model_processes
        from stream.runners import resolve_device  # imports torch

        return 1 if resolve_device(self.device).type == "cuda" else 2

    def checkpoint_for(self, base: str) -> Path:
        return Path(self.checkpoints.get(base) or Path(self.checkpoint_dir) / f"{base}.safetensors")

    def to_env(self) -> dict[str, str]:
        """The environment that reproduces these settings in a child process."""
        env = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, list):
                text = ",".join(value)
            elif isinstance(value, dict):
                text = ",".join(f"{k}={v}" for k, v in value.items())
            else:
                text = str(value)
            env[ENV_PREFIX + f.name.upper()] = text
        return env

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def read_config_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise SettingsError(f"config file {path} does not exist")
    text = path.read_text()
    if path.suffix == ".toml":
        data: Any = tomllib.loads(text)
    elif path.suffix in (".yaml", ".yml"):
        data = yaml.safe_load(text) or {}
    elif path.suffix == ".json":
        data = json.loads(text)
    else:
        raise SettingsError(f"config file {path}: use .toml, .yaml/.yml or .json")
    if not isinstance(data, dict):
        raise SettingsError(f"config file {path} must hold a mapping at the top level")
    return dict(data.get("stream", data))


def _parse_env(name: str, raw: str, kind: Any) -> Any:
    text = raw.strip()
    try:
        if kind is bool:
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(text)
        if kind is int:
            return int(text)
        if kind is float:
            return float(text)
        if str(kind).startswith("list"):
            return [part.strip() for part in text.split(",") if part.strip()]
        if str(kind).startswith("dict"):
            pairs = [part.split("=", 1) for part in text.split(",") if part.strip()]
            return {k.strip(): v.strip() for k, v in pairs}
    except ValueError as error:
        raise SettingsError(f"{ENV_PREFIX}{name.upper()}={raw!r} is not a valid {kind}") from error
    return text

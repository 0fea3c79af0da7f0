"""Checkpoints without pickle: safetensors weights plus JSON metadata in the same file.

Metadata keys: ``model`` (registry name), ``config`` (the config dataclass as JSON), ``vocab``
(raw item ids in index order, index 0 = padding), ``data_fingerprint``, ``metrics`` and
``extra`` (JSON), and ``pinned`` (JSON: source and fingerprint) when the model takes weights
from a pretrained file as they are (``SeqRecModel.pinned_weights``): those are left out of the
file, and loading checks that the model was built from the same pretrained file. The checkpoint
hash is the SHA-256 of the file (first 16 hex digits); it is written into every serialised
per-user state so states never outlive their weights.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch

from models.base import SeqRecModel
from models.registry import REGISTRY


@dataclass
class Checkpoint:
    model: SeqRecModel
    vocab: list[int]  # raw item id at each index; vocab[0] is padding (-1)
    checkpoint_hash: str
    data_fingerprint: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


def file_hash(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def save_checkpoint(
    path: str | Path,
    model: SeqRecModel,
    vocab: list[int],
    data_fingerprint: str = "",
    metrics: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> str:
    """Write atomically (temp file, then rename); return the checkpoint hash."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {
        "model": model.name,
        "config": json.dumps(dataclasses.asdict(model.config)),
        "vocab": json.dumps(vocab),
        "data_fingerprint": data_fingerprint,
        "metrics": json.dumps(metrics or {}),
        "extra": json.dumps(extra or {}),
    }
    tensors, pinned = weight_tensors(model)
    metadata.update(pinned)
    partial = path.with_suffix(path.suffix + ".partial")
    safetensors.torch.save_file(tensors, str(partial), metadata=metadata)
    partial.replace(path)
    return file_hash(path)


def read_metadata(path: str | Path) -> dict[str, str]:
    with safetensors.safe_open(str(path), framework="pt") as handle:
        return dict(handle.metadata() or {})


def load_checkpoint(
    path: str | Path,
    device: torch.device | str = "cpu",
    overrides: dict[str, Any] | None = None,
) -> Checkpoint:
    """Load weights and metadata. ``overrides`` replaces config fields that do not change any
    weight, e.g. ``{"policy": "recurrent"}`` for TTT4Rec's streaming policy."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    metadata = read_metadata(path)
    name = metadata.get("model", "")
    if name not in REGISTRY:
        raise ValueError(f"checkpoint {path} is for unknown model {name!r}")
    config_type, model_type = REGISTRY[name]
    config = config_type(**{**json.loads(metadata["config"]), **(overrides or {})})
    model = model_type(config)
    load_weight_tensors(model, safetensors.torch.load_file(str(path)), metadata, path)
    model.to(device).eval()
    return Checkpoint(
        model=model,
        vocab=json.loads(metadata["vocab"]),
        checkpoint_hash=file_hash(path),
        data_fingerprint=metadata.get("data_fingerprint", ""),
        metrics=json.loads(metadata.get("metrics", "{}")),
        extra=json.loads(metadata.get("extra", "{}")),
    )


def weight_tensors(model: SeqRecModel) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """What a file keeps of ``model``'s state, and the metadata that pins what it leaves out.

    One name per tensor (safetensors refuses shared memory): ``named_parameters`` and
    ``named_buffers`` skip the second name of a shared module, e.g. DARec's tied ID table.
    Pinned weights (``SeqRecModel.pinned_weights``) stay out; the metadata names their file."""
    pinned = model.pinned_weights()
    metadata: dict[str, str] = {}
    left_out: frozenset[str] = frozenset()
    if pinned is not None:
        metadata["pinned"] = json.dumps(
            {"source": pinned.source, "fingerprint": pinned.fingerprint}
        )
        left_out = pinned.keys
    own = {name for name, _ in model.named_parameters()}
    own |= {name for name, _ in model.named_buffers()}
    tensors = {
        name: tensor.detach().contiguous()
        for name, tensor in model.state_dict().items()
        if name in own and name not in left_out
    }
    return tensors, metadata


def load_weight_tensors(
    model: SeqRecModel, tensors: dict[str, torch.Tensor], metadata: dict[str, str], source: Path
) -> None:
    """``weight_tensors``' output back into ``model``. Every entry of the model's state must
    come from ``tensors``, except other names of a loaded tensor and, when the metadata pins
    them, weights the constructor loaded from the same pretrained file."""
    left_out: frozenset[str] = frozenset()
    if "pinned" in metadata:
        recorded = json.loads(metadata["pinned"])
        pinned = model.pinned_weights()
        if pinned is None or pinned.fingerprint != recorded["fingerprint"]:
            found = "none" if pinned is None else f"{pinned.source} {pinned.fingerprint}"
            raise ValueError(
                f"{source} was trained on {recorded['source']} {recorded['fingerprint']}, "
                f"but this model was built with {found}"
            )
        left_out = pinned.keys
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    state = model.state_dict()
    loaded = {state[name].data_ptr() for name in tensors if name in state}
    missing = [
        name for name in missing if name not in left_out and state[name].data_ptr() not in loaded
    ]
    if missing or unexpected:
        raise ValueError(f"{source} does not fit {model.name}: missing {missing}, "
                         f"unexpected {unexpected}")  # fmt: skip

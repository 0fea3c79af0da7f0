"""Model name -> (config dataclass, module class). Model files register themselves."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from models.base import SeqRecConfig, SeqRecModel

REGISTRY: dict[str, tuple[type[SeqRecConfig], type[SeqRecModel]]] = {}

M = TypeVar("M", bound=type[SeqRecModel])


def register(config_type: type[SeqRecConfig]) -> Callable[[M], M]:
    def add(model_type: M) -> M:
        REGISTRY[model_type.name] = (config_type, model_type)
        return model_type

    return add


def model_names() -> list[str]:
    return sorted(REGISTRY)


def build(name: str, config: SeqRecConfig | None = None) -> SeqRecModel:
    if name not in REGISTRY:
        raise KeyError(f"unknown model {name!r}; known models: {', '.join(model_names())}")
    config_type, model_type = REGISTRY[name]
    return model_type(config if config is not None else config_type())


def parse_config_overrides(config_type: type[SeqRecConfig], pairs: Iterable[str]) -> dict[str, Any]:
    """``KEY=VALUE`` strings -> config fields, converted to each field's type."""
    known = {f.name: f for f in dataclasses.fields(config_type)}
    parsed: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or key not in known:
            raise ValueError(f"--set {pair!r}: expected KEY=VALUE with KEY in {sorted(known)}")
        default = known[key].default
        kind = type(default) if default is not dataclasses.MISSING else str
        parsed[key] = value.lower() in ("1", "true", "yes") if kind is bool else kind(value)
    return parsed

"""Model name -> (config dataclass, module class). Model files register themselves."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

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

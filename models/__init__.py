"""shiftstream's PyTorch sequential recommenders. Importing the package fills the registry."""

from models.registry import REGISTRY, build, model_names

__all__ = ["REGISTRY", "build", "model_names"]

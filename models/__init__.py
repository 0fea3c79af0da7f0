"""shiftstream's PyTorch sequential recommenders. Importing the package fills the registry."""

# Model modules register themselves on import: one line per model, kept sorted.
import models.darec  # noqa: F401
import models.sasrec  # noqa: F401
import models.t2arec  # noqa: F401
import models.ttt4rec  # noqa: F401
from models.registry import REGISTRY, build, model_names

__all__ = ["REGISTRY", "build", "model_names"]

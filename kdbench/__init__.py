"""kdbench: adversarially robust knowledge distillation with pluggable methods.

The public API: the component interfaces a plugin implements, the registries that find them, and
the functions that run a recipe.
"""

from kdbench._errors import PluginError, RecipeError, UserError
from kdbench._registry import ATTACKS, DATASETS, METHODS, MODELS, Registry
from kdbench.attacks.base import Attack, ModelFn, Objective
from kdbench.config import EmptyConfig, Number, StrictModel, introduced
from kdbench.data.base import DatasetInfo, DatasetSource, SplitData
from kdbench.method import Method, MethodSetup, StepContext
from kdbench.models.base import ModelOutput, Network, NetworkSpec

__version__ = "0.1.0"

__all__ = [
    "ATTACKS",
    "DATASETS",
    "METHODS",
    "MODELS",
    "Attack",
    "DatasetInfo",
    "DatasetSource",
    "EmptyConfig",
    "Method",
    "MethodSetup",
    "ModelFn",
    "ModelOutput",
    "Network",
    "NetworkSpec",
    "Number",
    "Objective",
    "PluginError",
    "RecipeError",
    "Registry",
    "SplitData",
    "StepContext",
    "StrictModel",
    "UserError",
    "__version__",
    "introduced",
]

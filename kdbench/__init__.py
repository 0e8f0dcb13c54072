"""kdbench: adversarially robust knowledge distillation with pluggable methods.

The public API: the component interfaces a plugin implements, the registries that find them, and
the functions that run a recipe, load a trained model, evaluate any model and read results
(`kdbench.api`, docs/python-api.md).
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
    "evaluate",
    "introduced",
    "load_model",
    "load_results",
    "resolve_recipe",
    "run",
]

# The Python API (docs/python-api.md), imported last because it builds on the whole package. Its
# `run` function deliberately takes the place of the `kdbench.run` submodule as an attribute of the
# package: reach the module's contents with `from kdbench.run import ...` or sys.modules["kdbench.run"].
from kdbench.api import evaluate, load_model, load_results, resolve_recipe, run

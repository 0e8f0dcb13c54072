"""Teachers from the RobustBench model zoo (Croce et al., "RobustBench: a standardized adversarial
robustness benchmark", NeurIPS 2021 Datasets and Benchmarks; github.com/RobustBench/robustbench).

``teacher.model = "robustbench:<name>"`` builds the zoo entry ``<name>`` of the recipe's dataset and
threat model with the ``robustbench`` package (the optional extra ``pip install -e ".[robustbench]"``)
and loads its weights from a local model folder in RobustBench's own layout::

    <model_dir>/<dataset>/<threat model>/<name>.pt      e.g. models/cifar10/Linf/Zhang2019Theoretically.pt

so a folder that ``robustbench.utils.load_model`` filled is reused as it is. ``model_dir`` is
``teacher.model_dir`` (relative to the recipe), else ``$KDBENCH_MODEL_DIR``, else
``~/.cache/kdbench/models``. A missing file is downloaded (by robustbench's own downloader) only with
``teacher.download = true``; otherwise the error names the exact file to place and where.

kdbench reads the file itself with ``torch.load(weights_only=True)`` and applies exactly the key
clean-up of ``robustbench.utils.load_model`` (its ``rm_substr_from_state_dict`` and
``_safe_load_state_dict``), so the network is the one ``load_model`` returns; a test checks logits
against ``load_model`` on a zoo-format file. Zoo models take [0, 1] inputs and normalise inside
themselves, so kdbench adds no normalisation.

Penultimate features (for CRD, GACD) are the input of the model's final linear layer, found generically
(`find_final_linear`): the last ``nn.Linear`` called in a forward pass whose output is the model's output.

robustbench 1.1.1 imports ``autoattack``, the module name of the GitHub release of AutoAttack; its PyPI
release ``pyautoattack`` (which robustbench's own metadata requires, and kdbench uses) installs the same
code as ``pyautoattack``. When ``autoattack`` is absent, `import_robustbench` aliases it to
``pyautoattack`` (robustbench's evaluation code is never called by kdbench).
"""

from __future__ import annotations

import hashlib
import importlib
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import Tensor, nn

from kdbench._errors import RecipeError, UserError, close_matches
from kdbench.config import EmptyConfig
from kdbench.models.base import ModelOutput, Network

__all__ = [
    "MODEL_DIR_ENV",
    "ZooNetwork",
    "ZooTeacher",
    "check_zoo_name",
    "default_model_dir",
    "file_sha256",
    "find_final_linear",
    "import_robustbench",
    "load_zoo_teacher",
    "zoo_dataset",
    "zoo_names",
    "zoo_threat_model",
    "zoo_weights_path",
]

#: Folder of zoo weights when teacher.model_dir is unset.
MODEL_DIR_ENV = "KDBENCH_MODEL_DIR"
#: kdbench dataset name -> RobustBench's BenchmarkDataset value (the zoo has no other small datasets).
_DATASETS = {"cifar10": "cifar10", "cifar100": "cifar100"}
#: Zoo entries whose file holds {"last": ..., "best": ...}; robustbench.load_model takes "last".
_LAST_OF = ("Kireev2021Effectiveness", "Andriushchenko2020Understanding")
INSTALL_HINT = 'install the optional extra: pip install -e ".[robustbench]" (see docs/teachers.md)'


def import_robustbench() -> ModuleType:
    """``robustbench`` with its model zoo, or a `UserError` saying how to install it."""
    if "autoattack" not in sys.modules and importlib.util.find_spec("autoattack") is None:
        try:
            pyautoattack = importlib.import_module("pyautoattack")
            state = importlib.import_module("pyautoattack.state")
        except ImportError:
            pass
        else:  # same code, PyPI module name (see the module docstring)
            sys.modules["autoattack"] = pyautoattack
            sys.modules["autoattack.state"] = state
    try:
        with warnings.catch_warnings():  # robustbench imports timm's deprecated paths: not the user's concern
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            module = importlib.import_module("robustbench")
            importlib.import_module("robustbench.utils")
    except ImportError as exc:
        raise UserError(f"RobustBench teachers need the robustbench package ({exc}); {INSTALL_HINT}") from None
    return module


def default_model_dir() -> Path:
    """``$KDBENCH_MODEL_DIR``, else ``~/.cache/kdbench/models``."""
    env = os.environ.get(MODEL_DIR_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "kdbench" / "models"


def zoo_dataset(dataset: str, *, file: str) -> str:
    """RobustBench's name for the recipe's dataset (an error for datasets the zoo has no models of)."""
    base = dataset.split(":")[0]
    if base not in _DATASETS:
        raise RecipeError(
            f"the RobustBench zoo has no {base!r} models (it has {', '.join(sorted(_DATASETS))})",
            file=file,
            key="teacher.model",
            hint="use a teacher checkpoint or recipe for this dataset",
        )
    return _DATASETS[base]


def zoo_threat_model(norm: str) -> str:
    """RobustBench's threat-model name for eval.norm: ``Linf`` or ``L2``."""
    return {"linf": "Linf", "l2": "L2"}[norm]


def zoo_weights_path(model_dir: Path, dataset: str, threat_model: str, name: str) -> Path:
    """Where RobustBench keeps the weights of ``name``: ``<model_dir>/<dataset>/<threat>/<name>.pt``."""
    return model_dir / dataset / threat_model / f"{name}.pt"


def _zoo_entry(rb: ModuleType, name: str, dataset: str, threat: str, file: str) -> dict[str, Any]:
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    by_threat = model_dicts[BenchmarkDataset(dataset)]
    entries = by_threat.get(ThreatModel(threat), {})
    if name in entries:
        return dict(entries[name])
    elsewhere = [t.value for t, models in by_threat.items() if name in models]
    if elsewhere:
        raise RecipeError(
            f"RobustBench has {name!r} for {dataset} under {', '.join(elsewhere)}, not under {threat} "
            "(the recipe's eval.norm)",
            file=file,
            key="teacher.model",
            hint=f"set eval.norm to match, or choose a {dataset} {threat} model",
        )
    matches = close_matches(name, entries, n=5)
    other = [d.value for d, t in model_dicts.items() if name in t.get(ThreatModel(threat), {})]
    where = f"; it exists for {', '.join(other)}" if other else ""
    hint = f"did you mean {' or '.join(repr(m) for m in matches)}?" if matches else f"{len(entries)} models exist"
    raise RecipeError(
        f"RobustBench has no {dataset} {threat} model {name!r}{where}",
        file=file,
        key="teacher.model",
        hint=f'{hint} (list them: python -c "from kdbench.models.zoo import zoo_names; '
        f"print(zoo_names('{dataset}', '{threat}'))\")",
    )


def zoo_names(dataset: str, threat_model: str) -> list[str]:
    """The names of RobustBench's ``dataset`` (``cifar10``, ``cifar100``) ``threat_model`` (``Linf``, ``L2``) models."""
    import_robustbench()
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    return sorted(model_dicts[BenchmarkDataset(dataset)].get(ThreatModel(threat_model), {}))


def check_zoo_name(name: str, *, dataset: str, norm: str, file: str) -> None:
    """At validation time, when robustbench is installed: the entry exists for the recipe's dataset and
    threat model (a `RecipeError` on ``teacher.model`` otherwise). Without robustbench the check waits for
    the run, which then says how to install it."""
    if importlib.util.find_spec("robustbench") is None:
        return
    rb = import_robustbench()
    _zoo_entry(rb, name, zoo_dataset(dataset, file=file), zoo_threat_model(norm), file)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fetch(rb: ModuleType, entry: dict[str, Any], path: Path, download: bool, name: str, file: str) -> None:
    if path.is_file():
        return
    gdrive = entry.get("gdrive_id")
    source = f"Google Drive id {gdrive} (https://drive.google.com/uc?id={gdrive})" if gdrive else "the RobustBench zoo"
    if not download:
        raise RecipeError(
            f"RobustBench weights {path} not found",
            file=file,
            key="teacher.model",
            hint=f"download {name}.pt from {source} and place it at {path}, "
            "or set teacher.download = true where the network is reachable (teacher.model_dir sets the folder)",
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        rb.utils.download_gdrive_new(gdrive, path)
    except Exception as exc:
        raise RecipeError(
            f"downloading {name} into {path} failed ({type(exc).__name__}: {str(exc).splitlines()[0][:160]})",
            file=file,
            key="teacher.download",
            hint=f"download it from {source} by hand and place it at {path}",
        ) from None
    if not path.is_file():
        raise RecipeError(f"downloading {name} into {path} produced no file", file=file, key="teacher.download")


def _read_state(rb: ModuleType, path: Path, name: str, file: str) -> dict[str, Tensor]:
    """The state_dict of a zoo file, cleaned as ``robustbench.utils.load_model`` cleans it."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise RecipeError(
            f"RobustBench weights {path} cannot be loaded with weights_only=True ({first})",
            file=file,
            key="teacher.model",
            hint="it is probably a full-module pickle, which kdbench never unpickles: re-save its weights in a "
            "trusted Python with torch.save({'state_dict': model.state_dict()}, path), or fetch the original file",
        ) from None
    if any(tag in name for tag in _LAST_OF) and isinstance(checkpoint, dict) and "last" in checkpoint:
        checkpoint = checkpoint["last"]
    if not isinstance(checkpoint, dict):
        raise RecipeError(f"RobustBench weights {path} hold no state_dict", file=file, key="teacher.model")
    state = checkpoint["state_dict"] if isinstance(checkpoint.get("state_dict"), dict) else checkpoint
    state = rb.utils.rm_substr_from_state_dict(state, "module.")
    return dict(rb.utils.rm_substr_from_state_dict(state, "model."))


def find_final_linear(model: nn.Module, example: Tensor) -> nn.Linear:
    """The ``nn.Linear`` whose output is ``model``'s output: among the linear layers called by a forward pass
    of ``example``, the last one whose output equals the model's logits (exactly). Raises `UserError` when
    the logits are not the output of a linear layer (e.g. an ensemble or a post-processed output)."""
    calls: list[tuple[nn.Linear, Tensor]] = []

    def record(module: nn.Module, inputs: Any, output: Any) -> None:
        if isinstance(module, nn.Linear) and isinstance(output, Tensor):  # hooks sit on nn.Linear layers only
            calls.append((module, output.detach()))

    handles = [m.register_forward_hook(record) for m in model.modules() if isinstance(m, nn.Linear)]
    try:
        with torch.no_grad():
            logits = model(example)
    finally:
        for handle in handles:
            handle.remove()
    for module, output in reversed(calls):
        if output.shape == logits.shape and torch.equal(output, logits):
            return module
    raise UserError(
        f"{type(model).__name__}: its output is not the output of a linear layer, so kdbench cannot take "
        "penultimate features from it; use it with a method that reads only the teacher's logits"
    )


class ZooNetwork(Network):
    """A zoo model as a kdbench `Network`: logits from the model, features = input of its final linear layer.

    ``head`` is that linear layer (kept out of the module tree, so the state_dict holds it once, under the
    zoo model's own key).
    """

    Config = EmptyConfig

    def __init__(self, model: nn.Module, image_size: int, channels: int = 3):
        super().__init__()
        self.model = model.eval()
        example = torch.rand(2, channels, image_size, image_size, generator=torch.Generator().manual_seed(0))
        linear = find_final_linear(self.model, example)
        object.__setattr__(self, "head", linear)
        self.feature_dim = linear.in_features
        self.num_classes = linear.out_features
        self._captured: list[Tensor] = []
        linear.register_forward_pre_hook(self._capture)

    def _capture(self, module: nn.Module, inputs: tuple[Tensor, ...]) -> None:
        if self._capturing:
            self._captured.append(inputs[0])

    _capturing = False

    def forward_all(self, x: Tensor) -> ModelOutput:
        self._captured.clear()
        self._capturing = True
        try:
            logits = self.model(x)
        finally:
            self._capturing = False
        features = self._captured[-1].flatten(1)
        self._captured.clear()
        return ModelOutput(logits, features)

    def features(self, x: Tensor) -> Tensor:
        return self.forward_all(x).features

    def forward(self, x: Tensor) -> Tensor:
        logits: Tensor = self.model(x)
        return logits


class ZooTeacher:
    """A built zoo teacher and where it came from."""

    def __init__(self, network: ZooNetwork, name: str, dataset: str, threat_model: str, path: Path, sha256: str):
        self.network = network
        self.name = name
        self.dataset = dataset
        self.threat_model = threat_model
        self.path = path
        self.sha256 = sha256


def load_zoo_teacher(
    name: str,
    *,
    dataset: str,
    norm: str,
    model_dir: Path,
    download: bool,
    image_size: int,
    file: str,
    build: Callable[[dict[str, Any]], nn.Module] | None = None,
) -> ZooTeacher:
    """Build zoo entry ``name`` of ``dataset`` / ``norm`` and load its weights from ``model_dir``.

    ``build`` (tests only) replaces the entry's constructor.
    """
    rb = import_robustbench()
    ds, threat = zoo_dataset(dataset, file=file), zoo_threat_model(norm)
    entry = _zoo_entry(rb, name, ds, threat, file)
    if isinstance(entry.get("gdrive_id"), list):
        raise RecipeError(
            f"RobustBench model {name!r} is an ensemble of {len(entry['gdrive_id'])} networks",
            file=file,
            key="teacher.model",
            hint="choose a single-network zoo model as teacher",
        )
    path = zoo_weights_path(model_dir, ds, threat, name)
    _fetch(rb, entry, path, download, name, file)
    state = _read_state(rb, path, name, file)
    model = (build or (lambda e: e["model"]()))(entry)
    from robustbench.model_zoo.enums import BenchmarkDataset

    try:
        model = rb.utils._safe_load_state_dict(model, name, state, BenchmarkDataset(ds))
    except RuntimeError as exc:
        raise RecipeError(
            f"RobustBench weights {path} do not fit the zoo's {name} architecture ({str(exc).splitlines()[0][:200]})",
            file=file,
            key="teacher.model",
            hint=f"the file is not {name}'s; fetch the original into {path}",
        ) from None
    return ZooTeacher(ZooNetwork(model, image_size), name, ds, threat, path, file_sha256(path))

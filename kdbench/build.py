"""Build a run's components from a resolved recipe: data, networks, teacher weights, method, attack."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from kdbench._errors import RecipeError, UserError
from kdbench._registry import MODELS, split_variant
from kdbench.attacks.base import Attack
from kdbench.config import StrictModel
from kdbench.data.base import DatasetInfo, DatasetSource, SplitData
from kdbench.data.cache import load_split_cached
from kdbench.data.loader import DeviceLoader, balanced_subset
from kdbench.engine.checkpoint import load_weights_file
from kdbench.engine.hardware import Hardware
from kdbench.evaluation.selection import (
    EvalSelection,
    SelectionError,
    has_canonical_order,
    read_examples,
    select_examples,
)
from kdbench.method import Method, MethodSetup, TeacherSetup
from kdbench.models.base import Network, NetworkSpec
from kdbench.models.normalization import Normalization, resolve_normalization
from kdbench.recipe import ResolvedRecipe, eval_size

__all__ = [
    "DATA_ROOT_ENV",
    "DataBundle",
    "build_attack",
    "build_data",
    "build_method",
    "build_network",
    "build_source",
    "build_student_and_method",
    "check_label_spaces",
    "checkpoint_num_classes",
    "dataset_root",
    "eval_selection",
    "load_network_metadata",
    "load_network_weights",
    "network_spec",
    "place",
    "student_normalization",
]

#: Folder with one sub-folder per dataset (cifar10/, cifar100/, stl10/), used when data.root is unset.
DATA_ROOT_ENV = "KDBENCH_DATA_ROOT"


@dataclass
class DataBundle:
    """The training loader and the evaluation images of a run."""

    info: DatasetInfo
    train: DeviceLoader
    test_images: Tensor  # uint8 (N, C, H, W), on the CPU
    test_labels: Tensor  # int64 (N,)
    selection: EvalSelection | None = None  # which test images those are (None: built by hand)
    #: data.val_size: the held-out training images (never trained on), their labels and indices in the split
    val_images: Tensor | None = None
    val_labels: Tensor | None = None
    val_indices: Tensor | None = None

    @property
    def train_size(self) -> int:
        return self.train.num_samples


def dataset_root(resolved: ResolvedRecipe) -> Path | None:
    """``data.root`` (relative to the recipe), else ``$KDBENCH_DATA_ROOT/<dataset>``, else None."""
    data = resolved.recipe.data
    if data.root:
        return resolved.relative(data.root)
    env = os.environ.get(DATA_ROOT_ENV)
    if env:
        return Path(env).expanduser() / split_variant(data.dataset)[0]
    return None


def build_source(resolved: ResolvedRecipe) -> DatasetSource:
    return resolved.data_class(resolved.data_config, dataset_root(resolved), resolved.recipe.data.download)


def build_data(resolved: ResolvedRecipe, hardware: Hardware, rank: int = 0, world_size: int = 1) -> DataBundle:
    """Decode (or read from the cache) both splits, take the subsets, put the train split on the device."""
    r = resolved.recipe
    source = build_source(resolved)
    info = source.info()
    train = load_split_cached(source, "train")
    test = load_split_cached(source, "test")
    train_idx = _subset(train.labels, r.data.train_subset, resolved, "data.train_subset")
    train_idx, val_idx = _hold_out(train.labels, train_idx, r.data.val_size, r.seed, resolved)
    selection = eval_selection(resolved, source, test, info.num_classes)
    test_images, test_labels = test.images[selection.indices], test.labels[selection.indices]
    if r.train.batch_size % world_size:
        raise RecipeError(
            f"batch size {r.train.batch_size} does not split over {world_size} processes",
            file=resolved.file,
            key="train.batch_size",
            hint=f"use a multiple of {world_size}",
        )
    loader = DeviceLoader(
        train,
        device=hardware.device,
        batch_size=r.train.batch_size // world_size,
        rank=rank,
        world_size=world_size,
        train=True,  # shuffle and drop the short last batch; data.augment toggles crop and flip only
        crop_padding=4 if r.data.augment else 0,
        hflip=r.data.augment,
        seed=r.seed,
        subset_indices=train_idx,
        channels_last=hardware.channels_last,
    )
    bundle = DataBundle(info, loader, test_images, test_labels, selection)
    if val_idx is not None:
        bundle.val_images, bundle.val_labels, bundle.val_indices = train.images[val_idx], train.labels[val_idx], val_idx
    return bundle


def _hold_out(
    labels: Tensor, train_idx: Tensor | None, val_size: int | None, seed: int, resolved: ResolvedRecipe
) -> tuple[Tensor | None, Tensor | None]:
    """Split ``data.val_size`` images off the training images: class-balanced (`balanced_subset`), seeded
    by the recipe's seed, taken from the train subset when there is one. Returns (train, held-out) indices."""
    if val_size is None:
        return train_idx, None
    pool = train_idx if train_idx is not None else torch.arange(len(labels))
    if val_size >= len(pool):
        raise RecipeError(
            f"holds out {val_size} images but the training split has {len(pool)}",
            file=resolved.file,
            key="data.val_size",
            hint=f"use fewer than {len(pool)} (a few percent of the training images is usual, e.g. 1000 of 50000)",
        )
    chosen = balanced_subset(labels[pool], val_size, seed=seed)
    keep = torch.ones(len(pool), dtype=torch.bool)
    keep[chosen] = False
    return pool[keep], pool[chosen]


def eval_selection(resolved: ResolvedRecipe, source: DatasetSource, test: SplitData, num_classes: int) -> EvalSelection:
    """The recipe's evaluation set of ``test`` (`kdbench.evaluation.selection`); bad input is a `RecipeError`."""
    r = resolved.recipe
    n_key = "eval.n_examples" if r.eval.n_examples is not None else "data.test_subset"
    try:
        examples = (
            read_examples(r.eval.examples, resolved.path.parent if resolved.path else None, what="eval.examples")
            if r.eval.examples is not None
            else None
        )
        return select_examples(
            test.images,
            test.labels,
            canonical=has_canonical_order(source),
            n=eval_size(r),
            examples=examples,
            num_classes=num_classes,
            n_key=n_key,
        )
    except SelectionError as err:
        raise RecipeError(err.problem, file=resolved.file, key=err.key, hint=err.hint) from None


def _subset(labels: Tensor, n: int | None, resolved: ResolvedRecipe, key: str) -> Tensor | None:
    if n is None:
        return None
    if n > len(labels):
        raise RecipeError(
            f"subset of {n} asked for but the split has {len(labels)} images",
            file=resolved.file,
            key=key,
            hint=f"use at most {len(labels)}",
        )
    return balanced_subset(labels, n)


def network_spec(
    info: DatasetInfo, num_classes: int | None = None, normalization: Normalization | None = None
) -> NetworkSpec:
    """What a network needs of the data; its input statistics are ``normalization``'s (default: the dataset's)."""
    mean, std = normalization.stats if normalization is not None else (tuple(info.mean), tuple(info.std))
    return NetworkSpec(num_classes or info.num_classes, info.image_size, mean, std)


def student_normalization(resolved: ResolvedRecipe, info: DatasetInfo) -> Normalization:
    """The student's resolved ``student.normalize``."""
    return resolve_normalization(resolved.recipe.student.normalize, tuple(info.mean), tuple(info.std))


def build_network(name: str, config: StrictModel, spec: NetworkSpec) -> Network:
    """Instantiate a registered model (``name`` may carry a ``:variant``)."""
    cls = MODELS.get(name)
    net = cls(spec, config, split_variant(name)[1])
    return net


def load_network_weights(net: Network, path: Path, *, what: str = "teacher") -> dict[str, Any]:
    """Load weights into ``net`` from a run folder, a kdbench model file, a training checkpoint or a bare
    state_dict (always ``weights_only=True``). Returns the file's metadata (empty for bare state_dicts)."""
    if path.is_dir():
        candidate = path / "model.pt"
        if not candidate.is_file():
            raise UserError(f"{what} checkpoint folder {path} has no model.pt; is the run finished?")
        path = candidate
    if not path.exists():
        raise UserError(f"{what} checkpoint {path} not found")
    payload = load_weights_file(path, what=f"{what} checkpoint")
    meta: dict[str, Any] = {}
    if isinstance(payload, dict) and "state_dict" in payload:
        meta = {k: v for k, v in payload.items() if k != "state_dict"}
        state = payload["state_dict"]
    elif isinstance(payload, dict) and "student" in payload and isinstance(payload["student"], dict):
        state = payload["student"]
    else:
        state = payload
    if not isinstance(state, dict):
        raise UserError(f"{what} checkpoint {path} holds no state_dict")
    state = {k.removeprefix("module.").removeprefix("_orig_mod."): v for k, v in state.items()}
    try:
        missing, unexpected = net.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches: most often another class count
        shapes = _classifier_shape_problem(net, state)
        detail = shapes or str(exc).replace("\n", " ").replace("\t", "")[:300]
        raise UserError(
            f"{what} checkpoint {path} does not fit {type(net).__name__}: {detail}; "
            "check the model name and that the dataset (its class count) is the one it was trained on"
        ) from None
    if missing or unexpected:
        parts = [f"missing {len(missing)} keys (e.g. {missing[:2]})"] if missing else []
        parts += [f"unexpected {len(unexpected)} keys (e.g. {unexpected[:2]})"] if unexpected else []
        saved = f"it was saved from model {meta['model']!r}; " if "model" in meta else ""
        raise UserError(
            f"{what} checkpoint {path} does not fit {type(net).__name__}: {', '.join(parts)}; "
            f"{saved}check that the model name given for it is the one it was trained as"
        )
    return meta


def _classifier_shape_problem(net: Network, state: dict[str, Any]) -> str | None:
    """'the checkpoint's classifier has 100 outputs but the network 10' when that is the mismatch."""
    head = getattr(net, "head", None)
    if not isinstance(head, torch.nn.Linear):
        return None
    for key, value in state.items():
        is_matrix = key.endswith("weight") and isinstance(value, Tensor) and value.dim() == 2
        if is_matrix and value.shape[1] == head.in_features and value.shape[0] != head.out_features:
            return (
                f"its classifier ({key}) has {value.shape[0]} outputs but the recipe's dataset has "
                f"{head.out_features} classes"
            )
    return None


def build_method(resolved: ResolvedRecipe, setup: MethodSetup) -> Method:
    return resolved.method_class(resolved.method_config, setup).to(setup.device)


def build_attack(resolved: ResolvedRecipe) -> Attack:
    return resolved.attack_class(resolved.attack_config)


def check_label_spaces(resolved: ResolvedRecipe, teacher_classes: int, student_classes: int) -> None:
    """Logit-based methods need the teacher and the student to share their classes."""
    readers = resolved.method_class.teacher_logit_readers(resolved.method_config)
    if readers and teacher_classes != student_classes:
        raise RecipeError(
            f"method {resolved.recipe.method.name!r} compares teacher and student logits ({', '.join(readers)}), "
            f"but the teacher has {teacher_classes} classes and the student {student_classes}",
            file=resolved.file,
            key="method",
            hint="use a feature-based method with options that read no teacher logits, "
            "or a teacher of the same dataset",
        )


def build_student_and_method(
    resolved: ResolvedRecipe,
    spec: NetworkSpec,
    teacher: Network | None,
    dataset_size: int,
    device: torch.device,
    extra_teachers: Mapping[str, Network] | None = None,
) -> tuple[Network, Method]:
    """The student, initialised from the recipe's seed (whether or not a teacher was built before it),
    and the method sized for it, the teachers and the training set."""
    torch.manual_seed(resolved.recipe.seed)
    student = build_network(resolved.recipe.student.model, resolved.student_config, spec)
    setup = MethodSetup(
        num_classes=spec.num_classes,
        student_feature_dim=student.feature_dim,
        teacher_feature_dim=teacher.feature_dim if teacher is not None else None,
        teacher_num_classes=teacher.num_classes if teacher is not None else None,
        dataset_size=dataset_size,
        device=device,
        teachers={n: TeacherSetup(t.feature_dim, t.num_classes) for n, t in (extra_teachers or {}).items()},
    )
    return student, build_method(resolved, setup)


def place(net: Network, hardware: Hardware) -> Network:
    """Move a network to the run's device, channels_last when the hardware choice says so."""
    memory = torch.channels_last if hardware.channels_last else torch.contiguous_format
    return net.to(hardware.device).to(memory_format=memory)


def load_network_metadata(weights: Path) -> dict[str, Any]:
    """kdbench metadata of a weights file (empty for bare state_dicts and unreadable files)."""
    file = weights / "model.pt" if weights.is_dir() else weights
    try:
        payload = load_weights_file(file)
    except Exception:
        return {}
    if isinstance(payload, dict) and "state_dict" in payload:
        return {k: v for k, v in payload.items() if k != "state_dict"}
    return {}


def checkpoint_num_classes(path: Path) -> int | None:
    """The class count a kdbench weights file (or a run folder's model.pt) records, if it records one.

    Unreadable files give None here; `load_network_weights` reports them with context.
    """
    file = path / "model.pt" if path.is_dir() else path
    try:
        payload = load_weights_file(file)
    except UserError:
        return None
    return int(payload["num_classes"]) if isinstance(payload, dict) and "num_classes" in payload else None

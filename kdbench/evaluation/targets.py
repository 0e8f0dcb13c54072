"""What ``kdbench eval`` evaluates: a run folder (read through `kdbench.run_folder.RunFolder`: the network
from model.pt's metadata, the test split and defaults from its recipe.toml) or a weights file (with
``--dataset`` and ``--model``), rebuilt with the input normalisation it was trained with."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor

from kdbench import _toml
from kdbench._errors import UserError
from kdbench._registry import DATASETS, MODELS, split_variant
from kdbench.build import DATA_ROOT_ENV, build_network, load_network_metadata, load_network_weights, network_spec
from kdbench.config import StrictModel
from kdbench.data.base import DatasetInfo, DatasetSource
from kdbench.data.cache import load_split_cached
from kdbench.evaluation.selection import SelectionError, has_canonical_order, read_examples
from kdbench.evaluation.sharding import recorded_chunk_size
from kdbench.models.base import Network
from kdbench.models.normalization import recorded_normalization, resolve_normalization
from kdbench.results import read_result
from kdbench.run_folder import RunFolder

#: Attacks evaluated when neither ``--attacks`` nor the run's ``eval.attacks`` says otherwise.
DEFAULT_ATTACKS = ("clean", "fgsm", "pgd20", "cw", "autoattack")


def _options(items: list[str], what: str) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"{what} {item!r} is not KEY=VALUE (e.g. {what} image_size=16)")
        options[key.strip()] = _toml.parse_value(text.strip())
    return options


def _config(cls: type[Network] | type[DatasetSource], options: dict[str, Any], where: str, key: str) -> StrictModel:
    """Validate ``options`` against a component's Config; errors are one-line `RecipeError`s at ``where: key``."""
    from kdbench.recipe.validation import _validate

    return _validate(cls.Config, options, where, key)


@dataclass
class _Target:
    """What to evaluate: the network, the test images and the defaults of the run (if any)."""

    kind: str  # "run" | "weights"
    path: Path
    weights: Path
    model: str
    dataset: str
    net: Network
    images: Tensor  # the whole test split: uint8 (M, C, H, W), CPU
    labels: Tensor  # int64 (M,)
    canonical: bool  # whether the split's order is canonical (first-N rule) or not (stratified rule)
    num_classes: int
    defaults: dict[str, Any]  # attacks, n, examples, eps, norm, step_size, batch_size, seed (the run's recipe)
    default_out: Path


def _make_source(dataset: str, config: StrictModel, root: Path | None, download: bool = False) -> DatasetSource:
    cls = DATASETS.get(dataset)
    return cls(config, root, download)


def _env_root(dataset: str) -> Path | None:
    env = os.environ.get(DATA_ROOT_ENV)
    return Path(env).expanduser() / split_variant(dataset)[0] if env else None


def _build_net(
    model: str,
    options: dict[str, Any],
    info: DatasetInfo,
    num_classes: int | None,
    weights: Path,
    normalize: str | None = None,
) -> Network:
    cls = MODELS.get(model)
    if ":" in model and not cls.accepts_variant:
        raise UserError(f"model {split_variant(model)[0]!r} takes no ':variant'")
    config = _config(cls, options, str(weights), f"options of model {model!r}")
    # The input normalisation the weights were trained with (model.pt records it; older files and bare
    # state_dicts used the dataset's statistics).
    normalization = recorded_normalization(load_network_metadata(weights), tuple(info.mean), tuple(info.std))
    if normalize is not None:
        wanted = resolve_normalization(normalize, tuple(info.mean), tuple(info.std))  # type: ignore[arg-type]
        if normalization is not None and not normalization.same_function(wanted):
            raise UserError(
                f"--normalize {normalize}: {weights} was trained with normalize = {normalization.describe()}; "
                "drop --normalize (the file records its own)"
            )
        normalization = wanted
    return build_network(model, config, network_spec(info, num_classes, normalization))


def _load_run(run: Path, args: argparse.Namespace) -> _Target:
    """A run folder: the network from model.pt's metadata, the test split from recipe.toml's data table."""
    from kdbench.recipe import DataSection, EvalSection
    from kdbench.recipe.validation import _validate

    for flag, value in (
        ("--model", args.model),
        ("--dataset", args.dataset),
        ("--data-option", args.data_options),
        ("--normalize", getattr(args, "normalize", None)),
    ):
        if value:
            raise UserError(f"{flag} is for a weights file; the run folder {run} records its own")
    folder = RunFolder(run)
    raw = folder.recipe_table()
    weights = folder.require_model("evaluate it")
    # Only [data], [eval] and seed matter here: the method, attack and teacher of the run are not needed,
    # nor need their plugins be installed. Paths are relative to the folder (`kdbench.run_folder`).
    file = str(folder.recipe_file)
    data: DataSection = _validate(DataSection, raw.get("data"), file, "data")
    ev: EvalSection = _validate(EvalSection, raw.get("eval", {}), file, "eval")
    seed = raw.get("seed", 0)
    data_config = _config(DATASETS.get(data.dataset), data.options, file, "data.options")
    if args.data_root is not None:
        root: Path | None = args.data_root
    elif data.root:
        root = Path(os.path.expanduser(data.root))
        root = root if root.is_absolute() else run / root
    else:
        root = _env_root(data.dataset)
    source = _make_source(data.dataset, data_config, root, data.download)
    info = source.info()
    test = load_split_cached(source, "test")
    # data.test_subset is the old name of the evaluation size; a run folder of an older kdbench may give
    # both (then the first N of the balanced subset were evaluated): take the smaller over today's rule.
    sizes = [v for v in (ev.n_examples, data.test_subset) if v is not None]
    examples = None
    if ev.examples is not None and args.examples is None:
        # relative to the run folder (folders of an older kdbench kept it as written: look beside the run too)
        try:
            examples = read_examples(ev.examples, run, what=f"{file}: eval.examples")
        except SelectionError as err:
            raise SelectionError(err.key, err.problem, "give the index file with --examples FILE") from None

    meta = load_network_metadata(weights)
    model = meta.get("model")
    if not isinstance(model, str):
        raise UserError(f"{weights} does not record its model; evaluate it as a weights file with --model NAME")
    options: dict[str, Any] = meta["options"] if isinstance(meta.get("options"), dict) else {}
    num_classes = int(meta["num_classes"]) if "num_classes" in meta else None
    net = _build_net(model, options, info, num_classes, weights)
    load_network_weights(net, weights, what="model")
    defaults = {
        "attacks": list(ev.attacks),
        "n": min(sizes) if sizes else None,
        "n_key": f"{file}: eval.n_examples" if ev.n_examples is not None else f"{file}: data.test_subset",
        "examples": examples,
        "eps": ev.eps,
        "norm": ev.norm,
        "step_size": ev.step_size,
        "batch_size": ev.batch_size,
        "seed": int(seed) if isinstance(seed, int) else 0,
        # A run evaluated by N processes recorded the chunk size it used: reproduce its numbers by default.
        "chunk_size": recorded_chunk_size(read_result(run / "result.json")) or ev.chunk_size,
    }
    return _Target(
        "run",
        run,
        weights,
        model,
        data.dataset,
        net,
        test.images,
        test.labels,
        has_canonical_order(source),
        info.num_classes,
        defaults,
        folder.eval_file,
    )


def _load_weights(weights: Path, args: argparse.Namespace) -> _Target:
    """A weights file: --model (or the file's own record) on --dataset's test split."""
    if not args.dataset:
        raise UserError(f"{weights} is a weights file: name its dataset with --dataset (e.g. --dataset cifar10)")
    meta = load_network_metadata(weights)
    recorded = meta.get("model") if isinstance(meta.get("model"), str) else None
    model = args.model or recorded
    if not model:
        raise UserError(f"{weights} does not record its model: name it with --model (e.g. --model resnet18)")
    MODELS.entry(model)  # unknown names fail here, with close matches, before any data is read
    data_config = _config(DATASETS.get(args.dataset), _options(args.data_options, "--data-option"), "--data-option", "")
    root = args.data_root if args.data_root is not None else _env_root(args.dataset)
    source = _make_source(args.dataset, data_config, root)
    info = source.info()
    options: dict[str, Any] = meta["options"] if model == recorded and isinstance(meta.get("options"), dict) else {}
    num_classes = int(meta["num_classes"]) if "num_classes" in meta else None
    net = _build_net(model, options, info, num_classes, weights, args.normalize)
    load_network_weights(net, weights, what="model")
    test = load_split_cached(source, "test")
    defaults: dict[str, Any] = {"attacks": list(DEFAULT_ATTACKS), "n": None, "seed": 0, "batch_size": 256}
    return _Target(
        "weights",
        weights,
        weights,
        model,
        args.dataset,
        net,
        test.images,
        test.labels,
        has_canonical_order(source),
        info.num_classes,
        defaults,
        weights.parent / "eval.json",
    )


def _load_target(args: argparse.Namespace) -> _Target:
    target: Path = args.target
    if target.is_dir():
        return _load_run(target, args)
    if target.is_file():
        return _load_weights(target, args)
    raise UserError(f"{target} not found: give a run folder (holding model.pt) or a weights file")


# ------------------------------------------------------------------------------------ output

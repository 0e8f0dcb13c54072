"""The Python API: run a recipe, load a trained model, evaluate any model, read results.

Everything the command line does for one recipe, from a script or a notebook (docs/python-api.md)::

    import kdbench

    outcome = kdbench.run("recipes/quickstart.toml", set=["train.epochs=1"], teacher_set=["train.epochs=1"])
    model = kdbench.load_model(outcome.out_dir)                    # eval mode, normalisation built in
    report = kdbench.evaluate(model, "cifar10", attacks=["clean", "pgd20"], n=500)
    frame = kdbench.load_results(as_frame=True)                    # every finished run (pandas)

Images are always float in [0, 1] (or uint8), ``(N, 3, H, W)``: a kdbench network normalises its input
itself with the statistics of the dataset it was trained on (``model.normalize``), so the model needs
no transform beyond scaling pixels to [0, 1]. User mistakes raise `kdbench.UserError` with the same
one-line messages as the command line.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from kdbench._errors import UserError
from kdbench._registry import DATASETS, MODELS
from kdbench.build import DATA_ROOT_ENV, build_network, load_network_weights, network_spec
from kdbench.data.base import DatasetSource
from kdbench.engine.checkpoint import load_weights_file
from kdbench.evaluation import EvalReport
from kdbench.evaluation import evaluate as _evaluate
from kdbench.models.base import Network, freeze
from kdbench.models.normalization import recorded_normalization
from kdbench.recipe import ResolvedRecipe, load_recipe, resolve
from kdbench.results import Result
from kdbench.run import RunOutcome, run_recipe
from kdbench.run_folder import RunFolder

__all__ = ["evaluate", "load_model", "load_results", "resolve_recipe", "run"]


def resolve_recipe(recipe: dict[str, Any] | str | Path, *, set: Sequence[str] = ()) -> ResolvedRecipe:
    """A validated recipe object from a file path or a dict (the TOML as Python data), with ``set``
    overrides (``"train.epochs=2"``, as ``--set``; ``"teacher.set.train.epochs=2"`` reaches the teacher)."""
    if isinstance(recipe, dict):
        from kdbench.recipe import apply_overrides

        raw = apply_overrides(_deep_copy(recipe), list(set), "<recipe>")
        return resolve(raw, overrides=list(set))
    return load_recipe(recipe, list(set))


def _deep_copy(data: dict[str, Any]) -> dict[str, Any]:
    import copy

    return copy.deepcopy(data)


def run(
    recipe: ResolvedRecipe | dict[str, Any] | str | Path,
    *,
    set: Sequence[str] = (),
    teacher_set: Sequence[str] = (),
    out: str | Path | None = None,
    runs_dir: str | Path | None = None,
    quiet: bool = True,
) -> RunOutcome:
    """Train and evaluate a recipe (its teacher chain first), exactly as ``kdbench run``.

    ``recipe``: a path, a dict, or a `ResolvedRecipe` (then ``set``/``teacher_set`` must be empty).
    A finished run with the same hash is reused (``outcome.reused``). Returns ``outcome.out_dir`` (the
    run folder) and ``outcome.result`` (a `kdbench.results.Result`, typed: ``outcome.result.metrics.clean_acc``;
    ``.dump()`` is result.json's content). ``quiet=False`` shows the progress.
    A sweep recipe is refused: run its variants with `kdbench.recipe.load_recipes` and this function.
    """
    from kdbench.engine.progress import make_progress

    overrides = [*set, *(f"teacher.set.{item}" for item in teacher_set)]
    if isinstance(recipe, ResolvedRecipe):
        if overrides:
            raise UserError("set/teacher_set apply to a recipe file or dict; this recipe is already resolved")
        resolved = recipe
    else:
        resolved = resolve_recipe(recipe, set=overrides)
    progress = make_progress(quiet=quiet)
    try:
        return run_recipe(
            resolved,
            Path(out) if out is not None else None,
            runs_dir=Path(runs_dir) if runs_dir is not None else None,
            progress=progress,
        )
    finally:
        progress.close()


def _source(dataset: str, options: dict[str, Any], root: Path | None, download: bool = False) -> DatasetSource:
    cls = DATASETS.get(dataset)
    config = cls.Config.model_validate(options)
    if root is None and os.environ.get(DATA_ROOT_ENV):
        root = Path(os.environ[DATA_ROOT_ENV]).expanduser() / dataset.split(":")[0]
    return cls(config, root, download)


def _run_data(run_dir: Path) -> tuple[str, dict[str, Any], Path | None, dict[str, Any]]:
    """dataset name, its options, its folder and the whole [data] table, from a run's recipe.toml."""
    raw = RunFolder(run_dir).recipe_table()
    data = raw.get("data", {})
    root = data.get("root")
    folder = None
    if isinstance(root, str):
        folder = Path(os.path.expanduser(root))
        folder = folder if folder.is_absolute() else run_dir / folder
    return str(data["dataset"]), dict(data.get("options", {})), folder, data


def load_model(path: str | Path, *, dataset: str | None = None, device: str | torch.device = "cpu") -> Network:
    """A trained network for inference: eval mode, frozen, on ``device``, its normalisation built in.

    ``path``: a run folder (its model.pt and recipe.toml) or a kdbench ``model.pt``; for a ``model.pt``
    outside its run folder give ``dataset`` (the normalisation statistics and image size come from it).
    Call it on images ``(N, 3, H, W)`` float in [0, 1]: ``model(x)`` gives logits ``(N, classes)``,
    ``model.forward_all(x)`` logits and penultimate features.
    """
    path = Path(path)
    weights = path / "model.pt" if path.is_dir() else path
    if not weights.is_file():
        raise UserError(f"{weights} not found: give a finished run folder or a kdbench model.pt")
    payload = load_weights_file(weights, what="model")
    if not isinstance(payload, dict) or not isinstance(payload.get("model"), str):
        raise UserError(f"{weights} does not record its model; it is not a kdbench model.pt")
    run_dir = weights.parent
    if dataset is None:
        if not (run_dir / "recipe.toml").is_file():
            raise UserError(f"{weights} is not in a run folder (no recipe.toml beside it); pass dataset=...")
        name, options, root, _ = _run_data(run_dir)
    else:
        name, options, root = dataset, {}, None
    info = _source(name, options, root).info()
    model_name: str = payload["model"]
    config = MODELS.get(model_name).Config.model_validate(payload.get("options", {}))
    num_classes = int(payload["num_classes"]) if "num_classes" in payload else None
    # the normalisation the weights were trained with (student.normalize; files of older kdbench: the dataset's)
    normalization = recorded_normalization(payload, tuple(info.mean), tuple(info.std))
    net = build_network(model_name, config, network_spec(info, num_classes, normalization))
    load_network_weights(net, weights, what="model")
    return freeze(net.to(device))


def _test_split(dataset: str, n: int | None, root: str | Path | None, options: dict[str, Any]) -> tuple[Tensor, Tensor]:
    from kdbench.data.cache import load_split_cached
    from kdbench.evaluation.selection import has_canonical_order, select_examples

    source = _source(dataset, options, Path(root) if root is not None else None)
    test = load_split_cached(source, "test")
    if n is None:
        return test.images, test.labels
    if n > len(test.labels):
        raise UserError(f"n={n} but the {dataset} test split has {len(test.labels)} images")
    # The dataset's fixed selection, as `kdbench run` and `kdbench eval` evaluate: the first n of a canonical
    # order (torchvision's files), else n images of the seeded class-stratified order (an ImageFolder copy).
    chosen = select_examples(test.images, test.labels, canonical=has_canonical_order(source), n=n, n_key="n")
    return test.images[chosen.indices], test.labels[chosen.indices]


def evaluate(
    model: nn.Module,
    data: str | tuple[Tensor, Tensor],
    *,
    attacks: Sequence[str] = ("clean", "pgd20"),
    n: int | None = None,
    eps: float | str = 8 / 255,
    norm: str = "linf",
    batch_size: int = 256,
    device: str | torch.device | None = None,
    seed: int = 0,
    root: str | Path | None = None,
    data_options: dict[str, Any] | None = None,
) -> EvalReport:
    """Clean and robust accuracy of any torch model on a dataset's test split or on given tensors.

    ``model`` maps images float in [0, 1] ``(B, 3, H, W)`` to logits (a torchvision or timm model
    needs its normalisation inside it). ``data``: a registered dataset name (``"cifar10"``; the test
    split under ``root``, default ``$KDBENCH_DATA_ROOT/<name>``; ``n`` images of the dataset's fixed
    selection, the same as ``kdbench eval --n`` evaluates) or
    ``(images, labels)``. ``attacks``: evaluation attacks (``kdbench list evaluation``); ``eps`` may
    be ``"8/255"``. Returns `kdbench.evaluation.EvalReport` (``clean_acc``, ``robust``, ``worst``,
    ``flags``; ``to_dict()`` is result.json's ``metrics``).
    """
    from kdbench.config import parse_number

    if isinstance(data, str):
        images, labels = _test_split(data, n, root, data_options or {})
    else:
        images, labels = data
        if n is not None:
            images, labels = images[:n], labels[:n]
    value = parse_number(eps)
    if not isinstance(value, float | int):
        raise UserError(f"eps {eps!r} is not a number or a fraction like '8/255'")
    if device is None:
        device = next(model.parameters()).device if any(True for _ in model.parameters()) else "cpu"
    return _evaluate(
        model,
        images,
        labels,
        list(attacks),
        eps=float(value),
        norm=norm,  # type: ignore[arg-type]
        batch_size=batch_size,
        device=device,
        seed=seed,
    )


#: The columns of `load_results`, in order.
RESULT_COLUMNS = (
    "name",
    "recipe_hash",
    "method",
    "teacher",
    "student",
    "dataset",
    "norm",
    "eps",
    "clean",
    "fgsm",
    "pgd20",
    "cw",
    "autoattack",
    "autoattack_custom",
    "worst",
    "n_eval",
    "seed",
    "epochs",
    "train_seconds",
    "flags",
    "run_dir",
)


def _record(result: Result, run_dir: Path) -> dict[str, Any]:
    metrics, train = result.metrics, result.train
    row: dict[str, Any] = {
        "name": result.name,
        "recipe_hash": result.recipe_hash,
        "method": result.method,
        "teacher": result.teacher,
        "student": result.student,
        "dataset": result.dataset,
        "norm": result.threat_model.norm,
        "eps": result.threat_model.eps,
        "clean": metrics.clean_acc,
        **{key: metrics.robust.get(key) for key in ("fgsm", "pgd20", "cw", "autoattack", "autoattack_custom", "worst")},
        "n_eval": metrics.n_eval,
        "seed": result.seed,
        "epochs": train.epochs if train is not None else None,
        "train_seconds": train.seconds if train is not None else None,
        "flags": len(result.flags),
        "run_dir": str(run_dir),
    }
    return row


def load_results(*dirs: str | Path, as_frame: bool = False) -> Any:
    """Every finished run under ``dirs`` (default: the runs folder), one flat record per run.

    Records are dicts with `RESULT_COLUMNS` (accuracies as fractions, None where not run); with
    ``as_frame`` a pandas DataFrame of the same columns (needs pandas: ``pip install 'kdbench[pandas]'``).
    Unreadable result files and files of another schema version are skipped silently here
    (``kdbench leaderboard`` reports them).
    """
    from kdbench.leaderboard.collect import collect
    from kdbench.locations import default_runs_dir

    folders = [Path(d) for d in dirs] or [default_runs_dir()]
    collection = collect(folders, report=None)
    rows = [_record(run.result, run.run_dir) for run in collection.runs]
    if not as_frame:
        return rows
    try:
        import pandas as pd
    except ImportError:
        raise UserError("load_results(as_frame=True) needs pandas: pip install 'kdbench[pandas]'") from None
    return pd.DataFrame(rows, columns=list(RESULT_COLUMNS))

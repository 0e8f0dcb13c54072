"""``kdbench analyze RUN [--n N] [--teacher-checkpoint PATH]``: how close the student came to its teacher.

On N images of the run's evaluation selection (`kdbench.evaluation.selection`), with x' the PGD-20
adversarial examples against the student at the run's threat model (`kdbench.analysis.stability`):

* ``cka_clean``, ``cka_adv``: linear CKA between teacher and student penultimate features on x and on
  x' (`kdbench.analysis.cka`);
* ``class_corr_distance``: mean |C_T - C_S| of the class-correlation matrices of their logits on x
  (`kdbench.analysis.correlation`; null when the two have different classes);
* ``feature_change``: mean ||f_S(x') - f_S(x)|| / ||f_S(x)|| (`kdbench.analysis.stability`).

They are printed and added to the run's result.json under ``"analysis"`` (re-read, key added,
written atomically; the rest of the file is kept as it was), where `kdbench leaderboard` shows them.

The student is rebuilt from the run's recipe.toml and model.pt. The teacher comes from
``--teacher-checkpoint`` (a model.pt or run folder), else from the folder's self-contained recipe.toml
(`kdbench.run_folder`): ``teacher.checkpoint``, the teacher run's model.pt for a teacher trained by a
recipe (folders of older kdbench versions: the teacher run is looked for beside the student's). A zoo
teacher, or weights that are no longer where the folder says, stop the command with one line asking for
``--teacher-checkpoint``. Each network normalises its input as it was trained to: as its weights file
records, else (a bare state_dict) as the recipe's ``student.normalize`` / ``teacher.normalize`` says.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from kdbench._errors import UserError
from kdbench.analysis.cka import linear_cka
from kdbench.analysis.correlation import class_correlation_distance
from kdbench.analysis.stability import PGD_STEPS, adversarial_inputs, relative_feature_change
from kdbench.build import (
    build_network,
    build_source,
    checkpoint_num_classes,
    eval_selection,
    load_network_metadata,
    load_network_weights,
    network_spec,
    student_normalization,
)
from kdbench.data.base import DatasetInfo
from kdbench.data.cache import load_split_cached
from kdbench.evaluation.selection import has_canonical_order, select_examples
from kdbench.models.base import Network
from kdbench.models.normalization import Normalization, recorded_normalization
from kdbench.recipe import ResolvedRecipe, resolve
from kdbench.results import eps_label, read_result
from kdbench.run_folder import RunFolder
from kdbench.teachers import teacher_normalization

__all__ = ["DEFAULT_N", "add_parser", "analyze_run", "cmd_analyze"]

#: Test images analysed when --n is not given (fewer when the test set is smaller).
DEFAULT_N = 1000
_HINT = "pass --teacher-checkpoint PATH (the teacher's model.pt or run folder)"


def add_parser(subparsers: Any) -> None:
    """Add ``analyze`` to ``subparsers`` (sets ``handler``; see `kdbench.cli.COMMAND_MODULES`)."""
    p = subparsers.add_parser(
        "analyze",
        help="teacher-student CKA, class-correlation distance and feature stability of a run",
        description="Compare a finished run's student with its teacher (linear CKA on clean and PGD-20 inputs, "
        "class-correlation distance) and measure its feature stability; store them in result.json.",
    )
    p.add_argument("run", type=Path, metavar="RUN", help="a finished run folder (recipe.toml, model.pt, result.json)")
    p.add_argument(
        "--n", type=int, metavar="N", help=f"analyse N images of the run's evaluation selection (default {DEFAULT_N})"
    )
    p.add_argument(
        "--teacher-checkpoint",
        type=Path,
        metavar="PATH",
        help="the teacher's weights (model.pt or run folder), when recipe.toml's teacher path does not resolve",
    )
    p.add_argument("--batch-size", type=int, default=256, metavar="B", help="batch size (default 256)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="default: cuda when available")
    p.add_argument("--seed", type=int, help="seed of the PGD random start (default: the run's)")
    p.set_defaults(handler=cmd_analyze)


# ------------------------------------------------------------------------------------ loading


def _resolve(run: Path, teacher_checkpoint: Path | None) -> tuple[ResolvedRecipe, Path]:
    """The run's resolved recipe and the teacher's weights file (or run folder), from the folder alone."""
    folder = RunFolder(run)
    raw = folder.recipe_table()
    teacher = raw.get("teacher")
    if not isinstance(teacher, dict):
        raise UserError(f"{run} was trained without a teacher: analyze compares a student with its teacher")
    if teacher_checkpoint is not None:
        if not teacher_checkpoint.exists():
            raise UserError(f"--teacher-checkpoint {teacher_checkpoint} not found")
        weights = teacher_checkpoint.resolve()
    else:
        found = folder.teacher_weights()
        if found is None:
            raise UserError(f"{run}: the teacher comes from the model zoo; {_HINT}")
        weights = found
        if not weights.exists():
            raise UserError(f"{folder.recipe_file}: the teacher's weights are not at {weights}; {_HINT}")
    # Resolve with the teacher given by its weights (model and options those of the run), so nothing the
    # folder does not hold is needed.
    raw["teacher"] = {"model": teacher.get("model"), "checkpoint": str(weights), "options": teacher.get("options", {})}
    if "normalize" in teacher:  # the fallback for weights that record no normalisation (a bare state_dict)
        raw["teacher"]["normalize"] = teacher["normalize"]
    return resolve(raw, path=folder.recipe_file), weights


def _normalization(weights: Path, fallback: Normalization, info: DatasetInfo) -> Normalization:
    """The input normalisation the network of ``weights`` was trained with: what the file records (a kdbench
    model.pt or checkpoint), else the recipe's setting ``fallback`` (a bare state_dict records none)."""
    recorded = recorded_normalization(load_network_metadata(weights), tuple(info.mean), tuple(info.std))
    return recorded if recorded is not None else fallback


def _test_images(resolved: ResolvedRecipe, n: int | None) -> tuple[Tensor, Tensor, Any]:
    """n test images (uint8) and labels of the run's fixed evaluation selection, and the dataset info.

    The same rule as the run's evaluation (`kdbench.evaluation.selection`): the first n of a canonical
    order, else n images of the class-stratified order; ``eval.examples`` when the recipe names some.
    """
    source = build_source(resolved)
    info = source.info()
    test = load_split_cached(source, "test")
    full = eval_selection(resolved, source, test, info.num_classes)
    if n is None:
        n = min(DEFAULT_N, full.n)
    if n < 2:
        raise UserError(f"--n must be at least 2 (CKA and correlations need several images), got {n}")
    if resolved.recipe.eval.examples is not None:
        if n > full.n:
            raise UserError(f"--n is {n} but the run's eval.examples lists {full.n} images; use at most {full.n}")
        indices = full.indices[:n]
    else:
        indices = select_examples(
            test.images, test.labels, canonical=has_canonical_order(source), n=n, n_key="--n"
        ).indices
    return test.images[indices], test.labels[indices], info


def _outputs(net: Network, images: Tensor, batch_size: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Logits and penultimate features on the CPU, float32, for float images in [0, 1]."""
    logits, feats = [], []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            out = net.forward_all(images[start : start + batch_size].to(device, torch.float32))
            logits.append(out.logits.float().cpu())
            feats.append(out.features.float().flatten(1).cpu())
    return torch.cat(logits), torch.cat(feats)


def _finite(value: float) -> float | None:
    return round(value, 6) if math.isfinite(value) else None


# ------------------------------------------------------------------------------------ analysis


def analyze_run(
    run: Path,
    *,
    n: int | None = None,
    teacher_checkpoint: Path | None = None,
    batch_size: int = 256,
    device: torch.device | None = None,
    seed: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Compute the analysis of a finished run, store it in its result.json under "analysis" and return it.

    ``progress`` gets one line once the networks and images are loaded (before the costly attack)."""
    started = time.perf_counter()
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {batch_size}")
    folder = RunFolder(run)
    result_file = folder.result_file
    for needed in (folder.recipe_file, folder.model_file, result_file):
        if not needed.is_file():
            raise UserError(f"{run} has no {needed.name}: give a finished run folder (runs/<name>/<hash>/)")
    if read_result(result_file) is None:
        raise UserError(f"{result_file} is unreadable or of another schema version")
    resolved, teacher_weights = _resolve(run, teacher_checkpoint)
    r = resolved.recipe
    assert r.teacher is not None and resolved.teacher_config is not None
    images_u8, labels, info = _test_images(resolved, n)
    images = images_u8.float().div_(255)

    student_classes = checkpoint_num_classes(run / "model.pt") or info.num_classes
    student_normalize = _normalization(run / "model.pt", student_normalization(resolved, info), info)
    student_spec = network_spec(info, student_classes, student_normalize)
    student = build_network(r.student.model, resolved.student_config, student_spec)
    load_network_weights(student, run / "model.pt", what="student")
    teacher_model = resolved.to_dict()["teacher"]["model"]
    teacher_classes = checkpoint_num_classes(teacher_weights) or student_classes
    fallback = teacher_normalization(resolved, info)
    assert fallback is not None  # a zoo teacher was replaced by its weights in _resolve
    teacher_spec = network_spec(info, teacher_classes, _normalization(teacher_weights, fallback, info))
    teacher = build_network(teacher_model, resolved.teacher_config, teacher_spec)
    load_network_weights(teacher, teacher_weights, what="teacher")
    for net in (student, teacher):
        net.eval().requires_grad_(False).to(device)

    seed = r.seed if seed is None else seed
    if progress is not None:
        progress(f"kdbench: analyzing {run}: {len(labels)} test images, PGD-{PGD_STEPS} on {device.type}")
    x_adv = adversarial_inputs(
        student, images, labels, eps=r.eval.eps, norm=r.eval.norm, batch_size=batch_size, device=device, seed=seed
    )
    z_s, f_s = _outputs(student, images, batch_size, device)
    z_t, f_t = _outputs(teacher, images, batch_size, device)
    _, f_s_adv = _outputs(student, x_adv, batch_size, device)
    _, f_t_adv = _outputs(teacher, x_adv, batch_size, device)
    corr = class_correlation_distance(z_t, z_s) if z_t.shape == z_s.shape else math.nan

    analysis = {
        "n": len(labels),
        "seed": seed,
        "attack": f"pgd{PGD_STEPS}",
        "threat_model": {"norm": "Linf" if r.eval.norm == "linf" else "L2", "eps": eps_label(r.eval.eps)},
        "cka_clean": _finite(linear_cka(f_t, f_s)),
        "cka_adv": _finite(linear_cka(f_t_adv, f_s_adv)),
        "class_corr_distance": _finite(corr),
        "feature_change": _finite(relative_feature_change(f_s, f_s_adv)),
        "teacher_weights": str(teacher_weights),
        "seconds": round(time.perf_counter() - started, 3),
    }
    # Re-read right before writing, so keys another process added since the start are kept.
    data = read_result(result_file)
    if data is None:
        raise UserError(f"{result_file} changed during the analysis and is no longer readable")
    data.updated(analysis=analysis).write(result_file)
    return analysis


def cmd_analyze(args: argparse.Namespace) -> int:
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda but no CUDA device is available; use --device auto or cpu")
    device = torch.device(
        "cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu"
    )
    a = analyze_run(
        args.run,
        n=args.n,
        teacher_checkpoint=args.teacher_checkpoint,
        batch_size=args.batch_size,
        device=device,
        seed=args.seed,
        progress=lambda line: print(line, file=sys.stderr),
    )

    def show(value: float | None) -> str:
        return "-" if value is None else f"{value:.4f}"

    tm = a["threat_model"]
    print(f"{args.run} | n={a['n']} | x' = PGD-20 on the student, {tm['norm']} eps {tm['eps']}")
    print(f"  CKA(teacher, student) clean         {show(a['cka_clean'])}")
    print(f"  CKA(teacher, student) adversarial   {show(a['cka_adv'])}")
    print(f"  class-correlation distance          {show(a['class_corr_distance'])}")
    print(f"  student feature change under PGD-20 {show(a['feature_change'])}")
    print(f"analysis: {args.run / 'result.json'}")
    return 0

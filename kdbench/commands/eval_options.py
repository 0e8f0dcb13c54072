"""The command line of ``kdbench eval``: its arguments, and the parsing of their values (budgets such as
``8/255``, attack and eps lists, the device)."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from kdbench._errors import UserError
from kdbench.attacks.threat import check_eps
from kdbench.build import DATA_ROOT_ENV
from kdbench.config import parse_number
from kdbench.evaluation.attack_setup import parse_attacks
from kdbench.evaluation.eps_sweep import (
    DEFAULT_SWEEP,
    DEFAULT_SWEEP_L2,
)
from kdbench.evaluation.targets import DEFAULT_ATTACKS

#: The default budget per norm when neither ``--eps`` nor the run gives one.
DEFAULT_EPS = {"linf": 8 / 255, "l2": 0.5}
_SWEEP_DEFAULT = "default"


# ------------------------------------------------------------------------------------ parsing


def parse_eps(text: str | float, *, what: str = "--eps") -> float:
    """``"8/255"``, ``"0.03"`` or a number -> float; anything else is a `UserError`."""
    value = parse_number(text)
    try:
        eps = float(value)
    except (TypeError, ValueError):
        raise UserError(f"{what}: {text!r} is not a number (write e.g. 8/255 or 0.5)") from None
    if eps != eps or eps in (float("inf"), float("-inf")):
        raise UserError(f"{what}: {text!r} is not a finite number")
    return eps


def _checked_eps(eps: float, norm: str, what: str) -> float:
    try:
        check_eps(norm, eps)
    except ValueError as err:
        raise UserError(f"{what}: {err}") from None
    return eps


def _attack_list(values: list[str] | None, default: list[str] | tuple[str, ...]) -> list[str]:
    if not values:
        return parse_attacks(list(default))
    names = [part for value in values for part in value.split(",") if part.strip()]
    if not names:
        raise UserError("--attacks: no attack named")
    return parse_attacks(names)


def _sweep_list(text: str, norm: str) -> list[float]:
    if text == _SWEEP_DEFAULT:
        text = DEFAULT_SWEEP if norm == "linf" else DEFAULT_SWEEP_L2
    parts = [part for part in text.replace(" ", ",").split(",") if part]
    if not parts:
        raise UserError("--eps-sweep: empty list (write e.g. 0,2/255,4/255,8/255)")
    values = {_checked_eps(parse_eps(part, what="--eps-sweep"), norm, "--eps-sweep") for part in parts}
    return sorted(values)


def _device(name: str, local_rank: int = 0) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda but no CUDA device is available; use --device auto or cpu")
    use_cuda = name == "cuda" or (name == "auto" and torch.cuda.is_available())
    return torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")


# ------------------------------------------------------------------------------------ the target


# ------------------------------------------------------------------------------------ the arguments


def add_eval_arguments(p: argparse.ArgumentParser) -> None:
    """Add ``kdbench eval``'s positional TARGET and its options to ``p`` (see `kdbench.commands.eval`)."""
    p.add_argument("target", type=Path, metavar="TARGET", help="a run folder (holding model.pt) or a weights file")
    p.add_argument(
        "--attacks",
        nargs="+",
        metavar="NAME",
        help="attacks, space or comma separated: clean fgsm pgd<k> cw autoattack "
        f"(default: the run's eval.attacks, else {' '.join(DEFAULT_ATTACKS)})",
    )
    p.add_argument(
        "--n",
        "--num-examples",  # under torchrun: its own parser takes "--n" for an abbreviation of --nnodes/--nproc...
        dest="n",
        type=int,
        metavar="N",
        help="evaluate N images of the dataset's fixed selection (default: the run's, else all; "
        "under torchrun write --num-examples)",
    )
    p.add_argument(
        "--examples",
        metavar="FILE",
        help="evaluate these test indices instead (a .json list, or integers separated by spaces/commas)",
    )
    p.add_argument(
        "--step-size", metavar="STEP", help="pin the PGD/CW step (default: the run's, else max(eps/4, 2.5*eps/steps))"
    )
    p.add_argument(
        "--update-result",
        action="store_true",
        help="run folders: also write this evaluation into result.json (the old one kept as result.json.orig)",
    )
    p.add_argument(
        "--teacher",
        type=Path,
        metavar="RUN",
        help="with --update-result, for a result that does not record its teacher: the teacher run folder (or "
        "weights file) the student distilled from, when the folder's recipe.toml does not lead to it",
    )
    p.add_argument("--eps", metavar="EPS", help='budget, e.g. "8/255" (default: the run\'s, else 8/255; L2 0.5)')
    p.add_argument("--norm", choices=("linf", "l2"), help="threat model (default: the run's, else linf)")
    p.add_argument("--batch-size", type=int, metavar="B", help="evaluation batch size (default: the run's, else 256)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="default: cuda when available")
    p.add_argument("--seed", type=int, help="seed of the attacks' random starts (default: the run's, else 0)")
    p.add_argument(
        "--chunk-size",
        type=int,
        metavar="K",
        help="examples per chunk (kept on disk as they finish: a killed evaluation resumes at its chunk; shared by "
        "torchrun processes); default: the run's eval.chunk_size, else 0 (one chunk; ceil(N / processes) "
        "under torchrun)",
    )
    p.add_argument("--out", type=Path, metavar="FILE", help="eval.json path (default: in the run folder / beside it)")
    p.add_argument(
        "--eps-sweep",
        nargs="?",
        const=_SWEEP_DEFAULT,
        metavar="LIST",
        help=f"also PGD-20 accuracy at each eps of LIST (comma separated; default {DEFAULT_SWEEP}), "
        "saved in eval.json and plotted to eps_sweep.png",
    )
    p.add_argument(
        "--check-steps", action="store_true", help="also check that PGD-50 is no weaker than PGD-20/-10 (costly)"
    )
    p.add_argument("--model", metavar="NAME", help="model of a weights file (default: the name the file records)")
    p.add_argument(
        "--normalize",
        choices=("dataset", "none"),
        help="input normalisation of a bare weights file: 'none' for the official ARD/RSLAD/TRADES checkpoints "
        "(default: what the file records, else 'dataset')",
    )
    p.add_argument("--dataset", metavar="NAME", help="dataset of a weights file, e.g. cifar10")
    p.add_argument(
        "--data-option",
        dest="data_options",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an option of --dataset (repeatable), e.g. --data-option image_size=16",
    )
    p.add_argument(
        "--data-root", type=Path, metavar="DIR", help=f"the dataset's folder (default: ${DATA_ROOT_ENV}/<name>)"
    )

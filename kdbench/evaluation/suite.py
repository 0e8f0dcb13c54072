"""The robustness evaluation of a trained model: clean accuracy, FGSM, PGD-k, CW-inf and AutoAttack.

Robust accuracy follows RobustBench / AutoAttack (Croce & Hein 2020): a sample counts as robust to an
attack when the model classifies it correctly on x *and* on the attack's x'. (AutoAttack returns
x' = x for points misclassified from the start; the gradient attacks here are ANDed with clean
correctness explicitly, so robust <= clean holds per sample.) ``worst`` is the accuracy of the
per-sample AND over clean and every attack run: the worst case per sample, the number to report.

The attacks (eps default 8/255 L-inf; for L2 every step size below is eps/4 instead of 2/255):

* ``fgsm``: one signed step of size eps from x (Goodfellow et al. 2015), L-inf only;
* ``pgd<k>``, e.g. ``pgd20``: k steps of alpha = 2/255 on the cross-entropy from a uniform start
  (Madry et al. 2018);
* ``cw``: PGD-30, alpha = 2/255, uniform start, on the CW margin ``max_{j!=y} z_j - z_y``
  (Carlini & Wagner 2017; the CW-inf of TRADES / RSLAD tables);
* ``autoattack``: standard AutoAttack through pyautoattack (`kdbench.evaluation.autoattack`);
* ``autoattack_custom``: AutoAttack's custom version with APGD-CE + APGD-T only (development; stored as
  ``robust.autoattack_custom``, never as ``autoattack``);
* ``clean`` is always evaluated.

The model runs in eval mode, float32, without autocast, with every parameter's ``requires_grad``
switched off (all restored afterwards). Randomness comes from ``seed``: each attack starts from
``manual_seed(seed)``, so its result does not depend on which other attacks ran, and everything
happens inside ``torch.random.fork_rng``, so the caller's RNG state (CPU, and the evaluation's CUDA
device) is left exactly as it was.
"""

from __future__ import annotations

import copy
import re
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import chain
from typing import Any

import torch
from torch import Tensor, nn

from kdbench._errors import UserError, did_you_mean
from kdbench.attacks.base import Attack, ModelFn, Objective
from kdbench.attacks.cw import CWConfig, CWLinf
from kdbench.attacks.fgsm import FGSM, FGSMConfig
from kdbench.attacks.objectives import cross_entropy, cw_margin
from kdbench.attacks.pgd import PGD
from kdbench.attacks.threat import Norm, ThreatModelConfig, check_eps
from kdbench.evaluation.autoattack import AUTOATTACK_VERSIONS, require_autoattack, run_autoattack
from kdbench.evaluation.sanity import (
    check_autoattack_vs_pgd,
    check_eps_zero,
    check_gradient_masking,
    check_logits,
    check_robust_le_clean,
    check_steps_monotone,
)
from kdbench.models.base import ModelOutput

__all__ = ["ATTACK_NAMES", "ROBUST_KEYS", "EvalReport", "check_attack_names", "evaluate", "parse_attacks"]

#: Keys of `EvalReport.robust` that are always present (None when not run): result.json's contract.
ROBUST_KEYS = ("fgsm", "pgd20", "cw", "autoattack")
#: Attack names `evaluate` understands, besides ``pgd<k>`` for any k >= 1.
ATTACK_NAMES = ("clean", "fgsm", "pgd20", "cw", "autoattack", "autoattack_custom")
#: The L-inf step of PGD and CW: 2/255, a quarter of the CIFAR budget 8/255 (Madry et al. 2018; RSLAD eval).
LINF_STEP = 2 / 255
#: Steps of CW-inf (as in the RSLAD / ARD evaluation code).
CW_STEPS = 30
#: Seconds between the per-attack progress lines of `evaluate`.
PROGRESS_SECONDS = 10.0
_PGD_NAME = re.compile(r"pgd(\d+)")
#: Beyond this an evaluation "attack" is a typo or a run that never ends (AutoAttack's APGD uses 100).
MAX_PGD_STEPS = 10_000


@dataclass
class EvalReport:
    """Accuracies (fractions in [0, 1]) of one evaluation.

    ``robust`` always holds `ROBUST_KEYS` (None when not run) plus any extra ``pgd<k>`` run;
    ``correct`` holds the per-sample robust correctness ``(N,)`` bool (CPU) of ``"clean"`` and of every
    attack run; ``seconds`` the wall time per attack (and ``steps_check`` when `evaluate` ran that check).
    """

    clean_acc: float
    robust: dict[str, float | None]
    worst: float
    n_eval: int
    flags: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    correct: dict[str, Tensor] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """``{"clean_acc", "robust": {fgsm, pgd20, cw, autoattack, ..., "worst"}, "n_eval"}`` (result.json's
        ``metrics``); the flags are kept apart, in `flags`."""
        return {"clean_acc": self.clean_acc, "robust": {**self.robust, "worst": self.worst}, "n_eval": self.n_eval}


def parse_attacks(names: Sequence[str]) -> list[str]:
    """Validate and canonicalise attack names (lower case, ``pgd020`` -> ``pgd20``), dropping repeats."""
    if isinstance(names, str):
        names = [names]
    parsed: list[str] = []
    for raw in names:
        name = raw.strip().lower()
        match = _PGD_NAME.fullmatch(name)
        if match:
            steps = int(match.group(1))
            if steps < 1 or steps > MAX_PGD_STEPS:
                raise UserError(f"evaluation attack {raw!r}: PGD takes 1 to {MAX_PGD_STEPS} steps (e.g. pgd20)")
            name = f"pgd{steps}"
        elif name not in ATTACK_NAMES:
            raise UserError(
                f"unknown evaluation attack {raw!r}; {did_you_mean(name, ATTACK_NAMES)}; or pgd<k> for PGD-k"
            )
        if name not in parsed:
            parsed.append(name)
    return parsed


def check_attack_names(names: Sequence[str]) -> None:
    """Raise `UserError` (with close matches) unless every name is a known evaluation attack (recipe check)."""
    parse_attacks(names)


# ---------------------------------------------------------------------------------------------
# building blocks


def _build_attack(name: str, *, norm: Norm, eps: float) -> tuple[Attack, Callable[[Tensor], Objective]]:
    """The attack object and the objective factory (labels -> objective) of a gradient attack name."""
    step = LINF_STEP if norm == "linf" else eps / 4
    if name == "fgsm":
        if norm != "linf":
            raise UserError(f"fgsm is an L-inf attack; with norm {norm!r} evaluate pgd<k> instead")
        return FGSM(FGSMConfig(eps=eps)), cross_entropy
    if name == "cw":
        return CWLinf(CWConfig(norm=norm, eps=eps, step_size=step, steps=CW_STEPS)), cw_margin
    steps = int(name.removeprefix("pgd"))
    config = ThreatModelConfig(norm=norm, eps=eps, step_size=step, steps=steps, random_start="uniform")
    return PGD(config), cross_entropy


def _model_fn(model: nn.Module) -> ModelFn:
    """The model as attacks see it: `Network.forward_all`, or logits wrapped in a `ModelOutput`."""
    forward_all = getattr(model, "forward_all", None)
    if callable(forward_all):
        return forward_all

    def model_fn(x: Tensor) -> ModelOutput:
        logits = model(x)
        return ModelOutput(logits, logits)

    return model_fn


def _float_images(images: Tensor) -> Tensor:
    if images.dim() != 4:
        raise UserError(f"evaluation images must be (N, C, H, W); got shape {tuple(images.shape)}")
    if images.dtype == torch.uint8:
        return images.float().div_(255)
    if not images.is_floating_point():
        raise UserError(f"evaluation images must be uint8 or float in [0, 1]; got {images.dtype}")
    images = images.float()
    low, high = float(images.min()), float(images.max())
    if low < 0 or high > 1:
        raise UserError(f"evaluation images must lie in [0, 1] (the model normalises them); got [{low}, {high}]")
    return images


def _model_device(model: nn.Module) -> torch.device:
    return next(chain(model.parameters(), model.buffers()), torch.empty(0)).device


@contextmanager
def _frozen_eval(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode, float32, parameters not requiring grad; every module's mode and flag restored on exit.

    A model with non-float32 floating tensors is evaluated as a float32 copy (the original is untouched).
    """
    if any(t.is_floating_point() and t.dtype != torch.float32 for t in chain(model.parameters(), model.buffers())):
        model = copy.deepcopy(model).float()
    modes = [(m, m.training) for m in model.modules()]
    grads = [(p, p.requires_grad) for p in model.parameters()]
    try:
        model.eval()
        for p, _ in grads:
            p.requires_grad_(False)
        yield model
    finally:
        for m, training in modes:
            m.training = training
        for p, requires_grad in grads:
            p.requires_grad_(requires_grad)


def _seed(device: torch.device, seed: int) -> None:
    torch.random.default_generator.manual_seed(seed)
    if device.type == "cuda":
        torch.cuda.manual_seed(seed)  # the current device, set to the evaluation's by `_isolated_rng`
    elif device.type != "cpu":
        torch.manual_seed(seed)


@contextmanager
def _isolated_rng(device: torch.device) -> Iterator[None]:
    """Fork the CPU generator and that of the evaluation's CUDA device (made current) for the block."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        with torch.random.fork_rng(devices=[index]), torch.cuda.device(index):
            yield
        return
    # pyautoattack also seeds the current CUDA device, even when it evaluates on the CPU.
    cuda_devices = [torch.cuda.current_device()] if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=cuda_devices):
        yield


def _clock(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def _predict_correct(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    with torch.no_grad():
        return model(x).argmax(dim=1) == y


# ---------------------------------------------------------------------------------------------
# the evaluation


def evaluate(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    attacks: Sequence[str] = ("clean", "fgsm", "pgd20", "cw", "autoattack"),
    *,
    eps: float = 8 / 255,
    norm: Norm = "linf",
    batch_size: int = 256,
    device: torch.device | str | None = None,
    seed: int = 0,
    sanity: bool = True,
    steps_check: bool = False,
    on_progress: Callable[[str], None] | None = None,
) -> EvalReport:
    """Clean and robust accuracy of ``model`` on ``images: (N, C, H, W)`` (float in [0, 1] or uint8).

    ``model``: a `Network` (or any module mapping images in [0, 1] to logits ``(B, classes)``), already
    on ``device`` (default: the device of its parameters); ``labels: (N,)``; ``attacks``: names from
    `ATTACK_NAMES` or ``pgd<k>`` (unknown names raise `UserError` with close matches). With ``sanity``,
    the first batch is checked with PGD at eps = 0 and the clean outputs for probabilities; the flags of
    `kdbench.evaluation.sanity` and AutoAttack's own checks end up in `EvalReport.flags`. With
    ``steps_check`` (costly: PGD-10, -20 and -50 on every image), `check_steps_monotone` also runs, its
    flags join the others and its wall time is ``seconds["steps_check"]``. ``on_progress`` receives a
    line per attack at least every `PROGRESS_SECONDS` (examples done, robust accuracy so far, time) and
    AutoAttack's own log lines.
    """
    names = parse_attacks(attacks)
    if norm not in ("linf", "l2"):
        raise UserError(f"unknown norm {norm!r} (choices: linf, l2)")
    try:
        check_eps(norm, eps)
    except ValueError as err:
        raise UserError(f"evaluation eps: {err}") from None
    if batch_size < 1:
        raise UserError(f"evaluation batch_size must be >= 1, got {batch_size}")
    x_all = _float_images(images)
    y_all = labels.long().reshape(-1)
    n = x_all.shape[0]
    if n == 0 or y_all.shape[0] != n:
        raise UserError(f"evaluation needs N > 0 images and N labels; got {n} images and {y_all.shape[0]} labels")
    model_device = _model_device(model)
    device = torch.device(device) if device is not None else model_device
    if device.type == model_device.type and device.index is None:
        device = model_device  # "cuda" means the model's CUDA device
    if device != model_device:
        raise UserError(f"the model is on {model_device} but the evaluation device is {device}; move it first")

    # Fail fast, before any attack runs: a bad combination or a missing package costs no compute.
    gradient_attacks = {
        name: _build_attack(name, norm=norm, eps=eps)
        for name in names
        if name != "clean" and name not in AUTOATTACK_VERSIONS
    }
    if any(name in AUTOATTACK_VERSIONS for name in names):
        require_autoattack()

    flags: list[str] = []
    correct: dict[str, Tensor] = {}
    seconds: dict[str, float] = {}
    batches = [(start, min(start + batch_size, n)) for start in range(0, n, batch_size)]

    with _frozen_eval(model) as net, _isolated_rng(device), torch.autocast(device.type, enabled=False):
        model_fn = _model_fn(net)
        t0 = _clock(device)
        clean = torch.empty(n, dtype=torch.bool)
        for i, (a, b) in enumerate(batches):
            xb, yb = x_all[a:b].to(device), y_all[a:b].to(device)
            with torch.no_grad():
                logits = net(xb)
            clean[a:b] = (logits.argmax(dim=1) == yb).cpu()
            if i == 0 and sanity:
                flags += check_logits(logits)
        correct["clean"] = clean
        seconds["clean"] = _clock(device) - t0
        if sanity:
            _seed(device, seed)
            a, b = batches[0]
            flags += check_eps_zero(net, x_all[a:b].to(device), y_all[a:b].to(device), norm=norm)

        for name in names:
            if name == "clean":
                continue
            _seed(device, seed)
            t0 = _clock(device)
            if name in AUTOATTACK_VERSIONS:
                result = run_autoattack(
                    net,
                    x_all,
                    y_all,
                    eps=eps,
                    norm=norm,
                    batch_size=batch_size,
                    device=device,
                    seed=seed,
                    version=AUTOATTACK_VERSIONS[name],
                    log=on_progress,
                )
                robust_correct = result.correct.cpu()
                flags += result.flags
            else:
                attack, objective = gradient_attacks[name]
                robust_correct = torch.empty(n, dtype=torch.bool)
                shown = t0
                for a, b in batches:
                    xb, yb = x_all[a:b].to(device), y_all[a:b].to(device)
                    x_adv = attack.perturb(model_fn, xb, objective(yb))
                    robust_correct[a:b] = _predict_correct(net, x_adv, yb).cpu()
                    now = time.perf_counter()
                    if on_progress is not None and (now - shown >= PROGRESS_SECONDS or b == n):
                        shown = now
                        so_far = float((robust_correct[:b] & clean[:b]).float().mean())
                        on_progress(f"{name}: {b}/{n} examples, robust accuracy {so_far:.4f}, {now - t0:.0f} s")
            correct[name] = robust_correct & clean
            seconds[name] = _clock(device) - t0

        if steps_check:
            t0 = _clock(device)
            flags += check_steps_monotone(
                net,
                x_all,
                y_all,
                eps=eps,
                norm=norm,
                step_size=LINF_STEP if norm == "linf" else eps / 4,
                seed=seed,
                batch_size=batch_size,
            )
            seconds["steps_check"] = _clock(device) - t0

    def accuracy(mask: Tensor) -> float:
        return float(mask.float().mean())

    robust: dict[str, float | None] = dict.fromkeys(ROBUST_KEYS)
    robust.update({name: accuracy(mask) for name, mask in correct.items() if name != "clean"})
    worst_mask = torch.stack(list(correct.values())).all(dim=0)
    report = EvalReport(
        clean_acc=accuracy(clean),
        robust=robust,
        worst=accuracy(worst_mask),
        n_eval=n,
        flags=flags,
        seconds=seconds,
        correct=correct,
    )
    if sanity:
        report.flags += check_robust_le_clean(report.clean_acc, robust)
        report.flags += check_autoattack_vs_pgd(robust)
        report.flags += check_gradient_masking(robust)
    return report

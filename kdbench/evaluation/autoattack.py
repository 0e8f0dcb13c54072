"""AutoAttack through `pyautoattack`, the PyPI release of the official code (Croce & Hein 2020).

Croce & Hein, "Reliable Evaluation of Adversarial Robustness with an Ensemble of Diverse
Parameter-free Attacks", ICML 2020. The "standard" version runs APGD-CE, APGD-T (9 target classes),
FAB-T (9 target classes) and Square (5000 queries) in turn on the points still classified correctly,
and returns for every sample the first adversarial example found (x itself where none was).

pyautoattack 0.2.0: ``AutoAttack(model, norm=, eps=, version="standard", device=, seed=)`` and
``run_standard_evaluation(x, y, batch_size=N)`` (keyword-only) returning ``(x_adv, y_adv)``. Its
sanity checks (randomised or dynamic defence, probabilities instead of logits, zero gradients, too
many target classes, Square stronger than the gradient attacks) log warnings through the
``auto-attack`` logger; they are captured and returned as flags ``"autoattack: <message>"``.

With fewer than 10 classes the standard 9 target classes do not exist (pyautoattack then fails with
an IndexError); APGD-T and FAB-T then target all ``C - 1`` other classes and a flag says so.
Robust correctness is recomputed here by running the model on ``x_adv`` (float32, no autocast).

Versions: ``"standard"`` (the number to report, stored as ``robust.autoattack``) and ``"custom"``,
pyautoattack's own ``version="custom"`` with ``attacks=["apgd-ce", "apgd-t"]`` and the standard
settings of both (1 restart, 100 iterations, 9 target classes): the cheaper development check, stored
as ``robust.autoattack_custom`` and never as ``autoattack``. Dropping FAB-T and Square can only raise
the robust accuracy, so the custom number is an upper bound on the standard one.

`forward_autoattack_log` passes pyautoattack's own progress lines (attack, batch, points perturbed,
robust accuracy after each attack, time) to a callback, e.g. the run's progress and its train.log.

Nothing else is ever run or reported as "autoattack": without pyautoattack this raises `UserError`.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import cast

import torch
from torch import Tensor, nn

from kdbench._errors import UserError

__all__ = [
    "AUTOATTACK_VERSIONS",
    "AutoAttackResult",
    "capture_autoattack_flags",
    "forward_autoattack_log",
    "require_autoattack",
    "run_autoattack",
]

#: pyautoattack's logger name.
LOGGER_NAME = "auto-attack"
#: Target classes of APGD-T and FAB-T in the standard version.
STANDARD_TARGET_CLASSES = 9
_NORMS = {"linf": "Linf", "l2": "L2"}
#: Evaluation attack name -> AutoAttack version; the custom one runs APGD-CE and APGD-T only.
AUTOATTACK_VERSIONS = {"autoattack": "standard", "autoattack_custom": "custom"}
_CUSTOM_ATTACKS = ["apgd-ce", "apgd-t"]


@dataclass
class AutoAttackResult:
    """``x_adv: (N, C, H, W)`` on the input's device, ``correct: (N,)`` bool (prediction on x_adv == y)."""

    x_adv: Tensor
    correct: Tensor
    flags: list[str] = field(default_factory=list)


class _FlagHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message not in self.messages:  # APGD-T repeats its zero-gradient warning once per target
            self.messages.append(message)


@contextmanager
def capture_autoattack_flags() -> Iterator[list[str]]:
    """Collect the warnings pyautoattack logs while the block runs, as ``"autoattack: <message>"`` flags.

    The list is filled when the block exits. Records still propagate to the application's handlers.
    """
    logger = logging.getLogger(LOGGER_NAME)
    handler = _FlagHandler()
    old_level = logger.level
    if logger.getEffectiveLevel() > logging.WARNING:
        logger.setLevel(logging.WARNING)
    logger.addHandler(handler)
    flags: list[str] = []
    try:
        yield flags
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
        flags.extend(f"autoattack: {message}" for message in handler.messages)


class _Forward(logging.Handler):
    def __init__(self, callback: Callable[[str], None]) -> None:
        super().__init__(level=logging.DEBUG)
        self.callback = callback

    def emit(self, record: logging.LogRecord) -> None:
        self.callback(f"autoattack: {record.getMessage()}")


@contextmanager
def forward_autoattack_log(callback: Callable[[str], None] | None) -> Iterator[None]:
    """Pass every line pyautoattack logs (DEBUG and up) to ``callback`` while the block runs."""
    if callback is None:
        yield
        return
    logger = logging.getLogger(LOGGER_NAME)
    handler = _Forward(callback)
    old_level = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


class _Logits(nn.Module):
    """The model as pyautoattack wants it: images -> float32 logits."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        logits: Tensor = self.model(x)
        return logits.float()


def require_autoattack() -> type:
    """pyautoattack's ``AutoAttack`` class; `UserError` (install hint) when the package is missing."""
    try:
        module = importlib.import_module("pyautoattack")
    except ImportError as err:
        raise UserError(
            "the 'autoattack' evaluation needs the package pyautoattack: pip install pyautoattack "
            "(no weaker attack is substituted for it)"
        ) from err
    # pyautoattack is untyped (and imported by name, so that it stays optional): its class is a plain `type`.
    return cast(type, module.AutoAttack)


def run_autoattack(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    *,
    eps: float = 8 / 255,
    norm: str = "linf",
    batch_size: int = 256,
    device: torch.device | str | None = None,
    seed: int = 0,
    version: str = "standard",
    log: Callable[[str], None] | None = None,
) -> AutoAttackResult:
    """Run AutoAttack on ``images: (N, C, H, W)`` float in [0, 1] with ``labels: (N,)``.

    ``version``: "standard", or "custom" (APGD-CE + APGD-T, module doc); ``log`` receives
    pyautoattack's own log lines.

    ``model`` maps images to logits and should already be in eval mode with frozen parameters (as
    `kdbench.evaluation.evaluate` prepares it); ``device`` is where the model lives (default: its
    parameters' device). Batches of ``batch_size`` are moved there; the result stays on the inputs' device.
    """
    if norm not in _NORMS:
        raise UserError(f"autoattack supports norm 'linf' or 'l2', not {norm!r}")
    if version not in AUTOATTACK_VERSIONS.values():
        raise UserError(f"unknown AutoAttack version {version!r} (choices: standard, custom)")
    AutoAttack = require_autoattack()
    if device is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    device = torch.device(device)
    logits_model = _Logits(model)
    with torch.no_grad():
        num_classes = logits_model(images[:1].to(device)).shape[1]
    if num_classes < 4:
        raise UserError(f"AutoAttack's targeted DLR loss needs at least 4 classes; this model has {num_classes}")

    with capture_autoattack_flags() as flags, forward_autoattack_log(log):
        if version == "standard":
            adversary = AutoAttack(
                logits_model, norm=_NORMS[norm], eps=eps, version="standard", device=device, seed=seed
            )
        else:
            adversary = AutoAttack(
                logits_model,
                norm=_NORMS[norm],
                eps=eps,
                version="custom",
                attacks=_CUSTOM_ATTACKS,
                device=device,
                seed=seed,
            )
            # the standard version's settings of the two attacks it keeps (pyautoattack's _set_version)
            adversary.apgd.n_restarts = 1
            adversary.apgd_targeted.n_restarts = 1
            adversary.apgd_targeted.n_target_classes = STANDARD_TARGET_CLASSES
        extra: list[str] = []
        if num_classes - 1 < STANDARD_TARGET_CLASSES:
            adversary.apgd_targeted.n_target_classes = num_classes - 1
            adversary.fab.n_target_classes = num_classes - 1
            extra.append(
                f"autoattack: {num_classes} classes: APGD-T and FAB-T target all {num_classes - 1} other classes "
                f"(standard: {STANDARD_TARGET_CLASSES})"
            )
        x_adv, _ = adversary.run_standard_evaluation(images, labels, batch_size=batch_size)

    correct = torch.empty(images.shape[0], dtype=torch.bool, device=images.device)
    with torch.no_grad():
        for start in range(0, images.shape[0], batch_size):
            xb = x_adv[start : start + batch_size].to(device)
            yb = labels[start : start + batch_size].to(device)
            correct[start : start + batch_size] = (logits_model(xb).argmax(dim=1) == yb).to(correct.device)
    return AutoAttackResult(x_adv=x_adv, correct=correct, flags=extra + flags)

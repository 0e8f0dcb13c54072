"""The robustness evaluation of a trained model: clean accuracy, FGSM, PGD-k, CW-inf and AutoAttack.

`evaluate` checks its arguments, then, with the model frozen and the random state forked
(`kdbench.evaluation.isolation`), runs the clean model and every attack over the chunks of the examples
(`kdbench.evaluation.attack_loop`; the attacks by name, their settings and step rule:
`kdbench.evaluation.attack_setup`), runs the sanity checks below, and assembles the report with exact
accuracies, robust meaning correct on x *and* x', and the per-sample worst case
(`kdbench.evaluation.report`).

Sanity checks (``sanity=True``, `kdbench.evaluation.sanity`) and their cost: on the first batch,
the logits check and two deterministic passes (3 forward passes), PGD at eps = 0 (2 forward-backward
passes); when a gradient attack runs, on the first ``sanity_sample`` images (64): the share of
zero or non-finite input gradients (1 forward-backward), the unbounded-eps PGD-20 (20), and, when
PGD-20 (or another gradient attack) ran, a Square attack of ``black_box_queries`` queries (200
forward passes of the sample); then, free, the comparisons of the accuracies on the same samples
(robust <= clean, AutoAttack not above PGD-20, CW and AutoAttack not below PGD-20 beyond noise,
multi-step not above FGSM). With 500 images the sampled checks cost about as much as one PGD-20.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import chain

import torch
from torch import Tensor, nn

from kdbench._errors import UserError
from kdbench.attacks.threat import Norm, check_eps
from kdbench.engine.distributed import Distributed
from kdbench.evaluation.attack_loop import AttackLoop, clock, plan_runner
from kdbench.evaluation.attack_setup import build_attack, default_step_size, parse_attacks
from kdbench.evaluation.autoattack import AUTOATTACK_VERSIONS, require_autoattack
from kdbench.evaluation.isolation import frozen_eval, isolated_rng, seed_generators
from kdbench.evaluation.progress_store import EvalProgressStore
from kdbench.evaluation.report import EvalReport, build_report
from kdbench.evaluation.sanity import (
    Flag,
    check_black_box,
    check_deterministic,
    check_eps_zero,
    check_input_gradients,
    check_logits,
    check_steps_monotone,
    check_unbounded,
)

__all__ = ["BLACK_BOX_QUERIES", "SANITY_SAMPLE", "evaluate"]

#: Images the sampled sanity checks (gradients, unbounded eps, black box) run on.
SANITY_SAMPLE = 64
#: Queries of the black-box Square check.
BLACK_BOX_QUERIES = 200


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
    step_size: float | None = None,
    sanity_sample: int = SANITY_SAMPLE,
    black_box_queries: int = BLACK_BOX_QUERIES,
    on_progress: Callable[[str], None] | None = None,
    chunk_size: int = 0,
    world: Distributed | None = None,
    store: EvalProgressStore | None = None,
) -> EvalReport:
    """Clean and robust accuracy of ``model`` on ``images: (N, C, H, W)`` (float in [0, 1] or uint8).

    ``model``: a `Network` (or any module mapping images in [0, 1] to logits ``(B, classes)``), already on
    ``device`` (default: the device of its parameters); ``labels: (N,)``; ``attacks``: names from
    `kdbench.evaluation.attack_setup.ATTACK_NAMES` or ``pgd<k>`` (unknown names raise `UserError` with close
    matches). With ``sanity``, the first batch is checked with PGD at eps = 0 and the clean outputs for
    probabilities; the flags of `kdbench.evaluation.sanity` (each a `Flag` with a severity; their cost is in
    the module docstring) and AutoAttack's own checks (warnings) end up in `EvalReport.flags`. ``step_size``
    pins the step of PGD and CW (default: `default_step_size`). With ``steps_check`` (costly: PGD-10, -20
    and -50 on every image), `check_steps_monotone` also runs, its flags join the others and its wall time
    is ``seconds["steps_check"]`` (that of the sampled checks is ``seconds["sanity"]``). ``on_progress``
    receives a line per attack at least every `kdbench.evaluation.attack_loop.PROGRESS_SECONDS` (examples
    done, robust accuracy so far, time) and AutoAttack's own log lines.

    ``chunk_size`` (0: one chunk), ``world`` and ``store``: the examples are evaluated in chunks, each
    attack seeding each chunk by `kdbench.evaluation.sharding.chunk_seed`; with ``world`` (a
    data-parallel job, every process calling `evaluate` with the same arguments) the chunks are
    shared among the processes and the outcomes merged, and every process returns the same report;
    with ``store`` the outcomes of every finished (attack, chunk) are kept on disk and read back by a
    resumed evaluation (`kdbench.evaluation.progress_store`). Either way the numbers equal those of
    one uninterrupted process with the same ``chunk_size``; with one process and ``chunk_size = 0``
    those of the evaluation before chunks existed, bit for bit.
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
    if step_size is not None and not step_size > 0:
        raise UserError(f"evaluation step_size must be > 0, got {step_size}")
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
        name: build_attack(name, norm=norm, eps=eps, step_size=step_size)
        for name in names
        if name != "clean" and name not in AUTOATTACK_VERSIONS
    }
    if any(name in AUTOATTACK_VERSIONS for name in names):
        require_autoattack()

    flags: list[Flag] = []
    correct: dict[str, Tensor] = {}
    seconds: dict[str, float] = {}
    world = world or Distributed()
    if not world.is_main:
        on_progress = None  # rank 0 reports
    # The progress key's settings: every argument that changes the numbers (the chunk files keep these keys).
    settings = {"n": n, "eps": eps, "norm": norm, "step_size": step_size, "batch_size": batch_size, "seed": seed}
    runner, size = plan_runner(
        model,
        x_all,
        y_all,
        settings=settings,
        chunk_size=chunk_size,
        device=device,
        world=world,
        store=store,
        on_message=on_progress,
    )

    with frozen_eval(model) as net, isolated_rng(device), torch.autocast(device.type, enabled=False):
        loop = AttackLoop(
            net,
            x_all,
            y_all,
            eps=eps,
            norm=norm,
            batch_size=batch_size,
            seed=seed,
            device=device,
            runner=runner,
            world=world,
            on_progress=on_progress,
        )
        correct["clean"], seconds["clean"] = loop.clean()
        if sanity and world.is_main:  # on the first batch (rank 0 alone: the flags are broadcast below)
            flags += _first_batch_checks(
                net, x_all[:batch_size].to(device), y_all[:batch_size].to(device), norm=norm, seed=seed, device=device
            )

        for name in names:
            if name == "clean":
                continue
            outcome = loop.attack(name, gradient_attacks.get(name), correct["clean"])
            flags += outcome.flags
            correct[name] = outcome.correct
            seconds[name] = outcome.seconds

        if steps_check and world.is_main:
            t0 = clock(device)
            flags += check_steps_monotone(
                net,
                x_all,
                y_all,
                eps=eps,
                norm=norm,
                step_size=step_size if step_size is not None else default_step_size(eps, 20),
                seed=seed,
                batch_size=batch_size,
            )
            seconds["steps_check"] = clock(device) - t0

        gradient_names = [name for name in names if name in gradient_attacks]
        if sanity and gradient_names and world.is_main:
            t0 = clock(device)
            flags += _sampled_checks(
                net,
                x_all[:sanity_sample].to(device),
                y_all[:sanity_sample].to(device),
                correct,
                gradient_names,
                eps=eps,
                norm=norm,
                seed=seed,
                queries=black_box_queries,
                device=device,
            )
            seconds["sanity"] = clock(device) - t0

    flags = world.broadcast_object(flags)  # the checks rank 0 ran alone
    return build_report(
        names, correct, seconds, flags, eps=eps, norm=norm, step_size=step_size, chunk_size=size, sanity=sanity
    )


def _first_batch_checks(
    net: nn.Module, x: Tensor, y: Tensor, *, norm: Norm, seed: int, device: torch.device
) -> list[Flag]:
    """The checks on the first batch ``x: (B, C, H, W)``: probabilities for logits, determinism, PGD at eps = 0."""
    with torch.no_grad():
        logits = net(x)
    flags = check_logits(logits)
    flags += check_deterministic(net, x)
    seed_generators(device, seed)
    flags += check_eps_zero(net, x, y, norm=norm)
    return flags


def _sampled_checks(
    net: nn.Module,
    x: Tensor,
    y: Tensor,
    correct: dict[str, Tensor],
    gradient_names: Sequence[str],
    *,
    eps: float,
    norm: Norm,
    seed: int,
    queries: int,
    device: torch.device,
) -> list[Flag]:
    """The masking checks on a small sample ``x: (S, C, H, W)`` (see the module docstring for their cost)."""
    flags = check_input_gradients(net, x, y)
    seed_generators(device, seed)
    flags += check_unbounded(net, x, y, norm=norm)
    # The black box is compared with PGD-20, else the strongest (lowest) gradient attack run.
    reference = "pgd20" if "pgd20" in gradient_names else min(gradient_names, key=lambda k: int(correct[k].sum()))
    if queries > 0:
        flags += check_black_box(
            net,
            x,
            y,
            correct[reference][: len(x)],
            reference_name=reference,
            eps=eps,
            norm=norm,
            queries=queries,
            seed=seed,
        )
    return flags

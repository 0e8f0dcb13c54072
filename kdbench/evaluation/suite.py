"""The robustness evaluation of a trained model: clean accuracy, FGSM, PGD-k, CW-inf and AutoAttack.

Robust accuracy follows RobustBench / AutoAttack (Croce & Hein 2020): a sample counts as robust to an
attack when the model classifies it correctly on x *and* on the attack's x'. (AutoAttack returns
x' = x for points misclassified from the start; the gradient attacks here are ANDed with clean
correctness explicitly, so robust <= clean holds per sample.) ``worst`` is the accuracy of the
per-sample AND over clean and every attack run: the worst case per sample, the number to report.

The attacks (eps default 8/255 L-inf):

* ``fgsm``: one signed step of size eps from x (Goodfellow et al. 2015), L-inf only;
* ``pgd<k>``, e.g. ``pgd20``: k steps of alpha on the cross-entropy from a uniform start
  (Madry et al. 2018);
* ``cw``: PGD-30 with alpha, uniform start, on the CW margin ``max_{j!=y} z_j - z_y``
  (Carlini & Wagner 2017; the CW-inf of TRADES / RSLAD tables);
* ``autoattack``: standard AutoAttack through pyautoattack (`kdbench.evaluation.autoattack`);
* ``autoattack_custom``: AutoAttack's custom version with APGD-CE + APGD-T only (development; stored as
  ``robust.autoattack_custom``, never as ``autoattack``);
* ``clean`` is always evaluated.

Step size. Unless pinned (``step_size``, the recipe's ``eval.step_size``), the step of PGD-k and CW-k
scales with the budget: ``alpha = max(eps / 4, 2.5 * eps / k)`` (`default_step_size`). The second term
is Madry et al.'s rule that k steps can travel 2.5 eps, enough to cross the ball from a random start
whatever k; the first keeps the customary 2/255 of PGD-20 and CW-30 at 8/255 (RSLAD, ARD and TRADES
tables), so numbers at the standard budget stay comparable with the literature. A fixed 2/255 at
64/255 would leave PGD-20 unable to reach the ball's boundary (weaker than FGSM). The settings of
every attack are returned in `EvalReport.settings` (result.json's ``evaluation.attacks``).

Accuracies are exact: ``correct / n`` from integer counts (`EvalReport.counts`), rounded once to a
double (147/500 is stored as 0.294, never as a float32 artefact).

Sanity checks (``sanity=True``, `kdbench.evaluation.sanity`) and their cost: on the first batch,
the logits check and two deterministic passes (3 forward passes), PGD at eps = 0 (2 forward-backward
passes); when a gradient attack runs, on the first ``sanity_sample`` images (64): the share of
zero or non-finite input gradients (1 forward-backward), the unbounded-eps PGD-20 (20), and, when
PGD-20 (or another gradient attack) ran, a Square attack of ``black_box_queries`` queries (200
forward passes of the sample); then, free, the comparisons of the accuracies on the same samples
(robust <= clean, AutoAttack not above PGD-20, CW and AutoAttack not below PGD-20 beyond noise,
multi-step not above FGSM). With 500 images the sampled checks cost about as much as one PGD-20.

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
from kdbench.engine.distributed import Distributed
from kdbench.evaluation.autoattack import AUTOATTACK_VERSIONS, require_autoattack, run_autoattack
from kdbench.evaluation.progress_store import ChunkOutcome, EvalProgressStore, progress_key
from kdbench.evaluation.sanity import (
    Flag,
    as_flag,
    check_autoattack_vs_pgd,
    check_below_reference,
    check_black_box,
    check_deterministic,
    check_eps_zero,
    check_gradient_masking,
    check_input_gradients,
    check_logits,
    check_robust_le_clean,
    check_steps_monotone,
    check_unbounded,
)
from kdbench.evaluation.sharding import Chunk, ChunkRunner, check_world, chunk_seed, default_chunk_size, plan_chunks
from kdbench.models.base import ModelOutput

__all__ = [
    "ATTACK_NAMES",
    "ROBUST_KEYS",
    "STEP_RULE",
    "EvalReport",
    "attack_settings",
    "check_attack_names",
    "default_step_size",
    "evaluate",
    "parse_attacks",
]

#: Keys of `EvalReport.robust` that are always present (None when not run): result.json's contract.
ROBUST_KEYS = ("fgsm", "pgd20", "cw", "autoattack")
#: Attack names `evaluate` understands, besides ``pgd<k>`` for any k >= 1.
ATTACK_NAMES = ("clean", "fgsm", "pgd20", "cw", "autoattack", "autoattack_custom")
#: The L-inf step of PGD-20 and CW-30 at the CIFAR budget 8/255 (Madry et al. 2018; RSLAD eval): eps / 4.
LINF_STEP = 2 / 255
#: How the default step of PGD-k and CW-k follows from eps (`default_step_size`), as result.json states it.
STEP_RULE = "max(eps/4, 2.5*eps/steps)"
#: Images the sampled sanity checks (gradients, unbounded eps, black box) run on.
SANITY_SAMPLE = 64
#: Queries of the black-box Square check.
BLACK_BOX_QUERIES = 200
#: Steps of CW-inf (as in the RSLAD / ARD evaluation code).
CW_STEPS = 30
#: How a chunked evaluation seeds chunk k (`kdbench.evaluation.sharding.chunk_seed`), as result.json states it.
CHUNK_SEED_RULE = "seed + 1000003 * chunk"
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
    counts: dict[str, int] = field(default_factory=dict)
    settings: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """``{"clean_acc", "robust": {fgsm, pgd20, cw, autoattack, ..., "worst"}, "n_eval", "counts"}``
        (result.json's ``metrics``; ``counts``: correct samples per attack, ``clean`` and ``worst``, so every
        accuracy is ``counts[name] / n_eval``); the flags are kept apart, in `flags`."""
        return {
            "clean_acc": self.clean_acc,
            "robust": {**self.robust, "worst": self.worst},
            "n_eval": self.n_eval,
            "counts": dict(self.counts),
        }


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


def default_step_size(eps: float, steps: int) -> float:
    """``max(eps / 4, 2.5 * eps / steps)``: the step of PGD-k / CW-k scaled to the budget (module docstring)."""
    return max(eps / 4, 2.5 * eps / max(steps, 1))


def _steps(name: str) -> int:
    return CW_STEPS if name == "cw" else int(name.removeprefix("pgd"))


def attack_settings(
    names: Sequence[str], *, eps: float, norm: Norm, step_size: float | None = None
) -> dict[str, dict[str, Any]]:
    """What each attack of ``names`` runs with (result.json's ``evaluation.attacks``)."""
    settings: dict[str, dict[str, Any]] = {}
    for name in parse_attacks(names):
        if name == "clean":
            continue
        if name == "fgsm":
            settings[name] = {"steps": 1, "step_size": eps, "start": "none", "objective": "cross-entropy"}
        elif name in AUTOATTACK_VERSIONS:
            settings[name] = {"version": AUTOATTACK_VERSIONS[name], "package": "pyautoattack"}
        else:
            steps = _steps(name)
            settings[name] = {
                "steps": steps,
                "step_size": step_size if step_size is not None else default_step_size(eps, steps),
                "step_rule": "pinned" if step_size is not None else STEP_RULE,
                "start": "uniform",
                "restarts": 1,
                "objective": "cw-margin" if name == "cw" else "cross-entropy",
            }
    return settings


def _build_attack(
    name: str, *, norm: Norm, eps: float, step_size: float | None = None
) -> tuple[Attack, Callable[[Tensor], Objective]]:
    """The attack object and the objective factory (labels -> objective) of a gradient attack name."""
    if name == "fgsm":
        if norm != "linf":
            raise UserError(f"fgsm is an L-inf attack; with norm {norm!r} evaluate pgd<k> instead")
        return FGSM(FGSMConfig(eps=eps)), cross_entropy
    steps = _steps(name)
    step = step_size if step_size is not None else default_step_size(eps, steps)
    if name == "cw":
        return CWLinf(CWConfig(norm=norm, eps=eps, step_size=step, steps=steps)), cw_margin
    config = ThreatModelConfig(norm=norm, eps=eps, step_size=step, steps=steps, random_start="uniform")
    return PGD(config), cross_entropy


def _model_fn(model: nn.Module) -> ModelFn:
    """The model as attacks see it: `Network.forward_all`, or logits wrapped in a `ModelOutput`."""
    # getattr, not isinstance(model, Network): a torch.compile wrapper forwards the attribute too.
    forward_all: ModelFn | None = getattr(model, "forward_all", None)
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
    torch.default_generator.manual_seed(seed)
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
        logits: Tensor = model(x)
        return logits.argmax(dim=1) == y


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
    step_size: float | None = None,
    sanity_sample: int = SANITY_SAMPLE,
    black_box_queries: int = BLACK_BOX_QUERIES,
    on_progress: Callable[[str], None] | None = None,
    chunk_size: int = 0,
    world: Distributed | None = None,
    store: EvalProgressStore | None = None,
) -> EvalReport:
    """Clean and robust accuracy of ``model`` on ``images: (N, C, H, W)`` (float in [0, 1] or uint8).

    ``model``: a `Network` (or any module mapping images in [0, 1] to logits ``(B, classes)``), already
    on ``device`` (default: the device of its parameters); ``labels: (N,)``; ``attacks``: names from
    `ATTACK_NAMES` or ``pgd<k>`` (unknown names raise `UserError` with close matches). With ``sanity``,
    the first batch is checked with PGD at eps = 0 and the clean outputs for probabilities; the flags of
    `kdbench.evaluation.sanity` (each a `Flag` with a severity; their cost is in the module docstring)
    and AutoAttack's own checks (warnings) end up in `EvalReport.flags`. ``step_size`` pins the step of
    PGD and CW (default: `default_step_size`). With ``steps_check``
    (costly: PGD-10, -20 and -50 on every image), `check_steps_monotone` also runs, its
    flags join the others and its wall time is ``seconds["steps_check"]`` (that of the sampled checks
    is ``seconds["sanity"]``). ``on_progress`` receives a line per attack at least every
    `PROGRESS_SECONDS` (examples done, robust accuracy so far, time) and AutoAttack's own log lines.

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
        name: _build_attack(name, norm=norm, eps=eps, step_size=step_size)
        for name in names
        if name != "clean" and name not in AUTOATTACK_VERSIONS
    }
    if any(name in AUTOATTACK_VERSIONS for name in names):
        require_autoattack()

    flags: list[Flag] = []
    correct: dict[str, Tensor] = {}
    seconds: dict[str, float] = {}
    batches = [(start, min(start + batch_size, n)) for start in range(0, n, batch_size)]
    world = world or Distributed()
    check_world(n, world)
    size = chunk_size if chunk_size > 0 else default_chunk_size(n, world.world_size)
    chunks = plan_chunks(n, size)
    if store is not None and world.is_main:
        settings = {"n": n, "eps": eps, "norm": norm, "step_size": step_size, "batch_size": batch_size, "seed": seed}
        store.open(progress_key(model, x_all, y_all, {**settings, "chunk_size": size, "device": device.type}))
    if not world.is_main:
        on_progress = None  # rank 0 reports
    runner = ChunkRunner(chunks, world, store, on_message=on_progress)

    with _frozen_eval(model) as net, _isolated_rng(device), torch.autocast(device.type, enabled=False):
        model_fn = _model_fn(net)

        def batches_of(c: Chunk) -> Iterator[tuple[int, int]]:
            return ((a, min(a + batch_size, c.stop)) for a in range(c.start, c.stop, batch_size))

        def clean_chunk(c: Chunk) -> ChunkOutcome:
            out = torch.empty(c.size, dtype=torch.bool)
            for a, b in batches_of(c):
                xb, yb = x_all[a:b].to(device), y_all[a:b].to(device)
                out[a - c.start : b - c.start] = _predict_correct(net, xb, yb).cpu()
            return ChunkOutcome(out)

        t0 = _clock(device)
        clean, _ = runner.run("clean", clean_chunk)
        correct["clean"] = clean
        seconds["clean"] = _clock(device) - t0
        if sanity and world.is_main:  # on the first batch (rank 0 alone: the flags are broadcast below)
            a, b = batches[0]
            xb, yb = x_all[a:b].to(device), y_all[a:b].to(device)
            with torch.no_grad():
                logits = net(xb)
            flags += check_logits(logits)
            flags += check_deterministic(net, xb)
            _seed(device, seed)
            flags += check_eps_zero(net, xb, yb, norm=norm)

        for name in names:
            if name == "clean":
                continue
            t0 = _clock(device)
            here = {"done": 0, "robust": 0, "shown": t0}  # this process's examples, for the progress lines

            def attack_chunk(c: Chunk, name: str = name, t0: float = t0, here: dict[str, Any] = here) -> ChunkOutcome:
                _seed(device, chunk_seed(seed, c.index))
                if name in AUTOATTACK_VERSIONS:
                    result = run_autoattack(
                        net,
                        x_all[c.start : c.stop],
                        y_all[c.start : c.stop],
                        eps=eps,
                        norm=norm,
                        batch_size=batch_size,
                        device=device,
                        seed=chunk_seed(seed, c.index),
                        version=AUTOATTACK_VERSIONS[name],
                        log=on_progress,
                    )
                    return ChunkOutcome(result.correct.cpu(), tuple(result.flags))
                attack, objective = gradient_attacks[name]
                out = torch.empty(c.size, dtype=torch.bool)
                for a, b in batches_of(c):
                    xb, yb = x_all[a:b].to(device), y_all[a:b].to(device)
                    x_adv = attack.perturb(model_fn, xb, objective(yb))
                    out[a - c.start : b - c.start] = _predict_correct(net, x_adv, yb).cpu()
                    here["done"] += b - a
                    here["robust"] += int((out[a - c.start : b - c.start] & clean[a:b]).sum())
                    now = time.perf_counter()
                    last = not world.enabled and here["done"] == n
                    if on_progress is not None and (now - here["shown"] >= PROGRESS_SECONDS or last):
                        here["shown"] = now
                        so_far = here["robust"] / here["done"]
                        total = f"/{n}" if not world.enabled else " (this process)"
                        done = f"{here['done']}{total} examples"
                        on_progress(f"{name}: {done}, robust accuracy {so_far:.4f}, {now - t0:.0f} s")
                return ChunkOutcome(out)

            robust_correct, chunk_flags = runner.run(name, attack_chunk)
            flags += [as_flag(text, check="autoattack") for text in chunk_flags]
            correct[name] = robust_correct & clean
            seconds[name] = _clock(device) - t0

        if steps_check and world.is_main:
            t0 = _clock(device)
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
            seconds["steps_check"] = _clock(device) - t0

        gradient_names = [name for name in names if name in gradient_attacks]
        if sanity and gradient_names and world.is_main:
            t0 = _clock(device)
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
            seconds["sanity"] = _clock(device) - t0

    flags = world.broadcast_object(flags)  # the checks rank 0 ran alone
    counts = {name: int(mask.sum()) for name, mask in correct.items()}
    counts["worst"] = int(torch.stack(list(correct.values())).all(dim=0).sum())

    def accuracy(name: str) -> float:
        return counts[name] / n  # exact integer ratio, rounded once to a double

    robust: dict[str, float | None] = dict.fromkeys(ROBUST_KEYS)
    robust.update({name: accuracy(name) for name in correct if name != "clean"})
    report = EvalReport(
        clean_acc=accuracy("clean"),
        robust=robust,
        worst=accuracy("worst"),
        n_eval=n,
        flags=list(flags),
        seconds=seconds,
        correct=correct,
        counts=counts,
        settings=attack_settings(names, eps=eps, norm=norm, step_size=step_size),
    )
    if size > 0:  # chunked (data-parallel or resumable): how to reproduce it in one process
        for record in report.settings.values():
            record.update({"chunk_size": size, "chunk_seed": CHUNK_SEED_RULE})
    if sanity:
        report.flags += check_robust_le_clean(report.clean_acc, robust)
        report.flags += check_autoattack_vs_pgd(robust)
        report.flags += check_gradient_masking(robust)
        report.flags += check_below_reference(correct)
    return report


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
    _seed(device, seed)
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

"""Run a recipe end to end: teacher, training, evaluation, result files.

Output folder (default ``runs/<name>/<short hash>/``)::

    recipe.toml      the resolved recipe (every default filled in)
    metrics.jsonl    one JSON object per finished epoch
    checkpoints/     crash-safe training checkpoints (resume is automatic)
    model.pt         the trained network's weights, with its model name and options
    result.json      schema_version 1 (kdbench.results)

A finished run (result.json with the same recipe hash) is reported and not run again; an
interrupted one resumes from its newest good checkpoint.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from kdbench import _toml
from kdbench._errors import UserError
from kdbench._registry import METHODS
from kdbench.build import (
    DataBundle,
    build_attack,
    build_data,
    build_network,
    build_source,
    build_student_and_method,
    check_label_spaces,
    checkpoint_num_classes,
    load_network_weights,
    network_spec,
    place,
)
from kdbench.engine.checkpoint import CheckpointStore, atomic_write_bytes
from kdbench.engine.distributed import Distributed, setup_distributed
from kdbench.engine.hardware import Hardware, resolve_hardware
from kdbench.engine.progress import Progress, make_progress, run_log
from kdbench.engine.trainer import Trainer, freeze
from kdbench.locations import RUNS_DIR_ENV, default_runs_dir, remember_runs_dir
from kdbench.models.base import Network, NetworkSpec
from kdbench.recipe import ResolvedRecipe, check_files
from kdbench.results import SCHEMA_VERSION, environment, eps_label, read_result, write_json

__all__ = ["RUNS_DIR_ENV", "RunOutcome", "default_out_dir", "run_recipe", "status"]


@dataclass
class RunOutcome:
    out_dir: Path
    result: dict[str, Any]
    reused: bool


def default_out_dir(resolved: ResolvedRecipe, runs_dir: Path | None = None) -> Path:
    """``<runs dir>/<name>/<hash10>``; the runs dir is `kdbench.locations.default_runs_dir`."""
    return default_runs_dir(runs_dir) / resolved.recipe.name / resolved.short_hash


def run_recipe(
    resolved: ResolvedRecipe,
    out_dir: Path | None = None,
    *,
    runs_dir: Path | None = None,
    progress: Progress | None = None,
) -> RunOutcome:
    """Train and evaluate ``resolved`` into ``out_dir`` (reusing a finished result)."""
    out = out_dir or default_out_dir(resolved, runs_dir)
    progress = progress or make_progress()
    done = _finished(resolved, out)
    if done is not None:
        progress.message(f"{resolved.recipe.name}: already finished in {out} (hash {resolved.short_hash})")
        return RunOutcome(out, done, reused=True)
    out.mkdir(parents=True, exist_ok=True)
    if out_dir is None:
        remember_runs_dir(default_runs_dir(runs_dir))
    ddp = setup_distributed(resolved.recipe.train.device)
    if not ddp.is_main:  # rank 0 owns the folder; the others train beside it and write nothing
        return RunOutcome(out, _execute(resolved, out, runs_dir, progress, ddp), reused=False)
    with _lock(out):
        _claim(resolved, out)
        result = _execute(resolved, out, runs_dir, progress, ddp)
    return RunOutcome(out, result, reused=False)


def status(resolved: ResolvedRecipe, out: Path) -> str:
    """``done`` (result present), ``partial`` (checkpoints, no result) or ``new``."""
    if _finished(resolved, out) is not None:
        return "done"
    if CheckpointStore(out / "checkpoints").positions():
        return "partial"
    return "new"


def _finished(resolved: ResolvedRecipe, out: Path) -> dict[str, Any] | None:
    result = read_result(out / "result.json")
    if result is not None and result.get("recipe_hash") == resolved.hash and (out / "model.pt").is_file():
        return result
    return None


def _claim(resolved: ResolvedRecipe, out: Path) -> None:
    """Write recipe.toml, refusing a folder that holds another recipe's run."""
    recipe_file = out / "recipe.toml"
    header = f"resolved recipe {resolved.recipe.name}, hash {resolved.hash}"
    if recipe_file.is_file():
        first = recipe_file.read_text().splitlines()[:1]
        if first and resolved.hash not in first[0]:
            raise UserError(
                f"{out} holds a run of another recipe ({first[0].lstrip('# ')}); "
                "choose another --out or delete that folder"
            )
        return
    source = f"from {resolved.file}" + (f" with --set {' '.join(resolved.overrides)}" if resolved.overrides else "")
    atomic_write_bytes(recipe_file, _toml.dumps(resolved.to_dict(), header=f"{header}\n{source}").encode())


@contextlib.contextmanager
def _lock(out: Path) -> Iterator[None]:
    """One process per run folder (a second `kdbench run` of the same recipe fails fast)."""
    with open(out / ".lock", "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"{out} is being written by another kdbench process") from None
        yield


def _teacher(resolved: ResolvedRecipe, runs_dir: Path | None, progress: Progress, student_classes: int) -> Network:
    """The frozen teacher: from teacher.checkpoint, or from the teacher recipe's run (run first if needed)."""
    r = resolved.recipe
    assert r.teacher is not None
    assert resolved.teacher_config is not None
    if resolved.teacher_recipe is not None:
        sub = resolved.teacher_recipe
        info = build_source(sub).info()
        check_label_spaces(resolved, info.num_classes, student_classes)  # before spending time on the teacher
        progress.message(f"teacher: recipe {os.path.normpath(sub.file)} (hash {sub.short_hash})")
        outcome = run_recipe(sub, runs_dir=runs_dir, progress=progress)
        setup_distributed(sub.recipe.train.device).barrier()  # rank 0 has written model.pt
        weights = outcome.out_dir / "model.pt"
        model_name = sub.recipe.student.model
    else:
        assert r.teacher.checkpoint is not None
        assert r.teacher.model is not None
        check_files(resolved)  # the message names teacher.checkpoint and the resolved path
        weights = resolved.relative(r.teacher.checkpoint)
        info = build_source(resolved).info()
        model_name = r.teacher.model
    classes = checkpoint_num_classes(weights) or (info.num_classes if resolved.teacher_recipe else student_classes)
    check_label_spaces(resolved, classes, student_classes)
    teacher = build_network(model_name, resolved.teacher_config, network_spec(info, classes))
    load_network_weights(teacher, weights)
    freeze(teacher)
    return teacher


def _execute(
    resolved: ResolvedRecipe, out: Path, runs_dir: Path | None, progress: Progress, ddp: Distributed
) -> dict[str, Any]:
    """Train and evaluate; returns result.json's content ({} on processes other than rank 0)."""
    r = resolved.recipe
    hw = resolve_hardware(
        r.train.device, r.train.precision, r.train.channels_last, r.train.deterministic, ddp.local_rank
    )
    torch.manual_seed(r.seed)  # model initialisation
    if ddp.enabled and not METHODS.get(r.method.name).supports_data_parallel:
        raise UserError(
            f"method {r.method.name!r} keeps per-sample memory that is not synchronised across processes; "
            "run it in one process (without torchrun)"
        )
    data = build_data(resolved, hw, ddp.rank, ddp.world_size)
    spec = network_spec(data.info)
    teacher = _teacher(resolved, runs_dir, progress, spec.num_classes) if r.teacher is not None else None
    close_log = _nothing
    if ddp.is_main:  # from here on this run's lines also go to its train.log (the teacher's went to its own)
        progress, close_log = run_log(progress, out, tensorboard=bool(getattr(progress, "tensorboard", False)))
    progress.message(
        f"{r.name}: {r.method.name} | student {r.student.model} | {r.data.dataset} "
        f"({data.train_size} train images) | {hw.describe()}, {hw.precision} -> {out}"
    )
    try:
        return _train_and_evaluate(resolved, out, progress, ddp, hw, data, spec, teacher)
    finally:
        close_log()


def _nothing() -> None:
    pass


def _train_and_evaluate(
    resolved: ResolvedRecipe,
    out: Path,
    progress: Progress,
    ddp: Distributed,
    hw: Hardware,
    data: DataBundle,
    spec: NetworkSpec,
    teacher: Network | None,
) -> dict[str, Any]:
    r = resolved.recipe
    student, method = build_student_and_method(resolved, spec, teacher, data.train_size, hw.device)
    student = place(student, hw)
    if teacher is not None:
        teacher = place(teacher, hw)
    ddp.broadcast_module(student)
    ddp.broadcast_module(method)
    if r.train.compile:
        _compile(student, r.train.compile_mode)
        if teacher is not None:
            _compile(teacher, r.train.compile_mode)
    trainer = Trainer(
        student=student,
        method=method,
        teacher=teacher,
        attack=build_attack(resolved),
        loader=data.train,
        train=r.train,
        hardware=hw,
        seed=r.seed,
        store=CheckpointStore(out / "checkpoints"),
        metrics_path=out / "metrics.jsonl",
        progress=progress,
        distributed=ddp,
        method_name=r.method.name,
        run_key=resolved.hash,
    )
    summary = trainer.fit()
    if not ddp.is_main:
        return {}
    _save_model(out / "model.pt", student, resolved, spec.num_classes)

    report = _evaluate(student, data, resolved, hw.device, progress)
    result = {
        "schema_version": SCHEMA_VERSION,
        "name": r.name,
        "recipe_hash": resolved.hash,
        "method": r.method.name,
        "teacher": (resolved.to_dict()["teacher"]["model"] if r.teacher is not None else None),
        "student": r.student.model,
        "dataset": r.data.dataset,
        "threat_model": {"norm": "Linf" if r.eval.norm == "linf" else "L2", "eps": eps_label(r.eval.eps)},
        "metrics": report["metrics"],
        "flags": report["flags"],
        "train": {
            "epochs": summary.epochs,
            "seconds": round(summary.seconds, 3),
            "images_per_second": round(summary.images_per_second, 2),
            "train_size": data.train_size,
            "final": summary.history[-1] if summary.history else {},
        },
        "params": {"student": _count(student), "teacher": _count(teacher) if teacher is not None else None},
        "env": environment(
            hw.describe(),
            {
                "models": [r.student.model] + ([resolved.to_dict()["teacher"]["model"]] if r.teacher else []),
                "datasets": [r.data.dataset],
                "attacks": [r.attack.name],
                "methods": [r.method.name],
            },
        ),
        "precision": hw.precision,
        "world_size": ddp.world_size,
        "deterministic": r.train.deterministic,
        "seed": r.seed,
    }
    write_json(out / "result.json", result)
    progress.message(f"{r.name}: result in {out / 'result.json'}")
    return result


def _compile(net: Network, mode: str) -> None:
    """torch.compile the pass the engine and the attacks call, keeping the module (and its state_dict keys).

    ``mode="reduce-overhead"`` records CUDA graphs: every training batch has the same shape (the loader
    drops the short last batch), so the attack's repeated passes replay one graph.
    """
    net.forward_all = torch.compile(net.forward_all, mode=mode)  # type: ignore[method-assign]


def _count(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def _save_model(path: Path, net: Network, resolved: ResolvedRecipe, num_classes: int) -> None:
    """The trained weights with what is needed to rebuild the network (safe to load weights_only)."""
    import io

    payload = {
        "format": 1,
        "model": resolved.recipe.student.model,
        "options": resolved.student_config.model_dump(mode="json"),
        "num_classes": num_classes,
        "recipe_hash": resolved.hash,
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()},
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def _evaluate(
    net: Network, data: Any, resolved: ResolvedRecipe, device: torch.device, progress: Progress
) -> dict[str, Any]:
    r = resolved.recipe
    from kdbench.evaluation import evaluate

    progress.message(f"{r.name}: evaluating {', '.join(r.eval.attacks)} on {len(data.test_labels)} test images")
    net = net.to(memory_format=torch.contiguous_format)
    report = evaluate(
        net,
        data.test_images,
        data.test_labels,
        r.eval.attacks,
        eps=r.eval.eps,
        norm=r.eval.norm,
        batch_size=r.eval.batch_size,
        device=device,
        seed=r.seed,
        on_progress=progress.message,
    )
    for flag in report.flags:
        print(f"kdbench: flag: {flag}", file=sys.stderr)
    return {"metrics": report.to_dict(), "flags": list(report.flags)}

"""Run a recipe end to end: teacher, training, evaluation, result files.

Output folder (default ``runs/<name>/<short hash>/``): a `kdbench.run_folder.RunFolder`, which owns
its files (recipe.toml, metrics.jsonl, checkpoints/, model.pt, result.json: `kdbench.results.Result`).

A finished run (result.json with the same recipe hash) is reported and not run again; an
interrupted one resumes from its newest good checkpoint.

This module puts a run together and writes its result; the parts live beside it: the teachers
(`kdbench.teachers`), the evaluation on the run's examples (`kdbench.run_evaluation`), the teacher's own
numbers (`kdbench.teacher_eval`) and the trained weights' files (`kdbench.trained_model`).
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch

from kdbench._errors import UserError
from kdbench.build import (
    DataBundle,
    build_attack,
    build_data,
    build_student_and_method,
    network_spec,
    place,
    student_normalization,
)
from kdbench.engine.compile import compile_network
from kdbench.engine.cost import cost_record, reset_peak_memory
from kdbench.engine.distributed import Distributed, setup_distributed
from kdbench.engine.fingerprint import tensor_digests
from kdbench.engine.hardware import Hardware, resolve_hardware
from kdbench.engine.progress import Progress, make_progress, run_log
from kdbench.engine.trainer import Trainer
from kdbench.evaluation.progress_store import progress_store_for
from kdbench.evaluation.sharding import join_evaluation
from kdbench.locations import RUNS_DIR_ENV, default_runs_dir, remember_runs_dir
from kdbench.models.base import Network, NetworkSpec
from kdbench.models.normalization import Normalization
from kdbench.recipe import ResolvedRecipe
from kdbench.results import SCHEMA_VERSION, Result, environment, eps_label
from kdbench.run_evaluation import evaluate_network, validator
from kdbench.run_folder import RunFolder, RunStatus
from kdbench.teacher_eval import TEACHER_EVAL_DIR, teacher_record
from kdbench.teachers import BuiltTeacher, build_extra_teacher, build_teacher
from kdbench.trained_model import best_on_validation, model_payload

__all__ = ["RUNS_DIR_ENV", "RunOutcome", "default_out_dir", "run_recipe", "status"]


@dataclass
class RunOutcome:
    """Where a run is and its result (None on data-parallel processes other than rank 0)."""

    out_dir: Path
    result: Result | None
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
    folder = RunFolder(out_dir or default_out_dir(resolved, runs_dir))
    progress = progress or make_progress()
    done = folder.finished(resolved.hash)
    if done is not None:
        progress.message(f"{resolved.recipe.name}: already finished in {folder.path} (hash {resolved.short_hash})")
        return RunOutcome(folder.path, done, reused=True)
    folder.path.mkdir(parents=True, exist_ok=True)
    if out_dir is None:
        remember_runs_dir(default_runs_dir(runs_dir))
    ddp = setup_distributed(resolved.recipe.train.device)
    if not ddp.is_main:  # rank 0 owns the folder; the others train beside it and write nothing
        return RunOutcome(folder.path, _execute(resolved, folder, runs_dir, progress, ddp), reused=False)
    with folder.lock():
        # Again under the lock: another process may have finished this run since the check above.
        done = folder.finished(resolved.hash)
        if done is not None:
            progress.message(
                f"{resolved.recipe.name}: finished meanwhile in {folder.path} (hash {resolved.short_hash})"
            )
            return RunOutcome(folder.path, done, reused=True)
        folder.claim(resolved, runs_dir)
        result = _execute(resolved, folder, runs_dir, progress, ddp)
    return RunOutcome(folder.path, result, reused=False)


def status(resolved: ResolvedRecipe, out: Path) -> RunStatus:
    """``done`` (result present), ``partial`` (checkpoints, no result) or ``new``."""
    return RunFolder(out).status(resolved.hash)


def _train_teacher(sub: ResolvedRecipe, runs_dir: Path | None, progress: Progress) -> Path:
    """Run a teacher recipe (or find its finished run); its run folder."""
    outcome = run_recipe(sub, runs_dir=runs_dir, progress=progress)
    setup_distributed(sub.recipe.train.device).barrier()  # rank 0 has written model.pt
    return outcome.out_dir


def _execute(
    resolved: ResolvedRecipe, folder: RunFolder, runs_dir: Path | None, progress: Progress, ddp: Distributed
) -> Result | None:
    """Train and evaluate; returns the result (None on processes other than rank 0)."""
    r = resolved.recipe
    hw = resolve_hardware(
        r.train.device, r.train.precision, r.train.channels_last, r.train.deterministic, ddp.local_rank
    )
    torch.manual_seed(r.seed)  # model initialisation
    if ddp.enabled and not resolved.method_class.supports_data_parallel:
        raise UserError(
            f"method {r.method.name!r} keeps state that is not synchronised across processes "
            "(supports_data_parallel = False); run it in one process (without torchrun)"
        )
    data = build_data(resolved, hw, ddp.rank, ddp.world_size)
    normalization = student_normalization(resolved, data.info)
    spec = network_spec(data.info, normalization=normalization)
    train_teacher = partial(_train_teacher, runs_dir=runs_dir, progress=progress)
    built = (
        build_teacher(resolved, spec.num_classes, train_teacher, progress.message) if r.teacher is not None else None
    )
    extra_teachers = {
        name: place(build_extra_teacher(resolved, name, data.info, train_teacher, progress.message), hw)
        for name in r.teachers
    }
    close_log = _nothing
    if ddp.is_main:  # from here on this run's lines also go to its train.log (the teacher's went to its own)
        progress, close_log = run_log(progress, folder.path, tensorboard=bool(getattr(progress, "tensorboard", False)))
    progress.message(
        f"{r.name}: {r.method.name} | student {r.student.model} | {r.data.dataset} "
        f"({data.train_size} train images) | {hw.describe()}, {hw.precision} -> {folder.path}"
    )
    teacher_evals = default_runs_dir(runs_dir) / TEACHER_EVAL_DIR
    try:
        return _train_and_evaluate(
            resolved, folder, progress, ddp, hw, data, spec, built, extra_teachers, normalization, teacher_evals
        )
    finally:
        close_log()


def _nothing() -> None:
    pass


def _train_and_evaluate(
    resolved: ResolvedRecipe,
    folder: RunFolder,
    progress: Progress,
    ddp: Distributed,
    hw: Hardware,
    data: DataBundle,
    spec: NetworkSpec,
    built: BuiltTeacher | None,
    extra_teachers: dict[str, Network],
    normalization: Normalization,
    teacher_evals: Path,
) -> Result | None:
    r = resolved.recipe
    teacher = built.network if built is not None else None
    student, method = build_student_and_method(
        resolved, spec, teacher, data.train_size, hw.device, extra_teachers=extra_teachers
    )
    student = place(student, hw)
    if teacher is not None:
        teacher = place(teacher, hw)
    ddp.broadcast_module(student)
    ddp.broadcast_module(method)
    if r.train.compile:
        for net in [student, teacher, *extra_teachers.values()]:
            if net is not None:
                compile_network(net, r.train.compile_mode)
    trainer = Trainer(
        student=student,
        method=method,
        teacher=teacher,
        attack=build_attack(resolved),
        loader=data.train,
        train=r.train,
        hardware=hw,
        seed=r.seed,
        store=folder.checkpoints(owner=_checkpoint_owner(resolved)),
        metrics_path=folder.metrics_file,
        progress=progress,
        distributed=ddp,
        method_name=r.method.name,
        teachers=extra_teachers,
        attack_schedule=r.attack.schedule(),
        run_key=resolved.hash,
        validator=validator(data, resolved, hw.device) if data.val_images is not None else None,
        val_every=r.train.val_every,
    )
    reset_peak_memory(hw.device)
    summary = trainer.fit()
    ddp.broadcast_module(student)  # every process evaluates rank 0's weights and BatchNorm statistics (model.pt's)
    if not ddp.is_main:
        if join_evaluation(ddp):  # rank 0 evaluates (no evaluation kept by an earlier attempt): take a share
            evaluate_network(student, data, resolved, hw.device, progress, world=ddp)
        return None
    folder.write_model(model_payload(student, resolved, spec.num_classes, normalization))

    weights_digest = _weights_digest(student)
    pending = folder.pending_evaluation(resolved.hash, weights_digest)
    join_evaluation(ddp, pending is None)
    tic = time.perf_counter()
    store = progress_store_for(folder.result_file)
    if pending is None:
        pending = evaluate_network(student, data, resolved, hw.device, progress, world=ddp, store=store)
    report = pending
    eval_seconds = time.perf_counter() - tic
    selection = best_on_validation(
        trainer.best,
        student,
        data,
        resolved,
        progress,
        folder,
        spec,
        normalization,
        lambda net: evaluate_network(net, data, resolved, hw.device, progress),
    )
    teacher_numbers: dict[str, Any] | None = None
    teacher_eval_seconds = 0.0
    if built is not None:
        tic = time.perf_counter()
        teacher_numbers = teacher_record(
            built,
            data,
            resolved,
            progress,
            teacher_evals,
            lambda net, seed: evaluate_network(net, data, resolved, hw.device, progress, seed=seed),
        )
        teacher_eval_seconds = time.perf_counter() - tic
    record = {
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
        **report.get("record", {}),  # absent from an evaluation kept by an older kdbench
        "train": {
            "epochs": summary.epochs,
            "seconds": round(summary.seconds, 3),
            "images_per_second": round(summary.images_per_second, 2),
            "train_size": data.train_size,
            "final": summary.history[-1] if summary.history else {},
        },
        "params": {"student": _count(student), "teacher": _count(teacher) if teacher is not None else None},
        "env": _environment(resolved, hw.describe()),
        "normalize": {
            "student": normalization.model_dump(mode="json"),
            "teacher": (
                built.normalization.model_dump(mode="json")
                if built is not None and built.normalization is not None
                else None
            ),
        },
        "teacher_source": teacher_numbers["identity"] if teacher_numbers else None,
        "teacher_metrics": teacher_numbers["metrics"] if teacher_numbers else None,
        "teacher_flags": teacher_numbers["flags"] if teacher_numbers else None,
        **selection,
        "cost": cost_record(
            device=hw.device,
            world_size=ddp.world_size,
            train_seconds=summary.seconds,
            train_images=summary.images_per_second * summary.seconds,
            eval_seconds=eval_seconds + float(selection.get("validation", {}).get("test_eval_seconds", 0.0)),
            val_seconds=trainer.val_seconds,
            teacher_eval_seconds=teacher_eval_seconds,
        ),
        "precision": hw.precision,
        "world_size": ddp.world_size,
        "deterministic": r.train.deterministic,
        "seed": r.seed,
    }
    result = Result.parse(record)  # the writer checks its own output against the contract
    folder.write_result(result, evaluation=report, weights_digest=weights_digest)
    store.clear()  # result.json holds the evaluation now
    progress.message(f"{r.name}: result in {folder.result_file}")
    return result


def _environment(resolved: ResolvedRecipe, device: str) -> dict[str, Any]:
    """result.json's ``env``; a zoo teacher adds the robustbench version instead of a registered model."""
    r = resolved.recipe
    zoo = r.teacher is not None and r.teacher.zoo_name is not None
    teacher_models = [resolved.to_dict()["teacher"]["model"]] if r.teacher is not None and not zoo else []
    names = {
        "models": [r.student.model, *teacher_models],
        "datasets": [r.data.dataset],
        "attacks": [r.attack.name],
        "methods": [r.method.name],
    }
    env = environment(device, names)
    if zoo:
        from importlib.metadata import version

        env["plugins"]["robustbench"] = version("robustbench")
    return env


def _weights_digest(net: torch.nn.Module) -> str:
    """One sha256 over the network's tensors: ties a kept evaluation to the exact weights it measured."""
    return hashlib.sha256("".join(tensor_digests(net).values()).encode()).hexdigest()


def _count(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def _checkpoint_owner(resolved: ResolvedRecipe) -> dict[str, str]:
    """What a training checkpoint of this run records, so that one copied from another run is refused."""
    return {"recipe_hash": resolved.hash, "model": resolved.recipe.student.model}

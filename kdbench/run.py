"""Run a recipe end to end: teacher, training, evaluation, result files.

Output folder (default ``runs/<name>/<short hash>/``): a `kdbench.run_folder.RunFolder`, which owns
its files (recipe.toml, metrics.jsonl, checkpoints/, model.pt, result.json: `kdbench.results.Result`).

A finished run (result.json with the same recipe hash) is reported and not run again; an
interrupted one resumes from its newest good checkpoint.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from kdbench._errors import RecipeError, UserError
from kdbench.build import (
    DataBundle,
    build_attack,
    build_data,
    build_network,
    build_source,
    build_student_and_method,
    checkpoint_num_classes,
    load_network_weights,
    network_spec,
    place,
    student_normalization,
)
from kdbench.data.base import DatasetInfo
from kdbench.engine.compile import compile_network
from kdbench.engine.cost import cost_record, reset_peak_memory
from kdbench.engine.distributed import Distributed, setup_distributed
from kdbench.engine.fingerprint import tensor_digests
from kdbench.engine.hardware import Hardware, resolve_hardware
from kdbench.engine.progress import Progress, make_progress, run_log
from kdbench.engine.trainer import Trainer, freeze
from kdbench.evaluation.progress_store import EvalProgressStore, progress_store_for
from kdbench.evaluation.sharding import join_evaluation
from kdbench.locations import RUNS_DIR_ENV, default_runs_dir, remember_runs_dir
from kdbench.models.base import Network, NetworkSpec
from kdbench.models.normalization import Normalization, check_recorded, recorded_normalization, resolve_normalization
from kdbench.models.zoo import default_model_dir, load_zoo_teacher
from kdbench.recipe import ResolvedRecipe
from kdbench.results import SCHEMA_VERSION, Result, environment, eps_label
from kdbench.run_folder import RunFolder, RunStatus
from kdbench.teachers import TEACHER_EVAL_DIR, BuiltTeacher, build_teacher, cached_teacher_eval, load_network_metadata

__all__ = ["RUNS_DIR_ENV", "RunOutcome", "default_out_dir", "run_recipe", "status"]

#: Seed of the attacks' random starts when the teacher is evaluated (whatever the student's seed).
TEACHER_EVAL_SEED = 0


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


def _extra_teacher(
    resolved: ResolvedRecipe, name: str, runs_dir: Path | None, progress: Progress, student: DatasetInfo
) -> Network:
    """The additional teacher ``[teachers.<name>]``, frozen; refused when its classes or input size differ.

    It sees the student's batches, so its input size must be the student's; its label space must be the
    student's whenever the method reads teacher logits (`Method.teacher_logit_readers`). Like the main
    teacher it may be a RobustBench zoo model, and it normalises as ``normalize`` (else its recipe's
    student, else the dataset) says; a kdbench model.pt that records another normalisation is refused.
    """
    section = resolved.recipe.teachers[name]
    key = f"teachers.{name}"
    if section.zoo_name is not None:
        zoo = load_zoo_teacher(
            section.zoo_name,
            dataset=resolved.recipe.data.dataset,
            norm=resolved.recipe.eval.norm,
            model_dir=resolved.relative(section.model_dir) if section.model_dir else default_model_dir(),
            download=section.download,
            image_size=student.image_size,
            file=resolved.file,
        )
        _check_extra_teacher_fits(resolved, key, "model", zoo.network.num_classes, student.image_size, student)
        progress.message(
            f"teacher {name!r}: RobustBench {zoo.name} ({zoo.dataset}, {zoo.threat_model}) from {zoo.path}"
        )
        freeze(zoo.network)
        return zoo.network
    sub = resolved.extra_teacher_recipes.get(name)
    setting = section.normalize
    if sub is not None:
        info = build_source(sub).info()
        _check_extra_teacher_fits(resolved, key, "recipe", info.num_classes, info.image_size, student)
        progress.message(f"teacher {name!r}: recipe {os.path.normpath(sub.file)} (hash {sub.short_hash})")
        outcome = run_recipe(sub, runs_dir=runs_dir, progress=progress)
        setup_distributed(sub.recipe.train.device).barrier()
        weights, model_name = outcome.out_dir / "model.pt", sub.recipe.student.model
        if setting is None:
            setting = sub.recipe.student.normalize
    else:
        assert section.checkpoint is not None and section.model is not None
        info = student
        weights, model_name = resolved.relative(section.checkpoint), section.model
    normalization = resolve_normalization(setting, tuple(info.mean), tuple(info.std))
    file = weights / "model.pt" if weights.is_dir() else weights
    meta = load_network_metadata(file)
    check_recorded(
        recorded_normalization(meta, tuple(info.mean), tuple(info.std)),
        normalization,
        file=resolved.file,
        key=f"{key}.normalize",
        what=f"the weights of teacher {name!r} {weights}",
    )
    classes = checkpoint_num_classes(weights) or info.num_classes
    _check_extra_teacher_fits(resolved, key, "model", classes, info.image_size, student)
    spec = network_spec(info, classes, normalization)
    teacher = build_network(model_name, resolved.extra_teacher_configs[name], spec)
    load_network_weights(teacher, weights, what=f"teacher {name!r}")
    freeze(teacher)
    return teacher


def _check_extra_teacher_fits(
    resolved: ResolvedRecipe, key: str, field: str, classes: int, image_size: int, student: DatasetInfo
) -> None:
    readers = resolved.method_class.teacher_logit_readers(resolved.method_config)
    if readers and classes != student.num_classes:
        raise RecipeError(
            f"method {resolved.recipe.method.name!r} compares this teacher's logits with the student's "
            f"({', '.join(readers)}), but it has {classes} classes and the student {student.num_classes}",
            file=resolved.file,
            key=f"{key}.{field}",
            hint="use a teacher of the student's dataset",
        )
    if image_size != student.image_size:
        raise RecipeError(
            f"this teacher takes {image_size}-pixel inputs but the student's images are {student.image_size} pixels",
            file=resolved.file,
            key=f"{key}.{field}",
            hint="use a teacher trained on images of the student's size",
        )


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
    built = (
        build_teacher(resolved, spec.num_classes, lambda sub: _train_teacher(sub, runs_dir, progress), progress.message)
        if r.teacher is not None
        else None
    )
    extra_teachers = {
        name: place(_extra_teacher(resolved, name, runs_dir, progress, data.info), hw) for name in r.teachers
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
        validator=_validator(data, resolved, hw.device) if data.val_images is not None else None,
        val_every=r.train.val_every,
    )
    reset_peak_memory(hw.device)
    summary = trainer.fit()
    ddp.broadcast_module(student)  # every process evaluates rank 0's weights and BatchNorm statistics (model.pt's)
    if not ddp.is_main:
        if join_evaluation(ddp):  # rank 0 evaluates (no evaluation kept by an earlier attempt): take a share
            _evaluate(student, data, resolved, hw.device, progress, world=ddp)
        return None
    folder.write_model(_model_payload(student, resolved, spec.num_classes, normalization))

    weights_digest = _weights_digest(student)
    pending = folder.pending_evaluation(resolved.hash, weights_digest)
    join_evaluation(ddp, pending is None)
    tic = time.perf_counter()
    store = progress_store_for(folder.result_file)
    if pending is None:
        pending = _evaluate(student, data, resolved, hw.device, progress, world=ddp, store=store)
    report = pending
    eval_seconds = time.perf_counter() - tic
    selection = _best_on_validation(trainer, student, data, resolved, hw.device, progress, folder, spec, normalization)
    teacher_record: dict[str, Any] | None = None
    teacher_eval_seconds = 0.0
    if built is not None:
        tic = time.perf_counter()
        teacher_record = _teacher_record(built, data, resolved, hw.device, progress, teacher_evals)
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
        "teacher_source": teacher_record["identity"] if teacher_record else None,
        "teacher_metrics": teacher_record["metrics"] if teacher_record else None,
        "teacher_flags": teacher_record["flags"] if teacher_record else None,
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


def _validator(data: Any, resolved: ResolvedRecipe, device: torch.device) -> Any:
    """The cheap robust check on the held-out training images (``train.val_attack``, PGD-10 by default):
    ``{"score": robust accuracy, "clean_acc", <attack>}``. Never touches the test set."""
    r = resolved.recipe
    from kdbench.evaluation import evaluate

    attack = r.train.val_attack

    def check(net: Network) -> dict[str, float]:
        net = net.to(memory_format=torch.contiguous_format)
        report = evaluate(
            net,
            data.val_images,
            data.val_labels,
            ["clean"] if attack == "clean" else ["clean", attack],
            eps=r.eval.eps,
            norm=r.eval.norm,
            batch_size=r.eval.batch_size,
            device=device,
            seed=r.seed,
            sanity=False,
        )
        metrics = report.to_dict()
        robust = metrics["clean_acc"] if attack == "clean" else metrics["robust"][attack]
        return {"score": float(robust), "clean_acc": float(metrics["clean_acc"]), attack: float(robust)}

    return check


def _best_on_validation(
    trainer: Trainer,
    student: Network,
    data: Any,
    resolved: ResolvedRecipe,
    device: torch.device,
    progress: Progress,
    folder: RunFolder,
    spec: NetworkSpec,
    normalization: Normalization,
) -> dict[str, Any]:
    """With data.val_size: the best-on-validation weights, saved as model_best_val.pt and evaluated on the
    test set with the full suite (result.json ``validation`` and ``metrics_best_val``). The selection used
    only the held-out training images."""
    r = resolved.recipe
    if data.val_images is None or trainer.best is None:
        return {}
    best = trainer.best
    indices = data.val_indices.to(torch.int64).contiguous().numpy().tobytes()
    record: dict[str, Any] = {
        "size": len(data.val_labels),
        "seed": r.seed,
        "stratified": True,
        "indices_sha256": hashlib.sha256(indices).hexdigest(),
        "attack": r.train.val_attack,
        "every": r.train.val_every,
        "best_epoch": int(best["epoch"]),
        "best_score": float(best["score"]),
        "best_metrics": best["metrics"],
        "ranked": "final",
    }
    if best["epoch"] == r.train.epochs:  # the final model is the best one: nothing more to evaluate
        record["best_is_final"] = True
        return {"validation": record, "metrics_best_val": None}
    final_state = {k: v.detach().clone() for k, v in student.state_dict().items()}
    student.load_state_dict(best["student"])
    folder.write_model(
        _model_payload(student, resolved, spec.num_classes, normalization, extra={"epoch": best["epoch"]}),
        best_val=True,
    )
    tic = time.perf_counter()
    progress.message(f"{r.name}: best-on-validation model (epoch {best['epoch']}) on the test set")
    report = _evaluate(student, data, resolved, device, progress)
    record["test_eval_seconds"] = round(time.perf_counter() - tic, 3)
    record["best_is_final"] = False
    student.load_state_dict(final_state)
    return {"validation": record, "metrics_best_val": report["metrics"], "flags_best_val": report["flags"]}


def _teacher_record(
    built: BuiltTeacher, data: Any, resolved: ResolvedRecipe, device: torch.device, progress: Progress, cache_dir: Path
) -> dict[str, Any]:
    """The teacher's identity and its own numbers, measured by `_evaluate` (the student's evaluation, on the
    same examples), cached per teacher in ``cache_dir`` (``<runs dir>/.teacher-evals/``, wherever --out puts
    the student)."""
    r = resolved.recipe
    identity = built.identity
    record: dict[str, Any] = {"identity": identity.to_dict(), "metrics": None, "flags": []}
    if not r.eval.teacher:
        return record
    classes = data.info.num_classes
    if getattr(built.network, "num_classes", classes) != classes:
        # A teacher from another label space (feature transfer, e.g. CRD from CIFAR-100 to CIFAR-10) has no
        # accuracy on these labels: say so instead of evaluating it.
        record["flags"] = [
            f"teacher not evaluated: it predicts {built.network.num_classes} classes, the dataset has {classes}"
        ]
        return record
    # A fixed attack seed: the teacher's numbers belong to the teacher, so a seed sweep of students shares them.
    settings: dict[str, Any] = {
        "attacks": list(r.eval.attacks),
        "eps": r.eval.eps,
        "norm": r.eval.norm,
        "seed": TEACHER_EVAL_SEED,
    }
    if r.eval.step_size is not None:  # a pinned step changes the numbers (absent: earlier cache entries hold)
        settings["step_size"] = r.eval.step_size
    if r.eval.chunk_size:  # chunks seed the attacks apart (absent at 0: earlier cache entries hold)
        settings["chunk_size"] = r.eval.chunk_size

    def run() -> dict[str, Any]:
        progress.message(f"{r.name}: evaluating the teacher ({identity.key}) once; later runs reuse it")
        return _evaluate(built.network, data, resolved, device, progress, seed=TEACHER_EVAL_SEED)

    report, cached = cached_teacher_eval(identity, settings, data.test_images, data.test_labels, cache_dir, run)
    record["metrics"], record["flags"] = report["metrics"], report["flags"]
    record["identity"]["metrics_cached"] = cached
    return record


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


def _model_payload(
    net: Network,
    resolved: ResolvedRecipe,
    num_classes: int,
    normalization: Normalization,
    state: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> bytes:
    """model.pt's bytes: the trained weights with what is needed to rebuild the network (safe to load
    weights_only), including the input normalisation it was trained with."""
    import io

    weights = state if state is not None else net.state_dict()
    payload = {
        "format": 1,
        "model": resolved.recipe.student.model,
        "options": resolved.student_config.model_dump(mode="json"),
        "num_classes": num_classes,
        "normalize": normalization.model_dump(mode="json"),
        "recipe_hash": resolved.hash,
        **(extra or {}),
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in weights.items()},
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return buffer.getvalue()


def _checkpoint_owner(resolved: ResolvedRecipe) -> dict[str, str]:
    """What a training checkpoint of this run records, so that one copied from another run is refused."""
    return {"recipe_hash": resolved.hash, "model": resolved.recipe.student.model}


def _evaluate(
    net: Network,
    data: Any,
    resolved: ResolvedRecipe,
    device: torch.device,
    progress: Progress,
    seed: int | None = None,
    world: Distributed | None = None,
    store: EvalProgressStore | None = None,
) -> dict[str, Any]:
    """The evaluation suite on the run's evaluation examples: the one place that chooses them, used for the
    student, its best-on-validation weights and the teacher alike. ``world``: shared by the processes
    of a data-parallel run (each calls it); ``store``: resumable per chunk (docs/distributed.md)."""
    r = resolved.recipe
    from kdbench.evaluation import evaluate
    from kdbench.evaluation.record import evaluation_record, selection_flags

    main = world is None or world.is_main
    if main:
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
        seed=r.seed if seed is None else seed,
        step_size=r.eval.step_size,
        on_progress=progress.message,
        chunk_size=r.eval.chunk_size,
        world=world,
        store=store,
    )
    report.flags += selection_flags(data.selection)
    for flag in report.flags if main else []:
        print(f"kdbench: flag: {flag}", file=sys.stderr)
    record = evaluation_record(report, data.selection, r.eval.step_size)
    return {"metrics": report.to_dict(), "flags": [str(f) for f in report.flags], "record": record}

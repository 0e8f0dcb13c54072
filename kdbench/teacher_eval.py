"""The teacher's own numbers: its evaluation on the student's test examples, cached per teacher.

result.json's ``teacher_metrics`` and ``teacher_flags`` come from here. A teacher is evaluated with the
student's evaluation suite, on the same examples, but with a fixed attack seed (`TEACHER_EVAL_SEED`): its
numbers belong to the teacher, so a seed sweep of students shares them. The cache key is the teacher's
identity (`kdbench.teachers.TeacherIdentity.key`), a fingerprint of the exact evaluation tensors and the
evaluation settings that change the numbers; a later run with the same key reads the cached record.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import Tensor

from kdbench.build import DataBundle
from kdbench.engine.checkpoint import atomic_write_bytes
from kdbench.engine.progress import Progress
from kdbench.models.base import Network
from kdbench.recipe import ResolvedRecipe
from kdbench.teachers import BuiltTeacher, TeacherIdentity

__all__ = ["TEACHER_EVAL_DIR", "TEACHER_EVAL_SEED", "cached_teacher_eval", "examples_fingerprint", "teacher_record"]

#: Seed of the attacks' random starts when the teacher is evaluated (whatever the student's seed).
TEACHER_EVAL_SEED = 0

#: Cached teacher evaluations live in ``<runs dir>/.teacher-evals/`` (one file per teacher and examples).
TEACHER_EVAL_DIR = ".teacher-evals"


def examples_fingerprint(images: Tensor, labels: Tensor) -> str:
    """sha256 over the exact evaluation tensors, so "the same examples" is checked, not assumed."""
    digest = hashlib.sha256()
    for t in (images, labels):
        t = t.detach().cpu().contiguous()
        digest.update(str((tuple(t.shape), str(t.dtype))).encode())
        digest.update(t.numpy().tobytes())
    return digest.hexdigest()


def cached_teacher_eval(
    identity: TeacherIdentity,
    settings: dict[str, Any],
    images: Tensor,
    labels: Tensor,
    cache_dir: Path,
    evaluate: Callable[[], dict[str, Any]],
) -> tuple[dict[str, Any], bool]:
    """The teacher's ``{"metrics", "flags"}`` on ``images``/``labels`` under the evaluation ``settings``,
    from the cache when this teacher was evaluated on these examples before, else from ``evaluate()``
    (then cached). Returns (record, whether it came from the cache)."""
    key_data = {"teacher": identity.key, "examples": examples_fingerprint(images, labels), **settings}
    key = hashlib.sha256(json.dumps(key_data, sort_keys=True).encode()).hexdigest()
    path = cache_dir / f"{identity.key.replace(':', '_').replace('@', '_')}-{key[:16]}.json"
    try:
        cached = json.loads(path.read_text())
        if cached.get("key") == key and isinstance(cached.get("metrics"), dict):
            return {"metrics": cached["metrics"], "flags": list(cached.get("flags", []))}, True
    except (OSError, ValueError):
        pass
    record = evaluate()
    payload = {"key": key, **key_data, "identity": identity.to_dict(), **record}
    atomic_write_bytes(path, (json.dumps(payload, indent=2) + "\n").encode())
    return record, False


def teacher_record(
    built: BuiltTeacher,
    data: DataBundle,
    resolved: ResolvedRecipe,
    progress: Progress,
    cache_dir: Path,
    evaluate: Callable[[Network, int], dict[str, Any]],
) -> dict[str, Any]:
    """The teacher's identity and its own numbers, cached per teacher in ``cache_dir`` (``<runs
    dir>/.teacher-evals/``, wherever --out puts the student): ``{"identity", "metrics", "flags"}``.

    ``evaluate(network, seed)`` is the student's evaluation (`kdbench.run_evaluation.evaluate_network`, on
    the same examples); it is called with `TEACHER_EVAL_SEED` only when the cache has no record."""
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
        return evaluate(built.network, TEACHER_EVAL_SEED)

    report, cached = cached_teacher_eval(identity, settings, data.test_images, data.test_labels, cache_dir, run)
    record["metrics"], record["flags"] = report["metrics"], report["flags"]
    record["identity"]["metrics_cached"] = cached
    return record

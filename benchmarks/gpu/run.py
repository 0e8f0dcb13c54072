"""One prepared, time-boxed GPU session: the CUDA test tier, the speed figures, a short real comparison.

    python3 benchmarks/gpu/run.py [--out DIR] [--budget SECONDS] [--cpu] [--dry-run] [--only A,B] [--skip A,B]

(``bash benchmarks/gpu/run.sh`` is the same, with ``--out $OUT``.) The stages run in this order, each in its
own process under its own time limit, and everything is written as it goes, so a call cut short still
returns what was done:

1. ``preflight``: Python, torch, CUDA and the GPU; the packages kdbench needs (pydantic and pyautoattack are
   not on the GPU machine: ``bash ../shared/tools/gpu-site.sh`` puts them in .gpu-site/); the data; then it
   decodes CIFAR-10 once into the decode cache that every later stage reads.
2. ``tests``: the CUDA test tier, ``pytest -m gpu tests/gpu`` (target: under 3 minutes on an H200).
3. ``bench_*``: ``kdbench bench`` figures: RSLAD ResNet-18 <- ResNet-18, RSLAD MobileNetV2 <- ResNet-18 and
   PGD-AT ResNet-18 (each against the conventional loop, ``--baseline``), then PGD-20 and standard AutoAttack
   on 10,000 test images of a ResNet-18 (``--eval-only``; random weights, so a lower bound).
4. ``compare_*``: with the time left, a few-epoch PGD-AT ResNet-18 teacher (benchmarks/gpu/compare_teacher.toml)
   and kd, rslad and gacd students (benchmarks/gpu/compare.toml), evaluated with clean, PGD-20 and AutoAttack
   on the same 1,000 selected test images (eval.n_examples); then AutoAttack on 10,000 images of that trained
   teacher, the figure the AutoAttack target is about.

Every stage gets ``min(its cap, the time left of --budget)`` seconds and is skipped when less than its
minimum is left; a stage that fails or times out is recorded and the next one runs. The output folder
(``--out``, the device tool's $OUT) receives at most these five files, rewritten after every stage:

    summary.json     stages (command, status, seconds, limit), environment, test counts, targets checked
    bench.json       every ``kdbench bench`` report by stage name (each with command, commit, GPU, versions)
    comparison.json  the comparison's result.json metrics by method
    tests.xml        the test tier's JUnit report
    run.log          every stage's output

``--cpu`` runs the same stages on the CPU with tiny sizes (benchmarks/gpu/smoke/, fake data), so the script is
exercised end to end anywhere; ``--dry-run`` runs nothing: it resolves every recipe and parses every command
with kdbench's own parser, then writes the plan as summary.json (the default test suite does this).

The stages and their commands are in gpu_plan.py, the targets' verdicts in gpu_targets.py; this file runs
the stages and writes the output folder.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # the plan and the targets sit beside this script, also when it is loaded by path
    sys.path.insert(0, str(HERE))

from gpu_plan import COMPARE_METHODS, CPU, GPU, ROOT, Stage, plan, run_dir  # noqa: E402
from gpu_targets import TARGETS, check_targets, junit_counts  # noqa: E402

__all__ = [
    "COMPARE_METHODS",
    "CPU",
    "GPU",
    "MAX_OUTPUT_FILES",
    "OUTPUT_FILES",
    "TARGETS",
    "Session",
    "Stage",
    "check_targets",
    "junit_counts",
    "main",
    "plan",
]

#: The device tool returns at most 8 files from $OUT; this script writes these five.
OUTPUT_FILES = ("summary.json", "bench.json", "comparison.json", "tests.xml", "run.log")
MAX_OUTPUT_FILES = 8
SUMMARY_SCHEMA = 1


# ------------------------------------------------------------------------------------------ execution


class Session:
    """Runs the stages against one deadline and keeps the output folder up to date."""

    def __init__(self, stages: list[Stage], out: Path, work: Path, budget: float, profile: str, dry_run: bool):
        self.stages, self.out, self.work = stages, out, work
        self.budget, self.profile, self.dry_run = budget, profile, dry_run
        self.start = time.monotonic()
        self.deadline = self.start + budget
        self.started_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self.bench: dict[str, Any] = {}
        self.comparison: dict[str, Any] = {}
        self.env: dict[str, Any] = {}
        self.log = out / "run.log"

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def say(self, line: str) -> None:
        stamp = f"[{time.monotonic() - self.start:7.1f}s] {line}"
        print(stamp, flush=True)
        with self.log.open("a") as fh:
            fh.write(stamp + "\n")

    def run(self) -> dict[str, Any]:
        self.say(f"kdbench GPU session: profile {self.profile}, budget {self.budget:.0f} s, out {self.out}")
        for stage in self.stages:
            if stage.status == "skipped":
                continue
            if self.dry_run:
                validate(stage)
            else:
                self._execute(stage)
            self.write()
        summary = self.write(final=True)
        self.say(f"done: {', '.join(f'{s.name}={s.status}' for s in self.stages)}")
        return summary

    def _execute(self, stage: Stage) -> None:
        left = self.left()
        if left < stage.min_s:
            stage.status, stage.reason = (
                "skipped",
                f"{left:.0f} s left of the budget, the stage needs {stage.min_s:.0f}",
            )
            self.say(f"{stage.name}: skipped ({stage.reason})")
            return
        blocked = self._blocked_by(stage)
        if blocked:
            stage.status, stage.reason = "skipped", blocked
            self.say(f"{stage.name}: skipped ({blocked})")
            return
        limit = min(stage.cap_s, left)
        stage.limit_s = round(limit, 1)
        self.say(f"{stage.name}: start (limit {limit:.0f} s): {stage.command}")
        tic = time.monotonic()
        stage.rc = run_limited(stage.argv, limit, self.log, env=self._env())
        stage.seconds = round(time.monotonic() - tic, 2)
        if stage.rc is None:
            stage.status, stage.reason = "timeout", f"stopped at its limit of {limit:.0f} s"
        else:
            stage.status = "ok" if stage.rc == 0 else "failed"
        self._collect(stage)
        self.say(f"{stage.name}: {stage.status} in {stage.seconds:.1f} s" + (f" (rc {stage.rc})" if stage.rc else ""))

    def _blocked_by(self, stage: Stage) -> str | None:
        """Why a stage cannot run: the preflight found kdbench unusable, or the teacher it needs is missing."""
        pre = next((s for s in self.stages if s.name == "preflight"), None)
        if pre is not None and pre.status in ("failed", "timeout") and stage.kind != "preflight":
            return "the preflight failed: " + "; ".join(self.env.get("problems", []) or ["see run.log"])
        if (stage.name.startswith("compare_") and stage.name != "compare_teacher") or stage.name.endswith("_trained"):
            teacher = next((s for s in self.stages if s.name == "compare_teacher"), None)
            if teacher is not None and teacher.status != "ok":
                return f"the comparison teacher did not finish ({teacher.status})"
        return None

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.setdefault("KDBENCH_CACHE_DIR", str(self.work / "decode-cache"))  # decoded once, read by every stage
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def _collect(self, stage: Stage) -> None:
        if stage.kind == "preflight":
            found = self.work / "preflight.json"
            if found.is_file():
                self.env = json.loads(found.read_text())
        elif stage.kind == "tests":
            stage.extra["counts"] = junit_counts(self.out / "tests.xml")
        elif stage.kind == "bench" and stage.json_path and Path(stage.json_path).is_file():
            report = json.loads(Path(stage.json_path).read_text())
            if report.get("git_commit") is None:
                report["git_commit"] = commit()
            self.bench[stage.name] = report
        elif stage.kind == "run" and stage.run_recipe:
            result = run_dir(stage.run_recipe, self.work / "runs") / "result.json"
            if result.is_file():
                data = json.loads(result.read_text())
                self.comparison[stage.name.removeprefix("compare_")] = {
                    "command": stage.command,
                    "recipe_hash": data.get("recipe_hash"),
                    "method": data.get("method"),
                    "student": data.get("student"),
                    "teacher": data.get("teacher"),
                    "metrics": data.get("metrics"),
                    "flags": data.get("flags"),
                    "train": data.get("train"),
                    "env": data.get("env"),
                }

    def write(self, final: bool = False) -> dict[str, Any]:
        summary = {
            "schema": SUMMARY_SCHEMA,
            "profile": self.profile,
            "dry_run": self.dry_run,
            "started": self.started_at,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()) if final else None,
            "budget_s": self.budget,
            "elapsed_s": round(time.monotonic() - self.start, 1),
            "git_commit": commit(),
            "environment": self.env,
            "stages": [s.record() for s in self.stages],
            "tests": next((s.extra.get("counts") for s in self.stages if s.kind == "tests"), None),
            "targets": check_targets(self.bench, self.stages, self.profile),
            "outputs": list(OUTPUT_FILES),
        }
        atomic_json(self.out / "summary.json", summary)
        atomic_json(self.out / "bench.json", self.bench)
        atomic_json(self.out / "comparison.json", self.comparison)
        return summary


def run_limited(argv: list[str], limit: float, log: Path, env: dict[str, str]) -> int | None:
    """Run ``argv`` from the repository root, output appended to ``log``; its exit code, or None past ``limit``.

    The command runs in its own process group: at the limit the whole group gets SIGTERM (kdbench run
    checkpoints on it), then SIGKILL 15 s later.
    """
    with log.open("ab") as fh:
        proc = subprocess.Popen(argv, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            return proc.wait(timeout=max(limit, 0.1))
        except subprocess.TimeoutExpired:
            _signal_group(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                _signal_group(proc.pid, signal.SIGKILL)
                proc.wait()
            return None


def _signal_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)


def validate(stage: Stage) -> None:
    """Dry run: parse the stage's kdbench command with kdbench's own parser and resolve its recipe."""
    stage.status = "planned"
    argv = stage.argv
    if argv[1:3] == ["-m", "kdbench"]:
        from kdbench.cli import _parser
        from kdbench.recipe import load_recipes

        args = _parser().parse_args(argv[3:])
        variants = load_recipes(ROOT / args.recipe, args.overrides)
        if len(variants) != 1:
            raise SystemExit(f"{stage.name}: {args.recipe} resolves to {len(variants)} runs, not one")
        stage.extra["recipe_hash"] = variants[0].hash
    elif stage.kind == "tests":
        tests = ROOT / "tests" / "gpu"
        if not list(tests.glob("test_*.py")):
            raise SystemExit(f"{stage.name}: no tests in {tests}")
    elif not Path(argv[1]).is_file():
        raise SystemExit(f"{stage.name}: {argv[1]} not found")


def commit() -> str | None:
    """The commit measured: $KDBENCH_GIT_COMMIT (the GPU machine's copy has no .git), else git's."""
    env = os.environ.get("KDBENCH_GIT_COMMIT")
    if env:
        return env
    try:
        from kdbench.results import git_commit

        return git_commit()
    except ImportError:
        return None


def atomic_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------------------ CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "gpu-out")), help="output folder")
    parser.add_argument("--work", type=Path, help="scratch folder for runs and caches (default: a temporary one)")
    parser.add_argument("--budget", type=float, default=540.0, help="seconds for the whole session (default 540)")
    parser.add_argument("--cpu", action="store_true", help="the same stages on the CPU at tiny sizes")
    parser.add_argument("--dry-run", action="store_true", help="resolve and parse every stage, run nothing")
    parser.add_argument("--only", help="comma-separated stage names to run (others skipped)")
    parser.add_argument("--skip", help="comma-separated stage names not to run")
    args = parser.parse_args(argv)
    if args.budget <= 0:
        parser.error("--budget must be positive")
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    work = (args.work or Path(os.environ.get("TMPDIR", "/tmp")) / f"kdbench-gpu-{os.getpid()}").resolve()
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("KDBENCH_RUNS_DIR", str(work / "runs"))
    profile = CPU if args.cpu else GPU
    stages = plan(profile, work, out)
    names = {s.name for s in stages}
    for flag, value in (("--only", args.only), ("--skip", args.skip)):
        unknown = set((value or "").split(",")) - names - {""}
        if unknown:
            parser.error(f"{flag}: unknown stage(s) {', '.join(sorted(unknown))}; stages: {', '.join(names)}")
    only = set(args.only.split(",")) if args.only else None
    skip = set(args.skip.split(",")) if args.skip else set()
    for stage in stages:
        if (only is not None and stage.name not in only) or stage.name in skip:
            stage.status, stage.reason = "skipped", "not selected (--only / --skip)"
    session = Session(stages, out, work, args.budget, profile.name, args.dry_run)
    summary = session.run()
    extra = sorted(p.name for p in out.iterdir() if p.name not in OUTPUT_FILES)
    if len(list(out.iterdir())) > MAX_OUTPUT_FILES:
        print(
            f"warning: {out} holds more than {MAX_OUTPUT_FILES} files ({extra}); the device tool returns 8",
            file=sys.stderr,
        )
    for row in summary["targets"]:
        print(f"target: {row['name']}: {row['status']} (measured {row['measured']}, target {row['target']})")
    bad = [s.name for s in stages if s.status in ("failed", "timeout")]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

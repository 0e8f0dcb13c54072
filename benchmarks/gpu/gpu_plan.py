"""The GPU session's plan: its stages, in order, with the commands they run, for the GPU or the CPU smoke profile.

Used by benchmarks/gpu/run.py (which runs the stages); see its docstring for what each stage measures.
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
COMPARE_METHODS = ("kd", "rslad", "gacd")


@dataclass
class Stage:
    """One step of the session: a command, its cap and minimum (seconds), and what became of it."""

    name: str
    argv: list[str]
    cap_s: float
    min_s: float
    kind: str  # "preflight" | "tests" | "bench" | "run"
    json_path: str | None = None  # where a bench stage writes its report
    run_recipe: list[str] | None = None  # a "run" stage's recipe and overrides, to find its result.json
    status: str = "pending"  # pending | planned | ok | failed | timeout | skipped
    rc: int | None = None
    seconds: float | None = None
    limit_s: float | None = None
    reason: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def command(self) -> str:
        return shlex.join(self.argv)

    def record(self) -> dict[str, Any]:
        data = asdict(self)
        data["command"] = self.command
        del data["argv"]
        return data


@dataclass(frozen=True)
class Profile:
    """Sizes and recipes of one mode: the GPU session, or the CPU smoke run of the same stages."""

    name: str
    rslad: str
    pgdat: str
    compare_teacher: str
    compare: str
    resnet18: str  # the model name standing in for ResNet-18
    bench_flags: tuple[str, ...]
    eval_n: int
    compare_sets: tuple[str, ...]
    caps: dict[str, tuple[float, float]]  # stage -> (cap, minimum) seconds


GPU = Profile(
    name="gpu",
    rslad="recipes/rslad_cifar10.toml",
    pgdat="recipes/teacher_cifar10_resnet18_pgdat.toml",
    compare_teacher="benchmarks/gpu/compare_teacher.toml",
    compare="benchmarks/gpu/compare.toml",
    resnet18="resnet18",
    bench_flags=(),  # kdbench bench's CUDA defaults: 10 warm-up and 50 timed steps
    eval_n=10_000,
    compare_sets=(),
    caps={
        "preflight": (120, 10),
        "tests": (200, 30),
        "bench": (100, 30),
        "bench_eval": (150, 30),
        "compare_teacher": (150, 40),
        "compare_student": (90, 30),
        "bench_eval_trained": (300, 30),
    },
)
CPU = Profile(
    name="cpu",
    rslad="benchmarks/gpu/smoke/rslad.toml",
    pgdat="benchmarks/gpu/smoke/teacher.toml",
    compare_teacher="benchmarks/gpu/smoke/teacher.toml",
    compare="benchmarks/gpu/compare.toml",
    resnet18="resnet8",
    bench_flags=("--steps", "1", "--warmup", "0", "--workers", "0"),
    eval_n=8,
    compare_sets=(
        "teacher.recipe=smoke/teacher.toml",
        'data.dataset="fake"',
        "data.options={train_size = 64, test_size = 16, image_size = 16}",
        "eval.n_examples=16",
        'student.model="resnet8"',
        "train.epochs=1",
        "train.batch_size=16",
        "attack.steps=1",
        'eval.attacks=["clean", "pgd20"]',
    ),
    # Generous caps: a CPU shared with other work can be ten times slower than an idle one.
    caps={
        "preflight": (300, 5),
        "tests": (300, 10),
        "bench": (300, 10),
        "bench_eval": (300, 10),
        "compare_teacher": (300, 10),
        "compare_student": (300, 10),
        "bench_eval_trained": (300, 10),
    },
)


def kdbench(*args: str) -> list[str]:
    return [sys.executable, "-m", "kdbench", *args]


def plan(profile: Profile, work: Path, out: Path) -> list[Stage]:
    """The stages, in order, with the commands they run."""
    p = profile
    caps = p.caps
    bench_dir = work / "bench"
    runs = work / "runs"

    def bench(name: str, recipe: str, *extra: str, cap: str = "bench") -> Stage:
        path = str(bench_dir / f"{name}.json")
        argv = kdbench("bench", recipe, *extra, *p.bench_flags, "--json", path)
        return Stage(name, argv, *caps[cap], kind="bench", json_path=path)

    no_aa = ("--no-autoattack",) if p.name == "cpu" else ()
    stages = [
        Stage(
            "preflight",
            [sys.executable, str(HERE / "preflight.py"), "--profile", p.name, "--json", str(work / "preflight.json")],
            *caps["preflight"],
            kind="preflight",
        ),
        Stage(
            "tests",
            [
                sys.executable,
                "-m",
                "pytest",
                "tests/gpu",
                "-m",
                "gpu",
                "-q",
                "-p",
                "no:cacheprovider",
                "--junitxml",
                str(out / "tests.xml"),
            ],
            *caps["tests"],
            kind="tests",
        ),
        bench("bench_rslad_resnet18", p.rslad, "--set", f"student.model={p.resnet18}", "--baseline", "--no-eval"),
        bench("bench_rslad_mobilenetv2", p.rslad, "--baseline", "--no-eval"),
        bench("bench_pgdat_resnet18", p.pgdat, "--set", f"student.model={p.resnet18}", "--baseline", "--no-eval"),
        bench(
            "bench_eval_resnet18",
            p.pgdat,
            "--set",
            f"student.model={p.resnet18}",
            "--eval-only",
            "--eval-n",
            str(p.eval_n),
            *no_aa,
            cap="bench_eval",
        ),
    ]
    sets = [a for s in p.compare_sets for a in ("--set", s)]
    teacher_args = [p.compare_teacher]
    stages.append(
        Stage(
            "compare_teacher",
            kdbench("run", *teacher_args, "--runs-dir", str(runs)),
            *caps["compare_teacher"],
            kind="run",
            run_recipe=teacher_args,
        )
    )
    for method in COMPARE_METHODS:
        recipe_args = [p.compare, *sets, "--set", f'method.name="{method}"']
        stages.append(
            Stage(
                f"compare_{method}",
                kdbench("run", *recipe_args, "--runs-dir", str(runs)),
                *caps["compare_student"],
                kind="run",
                run_recipe=recipe_args,
            )
        )
    try:
        teacher_dir = run_dir(teacher_args, runs)
    except ImportError:  # kdbench cannot load (pydantic missing): the preflight says so and blocks every stage
        teacher_dir = runs / "unresolved-teacher"
    stages.append(
        bench(
            "bench_eval_resnet18_trained",
            p.compare_teacher,
            "--eval-only",
            "--eval-n",
            str(p.eval_n),
            *no_aa,
            "--weights",
            str(teacher_dir),
            cap="bench_eval_trained",
        )
    )
    return stages


def run_dir(recipe_args: list[str], runs: Path) -> Path:
    """The output folder ``kdbench run`` gives this recipe (and its --set overrides) under ``runs``."""
    from kdbench.recipe import load_recipes
    from kdbench.run import default_out_dir

    recipe, overrides = recipe_args[0], [recipe_args[i + 1] for i in range(1, len(recipe_args), 2)]
    (resolved,) = load_recipes(ROOT / recipe, overrides)
    return default_out_dir(resolved, runs)

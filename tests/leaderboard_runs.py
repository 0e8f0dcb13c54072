"""Synthetic run folders as `kdbench.run` writes them, and headless Chromium, for the leaderboard tests.

python tests/leaderboard_runs.py docs/leaderboard.png     # redraws the screenshot of the docs
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

from kdbench import _toml
from kdbench.cli import main

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def write_run(
    root: Path,
    name: str,
    *,
    method: str = "kd",
    seed: int = 0,
    clean: float = 0.8,
    robust: dict[str, float | None] | None = None,
    flags: list[str] | None = None,
    teacher: str | None = "resnet18",
    student: str = "resnet8",
    dataset: str = "cifar10",
    eps: str = "8/255",
    options: dict[str, Any] | None = None,
    seconds: float = 120.0,
    analysis: dict[str, Any] | None = None,
    folder: str | None = None,
    device: str = "cpu",
) -> Path:
    """A run folder as `kdbench.run` writes it: recipe.toml (resolved, with its header) and result.json."""
    recipe: dict[str, Any] = {
        "name": name,
        "description": "",
        "seed": seed,
        "data": {"dataset": dataset},
        "student": {"model": student},
        "method": {"name": method, **(options or {})},
        "eval": {"eps": eps},
    }
    if teacher:
        recipe["teacher"] = {"model": teacher, "checkpoint": "/teachers/t.pt"}
    digest = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()
    out = root / name / (folder or digest[:10])
    out.mkdir(parents=True)
    (out / "recipe.toml").write_text(_toml.dumps(recipe, header=f"resolved recipe {name}, hash {digest}\nfrom x"))
    rob = {"fgsm": 0.5, "pgd20": 0.45, "cw": 0.44, "autoattack": 0.42}
    rob.update(robust or {})
    worst = min([clean, *(v for v in rob.values() if v is not None)])
    result = {
        "schema_version": 1,
        "name": name,
        "recipe_hash": digest,
        "method": method,
        "teacher": teacher,
        "student": student,
        "dataset": dataset,
        "threat_model": {"norm": "Linf", "eps": eps},
        "metrics": {"clean_acc": clean, "robust": {**rob, "worst": worst}, "n_eval": 1000},
        "flags": flags or [],
        "train": {"epochs": 10, "seconds": seconds, "images_per_second": 1000.0},
        "params": {"student": 78_042, "teacher": 11_173_962},
        "env": {"torch": "2.x", "device": device},
        "seed": seed,
    }
    if analysis is not None:
        result["analysis"] = analysis
    (out / "result.json").write_text(json.dumps(result, indent=2))
    return out


def demo_runs(root: Path) -> Path:
    """A small sweep: three methods x seeds, one flagged run, one setting without AutoAttack, broken files."""
    runs = root / "runs"
    for seed, (c, aa) in enumerate([(0.81, 0.47), (0.83, 0.49), (0.82, 0.48)]):
        write_run(runs, f"rslad-seed{seed}", method="rslad", seed=seed, clean=c, robust={"autoattack": aa})
    for seed, (c, aa) in enumerate([(0.84, 0.44), (0.86, 0.46)]):
        flags = ["PGD-20 accuracy is above FGSM accuracy: possible gradient masking"] if seed == 1 else []
        write_run(
            runs,
            f"ard-seed{seed}",
            method="ard",
            seed=seed,
            clean=c,
            robust={"autoattack": aa, "pgd20": aa + 0.05, "fgsm": aa + 0.03},
            flags=flags,
        )
    write_run(runs, "kd", method="kd", clean=0.9, robust={"fgsm": 0.2, "pgd20": 0.01, "cw": 0.0, "autoattack": 0.0})
    write_run(runs, "sat", method="pgd_at", teacher=None, clean=0.78, robust={"autoattack": 0.45}, seconds=5000)
    write_run(
        runs, "sat-noaa", method="pgd_at", teacher=None, clean=0.77, robust={"autoattack": None}, options={"x": 1}
    )
    (runs / "broken" / "x").mkdir(parents=True)
    (runs / "broken" / "x" / "result.json").write_text("{not json")
    (runs / "future" / "x").mkdir(parents=True)
    (runs / "future" / "x" / "result.json").write_text(json.dumps({"schema_version": 2, "name": "future"}))
    return runs


def chromium(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    profile = tmp_path / "chromium-profile"
    return subprocess.run(
        [str(CHROMIUM), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


# ------------------------------------------------------------------------------------ docs/leaderboard.png


def docs_demo_runs(root: Path) -> Path:
    """Synthetic runs (made-up, plausible numbers) for the screenshot in docs/leaderboard.png."""
    runs = root / "runs"
    common = {"teacher": "wrn_34_10", "student": "resnet18", "device": "NVIDIA H200"}
    table = {
        "rslad": [(0.831, 0.601, 0.543, 0.526, 0.514), (0.835, 0.604, 0.547, 0.529, 0.518), (0.829, 0.598, 0.540)],
        "ard": [(0.839, 0.596, 0.521, 0.503, 0.492), (0.842, 0.594, 0.524, 0.506, 0.495), (0.836, 0.591, 0.519)],
        "crd": [(0.862, 0.571, 0.488, 0.469, 0.455), (0.858, 0.566, 0.512, 0.471, 0.452)],
        "kd": [(0.925, 0.162, 0.004, 0.003, 0.0)],
    }
    for method, seeds in table.items():
        for seed, row in enumerate(seeds):
            clean, fgsm, pgd20 = row[:3]
            cw, aa = row[3:] if len(row) == 5 else (pgd20 - 0.017, pgd20 - 0.029)
            flags = (
                ["PGD-20 is weaker than PGD-10 on 12 samples: possible gradient masking"]
                if (method, seed)
                == (
                    "crd",
                    1,
                )
                else []
            )
            write_run(
                runs,
                f"{method}-s{seed}",
                method=method,
                seed=seed,
                clean=clean,
                robust={"fgsm": fgsm, "pgd20": pgd20, "cw": cw, "autoattack": aa},
                flags=flags,
                seconds=5400 + 300 * seed,
                **common,
            )
    write_run(
        runs,
        "ard-T10-s0",
        method="ard",
        options={"temperature": 10.0},
        clean=0.846,
        robust={"fgsm": 0.588, "pgd20": 0.515, "cw": 0.497, "autoattack": 0.486},
        seconds=5500,
        **common,
    )
    for method, rows in {
        "pgd_at": [(0.842, 0.563, 0.498, 0.481, 0.472)] * 2,
        "trades": [(0.815, 0.579, 0.528)],
    }.items():
        for seed, (clean, fgsm, pgd20, *rest) in enumerate(rows):
            cw, aa = rest if rest else (None, None)
            write_run(
                runs,
                f"{method}-s{seed}",
                method=method,
                seed=seed,
                clean=clean - 0.004 * seed,
                robust={"fgsm": fgsm, "pgd20": pgd20 + 0.003 * seed, "cw": cw, "autoattack": aa},
                teacher=None,
                student="resnet18",
                seconds=4100,
                device="NVIDIA H200",
            )
    return runs


if __name__ == "__main__":  # python tests/leaderboard_runs.py docs/leaderboard.png
    import os
    import sys
    import tempfile

    target = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/leaderboard.png").resolve()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        docs_demo_runs(work)
        os.chdir(work)  # the page names its source folder as given: "runs"
        title = "kdbench leaderboard (synthetic example)"
        main(["leaderboard", "runs", "--out", "leaderboard.html", "--title", title])
        shot = ["--window-size=1280,1700", "--hide-scrollbars", f"--screenshot={target}"]
        proc = chromium([*shot, (work / "leaderboard.html").as_uri()], work)
        print(proc.returncode, target)

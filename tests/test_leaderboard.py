"""`kdbench leaderboard`: collecting result.json files, seed aggregation, ranking, every output format, and
the HTML page rendered in headless Chromium."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import shutil
import statistics
import subprocess
from pathlib import Path
from typing import Any

import pytest

from kdbench import _toml
from kdbench.cli import main
from kdbench.leaderboard import build_boards, collect
from kdbench.leaderboard.formats import render_markdown, render_table
from kdbench.leaderboard.render import choose_columns

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


# ------------------------------------------------------------------------------------ collect / group


def test_collect_skips_bad_files_with_one_line_each(tmp_path, capsys):
    runs = demo_runs(tmp_path)
    collection = collect([runs])
    assert len(collection.runs) == 8
    reasons = {s.path.parent.parent.name: s.reason for s in collection.skipped}
    assert reasons["broken"].startswith("not valid JSON")
    assert reasons["future"].startswith("schema_version 2")
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2
    assert all(line.startswith("kdbench: skipped ") for line in err)


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda r: r.pop("metrics"), "metrics is missing"),
        (lambda r: r["metrics"].update(clean_acc=1.7), "metrics.clean_acc"),
        (lambda r: r["metrics"]["robust"].update(pgd20="high"), "metrics.robust.pgd20"),
        (lambda r: r.update(flags="oops"), "flags is not a list"),
        (lambda r: r.pop("dataset"), "dataset is missing"),
        (lambda r: r.update(schema_version=None), "schema_version None"),
        (lambda r: r.update(analysis=[1]), "analysis is not an object"),
        (lambda r: r["threat_model"].pop("eps"), "threat_model.eps is missing"),
    ],
)
def test_collect_reports_each_kind_of_broken_result(tmp_path, mutate, reason):
    run = write_run(tmp_path, "a")
    data = json.loads((run / "result.json").read_text())
    mutate(data)
    (run / "result.json").write_text(json.dumps(data))
    lines: list[str] = []
    collection = collect([tmp_path], report=lines.append)
    assert collection.runs == []
    assert reason in collection.skipped[0].reason
    assert len(lines) == 1


@pytest.mark.parametrize(("content", "reason"), [(b"\xff\xfe{", "unreadable"), (b"[1, 2]", "not a JSON object")])
def test_collect_survives_undecodable_and_non_object_files(tmp_path, content, reason):
    write_run(tmp_path, "good")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "result.json").write_bytes(content)
    (tmp_path / "folder" / "result.json").mkdir(parents=True)  # a folder named result.json is not a result
    collection = collect([tmp_path], report=None)
    assert len(collection.runs) == 1
    assert [s.reason.split(" (")[0] for s in collection.skipped] == [reason]


def test_rich_table_lists_every_variant(tmp_path):
    boards = build_boards(collect([demo_runs(tmp_path)], report=None).runs)
    text = render_table(boards, choose_columns(boards), rich=True, terminal=False)
    for label in ("sat-noaa", "rslad", "ard", "kd", "48.00 ± 1.00", "AutoAttack % ▼"):
        assert label in text


def test_missing_directory_is_a_user_error(tmp_path, capsys):
    assert main(["leaderboard", str(tmp_path / "nope")]) == 2
    assert "not found" in capsys.readouterr().err


def test_seeds_are_averaged_and_variants_ranked(tmp_path):
    boards = build_boards(collect([demo_runs(tmp_path)], report=None).runs)
    assert [b.setting.teacher for b in boards] == [None, "resnet18"]
    distill = boards[1]
    assert distill.ranked_by == "autoattack"
    assert [v.label for v in distill.variants] == ["rslad", "ard", "kd"]  # seed suffixes stripped
    rslad = distill.variants[0]
    assert rslad.seeds == [0, 1, 2]
    assert rslad.metrics["autoattack"].mean == pytest.approx(0.48)
    assert rslad.metrics["autoattack"].std == pytest.approx(statistics.stdev([0.47, 0.49, 0.48]))
    assert rslad.metrics["clean"].mean == pytest.approx(0.82)
    ard = distill.variants[1]
    assert ard.flag_texts == ["PGD-20 accuracy is above FGSM accuracy: possible gradient masking"]
    assert ard.flags[0][0] == 1
    kd = distill.variants[2]
    assert kd.metrics["autoattack"].std is None  # one seed: no std
    assert kd.params == 78_042


def test_variants_without_autoattack_follow_unranked_in_a_marked_section(tmp_path):
    boards = build_boards(collect([demo_runs(tmp_path)], report=None).runs)
    sat = boards[0]
    assert sat.ranked_by == "autoattack"  # a few rows without AutoAttack no longer switch the whole board
    assert [(v.label, v.rank, v.unranked) for v in sat.variants] == [("sat", 1, False), ("sat-noaa", 2, True)]
    assert "they follow the ranked ones, marked † and unranked, ordered by PGD-20" in sat.note
    md = render_markdown(boards, choose_columns(boards, fmt="md"))
    assert "AutoAttack % ▼" in md
    assert "| † | sat-noaa |" in md and "| 1 | sat |" in md


def test_pgd20_ranks_a_setting_where_no_variant_has_autoattack(tmp_path):
    runs = tmp_path / "runs"
    write_run(runs, "a", method="pgd_at", teacher=None, clean=0.8, robust={"autoattack": None, "pgd20": 0.4})
    write_run(runs, "b", method="trades", teacher=None, clean=0.7, robust={"autoattack": None, "pgd20": 0.5})
    (board,) = build_boards(collect([runs], report=None).runs)
    assert board.ranked_by == "pgd20" and [v.label for v in board.variants] == ["b", "a"]
    assert "ranked by PGD-20" in board.note


def test_same_name_different_hash_shows_what_differs(tmp_path):
    runs = tmp_path / "runs"
    write_run(runs, "kd_cifar10", method="kd", options={"temperature": 4.0}, clean=0.8)
    write_run(runs, "kd_cifar10", method="kd", options={"temperature": 2.0}, clean=0.7)
    (board,) = build_boards(collect([runs], report=None).runs)
    assert sorted(v.label for v in board.variants) == [
        "kd_cifar10 [method.temperature=2.0]",
        "kd_cifar10 [method.temperature=4.0]",
    ]


def test_teacher_accuracy_architecture_and_paper_columns(tmp_path):
    runs = demo_runs(tmp_path)
    result_file = next((runs / "kd").glob("*/result.json"))
    data = json.loads(result_file.read_text())
    data["teacher_metrics"] = {"clean_acc": 0.9123}
    result_file.write_text(json.dumps(data))
    boards = build_boards(collect([runs], report=None).runs)
    columns = choose_columns(boards, fmt="md")
    assert columns[6:9] == ["teacher_acc", "arch", "paper"]
    md = render_markdown(boards, columns)
    kd_row = next(line for line in md.splitlines() if line.startswith("| ") and "| kd |" in line)
    assert "91.23" in kd_row and "resnet8" in kd_row and "https://arxiv.org/abs/1503.02531" in kd_row
    rslad_row = next(line for line in md.splitlines() if "| rslad |" in line)
    assert "https://arxiv.org/abs/2108.07969" in rslad_row  # teacher accuracy blank: not recorded
    assert "teacher_acc" in choose_columns(boards)  # the terminal table shows it once a run records it


@pytest.mark.parametrize(
    ("names", "label"),
    [
        (["paper-kd-0", "paper-kd-1"], "paper-kd"),  # kdbench's [sweep] names: <name>-<value>-<value>
        (["paper-0-kd", "paper-1-kd"], "paper-kd"),
        (["kd_seed0", "kd_seed1"], "kd"),
        (["kd-a-0", "kd-b-1"], "kd"),  # not only the seed differs: the common prefix
    ],
)
def test_variant_labels_drop_the_seed(tmp_path, names, label):
    for seed, name in enumerate(names):
        write_run(tmp_path, name, seed=seed)
    (board,) = build_boards(collect([tmp_path], report=None).runs)
    assert [v.label for v in board.variants] == [label]


def test_variants_differing_in_an_option_are_not_averaged(tmp_path):
    write_run(tmp_path, "kd-a", options={"temperature": 4.0}, seed=0)
    write_run(tmp_path, "kd-a", options={"temperature": 4.0}, seed=1)
    write_run(tmp_path, "kd-b", options={"temperature": 8.0}, seed=0)
    (board,) = build_boards(collect([tmp_path], report=None).runs)
    assert sorted(len(v.runs) for v in board.variants) == [1, 2]


def test_same_recipe_under_two_names_with_one_seed_is_not_averaged(tmp_path):
    write_run(tmp_path, "kd-first", seed=0, clean=0.8)
    write_run(tmp_path, "kd-again", seed=0, clean=0.7)
    (board,) = build_boards(collect([tmp_path], report=None).runs)
    assert sorted(v.label for v in board.variants) == ["kd-again", "kd-first"]
    assert [len(v.runs) for v in board.variants] == [1, 1]


def test_duplicate_copies_of_a_run_count_once(tmp_path):
    run = write_run(tmp_path / "a", "kd")
    shutil.copytree(run, tmp_path / "b" / "copy")
    collection = collect([tmp_path], report=None)
    assert len(collection.runs) == 1
    assert "duplicate" in collection.skipped[0].reason


def test_without_recipe_toml_a_run_is_its_own_variant(tmp_path):
    for seed in (0, 1):
        (write_run(tmp_path, f"kd-seed{seed}", seed=seed) / "recipe.toml").unlink()
    (board,) = build_boards(collect([tmp_path], report=None).runs)
    assert len(board.variants) == 2


def test_sort_option_changes_the_ranking(tmp_path, capsys):
    runs = demo_runs(tmp_path)
    assert main(["leaderboard", str(runs), "--format", "json", "--sort", "clean"]) == 0
    data = json.loads(capsys.readouterr().out)
    distill = data["boards"][1]
    assert distill["ranked_by"] == "clean"
    assert [v["label"] for v in distill["variants"]] == ["kd", "ard", "rslad"]


# ------------------------------------------------------------------------------------ formats


def test_table_markdown_csv_json(tmp_path, capsys):
    runs = demo_runs(tmp_path)
    assert main(["leaderboard", str(runs)]) == 0
    captured = capsys.readouterr()
    table = captured.out
    assert "cifar10 · Linf eps 8/255 · teacher resnet18 · student resnet8" in table
    assert "AutoAttack % ▼" in table
    assert "48.00 ± 1.00" in table  # rslad's AutoAttack over 3 seeds
    assert captured.err.count("kdbench: skipped") == 2

    assert main(["leaderboard", str(runs), "--format", "md"]) == 0
    md = capsys.readouterr().out
    assert "| 1 | rslad | rslad | 82.00 ± 1.00 |" in md
    assert "- **ard** (seed 1): PGD-20 accuracy is above FGSM accuracy" in md

    out = tmp_path / "lb.csv"
    assert main(["leaderboard", str(runs), "--out", str(out)]) == 0
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert len(rows) == 5
    first = next(r for r in rows if r["variant"] == "rslad")
    assert float(first["autoattack_mean"]) == pytest.approx(0.48)
    assert first["n_seeds"] == "3"
    assert first["seeds"] == "0;1;2"

    assert main(["leaderboard", str(runs), "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["kind"] == "kdbench-leaderboard"
    assert len(data["skipped"]) == 2
    rslad = data["boards"][1]["variants"][0]
    assert rslad["metrics"]["autoattack"]["values"] == [0.47, 0.49, 0.48]
    assert all(run["variant_from"] == "recipe.toml" for run in rslad["runs"])


def test_columns_option_and_analysis_columns(tmp_path, capsys):
    analysis = {"cka_clean": 0.8, "cka_adv": 0.6, "class_corr_distance": 0.05, "feature_change": 0.3}
    write_run(tmp_path, "kd", analysis=analysis)
    write_run(tmp_path, "ard", method="ard")
    assert main(["leaderboard", str(tmp_path), "--format", "md"]) == 0
    md = capsys.readouterr().out
    assert "| CKA | CKA adv | corr. dist. | feat. change |" in md
    assert "| 0.800 | 0.600 | 0.050 | 0.300 |" in md
    assert main(["leaderboard", str(tmp_path), "--format", "md", "--columns", "clean,autoattack"]) == 0
    md = capsys.readouterr().out
    assert "| # | variant | method | Clean % | AutoAttack % ▼ |" in md
    assert main(["leaderboard", str(tmp_path), "--columns", "clean,autoatack"]) == 2
    assert "did you mean 'autoattack'" in capsys.readouterr().err


def test_empty_folder_says_so(tmp_path, capsys):
    assert main(["leaderboard", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert "no results" in captured.out
    assert "no usable result.json" in captured.err


# ------------------------------------------------------------------------------------ HTML


def test_html_is_self_contained(tmp_path):
    runs = demo_runs(tmp_path)
    out = tmp_path / "site" / "index.html"
    assert main(["leaderboard", str(runs), "--out", str(out)]) == 0
    page = out.read_text()
    # no CDN, no fetches: the only URLs are the paper links a reader may follow
    assert not re.search(
        r"https?://",
        re.sub(
            r'<a href="https://arxiv\.org/abs/[0-9.]+">',
            "",
            re.sub(r'data-v="https://arxiv\.org/abs/[0-9.]+"', "", page),
        ),
    )
    assert not re.search(r"<(script|link|img)[^>]+(src|href)=", page)
    assert page.count("<svg") == 4  # scatter + bars per setting
    assert page.count('<tr class="flagged"') == 1
    href = re.search(r'<a href="([^"]+)">s0</a>', page).group(1)
    assert (out.parent / href).resolve() == next((runs / "rslad-seed0").iterdir()) / "recipe.toml"
    assert "2 result files skipped" in page


def _chromium(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    profile = tmp_path / "chromium-profile"
    return subprocess.run(
        [str(CHROMIUM), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium not found (Debian: apt-get install -y chromium)")
def test_html_renders_in_headless_chromium(tmp_path):
    runs = demo_runs(tmp_path)
    out = tmp_path / "leaderboard.html"
    assert main(["leaderboard", str(runs), "--out", str(out)]) == 0

    proc = _chromium(["--dump-dom", out.as_uri()], tmp_path)
    dom = proc.stdout
    assert 'data-ready="1"' in dom, proc.stderr[-2000:]  # the inline script ran
    tables = re.findall(r"<tbody>(.*?)</tbody>", dom, re.S)
    assert [t.count("<tr") for t in tables] == [2, 3]
    assert dom.count("<svg") == 4
    assert len(re.findall(r'<g class="point', dom)) == 4  # sat-noaa has no AutoAttack number to plot
    assert 'title="no AutoAttack: not ranked (ordered by PGD-20)">†</td>' in dom  # the marked section
    assert '<a href="https://arxiv.org/abs/1706.06083">1706.06083</a>' in dom  # the paper column
    assert len(re.findall(r'<g class="point flagged"', dom)) == 1
    assert dom.count('<rect class="bar"') == 6 + 5 + 3 * 6  # one bar per variant and metric evaluated
    order = re.findall(r'<tr[^>]*data-variant="([^"]+)"', tables[1])
    assert order == ["rslad", "ard", "kd"]

    # the sort script works in a real browser: sort the distillation table by clean accuracy, best first
    proc = _chromium(["--dump-dom", out.as_uri() + "#sort=1:clean:desc"], tmp_path)
    tables = re.findall(r"<tbody>(.*?)</tbody>", proc.stdout, re.S)
    assert re.findall(r'<tr[^>]*data-variant="([^"]+)"', tables[1]) == ["kd", "ard", "rslad"]
    assert 'data-key="clean" data-type="num" data-first="desc" class="num" aria-sort="descending"' in proc.stdout

    shot = tmp_path / "shot.png"
    proc = _chromium(["--window-size=1280,1400", "--hide-scrollbars", f"--screenshot={shot}", out.as_uri()], tmp_path)
    assert shot.is_file(), proc.stderr[-2000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert shot.stat().st_size > 20_000


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


if __name__ == "__main__":  # python tests/test_leaderboard.py docs/leaderboard.png
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
        proc = _chromium([*shot, (work / "leaderboard.html").as_uri()], work)
        print(proc.returncode, target)

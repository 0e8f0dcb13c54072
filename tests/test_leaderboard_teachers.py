"""Leaderboard: grouping by teacher identity with the teacher's row on top, the cost column, ranking the
best-on-validation model, and published reference rows kept apart from measured ones."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kdbench._errors import UserError
from kdbench.cli import main
from kdbench.leaderboard import build_boards, collect
from kdbench.leaderboard.formats import render_table
from kdbench.leaderboard.published import load_published
from kdbench.leaderboard.render import choose_columns

from .conftest import REPO, write
from .leaderboard_runs import write_run


def _extend(run: Path, **extra) -> None:
    path = run / "result.json"
    result = json.loads(path.read_text())
    result.update(extra)
    path.write_text(json.dumps(result))


def _teacher(key: str, clean: float, aa: float) -> dict:
    return {
        "teacher_source": {"source": "checkpoint", "key": key, "model": "resnet18", "sha256": key * 8},
        "teacher_metrics": {"clean_acc": clean, "robust": {"pgd20": aa + 0.02, "autoattack": aa}, "n_eval": 1000},
    }


def test_students_of_different_teacher_weights_are_different_settings(tmp_path):
    runs = tmp_path / "runs"
    _extend(write_run(runs, "kd-a", method="kd"), **_teacher("sha256:aaaa", 0.84, 0.50))
    _extend(write_run(runs, "rslad-a", method="rslad"), **_teacher("sha256:aaaa", 0.84, 0.50))
    _extend(write_run(runs, "kd-b", method="kd"), **_teacher("sha256:bbbb", 0.70, 0.30))
    boards = build_boards(collect([runs]).runs)
    assert [b.setting.teacher_id for b in boards] == ["sha256:aaaa", "sha256:bbbb"]
    first = boards[0]
    assert first.teacher_row is not None and first.teacher_row.mean("clean") == 0.84
    assert len(first.variants) == 2
    text = render_table(boards, choose_columns(boards))
    block = text.split("sha256:bbbb")[0]  # the first board
    lines = [line for line in block.splitlines() if line.strip()]
    teacher_line = next(i for i, line in enumerate(lines) if line.lstrip().startswith("T "))
    student_lines = [i for i, line in enumerate(lines) if line.lstrip()[:2] in ("1 ", "2 ")]
    assert teacher_line < min(student_lines)  # the teacher's row above its students
    assert "84.00" in lines[teacher_line] and "(teacher)" in lines[teacher_line]
    assert "[sha256:aaaa]" in block
    from kdbench.leaderboard.html import render_html

    page = render_html(boards, choose_columns(boards), out_file=None, skipped=[], sources=[runs], page_title="t")
    assert page.index('class="teacher"') < page.index('id="table-0"') and "Clean % 84.00" in page


def test_cost_column_and_best_on_validation_ranking(tmp_path):
    runs = tmp_path / "runs"
    cost = {"total_device_seconds": 7200.0, "device": "NVIDIA H200"}
    a = write_run(runs, "kd", method="kd", clean=0.80, robust={"autoattack": 0.40})
    b = write_run(runs, "ard", method="ard", clean=0.80, robust={"autoattack": 0.45})
    best = {"clean_acc": 0.82, "robust": {"autoattack": 0.50, "pgd20": 0.52}, "n_eval": 1000}
    _extend(a, cost=cost, metrics_best_val=best, validation={"best_epoch": 5, "best_is_final": False})
    _extend(b, cost=cost, metrics_best_val=None, validation={"best_epoch": 10, "best_is_final": True})
    final = build_boards(collect([runs]).runs)[0]
    assert [v.label for v in final.variants] == ["ard", "kd"]
    chosen = build_boards(collect([runs]).runs, select="best_val")[0]
    assert [v.label for v in chosen.variants] == ["kd", "ard"]  # kd's best-on-validation model is better
    text = render_table([chosen], choose_columns([chosen]))
    assert "best-on-validation model" in text and "2.0 h NVIDIA H200" in text
    assert "final model" in render_table([final], choose_columns([final]))


def test_published_rows_are_shown_apart_and_marked(tmp_path, capsys):
    runs = tmp_path / "runs"
    write_run(runs, "kd", method="kd", student="wrn_34_10", teacher=None)
    shipped = REPO / "benchmarks" / "published.toml"
    assert main(["leaderboard", str(runs), "--published", str(shipped)]) == 0
    out = capsys.readouterr().out
    measured, _, published = out.partition("published, not measured by kdbench")
    assert "kd" in measured and "published" not in measured.replace("published,", "")
    assert "published  trades" in published and "84.92" in published and "53.08" in published
    assert main(["leaderboard", str(runs), "--published", str(shipped), "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert all(row["kind"] == "published" for row in data["published"])
    rows = load_published(shipped)
    assert rows and all(r.sources for r in rows)


def test_published_rows_need_a_source_for_every_number(tmp_path):
    bad = write(
        tmp_path / "p.toml", '[[result]]\nmethod = "x"\nstudent = "s"\ndataset = "cifar10"\nclean = 0.5\nsources = {}\n'
    )
    with pytest.raises(UserError, match=r"result\[0\]: no source for clean"):
        load_published(bad)
    with pytest.raises(UserError, match="not found"):
        load_published(tmp_path / "missing.toml")

"""Progress during a run: live loss/acc, time-based lines in logs, elapsed/images/s/ETA, train.log,
TensorBoard scalars, and the teacher's accuracy and total time at the end (issue 18, points 2 and 7)."""

from __future__ import annotations

import io
import re

import pytest

from kdbench.cli import main
from kdbench.engine.progress import PlainProgress, RunClock
from kdbench.recipe import load_recipe
from kdbench.run import run_recipe
from kdbench.testing import tiny_recipe

from .conftest import write

TEACHER = tiny_recipe("prog_teacher", seed=None, train_size=96, epochs=2, train_extra="log_every = 1000")

STUDENT = tiny_recipe(
    "prog_student", seed=None, method="kd", train_size=96, teacher='[teacher]\nrecipe = "teacher.toml"'
)


def test_clock_reports_elapsed_rate_and_etas(monkeypatch):
    now = [100.0]
    monkeypatch.setattr("kdbench.engine.progress.time.perf_counter", lambda: now[0])
    clock = RunClock(plan={"h": (40.0, 60.0)})  # estimated: 40 s training, then 60 s of evaluation and more
    clock.begin_run("h", total_steps=100, done_steps=0, images_per_step=32)
    assert clock.describe() == "0:00:00 elapsed"
    now[0] += 20.0
    clock.advance(25)  # a quarter in 20 s: 40 img/s, 60 s to go; estimated 10 s for that quarter -> 2x slower
    assert clock.images_per_second() == pytest.approx(40.0)
    assert clock.run_eta() == pytest.approx(60.0)
    assert clock.total_eta() == pytest.approx(60.0 + 2 * 60.0)
    assert clock.describe() == "0:00:20 elapsed, 40 img/s, ETA 0:01:00 (all: 0:03:00)"


def test_resumed_run_measures_its_rate_from_the_resume():
    clock = RunClock()
    clock.begin_run("x", total_steps=10, done_steps=6, images_per_step=8)
    assert clock.run_eta() is None and clock.images_per_second() is None  # nothing timed yet
    clock.advance(1)
    assert clock.run_eta() is not None and clock.total_eta() is None  # no plan: no whole-run ETA


def test_log_lines_appear_by_time_with_live_accuracy_and_go_to_train_log(tmp_path):
    recipe = write(tmp_path / "teacher.toml", TEACHER)
    stream = io.StringIO()
    progress = PlainProgress(stream)
    progress.sync_seconds = 0.0  # every step is "30 s later": a line per step although log_every = 1000
    outcome = run_recipe(load_recipe(recipe), tmp_path / "out", progress=progress)
    lines = [line for line in stream.getvalue().splitlines() if " step " in line]
    assert len(lines) == 2 * 3  # 96 images / 32 per step = 3 steps, 2 epochs
    pattern = r"epoch \d/2 step \d/3  ce \S+  acc \S+  \| \d:\d\d:\d\d elapsed, \d+ img/s, ETA \d:\d\d:\d\d"
    assert all(re.fullmatch(pattern, line) for line in lines), lines
    log = (outcome.out_dir / "train.log").read_text().splitlines()
    stripped = [line[20:] for line in log]  # "YYYY-MM-DD HH:MM:SS " prefix
    assert all(re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d ", line) for line in log)
    assert next(s for s in stripped if " step " in s).split("|")[0] == lines[0].split("|")[0]
    assert any(s.startswith("epoch 2/2 done  loss ") for s in stripped)
    assert any(s.startswith("prog_teacher: result in ") for s in stripped)


def test_run_prints_teacher_accuracy_and_total_time(tmp_path, capsys):
    write(tmp_path / "teacher.toml", TEACHER)
    student = write(tmp_path / "student.toml", STUDENT)
    assert main(["run", str(student), "--runs-dir", str(tmp_path / "runs")]) == 0
    out = capsys.readouterr().out.splitlines()
    teacher = load_recipe(student).teacher_recipe
    teacher_line = next(line for line in out if line.startswith("teacher prog_teacher: clean "))
    assert teacher_line.endswith(f"(n=32; {tmp_path / 'runs' / 'prog_teacher' / teacher.short_hash})")
    assert out[-1].startswith("total time: ") and out[-1].endswith(" s")
    assert any(line.startswith("estimated total: ~") for line in out)  # printed before training


def test_tensorboard_scalars_come_from_the_same_metrics(tmp_path, capsys):
    pytest.importorskip("tensorboard", reason="the optional 'tensorboard' extra is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    recipe = write(tmp_path / "teacher.toml", TEACHER)
    assert main(["run", str(recipe), "--out", str(tmp_path / "out"), "--tensorboard", "--quiet"]) == 0
    events = EventAccumulator(str(tmp_path / "out" / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"epoch/loss", "epoch/train_acc", "epoch/lr"} <= tags
    rows = [line for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines() if line]
    import json

    losses = [json.loads(r)["loss"] for r in rows]
    assert [e.value for e in events.Scalars("epoch/loss")] == pytest.approx(losses, rel=1e-6)


def test_tensorboard_missing_is_one_clear_line(tmp_path, capsys, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name.startswith("torch.utils.tensorboard"):
            raise ImportError("No module named 'tensorboard'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    recipe = write(tmp_path / "teacher.toml", TEACHER)
    assert main(["run", str(recipe), "--out", str(tmp_path / "out"), "--tensorboard", "--quiet"]) == 2
    assert "pip install 'kdbench[tensorboard]'" in capsys.readouterr().err

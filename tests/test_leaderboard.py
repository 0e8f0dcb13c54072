"""`kdbench leaderboard`: collecting result.json files, seed aggregation, ranking and the text formats (the
HTML page: test_leaderboard_html.py)."""

from __future__ import annotations

import csv
import io
import json
import shutil
import statistics

import pytest

from kdbench.cli import main
from kdbench.leaderboard import build_boards, collect
from kdbench.leaderboard.formats import render_markdown, render_table
from kdbench.leaderboard.render import choose_columns

from .leaderboard_runs import demo_runs, write_run

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

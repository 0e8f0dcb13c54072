"""`kdbench robustbench RUN`: a RobustBench model-info entry from a run's result.json."""

from __future__ import annotations

import json

import pytest

from kdbench.cli import main
from kdbench.commands.robustbench import FIELDS, architecture_name, percent

from .leaderboard_runs import write_run


def test_entry_has_robustbench_fields_and_string_percentages(tmp_path, capsys):
    run = write_run(tmp_path, "rslad", method="rslad", clean=0.8312, robust={"autoattack": 0.5153}, student="resnet18")
    assert main(["robustbench", str(run)]) == 0
    assert "fill in: link, name, authors, venue" in capsys.readouterr().out
    info = json.loads((run / "robustbench.json").read_text())
    assert list(info)[: len(FIELDS)] == list(FIELDS)
    assert info["clean_acc"] == "83.12"
    assert info["autoattack_acc"] == "51.53"
    assert info["reported"] == "51.53"
    assert info["eps"] == "8/255"
    assert info["dataset"] == "cifar10"
    assert info["architecture"] == "ResNet-18"
    assert info["number_forward_passes"] == 1
    assert info["additional_data"] is False
    assert info["unreliable"] is False
    assert info["footnote"] == "Evaluated on 1000 of the 10000 test images."
    assert info["name"].startswith("<FILL IN")
    meta = info["_kdbench"]
    assert meta["fill_in"] == ["link", "name", "authors", "venue"]
    assert meta["recipe_hash"] and meta["autoattack_from"] == "result.json"
    assert "model_info/cifar10/Linf/" in meta["note"]
    assert "'/teachers/t.pt'" in meta["note"]  # the teacher checkpoint's data is outside kdbench's view


def test_fields_from_the_command_line_and_stdout(tmp_path, capsys):
    run = write_run(tmp_path, "ard", method="ard")
    argv = ["robustbench", str(run), "--out", "-", "--field", "venue=ICLR 2026", "--field", "additional_data=true"]
    argv += ["--field", "link=https://example.org/paper", "--field", "reported=50.1"]
    assert main(argv) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["venue"] == "ICLR 2026"
    assert info["additional_data"] is True
    assert info["reported"] == "50.1"
    assert info["_kdbench"]["fill_in"] == ["name", "authors"]
    assert not (run / "robustbench.json").exists()
    assert main(["robustbench", str(run), "--field", "venu=x"]) == 2
    assert "did you mean 'venue'" in capsys.readouterr().err


def test_flags_mark_the_entry_unreliable(tmp_path):
    run = write_run(tmp_path, "crd", method="crd", flags=["PGD-20 weaker than PGD-10: gradient masking?"])
    assert main(["robustbench", str(run), "--out", str(tmp_path / "x.json")]) == 0
    info = json.loads((tmp_path / "x.json").read_text())
    assert info["unreliable"] is True
    assert info["_kdbench"]["flags"] == ["PGD-20 weaker than PGD-10: gradient masking?"]


def test_autoattack_from_eval_json_or_a_clear_error(tmp_path, capsys):
    run = write_run(tmp_path, "kd", robust={"autoattack": None})
    assert main(["robustbench", str(run)]) == 2
    err = capsys.readouterr().err
    assert "no AutoAttack accuracy" in err and "kdbench eval" in err
    eval_json = {
        "schema_version": 1,
        "threat_model": {"norm": "Linf", "eps": "8/255"},
        "metrics": {"clean_acc": 0.8, "robust": {"autoattack": 0.4321}, "n_eval": 10000},
        "flags": [],
    }
    (run / "eval.json").write_text(json.dumps(eval_json))
    assert main(["robustbench", str(run)]) == 0
    info = json.loads((run / "robustbench.json").read_text())
    assert info["autoattack_acc"] == "43.21"
    assert info["footnote"] is None  # the full test set
    assert info["_kdbench"]["autoattack_from"] == "eval.json"


def test_broken_or_missing_results_are_user_errors(tmp_path, capsys):
    assert main(["robustbench", str(tmp_path)]) == 2
    assert "not found" in capsys.readouterr().err
    (tmp_path / "result.json").write_text(json.dumps({"schema_version": 2}))
    assert main(["robustbench", str(tmp_path)]) == 2
    assert "schema_version 2" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("model", "name"), [("wrn_34_10", "WideResNet-34-10"), ("timm:convnext_tiny", "convnext_tiny"), ("x", "x")]
)
def test_architecture_names(model, name):
    assert architecture_name(model) == name


def test_percent_rounds_to_two_decimals():
    assert percent(0.59531) == "59.53"
    assert percent(0.0) == "0.00"

"""``kdbench robustbench RUN [--out FILE] [--field KEY=VALUE ...]``: a RobustBench model-info entry for a run.

RobustBench (Croce et al., "RobustBench: a standardized adversarial robustness benchmark", NeurIPS
2021 Datasets and Benchmarks) lists each model as ``model_info/<dataset>/<threat_model>/<Name>.json``::

    {"link", "name", "authors", "additional_data", "number_forward_passes", "dataset", "venue",
     "architecture", "eps", "clean_acc", "reported", "autoattack_acc", "footnote", "unreliable"}

with accuracies as percentage *strings* with two decimals (``"59.53"``) and eps as written in papers
(``"8/255"``, ``"0.5"``). This command fills from result.json what kdbench knows: ``dataset``,
``eps``, ``clean_acc``, ``autoattack_acc`` (from result.json, else from the run's eval.json when
``kdbench eval`` ran AutoAttack at the same threat model), ``architecture`` (the student's model name
spelled as RobustBench does, e.g. ``WideResNet-34-10``), ``number_forward_passes`` = 1 (kdbench
networks are deterministic single-pass classifiers), ``reported`` = the measured AutoAttack accuracy
(replace it with your paper's number), ``footnote`` (set when fewer than the 10,000 CIFAR test images
were evaluated) and ``unreliable`` = true exactly when kdbench's sanity checks raised flags (listed
in the note). What kdbench cannot know (``link``, ``name`` = the paper title, ``authors``, ``venue``)
is an explicit ``"<FILL IN: ...>"`` placeholder, ``additional_data`` is false (kdbench trains on the
dataset's train split only; say true if the teacher saw extra data), and the entry carries a
``_kdbench`` object (the run, its recipe hash and the list of fields to fill in) to delete before a
RobustBench pull request. ``--field KEY=VALUE`` fills any field from the command line.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from kdbench import _toml
from kdbench._errors import UserError
from kdbench.results import Result, ResultError, write_json

__all__ = ["FIELDS", "add_parser", "architecture_name", "cmd_robustbench", "model_info", "percent"]

#: RobustBench's model-info keys, in the order of its files.
FIELDS = (
    "link",
    "name",
    "authors",
    "additional_data",
    "number_forward_passes",
    "dataset",
    "venue",
    "architecture",
    "eps",
    "clean_acc",
    "reported",
    "autoattack_acc",
    "footnote",
    "unreliable",
)
PLACEHOLDERS = {
    "link": "<FILL IN: URL of the paper or code>",
    "name": "<FILL IN: paper title>",
    "authors": "<FILL IN: authors, comma separated>",
    "venue": "<FILL IN: venue and year, e.g. ICLR 2026, or N/A>",
}
#: kdbench model names -> RobustBench's architecture spelling.
ARCHITECTURES = {
    "resnet18": "ResNet-18",
    "preact_resnet18": "PreActResNet-18",
    "wrn_34_10": "WideResNet-34-10",
    "wrn_28_10": "WideResNet-28-10",
    "mobilenet_v2": "MobileNetV2",
    "resnet8": "ResNet-8",
    "resnet20": "ResNet-20",
    "resnet32": "ResNet-32",
    "resnet56": "ResNet-56",
    "resnet8x4": "ResNet-8x4",
    "resnet32x4": "ResNet-32x4",
}
#: Test-set sizes RobustBench evaluates on (the full test split).
FULL_TEST = {"cifar10": 10_000, "cifar100": 10_000}


def percent(fraction: float) -> str:
    """0.5953 -> ``"59.53"`` (RobustBench's string form)."""
    return f"{100 * fraction:.2f}"


def architecture_name(model: str) -> str:
    """RobustBench's spelling of a kdbench model (``timm:convnext_tiny`` -> ``convnext_tiny``)."""
    return ARCHITECTURES.get(model, model.split(":", 1)[1] if model.startswith("timm:") else model)


def _eval_autoattack(run: Path, result: Result) -> tuple[float | None, int | None, list[str]]:
    """AutoAttack accuracy, n and flags from the run's eval.json, when it matches result.json's threat model."""
    path = run / "eval.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None, None, []
    if not isinstance(data, dict) or data.get("threat_model") != result.threat_model.model_dump(mode="json"):
        return None, None, []
    metrics = data.get("metrics") or {}
    value = (metrics.get("robust") or {}).get("autoattack")
    if not isinstance(value, int | float):
        return None, None, []
    flags = [f for f in data.get("flags", []) if isinstance(f, str)]
    return float(value), metrics.get("n_eval"), flags


def model_info(run: Path, result: Result, fields: dict[str, Any] | None = None) -> dict[str, Any]:
    """The RobustBench entry of ``result`` (the run folder ``run``'s result.json), plus ``_kdbench``."""
    metrics = result.metrics
    autoattack = metrics.robust.get("autoattack")
    n_eval, flags, source = metrics.n_eval, list(result.flags), "result.json"
    if autoattack is None:
        autoattack, n_aa, eval_flags = _eval_autoattack(run, result)
        if autoattack is None:
            raise UserError(
                f"{run} has no AutoAttack accuracy, which RobustBench ranks by; run "
                f"`kdbench eval {run} --attacks clean autoattack` first (it writes eval.json, read here)"
            )
        n_eval, flags, source = n_aa, flags + eval_flags, "eval.json"
    dataset = result.dataset
    full = FULL_TEST.get(dataset)
    footnote = None
    if isinstance(n_eval, int) and full is not None and n_eval < full:
        footnote = f"Evaluated on {n_eval} of the {full} test images."
    info: dict[str, Any] = {
        "link": PLACEHOLDERS["link"],
        "name": PLACEHOLDERS["name"],
        "authors": PLACEHOLDERS["authors"],
        "additional_data": False,
        "number_forward_passes": 1,
        "dataset": dataset,
        "venue": PLACEHOLDERS["venue"],
        "architecture": architecture_name(result.student),
        "eps": str(result.threat_model.eps),
        "clean_acc": percent(float(metrics.clean_acc)),
        "reported": percent(float(autoattack)),
        "autoattack_acc": percent(float(autoattack)),
        "footnote": footnote,
        "unreliable": bool(flags),
    }
    info.update(fields or {})
    todo = [k for k in FIELDS if isinstance(info.get(k), str) and info[k].startswith("<FILL IN")]
    teacher = _teacher_source(run)
    note = (
        "Generated by `kdbench robustbench`. Fill in the <FILL IN> fields, replace 'reported' with the number "
        "your paper reports, check 'additional_data' (true if training used data beyond the train split"
        + (f", e.g. through the teacher {teacher}" if teacher else "")
        + "), then delete this _kdbench object. Save as model_info/"
        + f"{dataset}/{result.threat_model.norm}/<Name><Year><FirstWordOfTheTitle>.json."
    )
    info["_kdbench"] = {
        "run": str(run),
        "recipe_hash": result.recipe_hash,
        "method": result.method,
        "teacher": result.teacher,
        "student": result.student,
        "threat_model": result.threat_model.model_dump(mode="json"),
        "n_eval": n_eval,
        "autoattack_from": source,
        "flags": flags,
        "fill_in": todo,
        "note": note,
    }
    return info


def _teacher_source(run: Path) -> str | None:
    """The teacher checkpoint named by the run's recipe.toml (its training data is outside kdbench's view)."""
    try:
        raw = _toml.load_file(run / "recipe.toml")
    except UserError:
        return None
    teacher = raw.get("teacher")
    if isinstance(teacher, dict) and isinstance(teacher.get("checkpoint"), str):
        return repr(teacher["checkpoint"])
    return None


def _parse_fields(items: list[str]) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or key not in FIELDS:
            from kdbench._errors import did_you_mean

            raise UserError(
                f"--field {item!r}: write KEY=VALUE with KEY one of RobustBench's; {did_you_mean(key, FIELDS)}"
            )
        value: Any = _toml.parse_value(text.strip())
        if key in ("clean_acc", "reported", "autoattack_acc", "eps") and not isinstance(value, str):
            value = text.strip()  # RobustBench keeps these as strings
        fields[key] = value
    return fields


def add_parser(subparsers: Any) -> None:
    """Add ``robustbench`` to ``subparsers`` (sets ``handler``; see `kdbench.cli.COMMAND_MODULES`)."""
    p = subparsers.add_parser(
        "robustbench",
        help="write a run as a RobustBench model-info JSON entry",
        description="Write a finished run as a RobustBench model_info entry (percentages as strings); "
        "fields kdbench cannot know are <FILL IN> placeholders.",
    )
    p.add_argument("run", type=Path, metavar="RUN", help="a run folder (holding result.json)")
    p.add_argument("--out", type=Path, metavar="FILE", help="output file (default: RUN/robustbench.json; - for stdout)")
    p.add_argument(
        "--field",
        dest="fields",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help='fill a field, e.g. --field venue="ICLR 2026" --field additional_data=true (repeatable)',
    )
    p.set_defaults(handler=cmd_robustbench)


def cmd_robustbench(args: argparse.Namespace) -> int:
    run: Path = args.run
    path = run / "result.json" if run.is_dir() else run
    if run.is_file():
        run = run.parent
    if not path.is_file():
        raise UserError(f"{path} not found: give a finished run folder (runs/<name>/<hash>/)")
    try:
        result = Result.read(path)
    except ResultError as exc:
        raise UserError(f"{path}: {exc}") from None
    info = model_info(run, result, _parse_fields(args.fields))
    if args.out is not None and str(args.out) == "-":
        sys.stdout.write(json.dumps(info, indent=2) + "\n")
        return 0
    out: Path = args.out if args.out is not None else run / "robustbench.json"
    write_json(out, info)
    todo = info["_kdbench"]["fill_in"]
    print(f"robustbench: {out}" + (f" (fill in: {', '.join(todo)})" if todo else ""))
    return 0

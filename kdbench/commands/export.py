"""``kdbench export RUN --format safetensors [--out FILE]``: a finished run's weights in a pickle-free format.

A run's ``model.pt`` is a torch pickle (read only with ``weights_only=True``); safetensors holds the
same tensors with no code path at all, so the file can be handed to anyone. The state_dict is written
unchanged (same keys, dtypes and values, so loading it gives bitwise-identical weights) with string
metadata that rebuilds the network::

    {"format": "kdbench-model-1", "model": "resnet18", "options": "<JSON of the model options>",
     "num_classes": "10", "recipe_hash": "<sha256>", "kdbench": "<version>"}

RUN is a run folder (``runs/<name>/<hash>/``) or its ``model.pt``. The file is written atomically,
by default as ``model.safetensors`` next to ``model.pt``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from kdbench._errors import UserError
from kdbench.engine.checkpoint import atomic_write_bytes, load_weights_file
from kdbench.run_folder import RunFolder

__all__ = ["FORMATS", "add_parser", "cmd_export", "export_safetensors"]

#: Export formats ``--format`` accepts.
FORMATS = ("safetensors",)

#: The ``format`` metadata value of exported model files.
METADATA_FORMAT = "kdbench-model-1"


def add_parser(subparsers: Any) -> None:
    """Add the ``export`` sub-command (the `kdbench.cli.COMMAND_MODULES` convention)."""
    p = subparsers.add_parser(
        "export",
        help="write a finished run's weights as safetensors",
        description="Write the weights of a finished run (its model.pt) in a pickle-free format, with the metadata "
        "that rebuilds the network.",
    )
    p.add_argument("run", type=Path, help="a run folder (runs/<name>/<hash>/) or its model.pt")
    p.add_argument("--format", choices=FORMATS, default="safetensors", help="output format (default: safetensors)")
    p.add_argument("--out", type=Path, metavar="FILE", help="output file (default: model.safetensors in the run)")
    p.set_defaults(handler=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    path = export_safetensors(args.run, args.out)
    print(f"exported: {path}")
    return 0


def _model_file(run: Path) -> Path:
    """``run``'s model.pt (or ``run`` itself, a model file); unfinished or foreign folders are one-line `UserError`s."""
    if run.is_file():
        return run
    return RunFolder(run).require_model("export")


def _canonical(blob: bytes) -> bytes:
    """The same safetensors file with its JSON header's keys sorted, so that exporting a run twice gives
    the same bytes (the library writes the header from a hash map, in an order that varies per call).

    Layout: 8-byte little-endian header length N, N bytes of JSON (space-padded to a multiple of 8),
    then the tensor data, whose offsets are relative to the end of the header and so do not move.
    """
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8 : 8 + n])
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + blob[8 + n :]


def export_safetensors(run: Path, out: Path | None = None) -> Path:
    """Write ``run``'s weights and metadata as safetensors to ``out`` (default ``model.safetensors`` beside
    model.pt) and return the path."""
    from safetensors.torch import save  # imported here: only this command needs it

    model_file = _model_file(run)
    try:
        payload = load_weights_file(model_file, what="")
    except UserError:
        raise
    except Exception as exc:
        raise UserError(
            f"{model_file} cannot be loaded safely ({type(exc).__name__}); "
            "kdbench reads only weights (torch.load weights_only=True)"
        ) from None
    if not (isinstance(payload, dict) and isinstance(payload.get("state_dict"), dict) and "model" in payload):
        raise UserError(f"{model_file} is not a kdbench model file (no model name and state_dict)")
    state: dict[str, Any] = payload["state_dict"]
    not_tensors = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise UserError(f"{model_file}: state_dict entry {not_tensors[0]!r} is not a tensor; safetensors holds tensors")
    from kdbench import __version__

    metadata = {
        "format": METADATA_FORMAT,
        "model": str(payload["model"]),
        "options": json.dumps(payload.get("options") or {}, sort_keys=True),
        "num_classes": str(payload.get("num_classes", "")),
        "recipe_hash": str(payload.get("recipe_hash", "")),
        "kdbench": __version__,
    }
    # Clones: safetensors refuses tensors that share storage, which a state_dict may hold (tied weights).
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}
    target = out if out is not None else model_file.with_name("model.safetensors")
    try:
        atomic_write_bytes(target, _canonical(save(tensors, metadata=metadata)))
    except OSError as exc:
        raise UserError(f"cannot write {target} ({exc.strerror})") from None
    return target

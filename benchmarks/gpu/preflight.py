"""Preflight of benchmarks/gpu/run.py: can kdbench run here, on what, and with which versions?

    python3 benchmarks/gpu/preflight.py --profile gpu|cpu --json FILE

Checks, in order, and says plainly what is missing: Python; torch and (profile gpu) a CUDA device; the
packages kdbench imports (pydantic, rich, timm, numpy, pillow, matplotlib, safetensors) and pyautoattack for
AutoAttack (the GPU machine has neither pydantic nor pyautoattack: ``bash ../shared/tools/gpu-site.sh`` puts
them in .gpu-site/, carried with the tree and put on PYTHONPATH); kdbench itself and its entry points (the
editable install); CIFAR-10 under $KDBENCH_DATA_ROOT (profile gpu). Then it decodes CIFAR-10 once into the
decode cache, so that no later stage pays for it inside its time limit. Writes the findings to FILE and
exits 1 when kdbench cannot run (a missing pyautoattack only flags: the AutoAttack figures are then absent).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

REQUIRED = ("torch", "torchvision", "pydantic", "rich", "timm", "numpy", "PIL", "matplotlib", "safetensors")
DISTRIBUTIONS = {"PIL": "pillow"}
HINT = "on the GPU machine: run `bash ../shared/tools/gpu-site.sh` here first and carry .gpu-site and .data"


def _version(module: str) -> str | None:
    try:
        return version(DISTRIBUTIONS.get(module, module))
    except PackageNotFoundError:
        return None


def check(profile: str) -> dict[str, Any]:
    found: dict[str, Any] = {"python": platform.python_version(), "profile": profile, "packages": {}}
    problems: list[str] = []
    flags: list[str] = []
    for module in REQUIRED:
        try:
            importlib.import_module(module)
            found["packages"][module] = _version(module) or "unknown"
        except ImportError as exc:
            found["packages"][module] = None
            problems.append(f"{module} is missing ({exc.__class__.__name__}); {HINT}")
    try:
        importlib.import_module("pyautoattack")
        found["packages"]["pyautoattack"] = _version("pyautoattack") or "unknown"
    except ImportError:
        found["packages"]["pyautoattack"] = None
        flags.append(f"pyautoattack is missing: every AutoAttack figure will be absent; {HINT}")
    try:
        import torch

        found["torch_cuda"] = torch.version.cuda
        found["cuda_available"] = torch.cuda.is_available()
        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            found["gpu"] = {
                "name": props.name,
                "memory_gib": round(props.total_memory / 2**30, 1),
                "capability": f"{props.major}.{props.minor}",
                "count": torch.cuda.device_count(),
            }
            found["cudnn"] = torch.backends.cudnn.version()
        elif profile == "gpu":
            problems.append("no CUDA device: the gpu profile needs one (use --cpu for the CPU smoke run)")
    except ImportError:
        pass
    try:
        from kdbench import METHODS

        names = set(METHODS.names()) if hasattr(METHODS, "names") else set(METHODS)
        missing = {"kd", "rslad", "gacd", "pgd_at"} - names
        if missing:
            problems.append(f"kdbench entry points missing ({sorted(missing)}): pip install --no-deps -e .")
        found["kdbench"] = _version("kdbench")
    except Exception as exc:  # any import failure of kdbench stops the session: say why
        problems.append(f"kdbench does not import: {type(exc).__name__}: {exc}")
    root = os.environ.get("KDBENCH_DATA_ROOT")
    found["data_root"] = root
    if profile == "gpu":
        if not root or not (Path(root) / "cifar10" / "train").is_dir():
            problems.append(f"CIFAR-10 not found under KDBENCH_DATA_ROOT={root!r}/cifar10; {HINT}")
        elif not problems:
            found["decode_seconds"] = _warm_cache()
    found["problems"], found["flags"] = problems, flags
    return found


def _warm_cache() -> float:
    """Decode CIFAR-10's train and test splits into the decode cache (KDBENCH_CACHE_DIR); the seconds it took."""
    from kdbench.data.cache import load_split_cached
    from kdbench.data.sources import CIFAR10

    tic = time.perf_counter()
    root = Path(os.environ["KDBENCH_DATA_ROOT"]) / "cifar10"
    source = CIFAR10(CIFAR10.Config(), root, False)
    for split in ("train", "test"):
        load_split_cached(source, split)
    return round(time.perf_counter() - tic, 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile", choices=("gpu", "cpu"), default="gpu")
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()
    found = check(args.profile)
    args.json.write_text(json.dumps(found, indent=2) + "\n")
    for line in found["problems"]:
        print(f"preflight: PROBLEM: {line}", flush=True)
    for line in found["flags"]:
        print(f"preflight: flag: {line}", flush=True)
    print(f"preflight: {json.dumps({k: v for k, v in found.items() if k not in ('problems', 'flags')})}", flush=True)
    return 1 if found["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())

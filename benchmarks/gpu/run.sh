#!/usr/bin/env bash
# The GPU session of issue 19, as one command (see benchmarks/gpu/run.py and docs/performance.md).
# On the GPU machine, from the repository root, with .gpu-site and .data carried:
#   export PYTHONPATH=$PWD/.gpu-site KDBENCH_DATA_ROOT=$PWD/.data KDBENCH_GIT_COMMIT=<commit>
#   python3 -m pip install -q --no-deps --no-build-isolation -e .
#   bash benchmarks/gpu/run.sh [--budget 540] [--only ...] [--skip ...]
# Everything goes to $OUT (default ./gpu-out). --cpu runs the same stages on a CPU at tiny sizes;
# --dry-run only checks the plan.
set -eu
cd "$(dirname "$0")/../.."
exec python3 benchmarks/gpu/run.py --out "${OUT:-gpu-out}" "$@"

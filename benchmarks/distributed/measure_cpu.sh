#!/bin/bash
# CPU speed-up of torchrun with gloo, 1 vs 2 processes, side by side (docs/distributed.md).
# Ratios only: timings are reported from a GPU. Run from this folder, in kdbench's venv:
#   bash measure_cpu.sh [ROUNDS]     (works in a temporary folder, prints one line per round)
set -euo pipefail
rounds=${1:-3}
export OMP_NUM_THREADS=1
here=$(cd "$(dirname "$0")" && pwd)
cd "$(mktemp -d)"
two="python -m torch.distributed.run --standalone --nproc_per_node=2 -m kdbench"
rm -rf ev && python -m kdbench run "$here/eval_model.toml" --out ev --quiet >/dev/null
for i in $(seq "$rounds"); do  # interleaved, so that a change of load hits both sides
  python -m kdbench eval ev --attacks clean pgd50 --out "e1_$i.json" >/dev/null 2>&1
  $two eval ev --attacks clean pgd50 --out "e2_$i.json" >/dev/null 2>&1
  rm -rf "t1_$i" "t2_$i"
  python -m kdbench run "$here/train_pgd_at.toml" --out "t1_$i" --quiet >/dev/null 2>&1
  $two run "$here/train_pgd_at.toml" --out "t2_$i" --quiet >/dev/null 2>&1
done
python - "$rounds" <<'PY'
import json, sys
for i in range(1, int(sys.argv[1]) + 1):
    e1, e2 = (json.load(open(f"e{k}_{i}.json"))["seconds"]["pgd50"] for k in (1, 2))
    t1, t2 = (json.load(open(f"t{k}_{i}/result.json"))["train"]["images_per_second"] for k in (1, 2))
    print(f"round {i}: eval PGD-50 on 512 images: {e1:.1f} s vs {e2:.1f} s, speed-up {e1 / e2:.2f}; "
          f"train PGD-AT: {t1:.0f} vs {t2:.0f} images/s, speed-up {t2 / t1:.2f}")
PY
uptime

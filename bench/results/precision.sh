#!/usr/bin/env bash
# What --precision does to the default job's accuracy (docs/kernels.md, "Tensor cores"): the
# default job (`bulwark train`, PGD-10-AT of wong_small on Fashion-MNIST) once per precision and
# seed, each evaluated clean and under PGD-50x10 on the first 1,000 test images. On the CPU the
# rounding of tf32/bf16 is emulated (the same arithmetic as the tensor-core kernels).
#
#   bash bench/results/precision.sh [--build DIR] [--out DIR] [--seeds "0 1 2 3"] [--precisions "fp32 bf16"]
#                                   [--threads N]
#
# A run whose eval.json exists is not run again, so an interrupted study resumes; the table of
# every finished run (and the mean and spread per precision) is printed last.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
build="$root/build" out="$root/runs/precision" seeds="0 1 2 3" precisions="fp32 bf16" threads=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --build) build="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --seeds) seeds="$2"; shift 2 ;;
    --precisions) precisions="$2"; shift 2 ;;
    --threads) threads="$2"; shift 2 ;;
    *) echo "precision.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
mkdir -p "$out"
for p in $precisions; do
  for s in $seeds; do
    run="$out/$p-seed$s"
    [[ -f "$run/eval.json" ]] && continue
    echo "== $p, seed $s"
    # An interrupted run continues from its last checkpoint; one that made none starts again.
    if [[ -f "$run/last.safetensors" ]]; then
      train=(train --resume "$run" --threads "$threads")
    else
      rm -rf "$run"
      train=(train --precision "$p" --seed "$s" --threads "$threads" --out "$run")
    fi
    "$build/bulwark" "${train[@]}" 2>&1 | tr '\r' '\n' | grep -v '%|' | tail -12
    "$build/bulwark" eval --checkpoint "$run" --attacks clean,pgd --test-size 1000 --threads "$threads" \
      --json "$run/eval.json.tmp" > /dev/null
    mv "$run/eval.json.tmp" "$run/eval.json"
  done
done
python3 - "$out" <<'EOF'
import json, pathlib, statistics, sys
rows = {}
for f in sorted(pathlib.Path(sys.argv[1]).glob("*/eval.json")):
    p, s = f.parent.name.split("-seed")
    j = json.loads(f.read_text())
    rows.setdefault(p, []).append((int(s), 100 * j["clean_acc"], 100 * j["pgd_acc"]))
print("| precision | seed | clean % | PGD-50x10 % |\n|---|---|---|---|")
for p, runs in rows.items():
    for s, c, r in sorted(runs):
        print(f"| {p} | {s} | {c:.1f} | {r:.1f} |")
for p, runs in rows.items():
    c = [x[1] for x in runs]; r = [x[2] for x in runs]
    sd = lambda v: statistics.stdev(v) if len(v) > 1 else 0.0
    print(f"{p}: {len(runs)} seeds, clean {statistics.mean(c):.1f} +- {sd(c):.1f}, PGD-50x10 {statistics.mean(r):.1f} +- {sd(r):.1f}")
EOF

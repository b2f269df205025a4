#!/usr/bin/env bash
# bulwark vs PyTorch on the same adversarial training step (bench/train_step.h,
# bench/peer_pytorch.py): prints model, bulwark ms/step, pytorch ms/step, ratio (bulwark/pytorch).
#
#   bench/compare.sh [--bench PATH] [--models "wong_small cnn7"] [--rounds R] [--iters N] [--threads T]
#
# The two run alternately, R rounds per model, and each side's figure is the minimum over rounds
# of its per-round median: on a shared machine other jobs only ever add time, so the minimum is
# the closest to what each side costs, and alternating exposes both to the same background load.
# The CPU columns are process CPU time per step (both threads); with OMP_WAIT_POLICY=passive
# (set here unless already set) idle workers sleep, so CPU time counts work, not waiting, and
# is the steadier figure when other jobs load the machine.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
bench="${BULWARK_BENCH:-$here/../build/bulwark-bench}"
models="wong_small cnn7"
rounds=2
iters=5
threads=2
while [[ $# -gt 0 ]]; do
  case "$1" in
    --bench) bench="$2"; shift 2 ;;
    --models) models="$2"; shift 2 ;;
    --rounds) rounds="$2"; shift 2 ;;
    --iters) iters="$2"; shift 2 ;;
    --threads) threads="$2"; shift 2 ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "compare.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
if [[ ! -x "$bench" ]]; then
  echo "compare.sh: no bulwark-bench at $bench; build it (cmake --build build --target bulwark-bench) or pass --bench PATH" >&2
  exit 1
fi

export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-passive}"
results="$(mktemp)"
trap 'rm -f "$results"' EXIT
for model in $models; do
  for ((r = 0; r < rounds; ++r)); do
    "$bench" train-step --model "$model" --threads "$threads" --iters "$iters" --warmup 1 --json >>"$results"
    /usr/bin/python3 "$here/peer_pytorch.py" --model "$model" --threads "$threads" --iters "$iters" --warmup 1 --json >>"$results"
  done
done

/usr/bin/python3 - "$results" "$threads" <<'EOF'
import json, os, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if line.startswith("{")]
best = {}
for r in rows:
    for field in ("ms_per_step", "cpu_ms_per_step"):
        key = (r["model"], r["impl"], field)
        best[key] = min(best.get(key, float("inf")), r[field])
models = list(dict.fromkeys(r["model"] for r in rows))
print(f"adversarial training step, batch {rows[0]['batch']}, {sys.argv[2]} threads, "
      f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")
print(f"{'model':<12} {'bulwark ms':>11} {'pytorch ms':>11} {'ratio':>7}   "
      f"{'bulwark CPU ms':>15} {'pytorch CPU ms':>15} {'CPU ratio':>9}")
for m in models:
    b, p = best[(m, "bulwark", "ms_per_step")], best[(m, "pytorch", "ms_per_step")]
    bc, pc = best[(m, "bulwark", "cpu_ms_per_step")], best[(m, "pytorch", "cpu_ms_per_step")]
    print(f"{m:<12} {b:11.1f} {p:11.1f} {b / p:7.2f}   {bc:15.1f} {pc:15.1f} {bc / pc:9.2f}")
EOF

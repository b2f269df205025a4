#!/usr/bin/env bash
# One certified training step, bulwark beside auto_LiRPA, in one run: IBP and CROWN-IBP on
# ibp_large (MNIST's 1x28x28, eps 0.3) and cnn7 (CIFAR's 3x32x32, eps 8/255), batch 128. Prints
# both median step times and bulwark's time as a fraction of auto_LiRPA's.
#
#   bench/certified_vs_auto_lirpa.sh [--threads 2] [--iters 5] [--models "ibp_large cnn7"]
#                                    [--bounds "ibp crown-ibp"] [--batch 128]
#
# The step (bench/bound_step.cpp, bench/peer_auto_lirpa.py): clean forward, the bound of the
# margins, L = 0.5 CE + 0.5 CE(worst case), backward, SGD. The two sides alternate per
# configuration, so a change in the machine's load hits both. auto_LiRPA 0.3 comes from PyPI into
# a venv that sees Debian's python3-torch (made here under $TMPDIR when missing; numpy stays
# Debian's 1.x); it is a benchmark dependency, never a test's.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
bench="${BULWARK_BENCH:-$here/../build/bulwark-bench}"
threads=2 iters=5 models="ibp_large cnn7" bounds="ibp crown-ibp" batch=128
while [[ $# -gt 0 ]]; do
  case "$1" in
    --threads) threads="$2"; shift 2 ;;
    --iters) iters="$2"; shift 2 ;;
    --models) models="$2"; shift 2 ;;
    --bounds) bounds="$2"; shift 2 ;;
    --batch) batch="$2"; shift 2 ;;
    *) echo "unknown option $1 (see the header of $0)" >&2; exit 2 ;;
  esac
done
[[ -x "$bench" ]] || { echo "$bench not built (cmake --build build)" >&2; exit 2; }
venv="${TMPDIR:-/tmp}/bulwark-lirpa-venv"
if [[ ! -x "$venv/bin/python" ]] || ! "$venv/bin/python" -c "import auto_LiRPA" 2> /dev/null; then
  /usr/bin/python3 -m venv --system-site-packages "$venv"
  "$venv/bin/pip" install --quiet --no-deps auto_LiRPA==0.3 tqdm appdirs
fi
export OMP_WAIT_POLICY=passive
printf '%-10s %-10s %14s %16s %8s\n' model bound "bulwark ms" "auto_LiRPA ms" ratio
for model in $models; do
  for bound in $bounds; do
    ours="$("$bench" bound-step --model "$model" --bound "$bound" --batch "$batch" --threads "$threads" \
      --iters "$iters" --json)"
    theirs="$("$venv/bin/python" "$here/peer_auto_lirpa.py" --model "$model" --bound "$bound" --batch "$batch" \
      --threads "$threads" --iters "$iters" 2> /dev/null | tail -n 1)"
    /usr/bin/python3 - "$ours" "$theirs" <<'PY'
import json, sys
a, b = (json.loads(s) for s in sys.argv[1:3])
print(f"{a['model']:<10} {a['bound']:<10} {a['median_ms']:14.1f} {b['median_ms']:16.1f} {a['median_ms'] / b['median_ms']:7.2f}x")
PY
  done
done

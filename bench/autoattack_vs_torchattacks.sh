#!/usr/bin/env bash
# bulwark's AutoAttack suite beside torchattacks' AutoAttack on the same model and samples, in one
# run (issue: the suite's speed). Prints each tool's robust accuracy and seconds, and the ratio.
#
#   bench/autoattack_vs_torchattacks.sh --checkpoint RUN [--test-size 1000] [--eps E] [--threads 2]
#                                       [--steps "10 100"]
#
# Both attack the first --test-size test samples of RUN's dataset: bulwark writes them with
# `bulwark eval --logits samples.safetensors`, and bench/peer_torchattacks.py loads RUN into
# PyTorch with python/bulwark_torch.py and runs torchattacks.AutoAttack("standard") on those
# images. For each APGD/FAB iteration count in --steps both run with it (torchattacks' default is
# 10, the paper's and bulwark's 100); Square has 5,000 queries in both. torchattacks comes from
# PyPI into a venv that sees Debian's python3-torch (made here under $TMPDIR when missing); it is
# a benchmark dependency, never a test's.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
bulwark="${BULWARK:-$here/../build/bulwark}"
checkpoint="" test_size=1000 eps="" threads=2 steps="10 100"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --checkpoint) checkpoint="$2"; shift 2 ;;
    --test-size) test_size="$2"; shift 2 ;;
    --eps) eps="$2"; shift 2 ;;
    --threads) threads="$2"; shift 2 ;;
    --steps) steps="$2"; shift 2 ;;
    *) echo "unknown option $1 (see the header of $0)" >&2; exit 2 ;;
  esac
done
[[ -n "$checkpoint" ]] || { echo "--checkpoint RUN is required" >&2; exit 2; }
venv="${TMPDIR:-/tmp}/bulwark-torchattacks-venv"
if [[ ! -x "$venv/bin/python" ]] || ! "$venv/bin/python" -c "import torchattacks" 2> /dev/null; then
  /usr/bin/python3 -m venv --system-site-packages "$venv"
  "$venv/bin/pip" install --quiet --no-deps torchattacks
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
eps_args=()
[[ -n "$eps" ]] && eps_args=(--eps "$eps")
"$bulwark" eval --checkpoint "$checkpoint" --attacks clean --test-size "$test_size" "${eps_args[@]}" \
  --threads "$threads" --logits "$work/samples.safetensors" --json "$work/clean.json" > /dev/null
eps_value="$("$venv/bin/python" -c "import json,sys; print(json.load(open(sys.argv[1]))['eps'])" "$work/clean.json")"
printf '%-12s %6s %12s %10s %10s\n' tool steps "robust acc" seconds ratio
for k in $steps; do
  "$bulwark" eval --checkpoint "$checkpoint" --attacks clean --suite autoattack --apgd-steps "$k" --fab-steps "$k" \
    --test-size "$test_size" "${eps_args[@]}" --threads "$threads" --json "$work/ours.json" > /dev/null
  "$venv/bin/python" "$here/peer_torchattacks.py" "$checkpoint" "$work/samples.safetensors" "$eps_value" "$k" \
    "$threads" > "$work/theirs.json"
  "$venv/bin/python" - "$work/ours.json" "$work/theirs.json" "$k" <<'PY'
import json, sys
ours = json.load(open(sys.argv[1]))["suite"]
theirs = json.load(open(sys.argv[2]))
k = sys.argv[3]
print(f"{'bulwark':<12} {k:>6} {100 * ours['robust_acc']:>11.2f}% {ours['seconds']:>10.1f} "
      f"{ours['seconds'] / theirs['seconds']:>10.2f}")
print(f"{'torchattacks':<12} {k:>6} {100 * theirs['robust_acc']:>11.2f}% {theirs['seconds']:>10.1f} {'1.00':>10}")
PY
done

#!/usr/bin/env bash
# Which training job should `bulwark train` run with no options? Candidates that fit the default
# job's budget (wong_small, Fashion-MNIST at eps 0.1, 5 epochs, under 5 minutes on 2 cores), each
# trained with the same seed and evaluated with `bulwark eval` on the first 1,000 test images
# under PGD-50x10 and the gradient-free Square-5000. The default is the candidate with the highest
# min(PGD-50x10, Square): a PGD figure that Square undercuts is gradient masking, not robustness.
#
#   bench/results/default_job.sh [--runs DIR] [--out docs/results/default_job]
#
# Writes each candidate's config.json, metrics.jsonl, summary.json and eval.json to --out and the
# table docs/results/default_job.md (make_default_job_page.py).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
bulwark="${BULWARK:-$root/build/bulwark}"
runs="$root/runs/default-job"
out="$root/docs/results/default_job"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --runs) runs="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "default_job.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
[[ -x "$bulwark" ]] || { echo "default_job.sh: $bulwark not built (cmake --build build)" >&2; exit 2; }
export OMP_WAIT_POLICY=passive
common="--dataset fashion-mnist --eps 0.1 --model wong_small --epochs 5 --threads 2 --quiet"
# label | the candidate's method and schedule (every named component acts within 5 epochs,
# except the old default's AccelAT, kept as the baseline it was)
candidates=(
  "fgsm-rs-accelat|--method fgsm-rs --schedule accelat"
  "fgsm-rs-cyclic|--method fgsm-rs --schedule cyclic --lr 0.2"
  "fgsm-rs-one-cycle|--method fgsm-rs --schedule one-cycle --lr 0.02"
  "pgd5-cyclic|--method pgd --steps 5 --schedule cyclic --lr 0.2"
  "pgd10-cyclic|--method pgd --steps 10 --schedule cyclic --lr 0.2"
  "mplus-deat-multistep|--method mplus-deat --schedule multistep"
)
mkdir -p "$runs" "$out"
for c in "${candidates[@]}"; do
  label="${c%%|*}" args="${c#*|}" dir="$runs/${c%%|*}"
  if [[ ! -f "$dir/summary.json" ]]; then
    rm -rf "$dir"
    start=$(date +%s.%N)
    # shellcheck disable=SC2086
    "$bulwark" train $common $args --out "$dir"
    python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$start" "$(date +%s.%N)" > "$dir/wall_seconds"
  fi
  if [[ ! -f "$dir/eval.json" ]]; then
    "$bulwark" eval --checkpoint "$dir" --test-size 1000 --attacks clean,pgd,square --threads 2 \
      --json "$dir/eval.json" > "$dir/eval.txt"
  fi
  mkdir -p "$out/$label"
  for f in config.json metrics.jsonl summary.json eval.json wall_seconds; do cp "$dir/$f" "$out/$label/"; done
  echo "done: $label ($(date +%H:%M:%S))"
done
# AutoAttack on the default (the first candidate by min(PGD, Square) is what `bulwark train` runs).
best="$(python3 -c "
import json, os, sys
runs = sys.argv[1]
score = lambda l: min(a['accuracy'] for a in json.load(open(os.path.join(runs, l, 'eval.json')))['attacks'] if a['attack'] != 'clean')
print(max(os.listdir(runs), key=score))" "$out")"
if [[ ! -f "$out/$best/autoattack.json" ]]; then
  "$bulwark" eval --checkpoint "$runs/$best" --test-size 1000 --attacks clean --suite autoattack --threads 2 \
    --json "$out/$best/autoattack.json" > "$runs/$best/autoattack.txt"
fi
python3 "$here/make_default_job_page.py" --runs "$out" --out "$root/docs/results/default_job.md"

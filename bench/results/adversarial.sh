#!/usr/bin/env bash
# The adversarial-training results of docs/results.md: every method of METHODS.md on MNIST
# (eps 0.3) and Fashion-MNIST (eps 0.1), each with a fixed schedule and with AccelAT, then
# `bulwark eval` (clean, PGD-50x10, CW-20, FGSM) on a fixed test subset; finally the page.
#
#   bench/results/adversarial.sh [--runs DIR] [--jobs J] [--datasets "mnist fashion-mnist"]
#                                [--methods "..."] [--train-size N] [--epochs E] [--test-size N]
#
# Every run uses the same training subset, epoch budget, model and optimizer; Free-AT trains
# E / m epochs (each replays every batch m times), as the method prescribes. A run directory
# that already has eval.json is skipped, one with a checkpoint is resumed, so the script can be
# stopped and started again. J runs go in parallel, one thread each.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
bulwark="${BULWARK:-$root/build/bulwark}"
runs="$root/runs/results"
jobs=2
datasets="mnist fashion-mnist"
methods="standard pgd fgsm-rs free mplus-deat mplus-pgd"
train_size=5000
epochs=10
pgd_steps=10    # PGD-AT's k for the table (the papers' 40 on MNIST does not fit this budget)
eps_ramp=3      # epochs of eps warm-up (Free-AT: the same fraction of its shorter run)
test_size=1000
free_replays=5  # so that E / m is a whole number of epochs at E = 10
shared="${BULWARK_SHARED_DATA:-$root/../shared/data}"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --runs) runs="$2"; shift 2 ;;
    --jobs) jobs="$2"; shift 2 ;;
    --datasets) datasets="$2"; shift 2 ;;
    --methods) methods="$2"; shift 2 ;;
    --train-size) train_size="$2"; shift 2 ;;
    --epochs) epochs="$2"; shift 2 ;;
    --test-size) test_size="$2"; shift 2 ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "adversarial.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
[[ -x "$bulwark" ]] || { echo "adversarial.sh: $bulwark not built (cmake --build build)" >&2; exit 2; }

# The fixed schedule each method's paper uses: Fast-AT's cyclic triangle; DEAT's x0.1 at 50%
# and 80%; piecewise (x0.1 at T/3 and 2T/3) for the rest.
fixed_schedule() {
  case "$1" in
    fgsm-rs) echo "--schedule cyclic" ;;
    mplus-deat|mplus-pgd) echo "--schedule multistep --milestones $((epochs / 2)),$((epochs * 4 / 5))" ;;
    *) echo "--schedule piecewise" ;;
  esac
}

dataset_args() {  # the dataset, its eps, and PGD-AT's step 2.5 eps / k (Madry's rule)
  case "$1" in
    mnist) echo "--dataset mnist --data-dir $shared/mnist --eps 0.3 --pgd-alpha $(python3 -c "print(2.5*0.3/$pgd_steps)")" ;;
    fashion-mnist) echo "--dataset fashion-mnist --eps 0.1 --pgd-alpha $(python3 -c "print(2.5*0.1/$pgd_steps)")" ;;
    *) echo "adversarial.sh: unknown dataset $1" >&2; exit 2 ;;
  esac
}

one_run() {  # dataset method schedule-label
  local ds="$1" method="$2" label="$3" dir="$runs/$1/$2-$3"
  [[ -f "$dir/eval.json" ]] && return 0
  local sched e="$epochs" extra=""
  if [[ "$label" == accelat ]]; then sched="--schedule accelat"; else sched="$(fixed_schedule "$method")"; fi
  local args; args="$(dataset_args "$ds")"
  local pgd_alpha="${args##*--pgd-alpha }"
  args="${args% --pgd-alpha *}"
  local ramp="$eps_ramp"
  if [[ "$method" == free ]]; then
    e=$(( (epochs + free_replays - 1) / free_replays ))
    ramp="$(python3 -c "print($eps_ramp * $e / $epochs)")"
    extra="--replays $free_replays"
  fi
  if [[ "$method" == pgd ]]; then extra="--steps $pgd_steps --alpha $pgd_alpha"; fi
  if [[ "$method" == free && "$label" != accelat ]]; then sched="--schedule piecewise"; fi
  mkdir -p "$runs/$ds"
  if [[ -f "$dir/last.safetensors" && ! -f "$dir/summary.json" ]]; then
    "$bulwark" train --resume "$dir" --threads 1 --quiet
  elif [[ ! -f "$dir/summary.json" ]]; then
    rm -rf "$dir"
    # shellcheck disable=SC2046
    "$bulwark" train $args --model wong_small --optimizer adam --lr 1e-3 --method "$method" --eps-ramp "$ramp" $sched $extra \
      --train-size "$train_size" --epochs "$e" --test-size "$test_size" --threads 1 --quiet --out "$dir"
  fi
  "$bulwark" eval --checkpoint "$dir" --test-size "$test_size" --threads 1 --json "$dir/eval.json" > "$dir/eval.txt"
  echo "done: $ds $method $label ($(date +%H:%M:%S))"
}

export -f one_run fixed_schedule dataset_args
export bulwark runs epochs free_replays shared train_size test_size pgd_steps eps_ramp
export OMP_WAIT_POLICY=passive
for ds in $datasets; do
  for m in $methods; do
    for label in fixed accelat; do echo "$ds $m $label"; done
  done
done | xargs -P "$jobs" -L 1 bash -c 'one_run "$0" "$1" "$2"'

# The small files of every run (not the checkpoints) go next to the page, so that it can be
# regenerated, and checked, without training again: make_page.py --runs docs/results/runs.
for f in "$runs"/*/*/eval.json; do
  d="$(dirname "$f")"
  rel="${d#"$runs"/}"
  mkdir -p "$root/docs/results/runs/$rel"
  cp "$d"/{config.json,metrics.jsonl,summary.json,eval.json} "$root/docs/results/runs/$rel/"
done
python3 "$here/make_page.py" --runs "$root/docs/results/runs" --out "$root/docs/results.md"

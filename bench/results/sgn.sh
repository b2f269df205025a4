#!/usr/bin/env bash
# The self-gradient network study of docs/sgn.md: SGN+FGSM-RS and SGN+PGD-AT against the same
# base network trained with the same method, optimizer, schedule and epochs:
#
#   mnist          wong_small, eps 0.3, the first 5,000 training images, 10 epochs
#   fashion-mnist  wong_small, eps 0.1, the first 5,000 training images, 10 epochs
#   cifar10        cnn7, eps 8/255, the first 5,000 images of the JPEG copy in ../shared/data
#                  (crop augmentation), 4 epochs
#
# Adam 1e-3 under the cyclic schedule (Fast-AT's shape) for every run; PGD-AT with 10 steps of
# 2.5 eps / 10 (CIFAR-10: 7 of 2/255); eps warm-up over the first 30% of the epochs. The SGN runs
# use the default taps and --sgn-grad (full: training differentiates through the probe).
# Every run's robust validation accuracy after each epoch (PGD-10 on 500 validation images, through
# an SGN's full graph) and its passes give "epochs and passes to reach the base's final robust
# accuracy"; every run is evaluated on --test-size test images (default 500; CIFAR-10 200) with
# `bulwark eval --attacks clean,pgd,cw,square --suite autoattack`: an SGN's gradient attacks go
# through its full graph and are repeated with the probe's gradient detached, and it is also
# attacked by transfer from the base run (--source-checkpoint). Its headline is the minimum.
#
#   bench/results/sgn.sh [--runs DIR] [--jobs J] [--datasets "..."] [--methods "fgsm-rs pgd"]
#                        [--epochs E] [--train-size N] [--test-size N]
#
# Cost, measured on the 2-vCPU development machine (one thread per run): training 2.4 CPU-hours
# (1.1 for the MNIST and Fashion-MNIST runs and the CIFAR-10 FGSM-RS pair, ~1.3 for CIFAR-10's
# SGN+PGD-AT); evaluation 0.4 hours for the 8 MNIST and Fashion-MNIST runs, 0.8 per CIFAR-10 base
# run (two thirds of it in Square-5000, alone and in the suite) and, by the SGN's ~3x cost per
# query, ~3 per CIFAR-10 SGN run: about 9.5 CPU-hours in all, beyond the 4 the study was sized for;
# `--test-size 100` halves the CIFAR-10 evaluation. A finished run
# is skipped and an interrupted one resumed; J runs go in parallel, one thread each. The small
# files of every run are copied to docs/results/runs/sgn/ and the block of docs/sgn.md between
# `<!-- sgn results: begin -->` and `<!-- sgn results: end -->` is regenerated from them.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
py=/usr/bin/python3
[ -x "$py" ] || py=python3
bulwark="${BULWARK:-$root/build/bulwark}"
shared="${BULWARK_SHARED_DATA:-$root/../shared/data}"
runs="$root/runs/results/sgn"
jobs=2 datasets="mnist fashion-mnist cifar10" methods="fgsm-rs pgd" epochs="" train_size=5000 test_size=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --runs) runs="$2"; shift 2 ;;
    --jobs) jobs="$2"; shift 2 ;;
    --datasets) datasets="$2"; shift 2 ;;
    --methods) methods="$2"; shift 2 ;;
    --epochs) epochs="$2"; shift 2 ;;
    --train-size) train_size="$2"; shift 2 ;;
    --test-size) test_size="$2"; shift 2 ;;
    -h|--help) sed -n '2,27p' "$0"; exit 0 ;;
    *) echo "sgn.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
[[ -x "$bulwark" ]] || { echo "sgn.sh: $bulwark not built (cmake --build build)" >&2; exit 2; }

dataset_args() {  # dataset: data, eps, model, epochs, test size
  local e="${epochs:-10}" n="${test_size:-500}"
  case "$1" in
    mnist) echo "--dataset mnist --data-dir $shared/mnist --eps 0.3 --model-base wong_small --epochs $e --test-size $n" ;;
    fashion-mnist) echo "--dataset fashion-mnist --eps 0.1 --model-base wong_small --epochs $e --test-size $n" ;;
    cifar10) echo "--dataset cifar10 --data-dir $shared/cifar10-jpeg --eps 8/255 --model-base cnn7 --crop-pad 4" \
                  "--epochs ${epochs:-4} --test-size ${test_size:-200}" ;;
    synthetic) echo "--dataset synthetic --eps 8/255 --model-base mlp --epochs ${epochs:-2} --test-size ${test_size:-100}" ;;
    *) echo "sgn.sh: unknown dataset $1" >&2; exit 2 ;;
  esac
}

method_args() {  # dataset method
  case "$2" in
    pgd) if [[ "$1" == cifar10 ]]; then echo "--method pgd --steps 7 --alpha 0.0078431"
         else echo "--method pgd --steps 10"; fi ;;  # Madry's 2.5 eps / k by default
    *) echo "--method $2" ;;
  esac
}

train_run() {  # dataset method variant (base | sgn)
  local ds="$1" method="$2" variant="$3" dir="$runs/$1/$2-$3" args base model e
  [[ -f "$dir/summary.json" ]] && return 0
  mkdir -p "$runs/$ds"
  if [[ -f "$dir/last.safetensors" || -f "$dir/interrupted.safetensors" ]]; then  # resumable (Ctrl-C too)
    "$bulwark" train --resume "$dir" --threads 1 --quiet || return 255
  else
    rm -rf "$dir"
    args="$(dataset_args "$ds")"
    base="$(sed -E 's/.*--model-base ([^ ]+).*/\1/' <<< "$args")"
    e="$(sed -E 's/.*--epochs ([0-9]+).*/\1/' <<< "$args")"
    model="$base"
    [[ "$variant" == sgn ]] && model="sgn:$base"
    # shellcheck disable=SC2046
    "$bulwark" train ${args/--model-base $base/--model $model} $(method_args "$ds" "$method") \
      --eps-ramp "$("$py" -c "print(round(0.3 * $e, 3))")" --optimizer adam --lr 1e-3 --schedule cyclic \
      --train-size "$train_size" --robust-val-size 500 --threads 1 --quiet --out "$dir" || return 255
  fi
  echo "trained: $ds $method $variant ($(date +%H:%M:%S))"
}

eval_run() {  # dataset method variant
  local dir="$runs/$1/$2-$3" source=()
  [[ -f "$dir/eval.json" ]] && return 0
  [[ "$3" == sgn ]] && source=(--source-checkpoint "$runs/$1/$2-base")
  "$bulwark" eval --checkpoint "$dir" --test-size "$(sed -E 's/.*--test-size ([0-9]+).*/\1/' <<< "$(dataset_args "$1")")" \
    --attacks clean,pgd,cw,square --suite autoattack "${source[@]}" --threads 1 --json "$dir/eval.json.tmp" \
    > "$dir/eval.txt" || return 255
  mv "$dir/eval.json.tmp" "$dir/eval.json"
  echo "evaluated: $1 $2 $3 ($(date +%H:%M:%S))"
}

export -f dataset_args method_args train_run eval_run
export py bulwark shared runs epochs train_size test_size
export OMP_WAIT_POLICY=passive
lines() { for ds in $datasets; do for m in $methods; do for v in $1; do echo "$ds $m $v"; done; done; done; }
parallel_lines() { xargs -P "$jobs" -L 1 bash -c "$1"' "$0" "$1" "$2"'; }

lines "base sgn" | parallel_lines train_run
# The base runs first: the SGN's transfer attack is crafted on them.
lines base | parallel_lines eval_run
lines sgn | parallel_lines eval_run

for f in "$runs"/*/*/summary.json; do
  [[ -f "$f" ]] || continue
  d="$(dirname "$f")"
  dest="$root/docs/results/runs/sgn/${d#"$runs"/}"
  mkdir -p "$dest"
  for name in config.json metrics.jsonl summary.json eval.json; do
    [[ -f "$d/$name" ]] && cp "$d/$name" "$dest/"
  done
done
"$py" "$here/make_sgn_page.py" --runs "$root/docs/results/runs/sgn" --page "$root/docs/sgn.md"

#!/usr/bin/env bash
# Instructions of one training step, bulwark beside PyTorch, counted by valgrind's callgrind: a
# figure that does not drift with the load of a shared machine, unlike the times of
# bench/compare.sh, so each optimisation's effect can be shown in instructions as well.
#
#   bench/callgrind_step.sh [--model M]... [--batch N] [--build DIR] [--python PY] [--no-peer] [--json]
#
# One step = the step of `bulwark-bench train-step` and bench/peer_pytorch.py (attack + forward +
# backward + SGD; docs/bench.md), after one warm-up step. bulwark runs twice under callgrind, with
# 1 and 2 timed steps: the difference of the two totals is one steady-state step (start-up, data
# and model set-up cancel out). PyTorch's start-up under callgrind takes many minutes (importing
# torch), so it runs once, with collection off until the timed step and off again after it
# (`--collect-atstart=no` and peer_pytorch.py --callgrind, which toggles it with
# torch._C._valgrind_toggle). One thread (OMP_NUM_THREADS=1 and --threads 1) with passive
# OpenMP waits, so the count is repeatable.
#
# valgrind 3.19 does not decode AVX-512, which the default -march=native build uses, so bulwark is
# counted from a CPU-only build for x86-64-v3 (AVX2 + FMA), made in --build (default
# build-callgrind) when it is missing:
#   cmake -S . -B build-callgrind -DBULWARK_CUDA=OFF -DBULWARK_NATIVE=OFF \
#         -DCMAKE_CXX_FLAGS=-march=x86-64-v3 -DBULWARK_TESTS=OFF
#   cmake --build build-callgrind --target bulwark-bench
# OpenBLAS and PyTorch pick their kernels from the CPUID that valgrind shows them (no AVX-512
# either), so both sides are counted on the same instruction set.
# Defaults: wong_small (PGD-10) and cnn7 (FGSM-RS) at batch 128; cnn7 takes minutes a side.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
build="$root/build-callgrind" py=/usr/bin/python3 batch=128 peer=1 json=0
models=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --model) models+=("$2"); shift 2 ;;
    --batch) batch="$2"; shift 2 ;;
    --build) build="$2"; shift 2 ;;
    --python) py="$2"; shift 2 ;;
    --no-peer) peer=0; shift ;;
    --json) json=1; shift ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "callgrind_step.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
[[ ${#models[@]} -gt 0 ]] || models=(wong_small cnn7)
command -v valgrind > /dev/null || { echo "callgrind_step.sh: valgrind is not installed (apt-get install valgrind)" >&2; exit 2; }
if [[ ! -x "$build/bulwark-bench" ]]; then
  echo "callgrind_step.sh: building bulwark-bench for x86-64-v3 in $build" >&2
  cmake -S "$root" -B "$build" -DBULWARK_CUDA=OFF -DBULWARK_NATIVE=OFF -DCMAKE_CXX_FLAGS=-march=x86-64-v3 \
    -DBULWARK_TESTS=OFF > /dev/null
  cmake --build "$build" -j2 --target bulwark-bench > /dev/null
fi
if [[ $peer == 1 ]] && ! "$py" -c 'import torch' 2> /dev/null; then
  echo "callgrind_step.sh: $py has no torch (Debian: apt-get install python3-torch); counting bulwark only" >&2
  peer=0
fi

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
export OMP_NUM_THREADS=1 OMP_WAIT_POLICY=passive

# The instructions callgrind counted for a command (all its threads), from its log; callgrind
# options first, then "--", then the command.
count() {
  local log="$scratch/log" opts=()
  while [[ "$1" != "--" ]]; do opts+=("$1"); shift; done
  shift
  valgrind --tool=callgrind "${opts[@]}" --callgrind-out-file="$scratch/out" --log-file="$log" "$@" > /dev/null
  sed -n 's/.*Collected : \([0-9]*\).*/\1/p' "$log" | tail -1
}

# Instructions of one steady-state step: (warm-up + 2 steps) - (warm-up + 1 step).
step_instructions() {  # command... (the step count is appended as "--iters K")
  local one two
  one=$(count -- "$@" --iters 1)
  two=$(count -- "$@" --iters 2)
  echo $((two - one))
}

[[ $json == 1 ]] || printf '%-12s %16s %16s %8s\n' model "bulwark Ir" "PyTorch Ir" ratio
for m in "${models[@]}"; do
  ours=$(step_instructions "$build/bulwark-bench" train-step --model "$m" --batch "$batch" --threads 1 --warmup 1)
  theirs=""
  if [[ $peer == 1 ]]; then
    theirs=$(count --collect-atstart=no -- "$py" "$here/peer_pytorch.py" --model "$m" --batch "$batch" --threads 1 \
      --warmup 1 --iters 1 --callgrind)
  fi
  if [[ $json == 1 ]]; then
    printf '{"model": "%s", "batch": %s, "bulwark_instructions": %s, "pytorch_instructions": %s}\n' \
      "$m" "$batch" "$ours" "${theirs:-null}"
  else
    ratio="-"
    [[ -n "$theirs" ]] && ratio=$(awk -v a="$ours" -v b="$theirs" 'BEGIN { printf "%.2fx", a / b }')
    printf '%-12s %16s %16s %8s\n' "$m" "$ours" "${theirs:--}" "$ratio"
  fi
done

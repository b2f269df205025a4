#!/usr/bin/env bash
# On a machine with an NVIDIA GPU: the test suite on the real CUDA backend, then the GPU's own
# figures beside the cost model's (docs/kernels.md, "On a real GPU").
#
#   cmake -S . -B build -DBULWARK_GPU_TESTS=ON && cmake --build build -j
#   bash bench/gpu_check.sh [--build DIR] [--out DIR] [--jobs J] [--tests REGEX-TAGS] [--skip-tests] [--skip-bench]
#
# 1. Every test case tagged [cuda] or [ops] (Catch2 tags; --tests changes them) runs in its own
#    process of bulwark_tests_gpu (the test sources linked with the real backend instead of the
#    emulator), J at a time, so one that faults the GPU cannot fail the others. The emulator's
#    own cases (record-only mode, the emulated kernel source) are listed apart: on a GPU they
#    fail by design. Each case's log goes to OUT/tests/.
# 2. `bulwark-bench gpu-model --time 20`: each method's measured step on this GPU beside the
#    modelled H100 time, for our kernels in FP32 and TF32 and for cuBLAS/cuDNN; then the small
#    models' attack steps fused (--fused-attack) and layered, which settles `--fused-attack auto`.
# 3. `bulwark-bench kernels` GPU rows: our GEMM and convolutions beside cuBLAS and cuDNN.
# 4. The PyTorch peer of the same steps on the same GPU (bench/peer_pytorch.py --device cuda),
#    when python3 has torch with CUDA.
# 5. One epoch of the default job on the GPU (`bulwark train --device cuda --epochs 1`).
# The summary is printed last and written to OUT/summary.txt.
set -uo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
build="$root/build" out="$root/runs/gpu_check" jobs=8 tags="[cuda],[ops]" run_tests=1 run_bench=1
while [[ $# -gt 0 ]]; do
  case "$1" in
    --build) build="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --jobs) jobs="$2"; shift 2 ;;
    --tests) tags="$2"; shift 2 ;;
    --skip-tests) run_tests=0; shift ;;
    --skip-bench) run_bench=0; shift ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
rm -f "$out/results.tsv"
mkdir -p "$out/tests"
summary="$out/summary.txt"
: > "$summary"
say() { echo "$*" | tee -a "$summary"; }

command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader | tee "$out/gpu.txt"
say "gpu_check: $(cat "$out/gpu.txt" 2> /dev/null || echo 'no nvidia-smi'), build $build"

# Cases that test the emulator itself (they REQUIRE cuda::emulated() or its record-only mode).
emulator_only="record-only|under the emulator|allocator reuses freed blocks|'ours' and 'auto' run our kernels|counted by hand"

if [[ $run_tests == 1 ]]; then
  tests="$build/bulwark_tests_gpu"
  [[ -x "$tests" ]] || { echo "gpu_check.sh: $tests not built (cmake -DBULWARK_GPU_TESTS=ON)" >&2; exit 2; }
  "$tests" --list-test-names-only "$tags" | sed '/^$/d' | sed 's/^ *//' > "$out/test_names.txt"
  total=$(wc -l < "$out/test_names.txt")
  start=$(date +%s)
  # One process a case; a case's name is passed whole (Catch2 matches names exactly, with
  # commas and brackets escaped).
  tr '\n' '\0' < "$out/test_names.txt" | xargs -0 -P "$jobs" -I{} bash -c '
    name="$1"; tests="$2"; dir="$3"
    safe=$(printf "%s" "$name" | tr -c "A-Za-z0-9._-" "_" | cut -c1-120)
    esc=$(printf "%s" "$name" | sed "s/\\\\/\\\\\\\\/g; s/,/\\\\,/g; s/\\[/\\\\[/g; s/\\]/\\\\]/g")
    t0=$(date +%s%N)
    timeout 300 "$tests" "$esc" > "$dir/$safe.log" 2>&1; rc=$?
    t1=$(date +%s%N)
    printf "%s\t%s\t%s\n" "$rc" "$name" "$(( (t1 - t0) / 1000000 ))" >> "$dir/../results.tsv"
  ' _ {} "$tests" "$out/tests"
  passed=$(awk -F'\t' '$1 == 0' "$out/results.tsv" | wc -l)
  say "tests on the GPU: $passed of $total cases passed in $(( $(date +%s) - start )) s ($tags, $jobs at a time)"
  awk -F'\t' '$1 != 0 {print $2}' "$out/results.tsv" | while read -r name; do
    if [[ "$name" =~ $emulator_only ]]; then say "  failed (emulator-only case): $name"; else say "  FAILED: $name"; fi
  done
  sort -t$'\t' -k3 -g -r "$out/results.tsv" | head -5 | awk -F'\t' '{printf "  slowest: %.1f s  %s\n", $3 / 1000, $2}' | tee -a "$summary"
fi

if [[ $run_bench == 1 ]]; then
  bench="$build/bulwark-bench"
  for variant in "ours fp32" "ours tf32" "ours bf16" "vendor fp32"; do
    set -- $variant
    say ""
    say "gpu-model --time 20 --kernel-source $1 --precision $2:"
    timeout 240 "$bench" gpu-model --time 20 --kernel-source "$1" --precision "$2" \
      --method standard --method pgd:steps=10 --method fgsm-rs --method ibp --method crown-ibp 2>&1 | tee -a "$summary"
  done
  say ""
  say "gpu-model --time 20, attacks fused (--fused-attack) against layered, wong_small and wong_large:"
  for fused in "" "--fused-attack"; do
    timeout 120 "$bench" gpu-model --time 20 $fused --model wong_small --model wong_large \
      --method pgd:steps=10 --method fgsm-rs 2>&1 | tee -a "$summary"
  done
  say ""
  timeout 180 "$bench" kernels --benchmark_filter='cuda|gpu|ours|vendor|cublas|cudnn' --benchmark_min_time=0.05 \
    > "$out/kernels.txt" 2>&1
  say "bulwark-bench kernels (GPU rows): $(grep -c '^BM\|^[a-z]' "$out/kernels.txt") lines in $out/kernels.txt"
  if python3 -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2> /dev/null; then
    for tf32 in "" "--tf32"; do
      say ""
      timeout 120 python3 "$root/bench/peer_pytorch.py" --device cuda $tf32 --iters 20 --warmup 3 2>&1 | tee -a "$summary"
    done
  else
    say "peer: python3 has no torch with CUDA; skipped"
  fi
  say ""
  say "default job, one epoch on the GPU:"
  timeout 300 "$build/bulwark" train --device cuda --epochs 1 --out "$out/train" 2>&1 | tr '\r' '\n' | grep -v '^ *[0-9]*%\|ETA' \
    | tail -25 | tee -a "$summary"
fi

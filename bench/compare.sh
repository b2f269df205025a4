#!/usr/bin/env bash
# bulwark vs PyTorch on the same adversarial training step (bench/train_step.h,
# bench/peer_pytorch.py): prints model, bulwark ms/step, pytorch ms/step, ratio (bulwark/pytorch).
#
#   bench/compare.sh [--bench PATH] [--models "wong_small cnn7"] [--rounds R] [--iters N] [--threads T]
#                    [--torch-venv DIR] [--bf16]
#
# --torch-venv DIR: also time a second PyTorch (a newer one from PyPI, installed in the venv DIR
# with DIR/bin/pip install torch) in the same rounds; its columns come after the others, with
# bulwark's ratio to the faster of the two PyTorch versions.
# --bf16: also time bulwark with --precision bf16 (the direct convolutions multiply in BF16 on a
# CPU with AVX512-BF16), reported in a table of its own, its rate against the FP32 sgemm peak.
#
# The two run alternately, R rounds per model, and each side's figure is the minimum over rounds
# of its per-round median: on a shared machine other jobs only ever add time, so the minimum is
# the closest to what each side costs, and alternating exposes both to the same background load.
# The CPU columns are process CPU time per step (both threads); with OMP_WAIT_POLICY=passive
# (set here unless already set) idle workers sleep, so CPU time counts work, not waiting, and
# is the steadier figure when other jobs load the machine.
# After those columns: bulwark's GFLOP/s on the step (its conv and linear FLOPs over its median
# time) and that as a fraction of this machine's sgemm peak, measured in the same run
# (`bulwark-bench kernels`' 1024^3 sgemm row on the same threads, best of its repetitions); then
# each side's peak resident memory (getrusage's ru_maxrss of a process that ran one model).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
bench="${BULWARK_BENCH:-$here/../build/bulwark-bench}"
models="wong_small cnn7"
rounds=2
iters=5
threads=2
venv=""
bf16=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --bench) bench="$2"; shift 2 ;;
    --models) models="$2"; shift 2 ;;
    --rounds) rounds="$2"; shift 2 ;;
    --iters) iters="$2"; shift 2 ;;
    --threads) threads="$2"; shift 2 ;;
    --torch-venv) venv="$2"; shift 2 ;;
    --bf16) bf16=1; shift ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "compare.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
if [[ -n "$venv" && ! -x "$venv/bin/python" ]]; then
  echo "compare.sh: no python at $venv/bin/python; make the venv (python3 -m venv $venv && $venv/bin/pip install torch)" >&2
  exit 1
fi
if [[ ! -x "$bench" ]]; then
  echo "compare.sh: no bulwark-bench at $bench; build it (cmake --build build --target bulwark-bench) or pass --bench PATH" >&2
  exit 1
fi

export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-passive}"
results="$(mktemp)"
trap 'rm -f "$results"' EXIT
sgemm_peak() {  # FLOP/s of the 1024^3 sgemm row
  "$bench" kernels --threads="$threads" --benchmark_filter='^cpu_gemm/square_1024/' --benchmark_min_time=1 \
    --benchmark_repetitions=3 --benchmark_format=json 2> /dev/null |
    /usr/bin/python3 -c 'import json, sys; print(max(b["FLOPS"] for b in json.load(sys.stdin)["benchmarks"] if "FLOPS" in b))'
}
peak_before="$(sgemm_peak)"
for model in $models; do
  for ((r = 0; r < rounds; ++r)); do
    "$bench" train-step --model "$model" --threads "$threads" --iters "$iters" --warmup 1 --json >>"$results"
    /usr/bin/python3 "$here/peer_pytorch.py" --model "$model" --threads "$threads" --iters "$iters" --warmup 1 --json >>"$results"
    "$bench" eval-step --model "$model" --threads "$threads" --iters "$iters" --warmup 1 --json >>"$results"
    /usr/bin/python3 "$here/peer_pytorch.py" --eval --batch 256 --model "$model" --threads "$threads" --iters "$iters" \
      --warmup 1 --json >>"$results"
    if [[ -n "$venv" ]]; then  # the second PyTorch's rows, told apart by their impl
      for mode in "" --eval; do
        "$venv/bin/python" "$here/peer_pytorch.py" $mode --model "$model" --threads "$threads" --iters "$iters" \
          --warmup 1 --json | sed 's/"impl": "pytorch"/"impl": "pytorch_venv"/' >>"$results"
      done
    fi
    if ((bf16)); then
      "$bench" train-step --model "$model" --threads "$threads" --iters "$iters" --warmup 1 --precision bf16 --json |
        sed 's/"impl": "bulwark"/"impl": "bulwark_bf16"/' >>"$results"
    fi
  done
done

peak_after="$(sgemm_peak)"

/usr/bin/python3 - "$results" "$threads" "$peak_before" "$peak_after" <<'EOF'
import json, os, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if line.startswith("{")]
peak = max(float(sys.argv[3]), float(sys.argv[4]))
best, flops, rss = {}, {}, {}
evals = [r for r in rows if r.get("mode") == "eval"]
rows = [r for r in rows if r.get("mode") != "eval"]
for r in rows:
    for field in ("ms_per_step", "cpu_ms_per_step"):
        key = (r["model"], r["impl"], field)
        best[key] = min(best.get(key, float("inf")), r[field])
    if "step_gflop" in r:
        flops[r["model"]] = r["step_gflop"] * 1e9
    rss[(r["model"], r["impl"])] = max(rss.get((r["model"], r["impl"]), 0), r.get("peak_rss_mib", 0))
models = list(dict.fromkeys(r["model"] for r in rows))
print(f"adversarial training step, batch {rows[0]['batch']}, {sys.argv[2]} threads, "
      f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; sgemm 1024^3 peak "
      f"{float(sys.argv[3]) / 1e9:.1f} GFLOP/s before the steps, {float(sys.argv[4]) / 1e9:.1f} after")
versions = {r["impl"]: r.get("version", "") for r in rows}
newer = "pytorch_venv" in versions
print(f"{'model':<12} {'bulwark ms':>11} {'pytorch ms':>11} {'ratio':>7}   "
      f"{'bulwark CPU ms':>15} {'pytorch CPU ms':>15} {'CPU ratio':>9}   {'GFLOP/s':>8} {'of peak':>7}   "
      f"{'bulwark MiB':>11} {'pytorch MiB':>11}" +
      (f"   {'pytorch ' + versions['pytorch_venv'] + ' ms':>22} {'ratio to faster':>15}" if newer else ""))
for m in models:
    b, p = best[(m, "bulwark", "ms_per_step")], best[(m, "pytorch", "ms_per_step")]
    bc, pc = best[(m, "bulwark", "cpu_ms_per_step")], best[(m, "pytorch", "cpu_ms_per_step")]
    rate = flops.get(m, 0) / (b * 1e-3)
    line = (f"{m:<12} {b:11.1f} {p:11.1f} {b / p:7.2f}   {bc:15.1f} {pc:15.1f} {bc / pc:9.2f}   "
            f"{rate / 1e9:8.1f} {100 * rate / peak:6.0f}%   {rss.get((m, 'bulwark'), 0):11.0f} {rss.get((m, 'pytorch'), 0):11.0f}")
    if newer:
        n = best[(m, "pytorch_venv", "ms_per_step")]
        line += f"   {n:22.1f} {b / min(p, n):15.2f}"
    print(line)
if "bulwark_bf16" in versions:
    print(f"\nbulwark at --precision bf16 (convolution inputs rounded to BF16, AVX512-BF16 products), same rounds")
    print(f"{'model':<12} {'bf16 ms':>11} {'fastest pytorch ms':>19} {'ratio':>7}   {'GFLOP/s':>8} {'of fp32 peak':>12}")
    for m in models:
        bb = best[(m, "bulwark_bf16", "ms_per_step")]
        fastest_torch = min(v for (mm, impl, field), v in best.items()
                            if mm == m and field == "ms_per_step" and impl.startswith("pytorch"))
        rate = flops.get(m, 0) / (bb * 1e-3)
        print(f"{m:<12} {bb:11.1f} {fastest_torch:19.1f} {bb / fastest_torch:7.2f}   {rate / 1e9:8.1f} {100 * rate / peak:11.0f}%")
fastest = {}
for r in evals:
    for field in ("clean_images_per_s", "pgd_step_images_per_s"):
        key = (r["model"], r["impl"], field)
        fastest[key] = max(fastest.get(key, 0), r[field])
if evals:
    print(f"\nevaluation in eval mode, batch {evals[0]['batch']}: clean forward and one PGD step, images/s "
          f"(best over rounds of each side's median)")
    print(f"{'model':<12} {'bulwark clean':>14} {'pytorch clean':>14} {'ratio':>7}   {'bulwark PGD':>12} "
          f"{'pytorch PGD':>12} {'ratio':>7}")
    for m in models:
        bc, pc = fastest[(m, "bulwark", "clean_images_per_s")], fastest[(m, "pytorch", "clean_images_per_s")]
        bp, pp = fastest[(m, "bulwark", "pgd_step_images_per_s")], fastest[(m, "pytorch", "pgd_step_images_per_s")]
        print(f"{m:<12} {bc:14.0f} {pc:14.0f} {bc / pc:7.2f}   {bp:12.0f} {pp:12.0f} {bp / pp:7.2f}")
EOF

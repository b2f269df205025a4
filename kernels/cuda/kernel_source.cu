// Which implementation runs behind cuda::gemm and cuda::conv2d_*: the process-wide setting, the
// per-shape automatic choice, and the event stopwatch that both the choice and the benches use
// (kernel_source.h explains the design). Host code only, compiled into both backends; in the
// emulated one there is no vendor to choose, so automatic means ours and vendor is an error.
#include <atomic>
#include <limits>
#include <stdexcept>
#include <string>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/kernel_source.h"

namespace bulwark::cuda {

namespace {

// How automatic times each source on a new shape: the first launches pay for one-time work
// (module loading, cuBLAS/cuDNN handles and heuristics), so two untimed, then three timed.
constexpr int kChoiceWarmup = 2, kChoiceRuns = 3;

std::atomic<KernelSource> g_kernel_source{KernelSource::automatic};

struct EventPair {
  cudaEvent_t start = nullptr, stop = nullptr;
  EventPair() {
    check_cuda(cudaEventCreate(&start), "cudaEventCreate");
    check_cuda(cudaEventCreate(&stop), "cudaEventCreate");
  }
  ~EventPair() {
    cudaEventDestroy(stop);
    cudaEventDestroy(start);
  }
  EventPair(const EventPair&) = delete;
  EventPair& operator=(const EventPair&) = delete;
};

struct ScratchOutput {
  float* data;
  explicit ScratchOutput(int64_t count) : data(static_cast<float*>(device_malloc(size_t(count) * sizeof(float)))) {}
  ~ScratchOutput() { device_free(data); }
  ScratchOutput(const ScratchOutput&) = delete;
  ScratchOutput& operator=(const ScratchOutput&) = delete;
};

KernelChoiceCache& kernel_choice_cache() {
  static KernelChoiceCache cache;
  return cache;
}

// Milliseconds per launch of `source` on a scratch copy of the output, so the caller's output is
// neither overwritten by a loser nor accumulated into by repeated runs (beta != 0). A vendor that
// throws (cuDNN has no algorithm for the shape, say) is +infinity: automatic then runs ours,
// which is what it would have to do anyway; a failure of ours propagates.
double time_on_scratch(KernelSource source, const RoutedOutput& out, const SourceLaunch& launch) {
  ScratchOutput scratch(out.count);
  if (out.read_too) copy_device(scratch.data, out.data, size_t(out.count) * sizeof(float));
  try {
    return time_per_launch_ms([&] { launch(source, scratch.data); }, kChoiceWarmup, kChoiceRuns);
  } catch (const std::runtime_error&) {
    if (source == KernelSource::ours) throw;
    return std::numeric_limits<double>::infinity();
  }
}

KernelSource source_for(const std::function<std::string()>& key, const RoutedOutput& out,
                        const SourceLaunch& launch) {
  // The vendor twins (cuBLAS, cuDNN) run FP32 here: a tf32 or bf16 GEMM is ours whatever the
  // setting, so that --precision means the same arithmetic on every launch.
  if (math_precision() != MathPrecision::fp32) return KernelSource::ours;
  const KernelSource setting = kernel_source();
  if (setting != KernelSource::automatic) return setting;
  if (emulated()) return KernelSource::ours;  // no vendor library to compare with
  return kernel_choice_cache().choose(key(), [&](KernelSource s) { return time_on_scratch(s, out, launch); });
}

}  // namespace

[[noreturn]] void throw_vendor_unavailable() {
  throw std::invalid_argument(
      "kernel source 'vendor' is not available here: cuBLAS/cuDNN exist only in the GPU build (nvcc), and this is "
      "the emulated CUDA backend, which runs bulwark's own kernels on the CPU; choose 'ours' or 'auto'");
}

void set_kernel_source(KernelSource source) {
  if (source == KernelSource::vendor && emulated()) throw_vendor_unavailable();
  g_kernel_source.store(source);
}

KernelSource kernel_source() { return g_kernel_source.load(); }

namespace {
std::atomic<MathPrecision> g_math_precision{MathPrecision::fp32};
}
void set_math_precision(MathPrecision precision) { g_math_precision.store(precision); }
MathPrecision math_precision() { return g_math_precision.load(); }

const char* kernel_source_name(KernelSource source) {
  switch (source) {
    case KernelSource::automatic: return "auto";
    case KernelSource::ours: return "ours";
    case KernelSource::vendor: return "vendor";
  }
  throw std::invalid_argument("kernel_source_name: not a KernelSource value");
}

KernelSource parse_kernel_source(const std::string& name) {
  for (KernelSource s : {KernelSource::automatic, KernelSource::ours, KernelSource::vendor})
    if (name == kernel_source_name(s)) return s;
  throw std::invalid_argument("unknown kernel source '" + name + "': choose auto, ours or vendor");
}

double time_per_launch_ms(const std::function<void()>& launch, int warmup, int runs) {
  if (runs < 1) throw std::invalid_argument("time_per_launch_ms: runs must be >= 1, got " + std::to_string(runs));
  for (int i = 0; i < warmup; ++i) launch();
  EventPair events;
  check_cuda(cudaEventRecord(events.start, current_stream()), "cudaEventRecord");
  for (int i = 0; i < runs; ++i) launch();
  check_cuda(cudaEventRecord(events.stop, current_stream()), "cudaEventRecord");
  check_cuda(cudaEventSynchronize(events.stop), "cudaEventSynchronize");
  float ms = 0;
  check_cuda(cudaEventElapsedTime(&ms, events.start, events.stop), "cudaEventElapsedTime");
  return double(ms) / runs;
}

KernelSource KernelChoiceCache::choose(const std::string& key, const Timer& time_ms) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (const auto it = winners_.find(key); it != winners_.end()) return it->second;
  const double ours_ms = time_ms(KernelSource::ours);
  const double vendor_ms = time_ms(KernelSource::vendor);
  const KernelSource winner = vendor_ms < ours_ms ? KernelSource::vendor : KernelSource::ours;
  winners_.emplace(key, winner);
  return winner;
}

size_t KernelChoiceCache::size() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return winners_.size();
}

std::string kernel_key(const char* op, std::initializer_list<int64_t> dims) {
  std::string key = op;
  char sep = ':';
  for (int64_t d : dims) {
    key += sep;
    key += std::to_string(d);
    sep = ',';
  }
  return key;
}

void launch_routed(const std::function<std::string()>& key, const RoutedOutput& out, const SourceLaunch& launch) {
  if (out.count <= 0) return;  // nothing to compute, nothing to time
  launch(source_for(key, out, launch), out.data);
}

}  // namespace bulwark::cuda

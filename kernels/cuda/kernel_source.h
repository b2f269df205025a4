#pragma once
// How cuda::gemm and cuda::conv2d_* pick between our kernels and the vendor's (the setting is
// declared in cuda_kernels.h; both implementations in vendor.h). Plain host C++: compiled into
// both backends, and included by the benches and the tests.
//
// KernelSource::automatic is torch.backends.cudnn.benchmark for our two implementations: the
// first launch of a problem shape times ours and the vendor's on the device and caches the
// faster under an (op, shape) key; every later launch of that shape runs the winner with no
// timing and no host sync. The first launch of each shape therefore costs a few extra runs of
// both and one host sync; a training run has a handful of distinct shapes, so this is paid in
// the first step. Since the winner comes from a measurement, two runs may choose differently
// when the two are within noise: pick ours or vendor for bitwise-reproducible GPU runs.
//
// KernelChoiceCache is the decision alone (cache by key, faster wins, a tie goes to ours) with
// the timer injected, so the tests exercise it under the emulator with made-up timings.
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <map>
#include <mutex>
#include <string>

#include "kernels/cuda/cuda_kernels.h"

namespace bulwark::cuda {

// Milliseconds per launch of `launch`: `warmup` untimed launches, then `runs` launches between
// two cudaEvents recorded on the backend's stream, divided by `runs` (>= 1). Back-to-back
// launches overlap each launch's host overhead with the previous one's execution, so this is the
// device throughput, the figure that matters inside a training step. Waits for the device.
double time_per_launch_ms(const std::function<void()>& launch, int warmup, int runs);

// The per-shape winners of KernelSource::automatic.
class KernelChoiceCache {
 public:
  // Milliseconds per launch of one source on the key's problem. A source that cannot run the
  // problem reports +infinity.
  using Timer = std::function<double(KernelSource source)>;

  // The cached winner for `key`; the first time, times ours and then the vendor's (one call of
  // `time_ms` each), caches the faster and returns it. Ties (and NaN) go to ours: it is the code
  // this project can read, test and fix. Thread-safe; the timing runs under the lock, so each
  // key is timed once.
  KernelSource choose(const std::string& key, const Timer& time_ms);
  size_t size() const;

 private:
  mutable std::mutex mutex_;
  std::map<std::string, KernelSource> winners_;
};

// The cache key of one problem: the op's name and every dimension that changes the kernels'
// speed, e.g. "gemm:0,1,128,512,32768,...".
std::string kernel_key(const char* op, std::initializer_list<int64_t> dims);

// The output of a routed launch: `count` floats at `data`. `read_too` when the op reads it as
// well (GEMM with beta != 0): then timing runs start from a copy of it.
struct RoutedOutput {
  float* data;
  int64_t count;
  bool read_too;
};

// One launch of the given implementation (ours or vendor, never automatic), writing to `out`.
using SourceLaunch = std::function<void(KernelSource source, float* out)>;

// What every routed launcher does: nothing for an empty output; otherwise picks the source by
// kernel_source() (for automatic on a GPU: the cached winner for key(), timed on scratch copies
// of the output the first time, so the caller's output is written exactly once) and runs
// launch(source, out.data). `key` is only called on the automatic path.
void launch_routed(const std::function<std::string()>& key, const RoutedOutput& out, const SourceLaunch& launch);

// Throws the std::invalid_argument that says cuBLAS/cuDNN exist only in the GPU build: what
// choosing the vendor, or calling a *_vendor launcher, does in the emulated backend.
[[noreturn]] void throw_vendor_unavailable();

}  // namespace bulwark::cuda

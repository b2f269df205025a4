#pragma once
// What one kernel launch costs a GPU, stated at the launch site: the launch's floating-point
// operations and the DRAM bytes it must move, from formulas over the launch's sizes (each kernel
// file's opening comment derives them). BW_LAUNCH_COSTED (launch.h) passes them with the launch;
// an observer installed on the launching thread sees every launch with its cost, on the GPU build
// and under the emulator alike. bulwark-bench gpu-model sums them into a modelled time per
// training step (docs/kernels.md, "A GPU cost model"):
//
//     time = sum over launches of max(flops / peak FLOP/s, bytes / DRAM bandwidth) + overhead
//
// The conventions, so that formulas are comparable between kernels:
//   flops  floating-point operations, an FMA counting 2; comparisons, min/max, sign and
//          transcendental functions count 1 each; integer index math and Philox are not counted
//          (they are not what a roofline's FLOP/s measures);
//   bytes  every input element read once and every output element written once (the ideal a
//          cache-perfect kernel reaches); a broadcast operand counts its own elements, not the
//          output's. Re-reads that a kernel makes through L2 are not DRAM traffic.
// A launch without a stated cost (plain BW_LAUNCH: the emulator's own tests) reports -1 for both.
#include <cstdint>
#include <string>
#include <string_view>

namespace bulwark {

struct LaunchCost {
  double flops = -1;  // -1: not stated
  double bytes = -1;
  bool stated() const { return flops >= 0 && bytes >= 0; }
};

// n elements, each reading `reads` and writing `writes` values of `value_bytes`, with
// `flops_each` operations.
constexpr LaunchCost elementwise_cost(int64_t n, int reads, int writes, double flops_each, int value_bytes = 4) {
  return {flops_each * static_cast<double>(n), static_cast<double>(n) * (reads + writes) * value_bytes};
}

// An M x N x K tile loop (C[M, N] = A[M, K] B[K, N]: 2MNK flops, `products` multiply-add
// chains of them, 2 for the interval loops' two accumulators) moving `f32_elements` floats of
// DRAM in all: what it reads (the image, for an implicit GEMM, not the K x N matrix) and writes.
constexpr LaunchCost gemm_cost(int64_t m, int64_t n, int64_t k, double f32_elements, int products = 1) {
  return {2.0 * products * static_cast<double>(m) * static_cast<double>(n) * static_cast<double>(k),
          4.0 * f32_elements};
}

struct LaunchEvent {
  std::string_view name;  // the kernel as written at the launch site (normalize_launch_name)
  uint64_t blocks = 0;
  uint32_t threads_per_block = 0;
  LaunchCost cost;
};

// Sees each launch of the thread it is installed on (ObserveLaunches), before the kernel runs.
class LaunchObserver {
 public:
  virtual ~LaunchObserver() = default;
  virtual void launched(const LaunchEvent& event) = 0;
};

inline thread_local LaunchObserver* t_launch_observer = nullptr;

// Installs an observer on the calling thread for the scope's lifetime (nesting restores the outer).
class ObserveLaunches {
 public:
  explicit ObserveLaunches(LaunchObserver& observer) : previous_(t_launch_observer) { t_launch_observer = &observer; }
  ~ObserveLaunches() { t_launch_observer = previous_; }
  ObserveLaunches(const ObserveLaunches&) = delete;
  ObserveLaunches& operator=(const ObserveLaunches&) = delete;

 private:
  LaunchObserver* previous_;
};

inline void notify_launch(const char* name, uint64_t blocks, uint32_t threads_per_block, const LaunchCost& cost) {
  if (t_launch_observer) t_launch_observer->launched(LaunchEvent{name, blocks, threads_per_block, cost});
}

// "( gemm_tiles<A, B> )" -> "gemm_tiles<A,B>": BW_LAUNCH stringifies the kernel expression as
// written; whitespace and enclosing parentheses go.
inline std::string normalize_launch_name(std::string_view name) {
  std::string s;
  for (char c : name)
    if (c != ' ' && c != '\t' && c != '\n') s += c;
  while (s.size() >= 2 && s.front() == '(' && s.back() == ')') {
    int depth = 0;
    for (size_t i = 0; i < s.size(); ++i) {
      depth += s[i] == '(' ? 1 : s[i] == ')' ? -1 : 0;
      if (depth == 0 && i + 1 < s.size()) return s;  // "(a)(b)": the outer pair is not one
    }
    s = s.substr(1, s.size() - 2);
  }
  return s;
}

// The kernel a launch belongs to, as its __global__ definition names it:
// "( bulwark::cuda::gemm_tiles<A, B> )" -> "gemm_tiles", "&scale" -> "scale".
inline std::string kernel_family(std::string_view launch_name) {
  std::string s = normalize_launch_name(launch_name);
  if (!s.empty() && s.front() == '&') s.erase(0, 1);
  if (const size_t lt = s.find('<'); lt != std::string::npos) s.resize(lt);
  if (const size_t colons = s.rfind("::"); colons != std::string::npos) s.erase(0, colons + 2);
  return s;
}

}  // namespace bulwark

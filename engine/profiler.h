#pragma once
// Where a step's time goes, op by op: the engine's profiler (`bulwark train --profile`,
// `bulwark-bench train-step --profile`; docs/bench.md, "Profiling a step").
//
// Every kernel call of an op (the engine's one device dispatch, BW_KERNEL) is timed while a
// session is active. A call made by the forward of an op counts as that op's forward; a call made
// while autograd runs the backward of a node counts as the backward of the node's op (so a conv's
// three GEMMs show as conv2d forward and conv2d backward), and the gradient sums between nodes as
// the backward of "autograd (gradient sums)". What no kernel covers (the tape, allocation, the
// host's own loops) is the step's time minus the kernels': reported as such, not hidden.
// The conv and matmul ops state their FLOPs (count_flops) so the table can give GFLOP/s.
//
// The cost when no session is active: one relaxed atomic load per kernel call. On the CPU
// backend the times are the kernels' own (they are synchronous). On CUDA each call is bracketed
// by two CUDA events and an NVTX range (Nsight Systems shows the ops on its timeline) and nothing
// waits: the end of the step synchronizes once and reads each call's time from its events, the
// device's own clock (a gap the device spends waiting for the next launch falls in that call).
#include <atomic>
#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace bulwark::profiler {

struct OpRow {
  std::string op;
  int64_t fwd_calls = 0, bwd_calls = 0;
  double fwd_seconds = 0, bwd_seconds = 0;
  double fwd_flops = 0, bwd_flops = 0;  // stated by the ops that count them (conv2d, matmul); 0 elsewhere
  double seconds() const { return fwd_seconds + bwd_seconds; }
};

struct TraceEvent {
  std::string op;
  bool backward = false;
  double start_us = 0, duration_us = 0;  // from the start of the traced step
};

struct Report {
  int64_t steps = 0;
  double seconds = 0;          // wall time of the profiled steps, all of them
  std::vector<OpRow> ops;      // every op seen, the most time first; totals over all the steps
  std::vector<TraceEvent> trace;  // the kernel calls of the traced step, in order (when asked)
  double kernel_seconds() const;
  // The per-step table (ms a step, calls a step, share of the step, GFLOP/s), one op a line.
  std::string table(size_t max_rows = 25) const;
  nlohmann::ordered_json to_json() const;
  // Chrome's trace-event format (chrome://tracing, ui.perfetto.dev): one complete event ("X") a call.
  nlohmann::ordered_json chrome_trace() const;
};

namespace detail {
extern std::atomic<bool> g_active;
void begin_kernel(const char* op, bool cuda);
void end_kernel();
}  // namespace detail

// Collects over the steps between start() and stop(): only the kernel calls inside a Step scope
// count (a run's validation between its steps does not). `trace_step`: the 0-based step whose
// calls are also kept in order for a trace (-1: none).
void start(int64_t trace_step = -1);
Report stop();
bool active();

// One step of the profiled loop: its wall time is the step time of the report.
class Step {
 public:
  Step();
  ~Step();
  Step(const Step&) = delete;
  Step& operator=(const Step&) = delete;

 private:
  std::chrono::steady_clock::time_point start_;
  bool on_;
};

// The hook of BW_KERNEL: times one kernel call of `op` (a string literal) on the CPU or CUDA.
class KernelScope {
 public:
  KernelScope(const char* op, bool cuda) : on_(detail::g_active.load(std::memory_order_relaxed)) {
    if (on_) detail::begin_kernel(op, cuda);
  }
  ~KernelScope() {
    if (on_) detail::end_kernel();
  }
  KernelScope(const KernelScope&) = delete;
  KernelScope& operator=(const KernelScope&) = delete;

 private:
  bool on_;
};

// Autograd's hook: the kernel calls inside count as the backward of `op`; made without one, as
// the sums of the gradients between nodes ("autograd (gradient sums)").
class BackwardScope {
 public:
  BackwardScope();
  explicit BackwardScope(const std::string& op);
  ~BackwardScope();
  BackwardScope(const BackwardScope&) = delete;
  BackwardScope& operator=(const BackwardScope&) = delete;

 private:
  const std::string* previous_;
  bool on_;
};

// FLOPs of the next kernel call on this thread (conv2d, matmul), added to its op's row.
void count_flops(double flops);

}  // namespace bulwark::profiler

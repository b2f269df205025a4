#pragma once
// The process-wide settings of the backends, for the layers above the engine (the CLI, the
// trainer): how many CPU threads the kernels use, whether a CUDA device is usable and whether the
// CUDA backend is the CPU emulator, and which implementation the CUDA GEMM and convolution run.
// Nothing above engine/ includes a kernels/ header; these are the handles it gets instead.
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "engine/rng.h"

// LaunchCost, LaunchEvent, LaunchObserver and ObserveLaunches: what every CUDA kernel launch
// states about its work, and how a caller watches the launches of its thread (the GPU cost model).
#include "kernels/emu/launch_cost.h"

namespace bulwark::runtime {

// OpenMP threads of the CPU kernels (BLAS stays single-threaded).
void set_num_threads(int n);
int num_threads();

// Whether the CUDA backend has a usable device; when not, `why` (if given) says what is missing.
bool cuda_available(std::string* why = nullptr);
// True when this build's CUDA backend is the emulator (kernels/emu): its kernels run on the CPU,
// so it is never a GPU, though cuda_available() says true for the tests' sake.
bool cuda_emulated();
// This process's GPU on a host with several: local_rank modulo the device count (a data-parallel
// rank's; engine/comm.h). Before the first allocation; a no-op on the emulator.
void cuda_select_device(int local_rank);
// Waits for the device's queued work (cudaDeviceSynchronize); raises deferred kernel errors.
// Host timers around GPU work need it before they are read.
void cuda_synchronize();
// Free device memory in bytes (cudaMemGetInfo; the emulator's host-memory figure in tests).
int64_t cuda_free_memory();
// The emulator's record-only mode (kernels/emu/execution.h): every launch is validated, counted
// and shown to the thread's LaunchObserver, but no kernel runs, so results are garbage. Returns
// whether the mode is available: false, changing nothing, where kernels run on a GPU.
bool cuda_set_record_only(bool on);

// Which implementation the CUDA GEMM and convolution run: "auto" (time both per shape, keep the
// faster), "ours" or "vendor" (cuBLAS/cuDNN; GPU build only). check_kernel_source throws
// std::invalid_argument naming the choices for any other name; set_kernel_source checks the same
// way and then applies the choice process-wide.
std::vector<std::string> kernel_source_names();
void check_kernel_source(const std::string& name);
void set_kernel_source(const std::string& name);

// The input format of the model's GEMMs and convolutions on both backends (--precision):
// "fp32", or "tf32" / "bf16" inputs with f32 accumulation (tensor cores on a GPU; the same
// rounding before an f32 sgemm on the CPU and the emulator). Process-wide, fp32 by default.
// Sound bounds need fp32 (a rounded product is not an upper bound): the interval kernels ignore
// this, and the certified methods refuse anything else.
std::vector<std::string> math_precision_names();
void set_math_precision(const std::string& name);  // std::invalid_argument naming the choices
std::string math_precision();

// Runs a scope at `name` and restores the previous precision on leaving it.
class MathPrecisionScope {
 public:
  explicit MathPrecisionScope(const std::string& name) : previous_(math_precision()) { set_math_precision(name); }
  ~MathPrecisionScope() { set_math_precision(previous_); }
  MathPrecisionScope(const MathPrecisionScope&) = delete;
  MathPrecisionScope& operator=(const MathPrecisionScope&) = delete;

 private:
  std::string previous_;
};

// A CUDA Graph of a step (cuda::begin_capture in kernels/cuda/cuda_kernels.h): capture() runs
// `step` once with the CUDA backend recording instead of executing, and replay() then runs all
// of it with one launch. The capture executes nothing: a step's host-side effects (counters,
// the generator's position) happen at capture and must be undone and redone per replay by the
// caller; replay() does that for the generator. What a kernel reads when it runs (tensors
// allocated before the capture: weights, optimizer state, the step's input buffers) is read
// afresh by each replay; what the capture allocated lives in the graph's private pool and is
// rewritten by each replay. Random draws from `gen` replay at gen's position each time, so a
// replay draws what an eager step there would; the learning rate and the optimizer's step
// count are given per replay. A step that makes the host wait (item(), a copy to the host)
// cannot be captured: capture() throws CUDA's reason, and the runtime is eager again.
class CudaGraph {
 public:
  CudaGraph();
  ~CudaGraph();
  CudaGraph(const CudaGraph&) = delete;
  CudaGraph& operator=(const CudaGraph&) = delete;
  void capture(Generator& gen, const std::function<void()>& step);  // gen ends where it began
  // Runs the graph; gen advances by the counters the captured step drew.
  void replay(Generator& gen, double lr, int64_t optimizer_step);
  bool captured() const;
  int64_t nodes() const;  // kernels, copies and memsets a replay runs
  void reset();           // back to no graph (its private memory joins the shared cache)

 private:
  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace bulwark::runtime

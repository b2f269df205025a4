#pragma once
// The GPU cost model (bulwark-bench gpu-model; docs/kernels.md, "A GPU cost model"). No machine
// here has a GPU, so what a training step would cost on one is argued from what the emulator can
// count: one batch of a method runs on the CUDA device with every kernel launch observed, each
// launch stating its FLOPs and DRAM bytes (kernels/emu/launch_cost.h), and the step's time is
//
//     sum over launches of max(flops / peak FLOP/s, bytes / DRAM bandwidth) + launch overhead
//
// at the FP32 SIMT peak (every kernel a step runs at the default --precision fp32 is FP32 SIMT;
// the tensor-core peaks are listed for tensor_core.cuh's tf32/bf16 versions), with ~4 us per launch issued eagerly and ~1 us per node
// of a CUDA Graph. A roofline per launch: each launch is bound either by its arithmetic or by
// its traffic, never both, and never faster than its overhead allows. What it leaves out (and so
// flatters): partial waves of a small grid, L2 misses beyond the ideal traffic, the cost of
// integer index math, and cuBLAS/cuDNN (the model is of bulwark's own kernels).
#include <cstdint>
#include <string>
#include <vector>

#include "engine/runtime.h"
#include "engine/tensor.h"
#include "models/zoo.h"
#include "robust/method.h"
#include "robust/registry.h"

namespace bulwark::training {

struct GpuSpec {
  const char* name;
  double fp32, tf32, bf16;  // dense peak FLOP/s (tensor-core TF32 and BF16 without sparsity)
  double bandwidth;         // DRAM bytes/s
};
inline constexpr GpuSpec kH100{"H100 SXM", 67e12, 495e12, 989e12, 3.35e12};
inline constexpr GpuSpec kA100{"A100 SXM", 19.5e12, 156e12, 312e12, 2.0e12};
inline constexpr double kEagerLaunchSeconds = 4e-6;  // host issue + launch latency, one kernel at a time
inline constexpr double kGraphNodeSeconds = 1e-6;    // per kernel node of a replayed CUDA Graph

struct RecordedLaunch {
  std::string name;  // normalized: "gemm_tiles<...>" as written at BW_LAUNCH_COSTED
  LaunchCost cost;
  uint64_t blocks = 0;
  uint32_t threads_per_block = 0;
};

// Keeps every launch of the thread it observes, in order.
class LaunchLog : public LaunchObserver {
 public:
  void launched(const LaunchEvent& event) override;
  std::vector<RecordedLaunch> launches;
};

// The modelled seconds of `launches` on `gpu` at its FP32 peak, with `overhead` seconds a launch.
double modelled_seconds(const std::vector<RecordedLaunch>& launches, const GpuSpec& gpu, double overhead);

struct StepRecord {
  std::vector<RecordedLaunch> launches;
  robust::PassCounter passes;        // of the recorded step
  std::vector<double> step_seconds;  // wall time of each timed step (device synchronised around it)
  // Nodes a CUDA Graph of the step replays (kernels, copies, memsets; runtime::CudaGraph), or -1
  // for a method a graph cannot capture (robust::Method::capturable).
  int64_t graph_nodes = -1;
};

// One train_batch of the method (the options `method` gives, the others at their defaults for
// this input shape; epoch 0, `eps_scale` of the way through the eps ramp: CROWN-IBP's CROWN pass
// runs only before the ramp's end) on the model, on the CUDA device, SGD momentum 0.9
// and weight decay 5e-4: the launches of the step after `warmup` unrecorded ones. With
// `record_only` the emulator runs no kernel (cuda_set_record_only; a real GPU runs them anyway).
// The model is moved to the CUDA device; x [n, c, h, w] and y [n] may be on either device.
// `timed` more steps follow the recorded one, each timed on the host clock between two device
// synchronisations (a real GPU's measured step; on the emulator it times the CPU running the
// kernels, which says nothing of a GPU). Timing needs kernels that run: not with record_only.
// `fused_attack`: the method's attacks run fused where the model allows (--fused-attack on).
StepRecord record_training_step(Module& model, robust::MethodConfig method, const Tensor& x, const Tensor& y,
                                bool record_only, double eps_scale = 0.5, int warmup = 1, int timed = 0,
                                bool fused_attack = false);

}  // namespace bulwark::training

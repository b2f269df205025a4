// The GPU cost model: one recorded training step and its modelled time (see gpu_model.h).
#include "training/gpu_model.h"

#include "engine/runtime.h"

#include <algorithm>
#include <chrono>
#include <stdexcept>

#include "engine/autograd.h"
#include "robust/step_log.h"
#include "training/optim.h"

namespace bulwark::training {

void LaunchLog::launched(const LaunchEvent& event) {
  launches.push_back({normalize_launch_name(event.name), event.cost, event.blocks, event.threads_per_block});
}

double modelled_seconds(const std::vector<RecordedLaunch>& launches, const GpuSpec& gpu, double overhead) {
  double seconds = 0;
  for (const RecordedLaunch& l : launches) {
    if (!l.cost.stated())
      throw std::logic_error("the GPU cost model needs every launch's cost; kernel '" + l.name +
                             "' was launched with plain BW_LAUNCH (use BW_LAUNCH_COSTED)");
    seconds += std::max(l.cost.flops / gpu.fp32, l.cost.bytes / gpu.bandwidth) + overhead;
  }
  return seconds;
}

namespace {
// Restores the emulator's mode however the step ends.
struct RecordOnlyScope {
  bool active;
  explicit RecordOnlyScope(bool on) : active(on && runtime::cuda_set_record_only(true)) {}
  ~RecordOnlyScope() {
    if (active) runtime::cuda_set_record_only(false);
  }
};
}  // namespace

StepRecord record_training_step(Module& model, robust::MethodConfig cfg, const Tensor& x, const Tensor& y,
                                bool record_only, double eps_scale, int warmup, int timed, bool fused_attack) {
  if (timed > 0 && record_only)
    throw std::invalid_argument("record_training_step: timed steps need kernels that run, not record-only mode");
  if (x.dim() != 4 || y.dim() != 1 || x.size(0) != y.size(0))
    throw std::invalid_argument("record_training_step: x [n, c, h, w] and y [n] with the same n are required");
  const bool mnist_like = x.size(1) == 1 && x.size(2) == 28 && x.size(3) == 28;
  robust::resolve_method(cfg, DefaultScope{cfg.options, mnist_like ? "mnist" : "cifar10", mnist_like, 10});
  robust::validate(cfg);
  const std::unique_ptr<robust::Method> m = robust::make_method(cfg);

  model.to(Device::cuda);
  model.train();
  OptimizerConfig oc;
  oc.name = "sgd", oc.lr = 0.01, oc.momentum = 0.9, oc.weight_decay = 5e-4;
  const std::unique_ptr<Optimizer> optimizer = make_optimizer(oc, model.named_parameters());
  optimizer->set_lr(oc.lr);
  const Tensor xd = x.to(Device::cuda), yd = y.to(Device::cuda);

  const RecordOnlyScope mode(record_only);
  Generator gen(7);
  StepRecord record;
  // Step `step` of the loop (epoch 0), its passes counted into `passes`.
  const auto train_step = [&](int step, robust::PassCounter& passes) {
    robust::StepLog log;
    log.begin_batch(0);
    robust::StepContext ctx{model, *optimizer, gen, passes, log, 0, step};
    ctx.eps_scale = eps_scale;
    ctx.fused_attack = fused_attack;
    m->train_batch(ctx, xd, yd);
  };
  for (int step = 0; step <= warmup; ++step) {
    robust::PassCounter passes;
    LaunchLog launches;
    {
      const ObserveLaunches observe(launches);
      train_step(step, passes);
    }
    record = {std::move(launches.launches), passes, {}};
  }
  if (m->capturable()) {  // the same step captured: what --cuda-graphs replays per batch
    runtime::CudaGraph graph;
    robust::PassCounter passes;
    graph.capture(gen, [&] { train_step(warmup + 1, passes); });
    record.graph_nodes = graph.nodes();
  }
  for (int step = 0; step < timed; ++step) {
    robust::PassCounter passes;
    runtime::cuda_synchronize();
    const auto start = std::chrono::steady_clock::now();
    train_step(warmup + 1 + step, passes);
    runtime::cuda_synchronize();
    record.step_seconds.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  return record;
}

}  // namespace bulwark::training

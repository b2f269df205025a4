// bulwark-bench bound-step: one certified training step on the CPU, end to end, timed:
//
//   L = kappa CE(f(x), y) + (1 - kappa) CE(wc(x, eps), y),   kappa = 0.5 (mid-ramp)
//   wc: IBP (--bound ibp), or CROWN-IBP with beta = 1 (--bound crown-ibp: the interval pass, then
//       CROWN's backward pass from the margins through the whole network, the costliest point of
//       the beta ramp), as robust/methods/certified.cpp trains with them;
//   then the backward pass through the clean forward and the bound, and an SGD step.
// The model is in train mode (BatchNorm on batch statistics, as IBP training uses), the input
// uniform in [0, 1] with labels i mod 10. bench/peer_auto_lirpa.py times the same step with
// auto_LiRPA (bench/certified_vs_auto_lirpa.sh runs both and prints the ratio).
#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <chrono>
#include <string>
#include <vector>

#include "bench/train_step.h"
#include "engine/autograd.h"
#include "engine/ops.h"
#include "engine/profiler.h"
#include "engine/rng.h"
#include "kernels/cpu/cpu_kernels.h"
#include "models/zoo.h"
#include "robust/bounds.h"
#include "training/optim.h"

namespace bulwark::bench {

int bound_step_main(int argc, char** argv) {
  CLI::App app{"bulwark-bench bound-step: time one certified training step (clean forward + IBP or CROWN-IBP "
               "bound + backward + SGD)"};
  std::vector<std::string> models;
  std::string bound = "ibp";
  int64_t batch = 128;
  int threads = 2, warmup = 1, iters = 5;
  double eps = -1;
  bool json = false, profile = false;
  app.add_option("--model", models, "zoo models to time (default: ibp_large on MNIST's shape and cnn7 on CIFAR's)");
  app.add_option("--bound", bound, "ibp or crown-ibp")->check(CLI::IsMember({"ibp", "crown-ibp"}));
  app.add_option("--batch", batch, "batch size")->check(CLI::Range(int64_t{2}, int64_t{1} << 20));
  app.add_option("--threads", threads, "OpenMP threads")->check(CLI::Range(1, 1024));
  app.add_option("--warmup", warmup, "untimed iterations first")->check(CLI::Range(0, 1000));
  app.add_option("--iters", iters, "timed iterations (the median is reported)")->check(CLI::Range(1, 100000));
  app.add_option("--eps", eps, "L-inf radius (default: 0.3 MNIST, 8/255 CIFAR)")->check(CLI::Range(0.0, 1.0));
  app.add_flag("--json", json, "print one JSON line per model instead of the text");
  app.add_flag("--profile", profile, "also print the timed steps' per-op table (engine/profiler.h)");
  CLI11_PARSE(app, argc, argv);
  if (models.empty()) models = {"ibp_large", "cnn7"};
  cpu::set_num_threads(threads);
  const double beta = bound == "crown-ibp" ? 1.0 : 0.0;

  for (const std::string& name : models) {
    const BenchBatch input = bench_batch(name, batch);  // the input shape and normalisation
    const TrainStepConfig& shape = input.shape;
    const Tensor &x = input.x, &y = input.y;
    std::shared_ptr<Module> model = make_model(name, input.model);
    model->train();
    const double radius = eps >= 0 ? eps : shape.eps;
    auto optimizer = training::make_optimizer(bench_sgd(), model->named_parameters());

    std::vector<double> ms;
    double loss_value = 0;
    for (int it = 0; it < warmup + iters; ++it) {
      if (profile && it == warmup) profiler::start();
      const profiler::Step profiled_step;  // counts only while a session is active
      const auto t0 = std::chrono::steady_clock::now();
      const Tensor worst = robust::mixed_worst_case_logits(*model, x, y, radius, beta);
      Tensor loss = cross_entropy(model->forward(x), y) * 0.5 + cross_entropy(worst, y) * 0.5;
      backward(loss);
      loss_value = loss.item();
      loss = Tensor();
      optimizer->step();
      optimizer->zero_grad();
      const double elapsed = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
      if (it >= warmup) ms.push_back(elapsed);
    }
    const profiler::Report report = profile ? profiler::stop() : profiler::Report{};
    if (json)
      fmt::print("{{\"impl\": \"bulwark\", \"model\": \"{}\", \"bound\": \"{}\", \"batch\": {}, \"threads\": {}, "
                 "\"eps\": {}, \"median_ms\": {:.3f}, \"min_ms\": {:.3f}, \"loss\": {:.6f}}}\n",
                 name, bound, batch, threads, radius, median(ms), minimum(ms), loss_value);
    else
      fmt::print("bound-step {} {} on {}x{}x{}, batch {}, {} threads, eps {:.4g}: {:.1f} ms/step median, {:.1f} min "
                 "({} iterations after {} warm-up; loss {:.4f})\n",
                 name, bound, shape.channels, shape.height, shape.width, batch, threads, radius, median(ms), minimum(ms),
                 iters, warmup, loss_value);
    if (profile) fmt::print("{}\n", report.table(40));
  }
  return 0;
}

}  // namespace bulwark::bench

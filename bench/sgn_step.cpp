// bulwark-bench sgn-step: one training step of a self-gradient network (models/sgn.h) beside the
// same step of its base network, on the CPU, in one run:
//
//   base      f(x), CE, backward, SGD step                          1 forward, 1 backward
//   detached  probe f(x) + its backward to the taps, main f(x),     2 forwards, 2 backwards
//             CE, backward through the main pass
//   full      as detached, and the backward also runs back through  2 forwards, 3 backwards
//             the probe's backward (double backward)
//
// The three variants take turns within each iteration (base, detached, full, base, ...), so drift
// on a shared machine hits them alike; the median of each is reported with its ratio to the base.
// Target (the SGN issue): full <= 3x base. With --method pgd the step is PGD-AT's (k attack steps
// on the same model, then the training pass), each attack step paying the same SGN overhead.
#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <chrono>
#include <string>
#include <vector>

#include "bench/train_step.h"
#include "engine/rng.h"
#include "kernels/cpu/cpu_kernels.h"
#include "models/sgn.h"
#include "models/zoo.h"
#include "robust/registry.h"
#include "training/optim.h"

namespace bulwark::bench {

int sgn_step_main(int argc, char** argv) {
  CLI::App app{"bulwark-bench sgn-step: time one training step of a self-gradient network (detached and full "
               "gradient) beside its base network's"};
  std::string model_name = "wong_small", method_name = "standard";
  int64_t batch = 128;
  int threads = 2, warmup = 1, iters = 5, steps = 3;
  app.add_option("--model", model_name, "zoo model, the base (default wong_small, on MNIST's shape)");
  app.add_option("--method", method_name, "training method: standard or pgd (default standard)")
      ->check(CLI::IsMember({"standard", "pgd"}));
  app.add_option("--steps", steps, "pgd: attack steps (default 3)")->check(CLI::Range(1, 1000));
  app.add_option("--batch", batch, "batch size")->check(CLI::Range(int64_t{2}, int64_t{1} << 20));
  app.add_option("--threads", threads, "OpenMP threads")->check(CLI::Range(1, 1024));
  app.add_option("--warmup", warmup, "untimed iterations first")->check(CLI::Range(0, 1000));
  app.add_option("--iters", iters, "timed iterations (the median is reported)")->check(CLI::Range(1, 100000));
  CLI11_PARSE(app, argc, argv);
  cpu::set_num_threads(threads);

  const BenchBatch input = bench_batch(model_name, batch);
  const TrainStepConfig& shape = input.shape;
  const Tensor &x = input.x, &y = input.y;

  struct Variant {
    std::string name;
    std::shared_ptr<Module> model;
    std::unique_ptr<training::Optimizer> optimizer;
    std::unique_ptr<robust::Method> method;
    robust::PassCounter passes;
    robust::StepLog log;
    Generator gen{7};
    std::vector<double> ms;
  };
  std::vector<Variant> variants(3);
  const char* names[] = {"base", "detached", "full"};
  for (size_t v = 0; v < variants.size(); ++v) {
    Variant& var = variants[v];
    var.name = names[v];
    ModelConfig cfg = input.model;
    cfg.sgn.grad = v == 1 ? SgnGrad::detached : SgnGrad::full;
    var.model = make_model(v == 0 ? model_name : "sgn:" + model_name, cfg);
    var.model->train();
    var.optimizer = training::make_optimizer(bench_sgd(), var.model->named_parameters());
    robust::MethodConfig method;
    method.name = method_name;
    if (method_name == "pgd") method.options.set("steps", steps);
    robust::resolve_method(method, DefaultScope{method.options, "mnist", true, 1});
    var.method = robust::make_method(method);
  }
  const std::string detail = method_name == "pgd" ? fmt::format(" (PGD-{} AT)", steps) : "";
  fmt::print("sgn-step {}{} on {}x{}x{}, batch {}, {} threads ({} iterations after {} warm-up, median; the variants "
             "take turns)\n",
             model_name, detail, shape.channels, shape.height, shape.width, batch, threads, iters, warmup);
  for (int it = 0; it < warmup + iters; ++it)
    for (Variant& var : variants) {
      var.log.begin_batch(it);
      robust::StepContext ctx{*var.model, *var.optimizer, var.gen, var.passes, var.log, 0, it, 1.0};
      const auto t0 = std::chrono::steady_clock::now();
      var.method->train_batch(ctx, x, y);
      var.log.read_new_batches();  // the step's loss, read back: the step is done
      const double elapsed = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
      if (it >= warmup) var.ms.push_back(elapsed);
    }
  fmt::print("{:>9} | {:>10} | {:>12} | {:>12} | {:>8}\n", "variant", "ms/step", "fwd passes", "bwd passes", "vs base");
  const double base_ms = median(variants[0].ms);
  const int64_t total = warmup + iters;
  for (Variant& var : variants) {
    const double ms = median(var.ms);
    fmt::print("{:>9} | {:>10.1f} | {:>12.1f} | {:>12.1f} | {:>7.2f}x\n", var.name, ms,
               static_cast<double>(var.passes.fwd) / total, static_cast<double>(var.passes.bwd) / total, ms / base_ms);
  }
  return 0;
}

}  // namespace bulwark::bench

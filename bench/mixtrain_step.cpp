// bulwark-bench mixtrain-step: one MixTrain training step (robust/methods/mixtrain.cpp) on the CPU,
// per bound, with stochastic robust approximation (the bound on k = --sra-k of the batch) beside
// the full-batch bound (k = batch), timed end to end:
//
//   L = CE(f(x), y) + w CE(wc(x_k, eps), y_k)   (the verified term on every batch: --dmt-prob 1)
//   then the backward pass through both and an SGD step.
//
// Beside each time: the bytes of the bound's values for the k samples, what its pass holds at
// least (symbolic: the d + 3 rows of every ReLU's input, models/symbolic.h; IBP and CROWN-IBP:
// the center and radius of every ReLU's input box), and the SRA step's time over the full one
// (MixTrain's claim: the sampled bound is what makes the symbolic one affordable; target <= 0.3x at
// 10%). The model is wong_small (MixTrain's MNIST network) by default, in train mode, on uniform
// inputs with labels i mod 10.
#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <chrono>
#include <string>
#include <vector>

#include "bench/train_step.h"
#include "engine/autograd.h"
#include "engine/ops.h"
#include "engine/rng.h"
#include "kernels/cpu/cpu_kernels.h"
#include "models/symbolic.h"
#include "models/zoo.h"
#include "robust/bounds.h"
#include "robust/registry.h"
#include "training/optim.h"

namespace bulwark::bench {

namespace {

// The bytes of the bound's values for x (no graph): see the header.
int64_t bound_bytes(Module& model, const Tensor& x, const Tensor& y, double eps, const std::string& bound) {
  NoGradGuard no_grad;
  int64_t bytes = 0;
  if (bound == "symbolic") {
    SymbolicPass pass(robust::input_box(x, eps));
    model.interval_margin(pass.expanded(), pass.repeat_labels(y));
    return pass.total_row_bytes();
  }
  const Interval box = robust::input_box(x, eps);
  CrownTightening record(box, false);  // records every ReLU's input box, nothing more
  model.interval_forward(box);
  for (const Interval& b : record.boxes()) bytes += 2 * b.center.numel() * static_cast<int64_t>(dtype_size(b.center.dtype()));
  return bytes;
}

}  // namespace

int mixtrain_step_main(int argc, char** argv) {
  CLI::App app{"bulwark-bench mixtrain-step: time one MixTrain step per bound, the bound on k sampled samples beside "
               "the whole batch"};
  std::string model_name = "wong_small", sra = "10%";
  std::vector<std::string> bounds;
  int64_t batch = 128;
  int threads = 2, warmup = 1, iters = 3;
  double eps = 0.1;
  app.add_option("--model", model_name, "zoo model (default wong_small, on MNIST's shape)");
  app.add_option("--bound", bounds, "bounds to time (default: ibp, symbolic, crown-ibp)")
      ->check(CLI::IsMember({"ibp", "symbolic", "crown-ibp"}));
  app.add_option("--sra-k", sra, "the sampled step's k, as --sra-k takes it (default 10%)");
  app.add_option("--batch", batch, "batch size")->check(CLI::Range(int64_t{2}, int64_t{1} << 20));
  app.add_option("--threads", threads, "OpenMP threads")->check(CLI::Range(1, 1024));
  app.add_option("--warmup", warmup, "untimed iterations first")->check(CLI::Range(0, 1000));
  app.add_option("--iters", iters, "timed iterations (the median is reported)")->check(CLI::Range(1, 100000));
  app.add_option("--eps", eps, "L-inf radius")->check(CLI::Range(0.0, 1.0));
  CLI11_PARSE(app, argc, argv);
  if (bounds.empty()) bounds = {"ibp", "symbolic", "crown-ibp"};
  cpu::set_num_threads(threads);

  const BenchBatch input = bench_batch(model_name, batch);
  const TrainStepConfig& shape = input.shape;
  const ModelConfig& mc = input.model;
  const Tensor &x = input.x, &y = input.y;
  fmt::print("mixtrain-step {} on {}x{}x{}, batch {}, eps {:.4g}, {} threads ({} iterations after {} warm-up, median)\n",
             model_name, shape.channels, shape.height, shape.width, batch, eps, threads, iters, warmup);
  fmt::print("{:>10} | {:>6} | {:>10} | {:>12} | {:>9}\n", "bound", "k", "ms/step", "bound MiB", "vs k=all");

  for (const std::string& bound : bounds) {
    double full_ms = 0;
    // The full batch first, so that the ratio is at hand for the sampled step.
    for (const std::string& k_spec : {std::string("all"), sra}) {
      std::shared_ptr<Module> model = make_model(model_name, mc);
      model->train();
      auto optimizer = training::make_optimizer(bench_sgd(), model->named_parameters());
      robust::MethodConfig cfg;
      cfg.name = "mixtrain";
      cfg.options.set("eps", eps);
      cfg.options.set("bound", bound);
      cfg.options.set("sra_k", k_spec);
      cfg.options.set("dmt_prob", 1.0);
      cfg.options.set("eps_ramp", 0.0);
      cfg.options.set("bound_memory", 1e9);
      robust::resolve_method(cfg, DefaultScope{cfg.options, "mnist", true, 1});
      auto method = robust::make_method(cfg);
      method->check(*model, x, y, batch);
      Generator gen(7);
      robust::PassCounter passes;
      robust::StepLog log;
      std::vector<double> ms;
      int64_t k = 0;
      for (int it = 0; it < warmup + iters; ++it) {
        log.begin_batch(it);
        robust::StepContext ctx{*model, *optimizer, gen, passes, log, 0, it, 1.0};
        const auto t0 = std::chrono::steady_clock::now();
        method->train_batch(ctx, x, y);
        log.read_new_batches();  // the step's loss, read back: the step is done
        const double elapsed = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
        if (it >= warmup) ms.push_back(elapsed);
      }
      std::map<std::string, double> extra;
      robust::EpochEnd end{*model, gen, 0, 0.0, 0.0, x, y, extra};
      method->on_epoch_end(end);
      k = static_cast<int64_t>(extra.at("k"));
      const double step_ms = median(ms);
      if (k_spec == "all") full_ms = step_ms;
      const double mib = static_cast<double>(bound_bytes(*model, x.slice(0, 0, k), y.slice(0, 0, k), eps, bound)) /
                         (1024.0 * 1024.0);
      fmt::print("{:>10} | {:>6} | {:>10.1f} | {:>12.1f} | {:>8.2f}x\n", bound, k, step_ms, mib, step_ms / full_ms);
    }
  }
  return 0;
}

}  // namespace bulwark::bench

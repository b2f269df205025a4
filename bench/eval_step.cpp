// bulwark-bench eval-step: evaluation throughput on the CPU, the figures `bulwark eval` lives on:
//
//   clean     the model's forward in eval mode with gradients off (test accuracy), images/s;
//   PGD step  one attack step in eval mode: forward, the input gradient only, the projected sign
//             step (every step of PGD-50x10, APGD, ...), images x steps/s.
// Batch of uniform random images, labels i mod 10, the model's own input shape (bench_batch).
// bench/peer_pytorch.py --eval times the same two in PyTorch; bench/compare.sh prints both.
#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <chrono>
#include <string>
#include <vector>

#include "bench/train_step.h"
#include "engine/autograd.h"
#include "engine/ops.h"
#include "kernels/cpu/cpu_kernels.h"
#include "models/zoo.h"
#include "robust/attacks.h"

namespace bulwark::bench {

int eval_step_main(int argc, char** argv) {
  CLI::App app{"bulwark-bench eval-step: clean-forward and PGD-step throughput in eval mode"};
  std::vector<std::string> models;
  int64_t batch = 256;
  int threads = 2, warmup = 1, iters = 5;
  bool json = false;
  app.add_option("--model", models, "zoo models (default: wong_small and cnn7)");
  app.add_option("--batch", batch, "batch size")->check(CLI::Range(int64_t{1}, int64_t{1} << 20));
  app.add_option("--threads", threads, "OpenMP threads")->check(CLI::Range(1, 1024));
  app.add_option("--warmup", warmup, "untimed iterations first")->check(CLI::Range(0, 1000));
  app.add_option("--iters", iters, "timed iterations (the median is reported)")->check(CLI::Range(1, 100000));
  app.add_flag("--json", json, "one JSON line per model");
  CLI11_PARSE(app, argc, argv);
  if (models.empty()) models = {"wong_small", "cnn7"};
  cpu::set_num_threads(threads);

  using Clock = std::chrono::steady_clock;
  auto ms_since = [](Clock::time_point t) { return std::chrono::duration<double, std::milli>(Clock::now() - t).count(); };
  for (const std::string& name : models) {
    const BenchBatch b = bench_batch(name, batch);
    std::shared_ptr<Module> model = make_model(name, b.model);
    model->eval();
    PgdOptions step;
    step.eps = b.shape.eps, step.alpha = b.shape.eps / 4, step.steps = 1, step.random_start = false;
    std::vector<double> clean_ms, pgd_ms;
    double checksum = 0;
    for (int it = 0; it < warmup + iters; ++it) {
      auto t = Clock::now();
      {
        NoGradGuard no_grad;
        checksum += sum(model->forward(b.x)).item();
      }
      const double clean = ms_since(t);
      t = Clock::now();
      checksum += sum(pgd_attack(*model, b.x, b.y, step)).item();
      const double pgd = ms_since(t);
      if (it < warmup) continue;
      clean_ms.push_back(clean);
      pgd_ms.push_back(pgd);
    }
    const double clean_rate = batch * 1e3 / median(clean_ms), pgd_rate = batch * 1e3 / median(pgd_ms);
    if (json)
      fmt::print("{{\"impl\": \"bulwark\", \"mode\": \"eval\", \"model\": \"{}\", \"batch\": {}, \"threads\": {}, "
                 "\"clean_ms\": {:.3f}, \"pgd_step_ms\": {:.3f}, \"clean_images_per_s\": {:.1f}, "
                 "\"pgd_step_images_per_s\": {:.1f}}}\n",
                 name, batch, threads, median(clean_ms), median(pgd_ms), clean_rate, pgd_rate);
    else
      fmt::print("eval-step {}, batch {}, {} threads: clean forward {:.2f} ms ({:.0f} images/s), PGD step {:.2f} ms "
                 "({:.0f} images x steps/s); {} iterations after {} warm-up (checksum {:.3g})\n",
                 name, batch, threads, median(clean_ms), clean_rate, median(pgd_ms), pgd_rate, iters, warmup, checksum);
  }
  return 0;
}

}  // namespace bulwark::bench

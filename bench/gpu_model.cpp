// bulwark-bench gpu-model: what one training step of each method would cost on an H100 and an
// A100, modelled from the kernel launches the step makes (training/gpu_model.h has the model and
// its limits; docs/kernels.md, "A GPU cost model", the table and how to read it).
//
// Without a GPU the step runs on the emulated CUDA backend in record-only mode: every launch is
// validated and counted with its stated FLOPs and bytes, no kernel runs, so even
// preact_resnet18 at batch 128 takes seconds. A GPU build without a usable GPU has no emulator
// linked in: it hands the command to its sibling bulwark-bench-emu (same benches, emulated
// backend). On a GPU the kernels run for real and the same launches are counted.
#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include "bench/train_step.h"
#include "engine/runtime.h"
#include "training/gpu_model.h"

namespace bulwark::bench {

namespace {

// "pgd:steps=10,alpha=0.075" -> method pgd with those options (numbers as numbers).
robust::MethodConfig parse_method(const std::string& spec) {
  robust::MethodConfig cfg;
  const size_t colon = spec.find(':');
  cfg.name = spec.substr(0, colon);
  if (colon == std::string::npos) return cfg;
  std::string rest = spec.substr(colon + 1);
  while (!rest.empty()) {
    const size_t comma = rest.find(',');
    const std::string item = rest.substr(0, comma);
    rest = comma == std::string::npos ? "" : rest.substr(comma + 1);
    const size_t eq = item.find('=');
    if (eq == std::string::npos || eq == 0)
      throw std::invalid_argument("gpu-model: --method " + spec + ": options are key=value (e.g. pgd:steps=10)");
    const std::string key = item.substr(0, eq), value = item.substr(eq + 1);
    const nlohmann::ordered_json parsed = nlohmann::ordered_json::parse(value, nullptr, false);
    cfg.options.set(key, parsed.is_discarded() ? nlohmann::ordered_json(value) : parsed);
  }
  return cfg;
}

struct Family {
  int64_t launches = 0;
  double flops = 0, bytes = 0, seconds = 0, overhead = 0, compute = 0;
};

}  // namespace

int gpu_model_main(int argc, char** argv) {
  CLI::App app{"bulwark-bench gpu-model: the modelled H100/A100 time of one training step per method, from each "
               "kernel launch's stated FLOPs and bytes"};
  std::vector<std::string> models{"wong_small", "cnn7", "preact_resnet18"};
  std::vector<std::string> methods{"standard", "pgd:steps=10", "fgsm-rs", "free", "mplus-deat", "ibp", "crown-ibp"};
  int64_t batch = 128;
  int kernels = 0, timed = 0;
  bool json = false, list = false, fused = false;
  std::string source = "ours", precision = "fp32";
  app.add_option("--model", models, "zoo models (default: wong_small, cnn7, preact_resnet18)");
  app.add_option("--method", methods,
                 "methods, each NAME or NAME:key=value,... with the method's JSON option keys (default: standard, "
                 "pgd:steps=10, fgsm-rs, free, mplus-deat, ibp, crown-ibp)");
  app.add_option("--batch", batch, "batch size")->check(CLI::Range(int64_t{1}, int64_t{1} << 16));
  app.add_option("--kernels", kernels, "also list the N kernels with the most modelled H100 time per step")
      ->check(CLI::Range(0, 1000));
  app.add_flag("--json", json, "one JSON line per (model, method) instead of the table");
  app.add_flag("--fused-attack", fused,
               "run the methods' attacks as one fused kernel where the model allows it (the trainer's --fused-attack on)");
  app.add_flag("--list", list, "also list every launch of the step in order: kernel, grid, FLOPs, bytes");
  app.add_option("--time", timed,
                 "on a GPU: also time N more steps (host clock between device synchronisations) and print their "
                 "median beside the model")
      ->check(CLI::Range(0, 10000));
  app.add_option("--kernel-source", source,
                 "the GEMM/conv implementation: ours (what the model describes), vendor (cuBLAS/cuDNN) or auto")
      ->check([](const std::string& s) {
        try {
          runtime::check_kernel_source(s);
          return std::string();
        } catch (const std::exception& e) {
          return std::string(e.what());
        }
      });
  app.add_option("--precision", precision, "GEMM/conv inputs: fp32, tf32 or bf16 (the model still counts FP32 peaks)")
      ->check(CLI::IsMember(runtime::math_precision_names()));
  CLI11_PARSE(app, argc, argv);
  if (!runtime::cuda_emulated() && !runtime::cuda_available()) return run_emulated_twin("gpu-model", argc, argv);
  if (timed > 0 && runtime::cuda_emulated())
    throw std::invalid_argument("gpu-model: --time measures a GPU; this backend is the emulator (no GPU here)");
  runtime::set_kernel_source(source);
  const runtime::MathPrecisionScope precision_scope(precision);

  using training::kA100;
  using training::kEagerLaunchSeconds;
  using training::kGraphNodeSeconds;
  using training::kH100;
  const bool record_only = runtime::cuda_emulated();
  if (!json) {
    fmt::print("gpu-model: one training step at batch {} (epoch 0, halfway through the eps ramp), bulwark's kernels "
               "(source {}, precision {}; {}{}), each launch max(FLOPs / FP32 peak, bytes / bandwidth) + overhead\n",
               batch, source, precision, fused ? "attacks fused where the model allows; " : "", record_only ? "emulator, record-only: counted, not run" : "run on the GPU and counted");
    for (const training::GpuSpec& g : {kH100, kA100})
      fmt::print("  {}: {:g} TFLOP/s FP32 ({:g} TF32, {:g} BF16 dense tensor-core), {:g} TB/s\n", g.name,
                 g.fp32 / 1e12, g.tf32 / 1e12, g.bf16 / 1e12, g.bandwidth / 1e12);
    fmt::print("  launch overhead {:g} us eager, {:g} us per node of a CUDA Graph; \"launch-bound\": the overhead's "
               "share of the eager H100 time\n\n",
               kEagerLaunchSeconds * 1e6, kGraphNodeSeconds * 1e6);
    fmt::print("{:<16} {:<14} {:>4} {:>4} {:>8} {:>6} {:>9} {:>8} {:>9} {:>9} {:>9} {:>9} {:>7}{}\n", "model", "method",
               "fwd", "bwd", "launches", "nodes", "GFLOP", "GB", "H100 ms", "graph ms", "A100 ms", "graph ms", "launch",
               timed > 0 ? fmt::format(" {:>11} {:>10} {:>9}", "measured ms", "min ms", "measured/H100") : "");
  }
  for (const std::string& model_name : models) {
    const BenchBatch b = bench_batch(model_name, batch);
    for (const std::string& spec : methods) {
      robust::MethodConfig cfg = parse_method(spec);
      if (!cfg.options.has("eps")) cfg.options.set("eps", b.shape.eps);
      std::shared_ptr<Module> model = make_model(model_name, b.model);
      const training::StepRecord r =
          training::record_training_step(*model, cfg, b.x, b.y, record_only, 0.5, 1, timed, fused);
      double measured = 0, fastest = 0;
      if (!r.step_seconds.empty()) {
        std::vector<double> s = r.step_seconds;
        std::sort(s.begin(), s.end());
        measured = s[s.size() / 2], fastest = s.front();
      }
      double flops = 0, bytes = 0;
      for (const training::RecordedLaunch& l : r.launches) {
        flops += l.cost.flops;
        bytes += l.cost.bytes;
      }
      const auto n = static_cast<int64_t>(r.launches.size());
      const double h_eager = training::modelled_seconds(r.launches, kH100, kEagerLaunchSeconds),
                   h_graph = training::modelled_seconds(r.launches, kH100, kGraphNodeSeconds),
                   a_eager = training::modelled_seconds(r.launches, kA100, kEagerLaunchSeconds),
                   a_graph = training::modelled_seconds(r.launches, kA100, kGraphNodeSeconds);
      const double launch_share = static_cast<double>(n) * kEagerLaunchSeconds / std::max(h_eager, 1e-30);
      if (json) {
        fmt::print("{{\"model\": \"{}\", \"method\": \"{}\", \"batch\": {}, \"fwd_passes\": {}, \"bwd_passes\": {}, "
                   "\"launches\": {}, \"graph_nodes\": {}, \"gflop\": {:.4f}, \"gbytes\": {:.4f}, \"h100_ms\": {:.4f}, "
                   "\"h100_graph_ms\": {:.4f}, \"a100_ms\": {:.4f}, \"a100_graph_ms\": {:.4f}, "
                   "\"launch_share\": {:.4f}, \"record_only\": {}, \"kernel_source\": \"{}\", \"precision\": \"{}\", "
                   "\"fused_attack\": {}{}}}\n",
                   model_name, spec, batch, r.passes.fwd, r.passes.bwd, n, r.graph_nodes, flops / 1e9, bytes / 1e9, h_eager * 1e3,
                   h_graph * 1e3, a_eager * 1e3, a_graph * 1e3, launch_share, record_only, source, precision, fused,
                   timed > 0 ? fmt::format(", \"measured_ms\": {:.4f}, \"measured_min_ms\": {:.4f}, \"timed_steps\": {}",
                                           measured * 1e3, fastest * 1e3, timed)
                             : "");
      } else {
        fmt::print("{:<16} {:<14} {:>4} {:>4} {:>8} {:>6} {:>9.2f} {:>8.3f} {:>9.3f} {:>9.3f} {:>9.3f} {:>9.3f} {:>6.0f}%{}\n",
                   model_name, spec, r.passes.fwd, r.passes.bwd, n,
                   r.graph_nodes >= 0 ? std::to_string(r.graph_nodes) : std::string("-"), flops / 1e9, bytes / 1e9, h_eager * 1e3,
                   h_graph * 1e3, a_eager * 1e3, a_graph * 1e3, 100 * launch_share,
                   timed > 0 ? fmt::format(" {:>11.3f} {:>10.3f} {:>12.2f}x", measured * 1e3, fastest * 1e3,
                                           measured / std::max(h_eager, 1e-30))
                             : "");
        std::fflush(stdout);
      }
      if (list && !json)
        for (size_t i = 0; i < r.launches.size(); ++i) {
          const training::RecordedLaunch& l = r.launches[i];
          fmt::print("    {:>5} {:<44} {:>8} x {:<5} {:>12.0f} FLOP {:>11.0f} B\n", i, l.name, l.blocks,
                     l.threads_per_block, l.cost.flops, l.cost.bytes);
        }
      if (kernels > 0 && !json) {
        std::map<std::string, Family> families;
        for (const training::RecordedLaunch& l : r.launches) {
          Family& f = families[kernel_family(l.name)];
          const double compute = l.cost.flops / kH100.fp32, memory = l.cost.bytes / kH100.bandwidth;
          f.launches += 1;
          f.flops += l.cost.flops;
          f.bytes += l.cost.bytes;
          f.seconds += std::max(compute, memory) + kEagerLaunchSeconds;
          f.overhead += kEagerLaunchSeconds;
          f.compute += compute >= memory ? std::max(compute, memory) : 0;
        }
        std::vector<std::pair<std::string, Family>> sorted(families.begin(), families.end());
        std::sort(sorted.begin(), sorted.end(), [](const auto& a, const auto& b) { return a.second.seconds > b.second.seconds; });
        for (size_t i = 0; i < sorted.size() && i < static_cast<size_t>(kernels); ++i) {
          const Family& f = sorted[i].second;
          fmt::print("    {:<34} {:>6} launches {:>9.3f} GFLOP {:>8.4f} GB {:>8.3f} ms ({:.0f}% overhead, {:.0f}% "
                     "compute-bound)\n",
                     sorted[i].first, f.launches, f.flops / 1e9, f.bytes / 1e9, f.seconds * 1e3,
                     100 * f.overhead / f.seconds, 100 * f.compute / f.seconds);
        }
      }
    }
  }
  return 0;
}

}  // namespace bulwark::bench

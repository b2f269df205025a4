// bulwark-bench: the benchmarks.
//
//   bulwark-bench train-step [--model NAME] [options]   one adversarial training step on the CPU, end to end
//   bulwark-bench kernels [Google Benchmark flags]       kernel throughput: the CPU rows, and in the GPU
//                                                        build our CUDA kernels next to cuBLAS/cuDNN
//   bulwark-bench bound-step [--bound ibp|crown-ibp]     one certified (IBP / CROWN-IBP) training step
//   bulwark-bench mixtrain-step [--bound B]... [--sra-k K] one MixTrain step per bound, sampled beside full-batch
//   bulwark-bench eval-step [--model NAME]...           clean-forward and PGD-step throughput in eval mode
//   bulwark-bench sgn-step [--model NAME] [--method M]     one self-gradient network step (detached, full)
//                                                        beside its base network's
//   bulwark-bench gpu-model [--model NAME]... [--method M]...  the modelled H100/A100 time of one training
//                                                        step per method, from its kernel launches;
//                                                        on a GPU, --time N measures the step beside it
//   bulwark-bench scaling [--model NAME]...              the gradient all-reduce measured at 1 and 2 ranks
//                                                        (mpirun), and modelled H100 scaling to 8 and 64 GPUs
//
// bench/compare.sh runs train-step next to bench/peer_pytorch.py and prints the ratio table;
// docs/bench.md has the measured numbers and what limits them.
#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <cstdlib>
#include <exception>
#include <stdexcept>
#include <string>
#include <vector>

#include "bench/train_step.h"

namespace bulwark::bench {
int run_kernel_benchmarks(int argc, char** argv, int threads);
int bound_step_main(int argc, char** argv);
int mixtrain_step_main(int argc, char** argv);
int sgn_step_main(int argc, char** argv);
int gpu_model_main(int argc, char** argv);
int eval_step_main(int argc, char** argv);
int scaling_main(int argc, char** argv);
}

namespace {

int train_step_main(int argc, char** argv) {
  using namespace bulwark::bench;
  CLI::App app{"bulwark-bench train-step: time one adversarial training step (attack + forward + backward + SGD)"};
  std::vector<std::string> models;
  int64_t batch = 128;
  int threads = 2, warmup = 2, iters = 10, attack_steps = -1;
  double eps = -1, alpha = -1;
  bool no_random_start = false, json = false, profile = false;
  std::string precision = "fp32";
  app.add_option("--model", models, "zoo models to time (default: wong_small and cnn7)");
  app.add_option("--batch", batch, "batch size")->check(CLI::Range(int64_t{2}, int64_t{1} << 20));
  app.add_option("--threads", threads, "OpenMP threads")->check(CLI::Range(1, 1024));
  app.add_option("--warmup", warmup, "untimed iterations first")->check(CLI::Range(0, 1000));
  app.add_option("--iters", iters, "timed iterations (the median is reported)")->check(CLI::Range(1, 100000));
  app.add_option("--attack-steps", attack_steps, "attack steps k (default: 10 on MNIST models, 1 on CIFAR)")
      ->check(CLI::Range(0, 10000));
  app.add_option("--eps", eps, "L-inf budget (default: 0.3 MNIST, 8/255 CIFAR)")->check(CLI::Range(0.0, 1.0));
  app.add_option("--alpha", alpha, "step size (default: eps/4 for PGD, 1.25 eps for FGSM-RS)")->check(CLI::Range(0.0, 1.0));
  app.add_flag("--no-random-start", no_random_start, "start the attack at the clean input");
  app.add_flag("--json", json, "print one JSON line per model instead of the table");
  app.add_flag("--profile", profile,
               "also time every op of the timed iterations: a per-op table (forward, backward, calls, GFLOP/s, "
               "share of the step)");
  app.add_option("--precision", precision,
                 "the convolutions' and GEMMs' inputs: fp32, or rounded to bf16 (on a CPU with AVX512-BF16 the direct "
                 "convolutions multiply in BF16) or tf32")
      ->check(CLI::IsMember({"fp32", "bf16", "tf32"}));
  CLI11_PARSE(app, argc, argv);
  if (models.empty()) models = {"wong_small", "cnn7"};

  for (const std::string& model : models) {
    TrainStepConfig c = default_train_step(model);
    c.batch = batch, c.threads = threads, c.warmup = warmup, c.iters = iters;
    if (attack_steps >= 0) c.attack_steps = attack_steps;
    if (eps >= 0) c.eps = eps;
    if (alpha >= 0) c.alpha = alpha;
    else if (eps >= 0) c.alpha = c.attack_steps == 1 ? 1.25 * c.eps : c.eps / 4;
    c.random_start = !no_random_start;
    c.profile = profile;
    c.precision = precision;
    const TrainStepResult r = run_train_step(c);
    if (json)
      print_train_step_json(r);
    else
      print_train_step(r);
    if (r.profile) fmt::print("{}\n", r.profile->table());
  }
  return 0;
}

void usage() {
  fmt::print(
      "usage: bulwark-bench train-step [--model NAME]... [--batch N] [--threads N] [--iters N] [--json] ...\n"
      "       bulwark-bench kernels [--threads=N] [--benchmark_filter=REGEX] [other Google Benchmark flags]\n"
      "       bulwark-bench bound-step [--model NAME]... [--bound ibp|crown-ibp] [--batch N] [--threads N] [--json]\n"
      "       bulwark-bench mixtrain-step [--model NAME] [--bound B]... [--sra-k K] [--batch N] [--threads N]\n"
      "       bulwark-bench eval-step [--model NAME]... [--batch N] [--threads N] [--json]\n"
      "       bulwark-bench sgn-step [--model NAME] [--method standard|pgd] [--steps K] [--batch N] [--threads N]\n"
      "       bulwark-bench gpu-model [--model NAME]... [--method NAME[:key=value,...]]... [--batch N] [--kernels N] [--list]\n"
      "       bulwark-bench scaling [--model NAME]... [--method NAME]... [--batch N] [--reps N] [--json]\n"
      "                               [--time N] [--kernel-source ours|vendor|auto] [--precision fp32|tf32|bf16]\n"
      "run a subcommand with --help for its options\n");
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    usage();
    return 2;
  }
  const std::string command = argv[1];
  try {
    if (command == "train-step") return train_step_main(argc - 1, argv + 1);
    if (command == "bound-step") return bulwark::bench::bound_step_main(argc - 1, argv + 1);
    if (command == "mixtrain-step") return bulwark::bench::mixtrain_step_main(argc - 1, argv + 1);
    if (command == "sgn-step") return bulwark::bench::sgn_step_main(argc - 1, argv + 1);
    if (command == "eval-step") return bulwark::bench::eval_step_main(argc - 1, argv + 1);
    if (command == "gpu-model") return bulwark::bench::gpu_model_main(argc - 1, argv + 1);
    if (command == "scaling") return bulwark::bench::scaling_main(argc - 1, argv + 1);
    if (command == "kernels") {
      // --threads=N is ours; everything else goes to Google Benchmark.
      int threads = 2;
      std::vector<char*> rest{argv[0]};
      for (int i = 2; i < argc; ++i) {
        const std::string arg = argv[i];
        if (arg.rfind("--threads=", 0) == 0) {
          threads = std::atoi(arg.c_str() + 10);
          if (threads < 1) throw std::invalid_argument(fmt::format("{}: want a thread count >= 1", arg));
        } else {
          rest.push_back(argv[i]);
        }
      }
      int rest_argc = static_cast<int>(rest.size());
      return bulwark::bench::run_kernel_benchmarks(rest_argc, rest.data(), threads);
    }
    usage();
    return 2;
  } catch (const std::exception& e) {
    fmt::print(stderr, "bulwark-bench: {}\n", e.what());
    return 1;
  }
}

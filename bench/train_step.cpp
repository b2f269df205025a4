// One adversarial training step, timed phase by phase (see train_step.h).
#include "bench/train_step.h"

#include <fmt/format.h>
#include <filesystem>
#include <cstring>
#include <cerrno>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <ctime>
#include <stdexcept>

#include <sys/resource.h>

#include "engine/autograd.h"
#include "engine/ops.h"
#include "engine/rng.h"
#include "engine/runtime.h"
#include "kernels/cpu/cpu_kernels.h"
#include "models/zoo.h"
#include "robust/attacks.h"
#include "training/optim.h"

namespace bulwark::bench {

namespace {

using Clock = std::chrono::steady_clock;

double ms_since(Clock::time_point start) {
  return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
}

// CPU time of the whole process, all threads. On a shared machine wall time also counts the
// time other jobs held the cores; CPU time (with OMP_WAIT_POLICY=passive, so idle OpenMP
// workers sleep instead of spinning) counts only this process's work.
double process_cpu_ms() {
  timespec ts{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) * 1e3 + static_cast<double>(ts.tv_nsec) * 1e-6;
}

// The conv and linear FLOPs of each pass, as the engine's ops state them to the profiler (2 per
// multiply-add, plus a linear layer's bias adds), so residual models are counted as the
// sequential ones. Three profiled passes on the real batch: the forward; the input gradient
// alone (an attack step's backward: every layer's dx, no dW); and the training backward (every
// dW, every dx but the first layer's, which the input does not need). dW costs what the forward
// does, so the first layer's dx is what the training backward lacks of the other two.
PassFlops count_flops(Module& model, const Tensor& x, const Tensor& y) {
  auto flops_of = [](auto&& pass) {
    profiler::start();
    {
      const profiler::Step step;
      pass();
    }
    double fwd = 0, bwd = 0;
    for (const profiler::OpRow& row : profiler::stop().ops) fwd += row.fwd_flops, bwd += row.bwd_flops;
    return std::pair{fwd, bwd};
  };
  PassFlops f;
  f.forward = flops_of([&] { cross_entropy(model.forward(x), y); }).first;
  Tensor input = x.detach();
  input.set_requires_grad(true);
  f.backward_inputs = flops_of([&] { grad({cross_entropy(model.forward(input), y)}, {input}); }).second;
  const double training_backward = flops_of([&] { backward(cross_entropy(model.forward(x), y)); }).second;
  f.backward_weights = f.forward;
  f.first_layer_input = f.backward_weights + f.backward_inputs - training_backward;
  model.zero_grad();
  return f;
}

}  // namespace

TrainStepConfig default_train_step(const std::string& model) {
  TrainStepConfig c;
  c.model = model;
  if (model == "wong_small" || model == "mlp" || model == "ibp_small" || model == "wong_large" || model == "ibp_large") {
    c.channels = 1, c.height = 28, c.width = 28;
    c.mean = {0.1307};
    c.std = {0.3081};
    c.attack_steps = 10;
    c.eps = 0.3;
    c.alpha = c.eps / 4;
  } else {
    c.channels = 3, c.height = 32, c.width = 32;
    c.mean = {0.4914, 0.4822, 0.4465};
    c.std = {0.2471, 0.2435, 0.2616};
    c.attack_steps = 1;
    c.eps = 8.0 / 255.0;
    c.alpha = 1.25 * c.eps;
  }
  return c;
}

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t m = v.size() / 2;
  return v.size() % 2 ? v[m] : 0.5 * (v[m - 1] + v[m]);
}

double minimum(const std::vector<double>& v) { return v.empty() ? 0 : *std::min_element(v.begin(), v.end()); }

TrainStepResult run_train_step(const TrainStepConfig& c) {
  if (c.batch < 2 || c.iters < 1 || c.warmup < 0 || c.threads < 1 || c.attack_steps < 0)
    throw std::invalid_argument(fmt::format("train-step: batch ({}) >= 2, iters ({}) >= 1, warmup ({}) >= 0, "
                                            "threads ({}) >= 1 and attack steps ({}) >= 0 are required",
                                            c.batch, c.iters, c.warmup, c.threads, c.attack_steps));
  cpu::set_num_threads(c.threads);
  const runtime::MathPrecisionScope precision(c.precision);
  ModelConfig mc;
  mc.in_channels = c.channels, mc.height = c.height, mc.width = c.width;
  mc.mean = c.mean, mc.std = c.std;
  mc.seed = c.seed;
  std::shared_ptr<Module> model = make_model(c.model, mc);
  model->train();

  Generator gen(c.seed + 1);
  const Tensor x = rand_uniform({c.batch, c.channels, c.height, c.width}, 0.0, 1.0, gen);
  std::vector<int32_t> labels(static_cast<size_t>(c.batch));
  for (int64_t i = 0; i < c.batch; ++i) labels[i] = static_cast<int32_t>(i % 10);
  const Tensor y = Tensor::from_vector(labels, {c.batch});

  training::OptimizerConfig oc;
  oc.name = "sgd", oc.lr = 0.01, oc.momentum = 0.9, oc.weight_decay = 5e-4;
  std::unique_ptr<training::Optimizer> optimizer = training::make_optimizer(oc, model->named_parameters());

  TrainStepResult r;
  r.config = c;
  r.flops = count_flops(*model, x, y);
  PgdOptions attack;
  attack.eps = c.eps, attack.alpha = c.alpha, attack.steps = c.attack_steps;
  attack.random_start = c.random_start, attack.seed = c.seed + 2;

  for (int it = 0; it < c.warmup + c.iters; ++it) {
    if (c.profile && it == c.warmup) profiler::start();
    const profiler::Step profiled_step;  // counts only while a session is active
    const auto t0 = Clock::now();
    const double cpu0 = process_cpu_ms();
    attack.offset = gen.reserve(random_start_counters(x.numel()));
    const Tensor x_adv = pgd_attack(*model, x, y, attack);
    const double attack_ms = ms_since(t0);

    auto t = Clock::now();
    Tensor loss = cross_entropy(model->forward(x_adv), y);
    const double forward_ms = ms_since(t);

    t = Clock::now();
    backward(loss);
    r.final_loss = loss.item();
    loss = Tensor();  // drop the graph inside the timed phase that built it
    const double backward_ms = ms_since(t);

    t = Clock::now();
    optimizer->step();
    optimizer->zero_grad();
    const double optimizer_ms = ms_since(t);
    const double total_ms = ms_since(t0), total_cpu_ms = process_cpu_ms() - cpu0;

    if (it < c.warmup) continue;
    r.times.attack.push_back(attack_ms);
    r.times.forward.push_back(forward_ms);
    r.times.backward.push_back(backward_ms);
    r.times.optimizer.push_back(optimizer_ms);
    r.times.total.push_back(total_ms);
    r.times.total_cpu.push_back(total_cpu_ms);
  }
  if (c.profile) r.profile = profiler::stop();
  return r;
}

namespace {
std::string attack_name(const TrainStepConfig& c) {
  if (c.attack_steps == 0) return "none";
  const std::string kind = c.attack_steps == 1 ? (c.random_start ? "FGSM-RS" : "FGSM") : fmt::format("PGD-{}", c.attack_steps);
  return fmt::format("{} (eps {:.4g}, alpha {:.4g}{})", kind, c.eps, c.alpha, c.random_start ? ", random start" : "");
}

std::string gflops(double flops, double ms) {
  return flops > 0 && ms > 0 ? fmt::format("{:8.1f}", flops / (ms * 1e6)) : fmt::format("{:>8}", "-");
}
}  // namespace

namespace {
// The matrix FLOPs of a step's phases: k attack steps of forward + input backward; the backward's
// weight and input gradients, less the first layer's input gradient (nothing asks for it).
double attack_flops(const TrainStepResult& r) {
  return r.config.attack_steps * (r.flops.forward + r.flops.backward_inputs);
}
double backward_flops(const TrainStepResult& r) {
  return r.flops.backward_weights + r.flops.backward_inputs - r.flops.first_layer_input;
}
double step_flops(const TrainStepResult& r) { return attack_flops(r) + r.flops.forward + backward_flops(r); }
}  // namespace

void print_train_step(const TrainStepResult& r) {
  const TrainStepConfig& c = r.config;
  const PassFlops& f = r.flops;
  fmt::print("train-step {} on {}x{}x{}, batch {}, {} threads, {}, attack {}; {} iterations after {} warm-up\n", c.model,
             c.channels, c.height, c.width, c.batch, c.threads, c.precision, attack_name(c), c.iters, c.warmup);
  fmt::print("  {:<10} {:>10} {:>10} {:>9} {:>8}\n", "phase", "median ms", "min ms", "GFLOP", "GFLOP/s");
  auto row = [&](const char* name, const std::vector<double>& ms, double flops) {
    fmt::print("  {:<10} {:10.2f} {:10.2f} {:9.2f} {}\n", name, median(ms), minimum(ms), flops / 1e9, gflops(flops, median(ms)));
  };
  row("attack", r.times.attack, attack_flops(r));
  row("forward", r.times.forward, f.forward);
  row("backward", r.times.backward, backward_flops(r));
  row("optimizer", r.times.optimizer, 0);
  row("step", r.times.total, step_flops(r));
  const double step_ms = median(r.times.total);
  fmt::print("  => {:.1f} ms/step, {:.0f} images/s, {:.1f} CPU ms/step (final loss {:.4f})\n", step_ms, c.batch * 1e3 / step_ms,
             median(r.times.total_cpu), r.final_loss);
}

// The process's peak resident memory so far, in MiB (getrusage's ru_maxrss: the set-up and every
// step included; the steps dominate it).
double peak_rss_mib() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_maxrss) / 1024.0;
}

void print_train_step_json(const TrainStepResult& r) {
  const TrainStepConfig& c = r.config;
  fmt::print(
      "{{\"impl\": \"bulwark\", \"model\": \"{}\", \"precision\": \"{}\", \"batch\": {}, \"threads\": {}, \"attack_steps\": {}, "
      "\"ms_per_step\": {:.3f}, \"min_ms_per_step\": {:.3f}, \"cpu_ms_per_step\": {:.3f}, \"attack_ms\": {:.3f}, "
      "\"forward_ms\": {:.3f}, \"backward_ms\": {:.3f}, \"optimizer_ms\": {:.3f}, \"forward_gflop\": {:.4f}, "
      "\"step_gflop\": {:.4f}, \"peak_rss_mib\": {:.1f}}}\n",
      c.model, c.precision, c.batch, c.threads, c.attack_steps, median(r.times.total), minimum(r.times.total), median(r.times.total_cpu),
      median(r.times.attack), median(r.times.forward), median(r.times.backward), median(r.times.optimizer),
      r.flops.forward / 1e9, step_flops(r) / 1e9, peak_rss_mib());
}

BenchBatch bench_batch(const std::string& model, int64_t batch) {
  BenchBatch b;
  b.shape = default_train_step(model);
  b.model.in_channels = b.shape.channels, b.model.height = b.shape.height, b.model.width = b.shape.width;
  b.model.mean = b.shape.mean, b.model.std = b.shape.std;
  Generator gen(1);
  b.x = rand_uniform({batch, b.shape.channels, b.shape.height, b.shape.width}, 0.0, 1.0, gen);
  std::vector<int32_t> labels(static_cast<size_t>(batch));
  for (int64_t i = 0; i < batch; ++i) labels[i] = static_cast<int32_t>(i % 10);
  b.y = Tensor::from_vector(labels, {batch});
  return b;
}

int run_emulated_twin(const char* command, int argc, char** argv) {
  const std::filesystem::path self = std::filesystem::read_symlink("/proc/self/exe");
  const std::filesystem::path sibling = self.parent_path() / "bulwark-bench-emu";
  std::vector<std::string> args{sibling.string(), command};
  for (int i = 1; i < argc; ++i) args.emplace_back(argv[i]);
  std::vector<char*> raw;
  for (std::string& a : args) raw.push_back(a.data());
  raw.push_back(nullptr);
  ::execv(sibling.c_str(), raw.data());
  throw std::runtime_error(fmt::format("{}: no usable GPU, and the emulated twin {} cannot be run ({}): build it with "
                                       "`cmake --build build --target bulwark-bench-emu`",
                                       command, sibling.string(), std::strerror(errno)));
}

training::OptimizerConfig bench_sgd() {
  training::OptimizerConfig oc;
  oc.name = "sgd", oc.lr = 0.01, oc.momentum = 0.9, oc.weight_decay = 5e-4;
  return oc;
}

}  // namespace bulwark::bench

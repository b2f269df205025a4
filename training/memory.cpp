#include "training/memory.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <functional>
#include <stdexcept>

#include "engine/runtime.h"
#include "robust/attacks.h"
#include "robust/registry.h"
#include "training/evaluate.h"
#include "training/optim.h"
#include "training/trainer.h"

namespace bulwark::training {

namespace {

// The most live tensor bytes during f, above those live before it.
int64_t peak_during(Device device, const std::function<void()>& f) {
  const int64_t before = memory_stats(device).live;
  reset_peak_memory(device);
  f();
  return std::max<int64_t>(0, memory_stats(device).peak - before);
}

// A number from a file of one number (cgroup files), or -1 ("max" or absent).
int64_t read_number(const std::string& path) {
  std::ifstream in(path);
  std::string text;
  if (!(in >> text) || text == "max") return -1;
  try {
    return std::stoll(text);
  } catch (const std::exception&) {
    return -1;
  }
}

int64_t mem_available() {
  std::ifstream in("/proc/meminfo");
  std::string key, unit;
  int64_t value = 0;
  while (in >> key >> value >> unit)
    if (key == "MemAvailable:") return value * 1024;
  return -1;
}

}  // namespace

MemoryEstimate estimate_memory(const TrainConfig& cfg, const data::Dataset& train, Device device) {
  MemoryEstimate e;
  e.input_per_sample = train.c * train.h * train.w * static_cast<int64_t>(sizeof(float)) + 4;
  const int64_t before = memory_stats(device).live;
  std::shared_ptr<Module> model = build_model(cfg, device);
  std::unique_ptr<Optimizer> optimizer = make_optimizer(cfg.optimizer, model->named_parameters());
  std::unique_ptr<robust::Method> method = robust::make_method(cfg.method);
  Generator gen(cfg.seed);
  robust::PassCounter passes;
  robust::StepLog log;
  int64_t batch = 0;
  // The batch is made inside the measured step, as the trainer makes each one.
  const auto train_step = [&](int64_t n) {
    const Tensor x = images_tensor(train, 0, n).to(device), y = labels_tensor(train, 0, n).to(device);
    model->train();
    log.begin_batch(batch);
    robust::StepContext ctx{*model, *optimizer, gen, passes, log, 0, batch++};
    method->train_batch(ctx, x, y);
    log.read_new_batches();
  };
  train_step(2);  // creates the optimizer's buffers
  e.state = memory_stats(device).live - before;
  const int64_t p2 = peak_during(device, [&] { train_step(2); });
  const int64_t p4 = peak_during(device, [&] { train_step(4); });
  e.train_per_sample = std::max<int64_t>(0, (p4 - p2) / 2);
  e.train_fixed = std::max<int64_t>(0, p2 - 2 * e.train_per_sample);
  if (cfg.method.eps() > 0) {
    AttackOptions o;
    o.kind = AttackKind::pgd;
    o.eps = cfg.method.eps();
    o.steps = 1;
    EvalModeGuard eval(*model);
    const auto pgd_step = [&](int64_t n) {
      const Tensor x = images_tensor(train, 0, n).to(device), y = labels_tensor(train, 0, n).to(device);
      attack(*model, x, y, o);
    };
    const int64_t q2 = peak_during(device, [&] { pgd_step(2); });
    const int64_t q4 = peak_during(device, [&] { pgd_step(4); });
    e.eval_per_sample = std::max<int64_t>(0, (q4 - q2) / 2);
    e.eval_fixed = std::max<int64_t>(0, q2 - 2 * e.eval_per_sample);
  }
  return e;
}

MemoryLimit memory_limit(const TrainConfig& cfg, Device device) {
  if (!cfg.memory_limit.empty()) return {parse_memory_size(cfg.memory_limit), "--memory-limit"};
  if (device == Device::cuda) return {runtime::cuda_free_memory(), "free device memory (cudaMemGetInfo)"};
  MemoryLimit limit{mem_available(), "MemAvailable in /proc/meminfo"};
  // cgroup v2, then v1: the container's own limit, less what it uses.
  struct Group {
    const char *max, *current, *name;
  };
  for (const Group& g : {Group{"/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current", "the cgroup's memory.max"},
                         Group{"/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes",
                               "the cgroup's memory.limit_in_bytes"}}) {
    const int64_t max = read_number(g.max), current = read_number(g.current);
    if (max <= 0 || max >= (int64_t{1} << 60) || current < 0) continue;
    if (limit.bytes < 0 || max - current < limit.bytes) limit = {max - current, g.name};
    break;
  }
  return limit;
}

int64_t parse_memory_size(const std::string& text) {
  size_t used = 0;
  double value = 0;
  try {
    value = std::stod(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  std::string unit = text.substr(used);
  if (!unit.empty() && unit.back() == 'B') unit.pop_back();
  if (unit.size() == 2 && unit.back() == 'i') unit.pop_back();
  const std::string units = "KMGT";
  const size_t power = unit.empty() ? 0 : units.find(unit[0]) + 1;
  if (used == 0 || !(value > 0) || !std::isfinite(value) || unit.size() > 1 || (unit.size() == 1 && power == 0))
    throw std::invalid_argument(fmt::format("--memory-limit '{}': give a size such as 512M, 2G or 1.5GiB (K, M, G, T "
                                            "are powers of 1024), or a number of bytes",
                                            text));
  return static_cast<int64_t>(value * std::pow(1024.0, static_cast<double>(power)));
}

std::string format_bytes(int64_t bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(bytes);
  int u = 0;
  while (v >= 1024 && u < 4) v /= 1024, ++u;
  return u == 0 ? fmt::format("{} B", bytes) : fmt::format("{:.1f} {}", v, units[u]);
}

void check_memory(const TrainConfig& cfg, const data::Dataset& train) {
  const Device device = run_device(cfg);
  if (train.n < 4) return;  // too few samples to measure; nothing large either
  const MemoryLimit limit = memory_limit(cfg, device);
  if (limit.bytes <= 0) return;  // unknown here
  const MemoryEstimate e = estimate_memory(cfg, train, device);
  const auto refuse = [&](const char* what, const char* flag, int64_t batch, int64_t need, int64_t fixed,
                          int64_t per_sample) {
    const int64_t room = limit.bytes - e.state - fixed;
    const std::string fits = per_sample > 0 && room >= per_sample
                                 ? fmt::format("a batch of about {} fits: lower {}", room / per_sample, flag)
                                 : std::string("not even a batch of 1 fits: a smaller model, or more memory");
    throw std::invalid_argument(fmt::format(
        "{} of {} at batch {} needs about {} of memory ({} for the model and optimizer, {} a sample: tensors of a step "
        "measured at batch 2 and 4), more than the {} available ({}); {}",
        what, cfg.model, batch, format_bytes(need), format_bytes(e.state), format_bytes(per_sample),
        format_bytes(limit.bytes), limit.source, fits));
  };
  const int64_t train_batch = MemoryEstimate::trained_batch(cfg, train.n);
  if (const int64_t need = e.train_bytes(train_batch); need > limit.bytes)
    refuse("a training step", "--batch-size", train_batch, need, e.train_fixed, e.train_per_sample);
  const int64_t batch = MemoryEstimate::attacked_batch(cfg, train.n);
  if (const int64_t need = e.eval_bytes(batch); batch > 0 && need > limit.bytes)
    refuse("a PGD step (validation, final test or the method's probe)", "--eval-batch-size or --batch-size", batch,
           need, e.eval_fixed, e.eval_per_sample);
}

int64_t MemoryEstimate::attacked_batch(const TrainConfig& cfg, int64_t train_n) {
  if (!(cfg.method.eps() > 0)) return 0;
  const int64_t evaluated = std::min(cfg.eval_batch_size, std::max(cfg.robust_val_size, cfg.final_attack_size));
  const bool attacks_probe = robust::method_registry().at(cfg.method.name).adversarial;
  return std::max(evaluated, attacks_probe ? trained_batch(cfg, train_n) : int64_t{0});
}

}  // namespace bulwark::training

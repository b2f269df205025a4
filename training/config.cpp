#include "training/config.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <chrono>
#include <ctime>
#include <filesystem>
#include <stdexcept>

#include "data/idx.h"
#include "engine/json_field.h"
#include "engine/runtime.h"
#include "models/zoo.h"

namespace bulwark::training {

namespace {
using ojson = nlohmann::ordered_json;

void require(bool ok, const std::string& what) {
  if (!ok) throw std::invalid_argument(what);
}

std::string timestamp() {
  const std::time_t now = std::chrono::system_clock::to_time_t(std::chrono::system_clock::now());
  std::tm tm{};
  localtime_r(&now, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y%m%d-%H%M%S", &tm);
  return buf;
}
}  // namespace

std::vector<std::string> dataset_names() { return {"synthetic", "mnist", "fashion-mnist", "cifar10", "cifar100"}; }

namespace {
// Every field of the config once, with its place in the JSON (group "" = top level):
// to_json and config_from_json both walk this list, so the two cannot drift apart.
template <class Config, class F>
void for_each_field(Config& c, F&& f) {
  f("", "model", c.model);
  f("data", "dataset", c.data.dataset);
  f("data", "data_dir", c.data.data_dir);
  f("data", "train_size", c.data.train_size);
  f("data", "val_size", c.data.val_size);
  f("data", "test_size", c.data.test_size);
  f("data", "data_seed", c.data.data_seed);
  f("data", "crop_pad", c.data.crop_pad);
  f("data", "flip", c.data.flip);
  f("input", "channels", c.input.channels);
  f("input", "height", c.input.height);
  f("input", "width", c.input.width);
  f("input", "num_classes", c.input.num_classes);
  f("input", "mean", c.input.mean);
  f("input", "std", c.input.std);
  f("", "epochs", c.epochs);
  f("", "batch_size", c.batch_size);
  f("", "eval_batch_size", c.eval_batch_size);
  f("optimizer", "name", c.optimizer.name);
  f("optimizer", "lr", c.optimizer.lr);
  f("optimizer", "weight_decay", c.optimizer.weight_decay);
  f("optimizer", "momentum", c.optimizer.momentum);
  f("optimizer", "nesterov", c.optimizer.nesterov);
  f("optimizer", "beta1", c.optimizer.beta1);
  f("optimizer", "beta2", c.optimizer.beta2);
  f("optimizer", "eps", c.optimizer.eps);
  f("schedule", "name", c.schedule.name);
  f("schedule", "milestones", c.schedule.milestones);
  f("schedule", "gamma", c.schedule.gamma);
  f("schedule", "min_lr", c.schedule.min_lr);
  f("schedule", "peak", c.schedule.peak);
  f("schedule", "accelat_window", c.schedule.accelat_window);
  f("schedule", "accelat_threshold", c.schedule.accelat_threshold);
  f("schedule", "accelat_factor", c.schedule.accelat_factor);
  f("schedule", "accelat_cooldown", c.schedule.accelat_cooldown);
  f("schedule", "accelat_floor", c.schedule.accelat_floor);
  f("", "robust_val_size", c.robust_val_size);
  f("", "robust_val_steps", c.robust_val_steps);
  f("", "final_attack_size", c.final_attack_size);
  f("", "final_attack_steps", c.final_attack_steps);
  f("", "kernels", c.kernels);
  f("", "seed", c.seed);
  f("", "threads", c.threads);
  f("", "device", c.device);
  f("", "out", c.out);
}
}  // namespace

ojson to_json(const TrainConfig& c) {
  ojson j;
  for_each_field(c, [&](const std::string& group, const char* key, const auto& value) {
    (group.empty() ? j[key] : j[group][key]) = value;
  });
  j["method"] = robust::to_json(c.method);
  return j;
}

TrainConfig config_from_json(const nlohmann::json& j) {
  TrainConfig c;
  for_each_field(c, [&](const std::string& group, const char* key, auto& value) {
    if (group.empty()) {
      read_json_field(j, "", key, value);
    } else if (j.contains(group)) {
      read_json_field(j.at(group), group, key, value);
    }
  });
  if (j.contains("method")) c.method = robust::method_config_from_json(j.at("method"));
  return c;
}

void validate(const DataConfig& d) {
  const auto datasets = dataset_names();
  require(d.dataset.empty() || std::find(datasets.begin(), datasets.end(), d.dataset) != datasets.end(),
          fmt::format("unknown dataset '{}' (available: {})", d.dataset, fmt::join(datasets, ", ")));
  require(d.train_size >= 0, fmt::format("--train-size must be >= 0 (0 = all), got {}", d.train_size));
  require(d.val_size >= 1, fmt::format("--val-size must be >= 1, got {}", d.val_size));
  require(d.test_size >= 0, fmt::format("--test-size must be >= 0 (0 = all), got {}", d.test_size));
  require(d.crop_pad >= 0, fmt::format("--crop-pad must be >= 0, got {}", d.crop_pad));
}

void validate(const TrainConfig& c) {
  const auto models = model_names();
  require(std::find(models.begin(), models.end(), c.model) != models.end(),
          fmt::format("unknown model '{}' (available: {})", c.model, fmt::join(models, ", ")));
  validate(c.data);
  require(c.epochs >= 1, fmt::format("--epochs must be >= 1, got {}", c.epochs));
  require(c.batch_size >= 1, fmt::format("--batch-size must be >= 1, got {}", c.batch_size));
  require(c.eval_batch_size >= 1, fmt::format("--eval-batch-size must be >= 1, got {}", c.eval_batch_size));
  require(c.threads >= 0, fmt::format("--threads must be >= 0 (0 = all cores), got {}", c.threads));
  require(c.device == "cpu" || c.device == "cuda" || c.device == "auto",
          fmt::format("unknown device '{}' (use cpu, cuda or auto)", c.device));
  validate(c.optimizer);
  validate(c.schedule, c.epochs);
  robust::validate(c.method);
  require(c.robust_val_size >= 0, fmt::format("--robust-val-size must be >= 0 (0 = off), got {}", c.robust_val_size));
  require(c.robust_val_steps >= 1, fmt::format("--robust-val-steps must be >= 1, got {}", c.robust_val_steps));
  require(c.final_attack_size >= 0,
          fmt::format("--final-attack-size must be >= 0 (0 = off), got {}", c.final_attack_size));
  require(c.final_attack_steps >= 1, fmt::format("--final-attack-steps must be >= 1, got {}", c.final_attack_steps));
  try {
    runtime::check_kernel_source(c.kernels);
  } catch (const std::invalid_argument& e) {
    throw std::invalid_argument(fmt::format("--kernels: {}", e.what()));
  }
}

std::string resolve_device(const std::string& requested, std::vector<std::string>& notes) {
  if (requested != "cpu" && requested != "cuda" && requested != "auto")
    throw std::invalid_argument(fmt::format("unknown device '{}' (use cpu, cuda or auto)", requested));
  if (requested == "cpu") return requested;
  // The emulated backend runs CUDA kernels on the CPU for the tests; it is never a GPU.
  std::string why;
  const bool gpu = runtime::cuda_available(&why) && !runtime::cuda_emulated();
  if (runtime::cuda_emulated()) why = "this build's CUDA backend is the CPU emulator (no nvcc at build time)";
  if (requested == "cuda") {
    if (!gpu) throw std::invalid_argument(fmt::format("--device cuda: no usable GPU ({}); use --device cpu", why));
    return "cuda";
  }
  notes.push_back(gpu ? "device: cuda (--device auto found a GPU)"
                      : fmt::format("device: cpu (--device auto; no usable GPU: {})", why));
  return gpu ? "cuda" : "cpu";
}

void resolve_data_dir(DataConfig& d) {
  if (d.dataset == "synthetic") d.data_dir.clear();
  if (d.dataset == "fashion-mnist" && d.data_dir.empty()) d.data_dir = data::kFashionMnistDefaultDir;
  require(d.dataset == "synthetic" || !d.data_dir.empty(),
          fmt::format("--dataset {} needs --data-dir, the folder with its files", d.dataset));
}

std::vector<std::string> resolve_defaults(TrainConfig& c) {
  std::vector<std::string> notes;
  if (c.data.dataset.empty()) {
    require(c.data.data_dir.empty(), fmt::format("--data-dir {} needs --dataset, to say which dataset is there",
                                                 c.data.data_dir));
    if (const auto dir = data::find_fashion_mnist()) {
      c.data.dataset = "fashion-mnist";
      c.data.data_dir = *dir;
      notes.push_back(fmt::format("dataset: fashion-mnist from {} (no --dataset given; Debian's "
                                  "dataset-fashion-mnist package is installed)", c.data.data_dir));
    } else {
      c.data.dataset = "synthetic";
      notes.push_back(fmt::format("dataset: synthetic (no --dataset given and Fashion-MNIST is not installed at {}; "
                                  "`apt-get install dataset-fashion-mnist` makes it the default)",
                                  data::kFashionMnistDefaultDir));
    }
  }
  resolve_data_dir(c.data);

  const bool mnist_like = c.data.dataset == "mnist" || c.data.dataset == "fashion-mnist";
  if (c.method.eps < 0 && c.data.dataset == "fashion-mnist") {
    c.method.eps = 0.1;  // the usual Fashion-MNIST radius; MNIST's 0.3 leaves little to learn
    if (robust::is_adversarial(c.method.name))
      notes.push_back(fmt::format("{}: --eps = 0.1 (Fashion-MNIST)", c.method.name));
  }
  for (auto& n : robust::resolve_method_defaults(c.method, mnist_like)) notes.push_back(std::move(n));
  robust::validate(c.method);

  if (c.schedule.name == "multistep" && c.schedule.milestones.empty()) c.schedule.milestones = default_milestones(c.epochs);
  if (c.threads == 0) c.threads = runtime::num_threads();
  c.device = resolve_device(c.device, notes);
  if (c.out.empty()) {
    const std::string base = fmt::format("runs/{}-{}-{}", timestamp(), c.model, c.data.dataset);
    c.out = base;
    for (int k = 2; std::filesystem::exists(c.out); ++k) c.out = fmt::format("{}-{}", base, k);
  }
  return notes;
}

}  // namespace bulwark::training

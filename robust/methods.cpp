#include "robust/methods.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cmath>
#include <stdexcept>

#include "engine/json_field.h"
#include "engine/ops.h"
#include "robust/training_methods.h"

namespace bulwark::robust {

namespace {
void require(bool ok, const std::string& what) {
  if (!ok) throw std::invalid_argument(what);
}

// Every field once, with its JSON key: to_json and method_config_from_json both walk this list.
template <class Config, class F>
void for_each_field(Config& c, F&& f) {
  f("name", c.name);
  f("eps", c.eps);
  f("alpha", c.alpha);
  f("eps_ramp", c.eps_ramp);
  f("steps", c.steps);
  f("replays", c.replays);
  f("gamma", c.gamma);
  f("r_max", c.r_max);
  f("alpha_per_r", c.alpha_per_r);
  f("alpha_min", c.alpha_min);
  f("deat_d", c.deat_d);
  f("deat_p_acc", c.deat_p_acc);
  f("guard", c.guard);
  f("guard_drop", c.guard_drop);
  f("guard_steps", c.guard_steps);
}
}  // namespace

std::vector<std::string> method_names() {
  return {"standard", "pgd", "fgsm-rs", "free", "mplus-deat", "mplus-pgd", "deat-d", "deat-p"};
}

bool is_adversarial(const std::string& name) { return name != "standard"; }

std::vector<std::string> resolve_method_defaults(MethodConfig& c, bool mnist_like) {
  const auto names = method_names();
  require(std::find(names.begin(), names.end(), c.name) != names.end(),
          fmt::format("unknown method '{}' (available: {})", c.name, fmt::join(names, ", ")));
  std::vector<std::string> notes;
  auto note = [&](const std::string& what, double value, const char* why) {
    notes.push_back(fmt::format("{}: {} = {:.6g} ({})", c.name, what, value, why));
  };
  if (c.eps < 0) {
    // MNIST at 0.3 (Madry; MixTrain); CIFAR-like at 8/255 (Fast-AT, Free-AT, DEAT). Fashion-MNIST's
    // 0.1 is resolved by the trainer, which knows the dataset's name.
    c.eps = mnist_like ? 0.3 : 8.0 / 255.0;
    if (is_adversarial(c.name)) note("--eps", c.eps, mnist_like ? "MNIST-like input" : "CIFAR-like input");
  }
  const std::string& n = c.name;
  if (c.alpha == 0 && is_adversarial(n)) {
    const char* why = "";
    if (n == "pgd") {
      // Madry: 40 steps of 0.01 at eps 0.3 on MNIST (eps / 30); 7 steps of 2/255 at 8/255 on CIFAR.
      c.alpha = mnist_like ? c.eps / 30 : c.eps / 4;
      why = mnist_like ? "Madry's MNIST step, eps/30" : "Madry's CIFAR step, eps/4";
    } else if (n == "mplus-pgd") {
      c.alpha = c.eps / 4;
      why = "M+PGD's 2/255 at 8/255";
    } else if (n == "free") {
      c.alpha = c.eps;
      why = "Free-AT steps by eps";
    } else {  // fgsm-rs, mplus-deat, deat-d, deat-p: 10/255 at 8/255
      c.alpha = 1.25 * c.eps;
      why = "Wong et al.'s 1.25 eps";
    }
    note("--alpha", c.alpha, why);
  }
  if (n == "pgd" && c.steps == 0) {
    c.steps = mnist_like ? 40 : 7;
    note("--steps", c.steps, mnist_like ? "Madry's MNIST setting" : "Madry's CIFAR setting");
  }
  if (n == "free" && c.replays == 0) {
    c.replays = 8;
    note("--replays", c.replays, "Free-AT's m = 8");
  }
  if (c.r_max == 0) {
    if (n == "mplus-deat") c.r_max = 8;
    if (n == "mplus-pgd") c.r_max = 7;
    if (n == "deat-d") c.r_max = 5;
    if (n == "deat-p") c.r_max = 4;
    if (c.r_max) note("--r-max", c.r_max, "the paper's setting");
  }
  if (n == "mplus-deat" && c.alpha_per_r && c.alpha_min == 0) {
    c.alpha_min = c.eps / c.r_max;  // (assumed) no floor beyond the smallest eps / r the rule reaches
    note("--alpha-min", c.alpha_min, "assumed: eps / r_max");
  }
  return notes;
}

void validate(const MethodConfig& c) {
  const auto names = method_names();
  require(std::find(names.begin(), names.end(), c.name) != names.end(),
          fmt::format("unknown method '{}' (available: {})", c.name, fmt::join(names, ", ")));
  // A negative eps stands for "the dataset's default" until resolve_method_defaults runs.
  require(c.eps <= 1, fmt::format("--eps must be in [0, 1] (pixel units; 8/255 is accepted), got {}", c.eps));
  require(c.alpha >= 0, fmt::format("--alpha must be >= 0, got {}", c.alpha));
  require(c.eps_ramp >= 0, fmt::format("--eps-ramp must be >= 0 epochs (0 = off), got {}", c.eps_ramp));
  require(c.steps >= 0 && c.steps <= 10000, fmt::format("--steps must be in [0, 10000], got {}", c.steps));
  require(c.replays >= 0 && c.replays <= 1000, fmt::format("--replays must be in [0, 1000], got {}", c.replays));
  require(c.gamma > 1, fmt::format("--gamma-mplus must be > 1 (the M+ threshold grows by it), got {}", c.gamma));
  require(c.r_max >= 0 && c.r_max <= 1000, fmt::format("--r-max must be in [0, 1000], got {}", c.r_max));
  require(c.alpha_min >= 0, fmt::format("--alpha-min must be >= 0, got {}", c.alpha_min));
  require(c.deat_d >= 1, fmt::format("--deat-d must be >= 1, got {}", c.deat_d));
  require(c.deat_p_acc >= 0 && c.deat_p_acc <= 1, fmt::format("--deat-p-acc must be in [0, 1], got {}", c.deat_p_acc));
  require(c.guard_drop > 0 && c.guard_drop <= 1, fmt::format("--guard-drop must be in (0, 1], got {}", c.guard_drop));
  require(c.guard_steps >= 1, fmt::format("--guard-steps must be >= 1, got {}", c.guard_steps));
  if (is_adversarial(c.name) && c.eps >= 0)
    require(c.eps > 0, fmt::format("--eps must be > 0 for method '{}'", c.name));
}

nlohmann::ordered_json to_json(const MethodConfig& c) {
  nlohmann::ordered_json j;
  for_each_field(c, [&](const char* key, const auto& value) { j[key] = value; });
  return j;
}

MethodConfig method_config_from_json(const nlohmann::json& j) {
  MethodConfig c;
  if (j.is_string()) {  // run directories written before methods had options
    c.name = j.get<std::string>();
    return c;
  }
  for_each_field(c, [&](const char* key, auto& value) { read_json_field(j, "method", key, value); });
  return c;
}

Tensor correct_predictions(const Tensor& logits, const Tensor& labels) {
  if (logits.dim() != 2 || !labels.defined() || labels.dtype() != DType::i32 || labels.dim() != 1 ||
      labels.size(0) != logits.size(0))
    throw std::invalid_argument(fmt::format("correct_predictions: needs logits [n, k] and i32 labels [n], got {} and {}",
                                            logits.str(), labels.defined() ? labels.str() : std::string("undefined")));
  NoGradGuard no_grad;
  // argmax and the labels as f32 (class indices are exact), compared and summed on the device.
  const Tensor predicted = argmax(logits.detach(), 1).to(DType::f32);
  return sum(eq(predicted, labels.to(DType::f32)));
}

int64_t count_correct(const Tensor& logits, const Tensor& labels) {
  return static_cast<int64_t>(correct_predictions(logits, labels).item());
}

std::unique_ptr<Method> make_method(const MethodConfig& c) {
  validate(c);
  if (c.eps < 0) throw std::logic_error("make_method: the config's defaults are not resolved (resolve_method_defaults)");
  if (c.name == "standard") return std::make_unique<StandardTraining>();
  return make_adversarial_method(c);
}

}  // namespace bulwark::robust

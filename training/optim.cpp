#include "training/optim.h"

#include <fmt/format.h>

#include <cmath>
#include <stdexcept>

#include "engine/autograd.h"
#include "engine/check.h"
#include "engine/optim_ops.h"

namespace bulwark::training {

namespace {
const char* kStepName = "optimizer.step";
}  // namespace

void validate(const OptimizerConfig& cfg) {
  require(cfg.name == "sgd" || cfg.name == "adam", fmt::format("unknown optimizer '{}' (use sgd or adam)", cfg.name));
  require(std::isfinite(cfg.lr) && cfg.lr > 0, fmt::format("learning rate must be > 0, got {}", cfg.lr));
  require(std::isfinite(cfg.weight_decay) && cfg.weight_decay >= 0,
          fmt::format("weight decay must be >= 0, got {}", cfg.weight_decay));
  require(cfg.momentum >= 0 && cfg.momentum < 1, fmt::format("momentum must be in [0, 1), got {}", cfg.momentum));
  require(!cfg.nesterov || cfg.momentum > 0, "Nesterov momentum needs --momentum > 0");
  require(cfg.beta1 >= 0 && cfg.beta1 < 1, fmt::format("Adam beta1 must be in [0, 1), got {}", cfg.beta1));
  require(cfg.beta2 >= 0 && cfg.beta2 < 1, fmt::format("Adam beta2 must be in [0, 1), got {}", cfg.beta2));
  require(cfg.eps > 0, fmt::format("Adam eps must be > 0, got {}", cfg.eps));
}

Optimizer::Optimizer(NamedTensors params, std::vector<std::string> state_names)
    : state_names_(std::move(state_names)) {
  for (auto& [name, p] : params) {
    Slot slot{name, p, {}};
    for (size_t i = 0; i < state_names_.size(); ++i) slot.state.push_back(Tensor::zeros(p.shape(), p.dtype(), p.device()));
    slots_.push_back(std::move(slot));
  }
}

void Optimizer::set_grad_clip(double max_norm) {
  if (!(max_norm >= 0) || !std::isfinite(max_norm))
    throw std::invalid_argument(fmt::format("gradient clipping needs a finite norm >= 0, got {}", max_norm));
  grad_clip_ = max_norm;
}

void Optimizer::step() {
  ++steps_;
  std::vector<std::pair<Slot*, Tensor>> with_grad;
  for (Slot& slot : slots_)
    if (Tensor g = slot.param.grad(); g.defined()) with_grad.emplace_back(&slot, g);
  if (with_grad.empty()) return;
  if (grad_clip_ > 0) {
    NoGradGuard no_grad;
    Tensor squares;
    for (const auto& [slot, g] : with_grad) squares = squares.defined() ? squares + sum(square(g)) : sum(square(g));
    const Tensor& first = with_grad.front().second;
    const Tensor limit = Tensor::full({}, grad_clip_, first.dtype(), first.device());
    const Tensor scale = clamp(div(limit, sqrt(squares) + 1e-6), 0.0, 1.0);
    for (auto& [slot, g] : with_grad) g = g * scale;
  }
  update(with_grad);
}

void Optimizer::zero_grad() {
  for (Slot& slot : slots_) slot.param.zero_grad();
}

NamedTensors Optimizer::state() const {
  NamedTensors out;
  out.emplace_back(kStepName, Tensor::scalar(static_cast<double>(steps_), DType::f64));
  for (const Slot& slot : slots_)
    for (size_t i = 0; i < state_names_.size(); ++i)
      out.emplace_back(fmt::format("optimizer.{}.{}", slot.name, state_names_[i]), slot.state[i].clone());
  return out;
}

void Optimizer::load_state(const std::map<std::string, Tensor>& tensors) {
  auto find = [&](const std::string& name) -> const Tensor& {
    auto it = tensors.find(name);
    if (it == tensors.end())
      throw std::runtime_error(fmt::format("optimizer state '{}' is missing: was the checkpoint written with the "
                                           "same optimizer and model?", name));
    return it->second;
  };
  const double steps = find(kStepName).item();
  for (Slot& slot : slots_)
    for (size_t i = 0; i < state_names_.size(); ++i) {
      const std::string name = fmt::format("optimizer.{}.{}", slot.name, state_names_[i]);
      const Tensor& t = find(name);
      if (t.shape() != slot.param.shape() || t.dtype() != slot.param.dtype())
        throw std::runtime_error(fmt::format("optimizer state '{}' is {}, the parameter is {}", name, t.str(),
                                             slot.param.str()));
      slot.state[i].copy_(t);
    }
  steps_ = static_cast<int64_t>(steps);
}

Sgd::Sgd(NamedTensors params, const OptimizerConfig& cfg) : Optimizer(std::move(params), {"momentum_buffer"}), cfg_(cfg) {
  validate(cfg);
  lr_ = cfg.lr;
}

void Sgd::update(const std::vector<std::pair<Slot*, Tensor>>& slots) {
  std::vector<SgdParam> group;
  for (const auto& [slot, grad] : slots) group.push_back({slot->param, grad, slot->state[0]});
  sgd_step_(group, optim::SgdHyper{lr_, cfg_.momentum, cfg_.weight_decay, cfg_.nesterov});
}

Adam::Adam(NamedTensors params, const OptimizerConfig& cfg)
    : Optimizer(std::move(params), {"exp_avg", "exp_avg_sq"}), cfg_(cfg) {
  validate(cfg);
  lr_ = cfg.lr;
}

void Adam::update(const std::vector<std::pair<Slot*, Tensor>>& slots) {
  std::vector<AdamParam> group;
  for (const auto& [slot, grad] : slots) group.push_back({slot->param, grad, slot->state[0], slot->state[1]});
  adam_step_(group, optim::AdamHyper{lr_, cfg_.beta1, cfg_.beta2, cfg_.eps, cfg_.weight_decay}, steps_);
}

std::unique_ptr<Optimizer> make_optimizer(const OptimizerConfig& cfg, NamedTensors params) {
  validate(cfg);
  if (cfg.name == "adam") return std::make_unique<Adam>(std::move(params), cfg);
  return std::make_unique<Sgd>(std::move(params), cfg);
}

}  // namespace bulwark::training

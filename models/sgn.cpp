#include "models/sgn.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cmath>
#include <stdexcept>

#include "engine/autograd.h"
#include "models/layers.h"

namespace bulwark {

std::vector<std::pair<std::string, Module*>> tappable_layers(Module& model) {
  std::vector<std::pair<std::string, Module*>> containers = {{"", &model}}, out;
  for (const auto& [name, m] : model.named_modules()) containers.emplace_back(name + ".", m);
  for (const auto& [prefix, m] : containers)
    if (const auto* seq = dynamic_cast<const Sequential*>(m))
      for (const auto& [name, layer] : seq->layers()) out.emplace_back(prefix + name, layer.get());
  return out;
}

std::vector<std::string> SelfGradientNetwork::default_taps(Module& base) {
  std::vector<std::string> taps;
  const bool sequential = dynamic_cast<Sequential*>(&base) != nullptr;
  for (const auto& [name, layer] : tappable_layers(base)) {
    const bool top = name.find('.') == std::string::npos;
    if (sequential ? top && dynamic_cast<ReLU*>(layer) != nullptr : layer->has_children()) taps.push_back(name);
  }
  if (taps.empty())
    throw std::invalid_argument(fmt::format("sgn: the base model ({}) has no ReLU layer or block to tap by default; "
                                            "name the layers with --sgn-taps",
                                            base.type_name()));
  return taps;
}

SelfGradientNetwork::SelfGradientNetwork(std::shared_ptr<Module> base_model, const SgnConfig& cfg,
                                         const Shape& input_shape)
    : grad_(cfg.grad) {
  if (!(cfg.gate_init > 0) || !std::isfinite(cfg.gate_init))
    throw std::invalid_argument(fmt::format("sgn: the gates' initial value must be > 0, got {}", cfg.gate_init));
  base = register_module("base", std::move(base_model));
  tap_names_ = cfg.taps.empty() ? default_taps(*base) : cfg.taps;
  const auto layers = tappable_layers(*base);
  for (const std::string& tap : tap_names_) {
    auto it = std::find_if(layers.begin(), layers.end(), [&](const auto& l) { return l.first == tap; });
    if (it == layers.end()) {
      std::vector<std::string> names;
      for (const auto& l : layers) names.push_back(l.first);
      throw std::invalid_argument(fmt::format("sgn: '{}' is not a layer of the base model ({}); its layers are: {}",
                                              tap, base->type_name(), fmt::join(names, ", ")));
    }
    if (std::find(tap_layers_.begin(), tap_layers_.end(), it->second) != tap_layers_.end())
      throw std::invalid_argument(fmt::format("sgn: the layer '{}' is tapped twice", tap));
    tap_layers_.push_back(it->second);
  }

  // One dummy sample through the base (eval mode: BatchNorm keeps its statistics) gives each
  // tapped output's channels: the gates' sizes.
  const std::vector<Tensor> params = base->parameters();
  const DType dtype = params.empty() ? DType::f32 : params.front().dtype();
  Shape one = {1};
  one.insert(one.end(), input_shape.begin(), input_shape.end());
  std::vector<int64_t> channels(tap_layers_.size(), 0);
  {
    NoGradGuard no_grad;
    EvalModeGuard eval(*base);
    ActivationTaps probe(tap_layers_, [&](size_t k, const Tensor& out) {
      if (out.dim() < 2)
        throw std::invalid_argument(fmt::format("sgn: the output of '{}' is {}, not [N, C, ...]", tap_names_[k], out.str()));
      channels[k] = out.size(1);
      return out;
    });
    base->forward(Tensor::zeros(one, dtype));
  }
  const double rho = std::log(std::expm1(cfg.gate_init));  // softplus(rho) = gate_init
  for (size_t k = 0; k < tap_layers_.size(); ++k)
    rho_.push_back(register_parameter(fmt::format("gates.{}", k), Tensor::full({channels[k]}, rho, dtype)));
}

std::vector<Tensor> SelfGradientNetwork::gates() const {
  std::vector<Tensor> out;
  for (const Tensor& r : rho_) out.push_back(softplus(r));
  return out;
}

Tensor SelfGradientNetwork::forward(const Tensor& x) {
  // Without grad mode nothing will differentiate the output: the probe's backward needs no graph.
  const bool full = grad_ == SgnGrad::full && grad_enabled();
  const size_t taps = tap_layers_.size();
  std::vector<Tensor> g;
  {
    GradModeGuard on(true);  // the probe differentiates even where the caller does not
    std::vector<Tensor> h(taps);
    Tensor z;
    {
      ActivationTaps probe(tap_layers_, [&](size_t k, const Tensor& out) {
        // Nothing before this tap needs a gradient (a constant input into frozen layers): the tap
        // starts the probe's graph itself.
        h[k] = out.requires_grad() ? out : out.detach().set_requires_grad(true);
        return h[k];
      });
      z = base->forward(x);
    }
    const Tensor predicted = argmax(z.detach(), 1);
    try {
      g = grad({sum(cross_entropy(z, predicted, false))}, h, {}, full, /*allow_unused=*/true);
    } catch (const std::invalid_argument& e) {
      if (!full) throw;
      throw std::invalid_argument(fmt::format("sgn --sgn-grad full: {} (--sgn-grad detached does not need it)", e.what()));
    }
  }
  const std::vector<Tensor> gamma = gates();
  ActivationTaps main(tap_layers_, [&](size_t k, const Tensor& out) {
    const Tensor& gk = g[k];
    std::vector<int64_t> per_sample;
    for (int64_t d = 1; d < gk.dim(); ++d) per_sample.push_back(d);
    // rms + 1e-12; the 1e-24 under the root keeps its derivative finite where g vanishes.
    const Tensor rms = add(sqrt(add(mean(square(gk), per_sample, true), 1e-24)), 1e-12);
    Shape gate_shape(static_cast<size_t>(out.dim()), 1);
    gate_shape[1] = out.size(1);
    return out - gamma[k].reshape(gate_shape) * (gk / rms);
  });
  return base->forward(x);
}

Module::PassCost SelfGradientNetwork::pass_cost() const {
  return {.forward = 2, .forward_backward = 1, .backward = grad_ == SgnGrad::full ? 2 : 1};
}

Interval SelfGradientNetwork::interval_forward(const Interval&) {
  throw std::invalid_argument(
      "sgn: a self-gradient network's output depends on its own gradient (the probe's backward), which interval and "
      "symbolic bounds cannot pass: certified training methods and `bulwark verify` do not apply to sgn models");
}

SelfGradientNetwork* as_self_gradient(Module& m) { return dynamic_cast<SelfGradientNetwork*>(&m); }

SgnGradScope::SgnGradScope(Module& model, SgnGrad mode) : sgn_(as_self_gradient(model)) {
  if (sgn_ == nullptr) return;
  previous_ = sgn_->grad_mode();
  sgn_->set_grad_mode(mode);
}

SgnGradScope::~SgnGradScope() {
  if (sgn_ != nullptr) sgn_->set_grad_mode(previous_);
}

SgnGrad parse_sgn_grad(const std::string& text) {
  if (text == "full") return SgnGrad::full;
  if (text == "detached") return SgnGrad::detached;
  throw std::invalid_argument(fmt::format("--sgn-grad must be full or detached, got '{}'", text));
}

std::vector<std::string> parse_sgn_taps(const std::string& text) {
  std::vector<std::string> taps;
  if (text.find_first_not_of(" \t") == std::string::npos) return taps;  // none given: the default
  for (size_t start = 0;;) {
    const size_t end = std::min(text.find(',', start), text.size());
    std::string name = text.substr(start, end - start);
    name.erase(0, name.find_first_not_of(" \t"));
    name.erase(name.find_last_not_of(" \t") + 1);
    if (name.empty()) throw std::invalid_argument(fmt::format("--sgn-taps '{}': an empty layer name", text));
    taps.push_back(std::move(name));
    if (end == text.size()) return taps;
    start = end + 1;
  }
}

}  // namespace bulwark

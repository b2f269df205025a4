#include "models/module.h"

#include "models/symbolic.h"

#include <fmt/format.h>

#include <cxxabi.h>

#include <cstdlib>
#include <memory>
#include <set>
#include <stdexcept>
#include <typeinfo>

namespace bulwark {

std::string Module::type_name() const {
  int status = 0;
  const char* mangled = typeid(*this).name();
  std::unique_ptr<char, void (*)(void*)> demangled(abi::__cxa_demangle(mangled, nullptr, nullptr, &status), std::free);
  std::string name = status == 0 && demangled ? demangled.get() : mangled;
  const size_t colon = name.rfind("::");
  return colon == std::string::npos ? name : name.substr(colon + 2);
}

Interval Module::interval_forward(const Interval&) {
  throw std::invalid_argument(fmt::format("{}: interval bound propagation cannot pass this layer (it does not say how "
                                          "a box of its inputs maps to its outputs)",
                                          type_name()));
}

std::optional<Interval> Module::interval_forward_relu(const Interval&, Interval*) { return std::nullopt; }
std::optional<Tensor> Module::forward_relu(const Tensor&) { return std::nullopt; }

Tensor relu_after(Module& layer, const Tensor& x) {
  if (std::optional<Tensor> y = layer.forward_relu(x)) return *y;
  return relu(layer.forward(x));
}

LinearBound Module::crown_backward(const LinearBound&, const CrownOptions&) {
  throw std::invalid_argument(fmt::format("{}: CROWN cannot pass this layer (it has no backward linear relaxation)",
                                          type_name()));
}

void Module::require_interval_pass(bool recorded) const {
  if (!recorded)
    throw std::logic_error(fmt::format("{}: CROWN's backward pass needs an interval pass over the same box first "
                                       "(interval_forward or interval_margin)",
                                       type_name()));
}

Interval Module::interval_margin(const Interval& in, const Tensor& labels) {
  return interval_margin_of_logits(interval_forward(in), labels);
}

void Module::train(bool on) {
  training_ = on;
  for (auto& [name, child] : children_) child->train(on);
}

NamedTensors Module::named_parameters(const std::string& prefix) const {
  NamedTensors out;
  for (const auto& [name, t] : params_) out.emplace_back(prefix + name, t);
  for (const auto& [name, child] : children_)
    for (auto& p : child->named_parameters(prefix + name + ".")) out.push_back(std::move(p));
  return out;
}

std::vector<std::pair<std::string, Module*>> Module::named_modules(const std::string& prefix) const {
  std::vector<std::pair<std::string, Module*>> out;
  for (const auto& [name, child] : children_) {
    out.emplace_back(prefix + name, child.get());
    for (auto& m : child->named_modules(prefix + name + ".")) out.push_back(std::move(m));
  }
  return out;
}

NamedTensors Module::named_buffers(const std::string& prefix) const {
  NamedTensors out;
  for (const auto& [name, t] : buffers_) out.emplace_back(prefix + name, t);
  for (const auto& [name, child] : children_)
    for (auto& b : child->named_buffers(prefix + name + ".")) out.push_back(std::move(b));
  return out;
}

std::vector<Tensor> Module::parameters() const {
  std::vector<Tensor> out;
  for (auto& [name, t] : named_parameters()) out.push_back(t);
  return out;
}

NamedTensors Module::state_dict() const {
  NamedTensors out = named_parameters();
  for (auto& b : named_buffers()) out.push_back(std::move(b));
  return out;
}

void Module::load_state_dict(const std::map<std::string, Tensor>& state, bool strict) {
  std::set<std::string> used;
  for (auto& [name, t] : state_dict()) {
    auto it = state.find(name);
    if (it == state.end()) throw std::runtime_error(fmt::format("state dict is missing '{}' ({})", name, t.str()));
    if (it->second.shape() != t.shape())
      throw std::runtime_error(fmt::format("state dict entry '{}' has shape {}, the model expects {}", name,
                                           shape_str(it->second.shape()), shape_str(t.shape())));
    Tensor dst = t;
    dst.copy_(it->second.detach());
    used.insert(name);
  }
  if (strict)
    for (auto& [name, t] : state)
      if (!used.count(name)) throw std::runtime_error(fmt::format("state dict has unexpected entry '{}' ({})", name, t.str()));
}

int64_t Module::num_parameters() const {
  int64_t n = 0;
  for (auto& t : parameters()) n += t.numel();
  return n;
}

void Module::to(Device dev) {
  for (auto& [name, t] : state_dict()) {
    if (t.device() == dev) continue;
    const Tensor moved = t.detach().to(dev);
    TensorImpl* impl = t.impl();
    impl->storage = moved.impl()->storage;
    impl->strides = moved.strides();
    impl->offset = moved.offset();
    impl->device = dev;
    impl->grad.reset();
  }
}

void Module::zero_grad() {
  for (auto& t : parameters()) t.zero_grad();
}

Tensor Module::register_parameter(const std::string& name, Tensor t) {
  t.set_requires_grad(true);
  params_.emplace_back(name, t);
  return t;
}

Tensor Module::register_buffer(const std::string& name, Tensor t) {
  buffers_.emplace_back(name, t);
  return t;
}

// ---- CrownTightening -----------------------------------------------------------------------------

namespace {
thread_local CrownTightening* tightening_in_scope = nullptr;
}

CrownTightening::CrownTightening(const Interval& input_box, bool tighten)
    : box_(input_box),
      tighten_(tighten),
      to_input_([](const LinearBound& b) { return b; }),
      widest_(input_box.center.numel() / std::max<int64_t>(input_box.center.size(0), 1)),
      previous_(tightening_in_scope) {
  tightening_in_scope = this;
}

CrownTightening::~CrownTightening() { tightening_in_scope = previous_; }

CrownTightening* CrownTightening::active() { return tightening_in_scope; }

void CrownTightening::passed(Backward step) {
  to_input_ = [before = std::move(to_input_), step = std::move(step)](const LinearBound& b) { return before(step(b)); };
}

Interval CrownTightening::tighten(const Interval& pre) {
  reached(pre.center.numel() / pre.center.size(0));
  if (relus_++ == 0 || !tighten_) {
    boxes_.push_back(pre);
  } else {
    const Interval crown = crown_box(pre.center);
    boxes_.push_back(interval_from_bounds(maximum(pre.lower(), crown.lower()), minimum(pre.upper(), crown.upper())));
  }
  return boxes_.back();
}

// The neurons go in chunks so that A, at the widest layer passed (widest_ values per sample),
// stays within about 2^20 values: a convolution's backward step unfolds it again by its kernel's
// size. Each chunk is the identity over its neurons, carried back for the upper bounds and,
// negated, for the lower ones.
Interval CrownTightening::crown_box(const Tensor& h) {
  const int64_t n = h.size(0), neurons = h.numel() / n;
  const int64_t chunk = std::max<int64_t>(1, (int64_t{1} << 20) / std::max<int64_t>(n * widest_, 1));
  Shape per_neuron = h.shape();
  per_neuron.erase(per_neuron.begin());
  std::vector<Tensor> uppers, lowers;
  for (int64_t first = 0; first < neurons; first += chunk) {
    const int64_t s = std::min(chunk, neurons - first);
    std::vector<int32_t> which(static_cast<size_t>(s));
    for (int64_t k = 0; k < s; ++k) which[k] = static_cast<int32_t>(first + k);
    const Tensor rows = one_hot(Tensor::from_vector(which, {s}).to(h.device()), neurons, h.dtype());  // [s, neurons]
    Shape a_shape{1, s};
    a_shape.insert(a_shape.end(), per_neuron.begin(), per_neuron.end());
    Shape full = a_shape;
    full[0] = n;
    const Tensor identity = rows.reshape(a_shape) * Tensor::ones(full, h.dtype(), h.device());
    for (const double sign : {1.0, -1.0}) {
      const Tensor bound = maximize_over_box(to_input_({identity * sign, Tensor::zeros({n, s}, h.dtype(), h.device())}), box_);
      (sign > 0 ? uppers : lowers).push_back(sign > 0 ? bound : neg(bound));
    }
  }
  const auto joined = [&](const std::vector<Tensor>& parts) {
    return (parts.size() == 1 ? parts[0] : concat(parts, 1)).reshape(h.shape());
  };
  return interval_from_bounds(joined(lowers), joined(uppers));
}

Interval interval_step(Module& m, const Interval& in) {
  CrownTightening* t = CrownTightening::active();
  if (t == nullptr) return m.interval_forward(in);
  CrownTightening::Backward entry = t->to_input();
  Interval out = m.interval_forward(in);
  t->reached(out.center.numel() / out.center.size(0));
  t->set_to_input(std::move(entry));
  t->passed([&m](const LinearBound& b) { return m.crown_backward(b, {}); });
  return out;
}

namespace {
thread_local ActivationTaps* taps_in_scope = nullptr;
}  // namespace

ActivationTaps::ActivationTaps(std::vector<const Module*> layers, Hook hook)
    : layers_(std::move(layers)), hook_(std::move(hook)), previous_(taps_in_scope) {
  taps_in_scope = this;
}

ActivationTaps::~ActivationTaps() { taps_in_scope = previous_; }

bool ActivationTaps::active() { return taps_in_scope != nullptr; }

Tensor ActivationTaps::tapped(const Module& layer, const Tensor& output) {
  ActivationTaps* t = taps_in_scope;
  if (t == nullptr) return output;
  const auto it = std::find(t->layers_.begin(), t->layers_.end(), &layer);
  if (it == t->layers_.end()) return output;
  return t->hook_(static_cast<size_t>(it - t->layers_.begin()), output);
}

Interval relu_step(Interval& pre) {
  if (SymbolicPass* s = SymbolicPass::active()) return s->relu(pre);
  CrownTightening* t = CrownTightening::active();
  if (t == nullptr) return interval_relu(pre);
  pre = t->tighten(pre);
  t->passed([pre](const LinearBound& b) { return relu_crown_backward(b, pre); });
  return interval_relu(pre);
}

}  // namespace bulwark

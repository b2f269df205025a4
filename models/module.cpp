#include "models/module.h"

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

}  // namespace bulwark

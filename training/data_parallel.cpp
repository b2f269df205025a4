#include "training/data_parallel.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>

#include "engine/autograd.h"

namespace bulwark::training {

GradientAverager::GradientAverager(robust::ParameterUpdate& optimizer, NamedTensors params, comm::Communicator& comm,
                                   int accum)
    : optimizer_(optimizer), params_(std::move(params)), comm_(comm), accum_(accum), sums_(params_.size()) {}

void GradientAverager::begin_micro_batch(int a) {
  micro_ = a;
  steps_in_micro_ = 0;
  summed_by_method_ = false;
  if (a == 0)
    for (Tensor& s : sums_) s = Tensor();
}

void GradientAverager::begin_summed_batch() {
  begin_micro_batch(accum_ - 1);
  summed_by_method_ = true;
}

void GradientAverager::zero_grad() { optimizer_.zero_grad(); }

void GradientAverager::step() {
  if (++steps_in_micro_ > 1 && accum_ > 1 && !summed_by_method_)
    throw std::logic_error("--grad-accum: the method stepped the optimizer twice in one micro-batch");
  NoGradGuard no_grad;
  for (size_t i = 0; i < params_.size(); ++i) {
    const Tensor g = params_[i].second.grad();
    if (!g.defined()) continue;
    // One micro-batch (or a method's own sum): its gradient is the sum (the bucket copies it
    // before anything writes it).
    sums_[i] = !sums_[i].defined() ? (accum_ == 1 || summed_by_method_ ? g : g.clone()) : sums_[i] + g;
  }
  if (micro_ + 1 < accum_) return;
  reduce_into_grads();
  optimizer_.step();
  for (Tensor& s : sums_) s = Tensor();
}

namespace {
// `t`'s values into dst (f32, any device), without an intermediate vector where it is host memory.
void copy_out(const Tensor& t, float* dst) {
  if (t.device() == Device::cpu && t.is_contiguous() && t.dtype() == DType::f32) {
    std::memcpy(dst, t.data<float>(), static_cast<size_t>(t.numel()) * sizeof(float));
    return;
  }
  const std::vector<float> v = t.to_vector();
  std::memcpy(dst, v.data(), v.size() * sizeof(float));
}
}  // namespace

void GradientAverager::reduce_into_grads() {
  int64_t total = 0;
  for (const auto& [name, p] : params_) total += p.numel();
  const int64_t n_params = static_cast<int64_t>(params_.size());
  // The bucket stays allocated from step to step (a fresh one page-faulted its way through
  // tens of MB every step).
  if (!bucket_.defined() || bucket_.numel() != total + n_params) bucket_ = Tensor::empty({total + n_params});
  float* data = bucket_.data<float>();
  int64_t at = 0;
  for (size_t i = 0; i < params_.size(); ++i) {
    const int64_t n = params_[i].second.numel();
    if (sums_[i].defined())
      copy_out(sums_[i], data + at);
    else
      std::fill(data + at, data + at + n, 0.0f);
    data[total + static_cast<int64_t>(i)] = sums_[i].defined() ? 1.0f : 0.0f;
    at += n;
  }
  comm_.all_reduce_sum(bucket_);
  const float scale = 1.0f / static_cast<float>(comm_.size() * accum_);
  at = 0;
  for (size_t i = 0; i < params_.size(); ++i) {
    Tensor& p = params_[i].second;
    const int64_t n = p.numel();
    const Tensor own = p.grad();
    if (data[total + static_cast<int64_t>(i)] == 0) {
      p.zero_grad();
    } else {
      // Into this rank's own gradient buffer where backward made one on the host (no allocation),
      // else into a new one moved to the parameter's device.
      const bool in_place = own.defined() && own.device() == Device::cpu && own.is_contiguous() && own.dtype() == DType::f32;
      const Tensor g = in_place ? own : Tensor::empty(p.shape(), DType::f32, Device::cpu);
      float* out = g.data<float>();
      for (int64_t k = 0; k < n; ++k) out[k] = data[at + k] * scale;
      if (!in_place) p.impl()->grad = g.to(p.device()).impl_ptr();
    }
    at += n;
  }
}

namespace {
struct Difference {
  std::string key;  // "" when equal
  nlohmann::json here, rank0;
};

// The first key (dotted path) where `here` and `rank0` differ.
Difference first_difference(const nlohmann::json& here, const nlohmann::json& rank0, const std::string& path) {
  if (here.is_object() && rank0.is_object()) {
    for (const auto& [key, value] : here.items()) {
      const std::string at = path.empty() ? key : path + "." + key;
      if (!rank0.contains(key)) return {at, value, nullptr};
      if (Difference d = first_difference(value, rank0.at(key), at); !d.key.empty()) return d;
    }
    for (const auto& [key, value] : rank0.items())
      if (!here.contains(key)) return {path.empty() ? key : path + "." + key, nullptr, value};
    return {};
  }
  if (here == rank0) return {};
  return {path.empty() ? "config" : path, here, rank0};
}
}  // namespace

void check_same_config(const nlohmann::ordered_json& config, comm::Communicator& comm) {
  if (!comm.distributed()) return;
  std::string text = config.dump();
  comm.broadcast(text);
  const Difference d = first_difference(nlohmann::json::parse(config.dump()), nlohmann::json::parse(text), "");
  const double disagreeing = comm.sum(d.key.empty() ? 0.0 : 1.0);
  if (disagreeing == 0) return;
  if (!d.key.empty())
    throw RanksDisagree(fmt::format("rank {} of {} was given another run than rank 0: '{}' is {} here and {} on rank 0; "
                                    "every rank must get the same options",
                                    comm.rank(), comm.size(), d.key, d.here.dump(), d.rank0.dump()));
  throw RanksDisagree(fmt::format("rank {} of {}: {} other rank{} got options different from rank 0's (each names the "
                                  "first difference); every rank must get the same options",
                                  comm.rank(), comm.size(), static_cast<int>(disagreeing), disagreeing == 1 ? "" : "s"));
}

void broadcast_buffers(Module& model, comm::Communicator& comm) {
  if (!comm.distributed()) return;
  for (auto& [name, b] : model.named_buffers()) {
    if (b.dtype() != DType::f32) continue;  // BatchNorm's batch counter is the same on every rank
    std::vector<float> v = b.to_vector();
    std::string bytes(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(float));
    comm.broadcast(bytes);
    std::memcpy(v.data(), bytes.data(), bytes.size());
    b.copy_(Tensor::from_vector(v, b.shape()).to(b.device()));
  }
}

}  // namespace bulwark::training

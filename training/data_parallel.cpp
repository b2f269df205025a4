#include "training/data_parallel.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <unordered_map>

#include "engine/autograd.h"

namespace bulwark::training {

GradientAverager::GradientAverager(robust::ParameterUpdate& optimizer, NamedTensors params, comm::Communicator& comm,
                                   int accum, int64_t bucket_bytes)
    : optimizer_(optimizer),
      params_(std::move(params)),
      comm_(comm),
      accum_(accum),
      sums_(params_.size()),
      in_bucket_(params_.size()),
      bucket_of_(params_.size()),
      offset_(params_.size()) {
  int64_t bytes = 0;
  for (size_t k = params_.size(); k-- > 0;) {
    const int64_t n = params_[k].second.numel();
    if (bucket_params_.empty() || (bytes > 0 && bytes + n * 4 > bucket_bytes)) {
      bucket_params_.emplace_back();
      bytes = 0;
    }
    bucket_of_[k] = bucket_params_.size() - 1;
    offset_[k] = bytes / 4;
    bucket_params_.back().push_back(k);
    bytes += n * 4;
  }
  buckets_.resize(bucket_params_.size());
  for (size_t i = 0; i < params_.size(); ++i) index_[params_[i].second.impl()] = i;
}

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

void GradientAverager::backward(const Tensor& loss, bool step_follows) {
  if (!step_follows || !reduces_now()) {
    bulwark::backward(loss);
    return;
  }
  bulwark::backward(loss, Tensor(), false, [this](const Tensor& leaf) {
    if (auto it = index_.find(leaf.impl()); it != index_.end()) add_gradient(it->second, true);
    comm_.progress();
  });
  sent_during_backward_ = static_cast<int>(next_to_send_);
}

void GradientAverager::step() {
  if (++steps_in_micro_ > 1 && accum_ > 1 && !summed_by_method_)
    throw std::logic_error("--grad-accum: the method stepped the optimizer twice in one micro-batch");
  NoGradGuard no_grad;
  for (size_t i = 0; i < params_.size(); ++i)
    if (!in_bucket_[i]) add_gradient(i, reduces_now());
  if (!reduces_now()) return;
  reduce_into_grads();
  optimizer_.step();
  for (Tensor& s : sums_) s = Tensor();
  std::fill(in_bucket_.begin(), in_bucket_.end(), false);
  for (Bucket& b : buckets_) b.filled = 0;
  next_to_send_ = 0;
}

namespace {
// `t`'s values into dst[0, numel) (f32, on dst's device).
void copy_into(const Tensor& t, Tensor& dst, int64_t at) {
  const int64_t n = t.numel();
  if (dst.device() == Device::cpu && t.device() == Device::cpu && t.is_contiguous() && t.dtype() == DType::f32) {
    std::memcpy(dst.data<float>() + at, t.data<float>(), static_cast<size_t>(n) * sizeof(float));
    return;
  }
  dst.slice(0, at, at + n).copy_(t.reshape({n}));
}
}  // namespace

void GradientAverager::add_gradient(size_t i, bool final) {
  NoGradGuard no_grad;
  const Tensor g = params_[i].second.grad();
  if (g.defined())
    // A single micro-batch's gradient (or a method's own sum) is the sum: the bucket copies it
    // before anything writes it.
    sums_[i] = !sums_[i].defined() ? (accum_ == 1 || summed_by_method_ ? g : g.clone()) : sums_[i] + g;
  if (!final || !g.defined()) return;
  Bucket& b = bucket_of(i);
  copy_into(sums_[i], b.data, offset_[i]);
  in_bucket_[i] = true;
  ++b.filled;
  send_full_buckets();
}

GradientAverager::Bucket& GradientAverager::bucket_of(size_t i) {
  Bucket& b = buckets_[bucket_of_[i]];
  if (!b.data.defined()) {  // kept from step to step (a fresh one page-faults its way through MBs)
    int64_t n = 0;
    for (size_t k : bucket_params_[bucket_of_[i]]) n += params_[k].second.numel();
    b.data = Tensor::empty({n}, DType::f32, params_[i].second.device());
  }
  return b;
}

void GradientAverager::send_full_buckets() {
  while (next_to_send_ < buckets_.size() &&
         buckets_[next_to_send_].filled == static_cast<int>(bucket_params_[next_to_send_].size())) {
    Bucket& b = buckets_[next_to_send_++];
    b.pending = comm_.start_all_reduce_sum(b.data);
  }
}

void GradientAverager::reduce_into_grads() {
  // What no backward put in: parameters without a gradient this micro-batch (an earlier one's
  // sum, or zeros).
  for (size_t i = 0; i < params_.size(); ++i) {
    if (in_bucket_[i]) continue;
    Bucket& b = bucket_of(i);
    const int64_t n = params_[i].second.numel();
    if (sums_[i].defined())
      copy_into(sums_[i], b.data, offset_[i]);
    else
      b.data.slice(0, offset_[i], offset_[i] + n).fill_(0);
    in_bucket_[i] = true;
    ++b.filled;
  }
  send_full_buckets();
  // Which parameters some rank gave a gradient (one that none did stays without one, as the
  // optimizer expects): a few bytes over the host, after the buckets.
  std::vector<double> flags(params_.size());
  for (size_t i = 0; i < params_.size(); ++i) flags[i] = sums_[i].defined() ? 1 : 0;
  comm_.all_reduce_sum(flags);
  for (Bucket& b : buckets_) {
    b.pending->wait();
    b.pending.reset();
  }
  const float scale = 1.0f / static_cast<float>(comm_.size() * accum_);
  for (size_t i = 0; i < params_.size(); ++i) {
    Tensor& p = params_[i].second;
    if (flags[i] == 0) {
      p.zero_grad();
      continue;
    }
    const int64_t n = p.numel(), at = offset_[i];
    const Tensor& data = buckets_[bucket_of_[i]].data;
    const Tensor own = p.grad();
    if (data.device() == Device::cpu && own.defined() && own.device() == Device::cpu && own.is_contiguous() &&
        own.dtype() == DType::f32) {
      // Into this rank's own gradient buffer, which backward made (no allocation).
      const float* in = data.data<float>() + at;
      float* out = own.data<float>();
      for (int64_t k = 0; k < n; ++k) out[k] = in[k] * scale;
    } else {
      p.impl()->grad = (data.slice(0, at, at + n).reshape(p.shape()) * static_cast<double>(scale)).impl_ptr();
    }
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

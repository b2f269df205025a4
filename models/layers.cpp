#include "models/layers.h"

#include "models/symbolic.h"

#include <fmt/format.h>

#include <cmath>
#include <stdexcept>

namespace bulwark {

namespace {
void require_positive(int64_t v, const char* what, const char* layer) {
  if (v < 1) throw std::invalid_argument(fmt::format("{}: {} must be >= 1, got {}", layer, what, v));
}

// PyTorch's default init for Linear and Conv2d: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
Tensor kaiming_uniform(const Shape& shape, int64_t fan_in, Generator& gen, DType dtype) {
  const double bound = 1.0 / std::sqrt(static_cast<double>(fan_in));
  return rand_uniform(shape, -bound, bound, gen, dtype);
}
}  // namespace

// ---- Linear ----------------------------------------------------------------------------------

Linear::Linear(int64_t in, int64_t out, Generator& gen, LinearOptions opts) : in_features(in), out_features(out) {
  require_positive(in, "in_features", "Linear");
  require_positive(out, "out_features", "Linear");
  weight = register_parameter("weight", kaiming_uniform({out, in}, in, gen, opts.dtype));
  if (opts.bias) bias = register_parameter("bias", kaiming_uniform({out}, in, gen, opts.dtype));
}

const Tensor& Linear::checked(const Tensor& x) const {
  if (x.dim() != 2 || x.size(1) != in_features)
    throw std::invalid_argument(fmt::format("Linear({} -> {}): input {} should be [N, {}]", in_features, out_features,
                                            x.str(), in_features));
  return x;
}

Tensor Linear::forward(const Tensor& x) { return linear(checked(x), weight, bias); }
std::optional<Tensor> Linear::forward_relu(const Tensor& x) { return linear_relu(checked(x), weight, bias); }

Interval Linear::interval_forward(const Interval& in) {
  checked(in.center);
  return stacked_box(interval_linear(in.center, in.radius, weight, bias, false), 0);
}

std::optional<Interval> Linear::interval_forward_relu(const Interval& in, Interval* pre) {
  checked(in.center);
  const Tensor boxes = interval_linear(in.center, in.radius, weight, bias, true);
  *pre = stacked_box(boxes, 0);
  return stacked_box(boxes, 1);
}

Interval Linear::interval_margin(const Interval& in, const Tensor& labels) {
  checked(in.center);
  // Center: the margins of the center's logits. Radius: sum_i |W_j,i - W_y,i| r_i per sample and
  // class, the exact radius of the affine map x -> (W_j - W_y) x on the box (0 at j = y), from
  // the fused kernel that forms the difference rows on the fly (engine/ops.h).
  const Interval z{linear(in.center, weight, bias), Tensor::zeros({in.center.size(0), out_features}, in.center.dtype(),
                                                                  in.center.device())};
  return {interval_margin_of_logits(z, labels).center, elided_margin_radius(in.radius, weight, labels)};
}

LinearBound Linear::crown_backward(const LinearBound& upper, const CrownOptions&) {
  const int64_t n = upper.A.size(0), s = upper.A.size(1);
  const Tensor A = matmul(upper.A.reshape({n * s, out_features}), weight).reshape({n, s, in_features});
  if (!bias.defined()) return {A, upper.bias};
  return {A, upper.bias + sum(upper.A * bias.reshape({1, 1, out_features}), {2})};
}

// ---- Conv2d ----------------------------------------------------------------------------------

Conv2d::Conv2d(int64_t in, int64_t out, int64_t k, Generator& gen, Conv2dOptions opts)
    : in_channels(in), out_channels(out), kernel_size(k), stride(opts.stride), padding(opts.padding) {
  require_positive(in, "in_channels", "Conv2d");
  require_positive(out, "out_channels", "Conv2d");
  require_positive(k, "kernel_size", "Conv2d");
  require_positive(opts.stride, "stride", "Conv2d");
  if (opts.padding < 0) throw std::invalid_argument(fmt::format("Conv2d: padding must be >= 0, got {}", opts.padding));
  const int64_t fan_in = in * k * k;
  weight = register_parameter("weight", kaiming_uniform({out, in, k, k}, fan_in, gen, opts.dtype));
  if (opts.bias) bias = register_parameter("bias", kaiming_uniform({out}, fan_in, gen, opts.dtype));
}

int64_t Conv2d::output_size(int64_t in) const {
  return checked_output_size(in, kernel_size, stride, padding,
                             fmt::format("Conv2d({} -> {}, {}x{}, stride {}, padding {})", in_channels, out_channels,
                                         kernel_size, kernel_size, stride, padding));
}

const Tensor& Conv2d::checked(const Tensor& x) const {
  if (x.dim() != 4 || x.size(1) != in_channels)
    throw std::invalid_argument(fmt::format("Conv2d({} -> {}): input {} should be [N, {}, H, W]", in_channels,
                                            out_channels, x.str(), in_channels));
  return x;
}

Tensor Conv2d::forward(const Tensor& x) { return conv2d(checked(x), weight, bias, {stride, padding}); }
std::optional<Tensor> Conv2d::forward_relu(const Tensor& x) {
  return conv2d_relu(checked(x), weight, bias, {stride, padding});
}

Interval Conv2d::interval_forward(const Interval& in) {
  checked(in.center);
  input_shape_ = in.center.shape();
  return stacked_box(interval_conv2d(in.center, in.radius, weight, bias, {stride, padding}, false), 0);
}

std::optional<Interval> Conv2d::interval_forward_relu(const Interval& in, Interval* pre) {
  checked(in.center);
  input_shape_ = in.center.shape();
  const Tensor boxes = interval_conv2d(in.center, in.radius, weight, bias, {stride, padding}, true);
  *pre = stacked_box(boxes, 0);
  return stacked_box(boxes, 1);
}

LinearBound Conv2d::crown_backward(const LinearBound& upper, const CrownOptions&) {
  require_interval_pass(!input_shape_.empty());
  const int64_t n = upper.A.size(0), s = upper.A.size(1);
  const int64_t oh = upper.A.size(3), ow = upper.A.size(4);
  const Shape in{n * s, input_shape_[1], input_shape_[2], input_shape_[3]};
  const Tensor A = conv2d_backward_input(upper.A.reshape({n * s, out_channels, oh, ow}), weight, in, {stride, padding})
                       .reshape({n, s, input_shape_[1], input_shape_[2], input_shape_[3]});
  if (!bias.defined()) return {A, upper.bias};
  return {A, upper.bias + sum(upper.A * bias.reshape({1, 1, out_channels, 1, 1}), {2, 3, 4})};
}

// ---- BatchNorm -------------------------------------------------------------------------------

BatchNorm::BatchNorm(int64_t features, int64_t input_dims, DType dtype, double eps, double momentum)
    : num_features(features), eps(eps), momentum(momentum), input_dims_(input_dims) {
  require_positive(features, "num_features", "BatchNorm");
  weight = register_parameter("weight", Tensor::ones({features}, dtype));
  bias = register_parameter("bias", Tensor::zeros({features}, dtype));
  running_mean = register_buffer("running_mean", Tensor::zeros({features}, dtype));
  running_var = register_buffer("running_var", Tensor::ones({features}, dtype));
  num_batches_tracked = register_buffer("num_batches_tracked", Tensor::zeros({}, DType::i32));
}

Tensor BatchNorm::forward(const Tensor& x) { return normalized(x, false); }
std::optional<Tensor> BatchNorm::forward_relu(const Tensor& x) { return normalized(x, true); }

const Tensor& BatchNorm::checked(const Tensor& x) const {
  if (x.dim() != input_dims_ || x.size(1) != num_features)
    throw std::invalid_argument(fmt::format("BatchNorm{}d({}): input {} should be {}", input_dims_ == 2 ? 1 : 2,
                                            num_features, x.str(),
                                            input_dims_ == 2 ? fmt::format("[N, {}]", num_features)
                                                             : fmt::format("[N, {}, H, W]", num_features)));
  return x;
}

namespace {
comm::Communicator* sync_ranks = nullptr;
}  // namespace

void set_batch_norm_sync(comm::Communicator* ranks) { sync_ranks = ranks; }
comm::Communicator* batch_norm_sync() { return sync_ranks; }

Tensor BatchNorm::normalized_over_ranks(const Tensor& x, bool relu, comm::Communicator& ranks) {
  std::vector<int64_t> dims{0};
  if (x.dim() == 4) dims = {0, 2, 3};
  Shape per_channel(static_cast<size_t>(x.dim()), 1);
  per_channel[1] = num_features;
  const double count = ranks.sum(static_cast<double>(x.numel() / num_features));  // values per channel, all ranks
  const Tensor mean = affine(all_reduce_sum(sum(x, dims), ranks), 1.0 / count, 0.0);
  const Tensor centred = x - mean.reshape(per_channel);
  const Tensor var = affine(all_reduce_sum(sum(centred * centred, dims), ranks), 1.0 / count, 0.0);
  const Tensor y = centred * (weight / sqrt(affine(var, 1.0, eps))).reshape(per_channel) + bias.reshape(per_channel);
  {
    NoGradGuard no_grad;
    running_mean.copy_(affine(running_mean, 1.0 - momentum, 0.0) + affine(mean, momentum, 0.0));
    running_var.copy_(affine(running_var, 1.0 - momentum, 0.0) + affine(var, momentum * count / (count - 1), 0.0));
  }
  return relu ? bulwark::relu(y) : y;
}

Tensor BatchNorm::normalized(const Tensor& x, bool relu) {
  comm::Communicator* ranks = batch_norm_sync();
  Tensor out = is_training() && ranks != nullptr && ranks->distributed()
                   ? normalized_over_ranks(checked(x), relu, *ranks)
                   : (relu ? batch_norm_relu : batch_norm)(checked(x), weight, bias, running_mean, running_var,
                                                           is_training(), momentum, eps);
  // Counted on the counter's device: reading it back (item()) made every training forward on
  // CUDA wait for the GPU once per BatchNorm layer, and a CUDA graph cannot capture a wait.
  // (One small launch; folding the increment into the statistics kernel is the next step.)
  if (is_training()) num_batches_tracked.add_i32_(1);
  return out;
}

Interval BatchNorm::interval_forward(const Interval& in) {
  const Tensor& c = in.center;
  checked(c);
  Shape per_channel(static_cast<size_t>(input_dims_), 1);
  per_channel[1] = num_features;
  Tensor mean_c, var_c;
  if (is_training()) {
    // The batch statistics of the boxes' centers (a symbolic pass: of its IBP rows' centers).
    const Tensor stats_of = SymbolicPass::active() ? SymbolicPass::active()->ibp_rows(c) : c;
    const std::vector<int64_t> dims = input_dims_ == 2 ? std::vector<int64_t>{0} : std::vector<int64_t>{0, 2, 3};
    mean_c = mean(stats_of, dims, true);
    var_c = mean(square(stats_of - mean_c), dims, true);
  } else {
    mean_c = running_mean.reshape(per_channel);
    var_c = running_var.reshape(per_channel);
  }
  const Tensor scale = weight.reshape(per_channel) / sqrt(var_c + eps);
  scale_ = scale;
  shift_ = bias.reshape(per_channel) - mean_c * scale;
  return {(c - mean_c) * scale + bias.reshape(per_channel), in.radius * abs(scale)};
}

LinearBound BatchNorm::crown_backward(const LinearBound& upper, const CrownOptions&) {
  require_interval_pass(scale_.defined());
  return affine_crown_backward(upper, scale_, shift_);
}

// ---- shape and pooling layers ------------------------------------------------------------------

Tensor Flatten::forward(const Tensor& x) {
  if (x.dim() < 2) throw std::invalid_argument(fmt::format("Flatten: input {} has no dims to flatten after the batch", x.str()));
  return x.flatten(1);
}

Interval Flatten::interval_forward(const Interval& in) {
  if (in.center.dim() < 2) forward(in.center.detach());  // its shape error
  input_shape_ = in.center.shape();
  return interval_positive_linear(in, [](const Tensor& t) { return t.flatten(1); });
}

LinearBound Flatten::crown_backward(const LinearBound& upper, const CrownOptions&) {
  require_interval_pass(!input_shape_.empty());
  Shape shape{upper.A.size(0), upper.A.size(1)};
  shape.insert(shape.end(), input_shape_.begin() + 1, input_shape_.end());
  return {upper.A.reshape(shape), upper.bias};
}

Interval MaxPool2d::interval_forward(const Interval& in) {
  if (SymbolicPass* s = SymbolicPass::active()) {
    // Not affine: each window's output lies between the largest lower and the largest upper bound
    // of its inputs' functions, where new, constant functions start.
    const Interval b = s->bounds(in);
    return s->constant_rows(interval_from_bounds(max_pool2d(b.lower(), kernel_size, stride, padding),
                                                 max_pool2d(b.upper(), kernel_size, stride, padding)));
  }
  pre_ = in;
  return interval_from_bounds(max_pool2d(in.lower(), kernel_size, stride, padding),
                              max_pool2d(in.upper(), kernel_size, stride, padding));
}

LinearBound MaxPool2d::crown_backward(const LinearBound& upper, const CrownOptions&) {
  require_interval_pass(pre_.center.defined());
  return max_pool_crown_backward(upper, pre_, kernel_size, stride, padding);
}

Interval AvgPool2d::interval_forward(const Interval& in) {
  input_ = in.center.detach();
  return interval_positive_linear(in, [this](const Tensor& t) { return avg_pool2d(t, kernel_size, stride, padding); });
}

LinearBound AvgPool2d::crown_backward(const LinearBound& upper, const CrownOptions&) {
  require_interval_pass(input_.defined());
  return pooling_crown_backward(upper, input_, [this](const Tensor& t) { return avg_pool2d(t, kernel_size, stride, padding); });
}

Interval AdaptiveAvgPool2d::interval_forward(const Interval& in) {
  input_ = in.center.detach();
  return interval_positive_linear(in, [this](const Tensor& t) { return adaptive_avg_pool2d(t, out_h, out_w); });
}

LinearBound AdaptiveAvgPool2d::crown_backward(const LinearBound& upper, const CrownOptions&) {
  require_interval_pass(input_.defined());
  return pooling_crown_backward(upper, input_, [this](const Tensor& t) { return adaptive_avg_pool2d(t, out_h, out_w); });
}

MaxPool2d::MaxPool2d(int64_t k, int64_t s, int64_t p) : kernel_size(k), stride(s ? s : k), padding(p) {
  require_positive(k, "kernel_size", "MaxPool2d");
}

AvgPool2d::AvgPool2d(int64_t k, int64_t s, int64_t p) : kernel_size(k), stride(s ? s : k), padding(p) {
  require_positive(k, "kernel_size", "AvgPool2d");
}

// ---- Normalize -------------------------------------------------------------------------------

Normalize::Normalize(const std::vector<double>& m, const std::vector<double>& s, DType dtype) {
  if (m.empty() || m.size() != s.size())
    throw std::invalid_argument(fmt::format("Normalize: {} means and {} standard deviations; give one of each per channel",
                                            m.size(), s.size()));
  for (double v : s)
    if (!(v > 0)) throw std::invalid_argument(fmt::format("Normalize: standard deviation {} must be > 0", v));
  const auto c = static_cast<int64_t>(m.size());
  mean = register_buffer("mean", Tensor::from_vector(m, {c}).to(dtype));
  std = register_buffer("std", Tensor::from_vector(s, {c}).to(dtype));
}

Tensor Normalize::forward(const Tensor& x) {
  const int64_t c = mean.numel();
  if (x.dim() != 4 || x.size(1) != c)
    throw std::invalid_argument(fmt::format("Normalize: input {} should be images [N, {}, H, W]", x.str(), c));
  return normalize_channels(x, mean, std);
}

Interval Normalize::interval_forward(const Interval& in) {
  if (in.center.dim() != 4 || in.center.size(1) != mean.numel()) forward(in.center.detach());  // its shape error
  const Shape per_channel{1, mean.numel(), 1, 1};
  const Tensor s = std.reshape(per_channel);
  return {(in.center - mean.reshape(per_channel)) / s, in.radius / abs(s)};
}

LinearBound Normalize::crown_backward(const LinearBound& upper, const CrownOptions&) {
  const Shape per_channel{1, mean.numel(), 1, 1};
  const Tensor s = std.reshape(per_channel);
  const Tensor inverse = div(ones_like(s), s);
  return affine_crown_backward(upper, inverse, -(mean.reshape(per_channel) * inverse));
}

// ---- Sequential ------------------------------------------------------------------------------

Sequential::Sequential(const std::vector<std::shared_ptr<Module>>& layers) {
  for (const auto& l : layers) add(l);
}

Sequential& Sequential::add(std::shared_ptr<Module> layer) { return add(std::to_string(unnamed_++), std::move(layer)); }

Sequential& Sequential::add(const std::string& name, std::shared_ptr<Module> layer) {
  if (!layer) throw std::invalid_argument(fmt::format("Sequential: layer '{}' is null", name));
  for (const auto& [existing, l] : layers_)
    if (existing == name) throw std::invalid_argument(fmt::format("Sequential: two layers named '{}'", name));
  register_module(name, layer);
  layers_.emplace_back(name, std::move(layer));
  return *this;
}

Tensor Sequential::forward(const Tensor& x) {
  // A layer with a ReLU epilogue and the ReLU after it run as one kernel (forward_relu), as the
  // interval pass below fuses them; not while activation taps are in scope, which read layers'
  // own outputs.
  const bool fuse = !ActivationTaps::active();
  Tensor h = x;
  for (size_t i = 0; i < layers_.size(); ++i) {
    Module& layer = *layers_[i].second;
    if (fuse && i + 1 < layers_.size() && dynamic_cast<ReLU*>(layers_[i + 1].second.get()) != nullptr) {
      if (std::optional<Tensor> y = layer.forward_relu(h)) {
        h = *y;
        ++i;
        continue;
      }
    }
    h = ActivationTaps::tapped(layer, layer.forward(h));
  }
  return h;
}

Interval Sequential::interval_through(const Interval& in, size_t end) {
  Interval h = in;
  for (size_t i = 0; i < end; ++i) {
    // An affine layer and the ReLU after it: one fused kernel (the only layer type Sequential
    // looks at, so that the ReLU records the pre-activation box CROWN needs).
    // Not under full CROWN, which tightens the pre-activation box before the ReLU takes it, nor
    // under a symbolic pass, whose ReLU is not the interval one.
    const bool plain = CrownTightening::active() == nullptr && SymbolicPass::active() == nullptr;
    auto* relu = i + 1 < end && plain ? dynamic_cast<ReLU*>(layers_[i + 1].second.get()) : nullptr;
    Interval pre;
    if (relu != nullptr) {
      if (std::optional<Interval> post = layers_[i].second->interval_forward_relu(h, &pre)) {
        relu->record_interval(pre);
        h = *post;
        ++i;
        continue;
      }
    }
    h = interval_step(*layers_[i].second, h);
  }
  return h;
}

Interval Sequential::interval_forward(const Interval& in) { return interval_through(in, layers_.size()); }

LinearBound Sequential::crown_backward(const LinearBound& upper, const CrownOptions& options) {
  LinearBound b = upper;
  for (auto it = layers_.rbegin(); it != layers_.rend(); ++it) b = it->second->crown_backward(b, options);
  return b;
}

Interval Sequential::interval_margin(const Interval& in, const Tensor& labels) {
  if (layers_.empty()) return Module::interval_margin(in, labels);
  return layers_.back().second->interval_margin(interval_through(in, layers_.size() - 1), labels);
}

}  // namespace bulwark

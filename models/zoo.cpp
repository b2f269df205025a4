#include "models/zoo.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <functional>
#include <string_view>
#include <stdexcept>

namespace bulwark {

namespace {

std::shared_ptr<Normalize> make_normalize(const ModelConfig& cfg) {
  const auto c = static_cast<size_t>(cfg.in_channels);
  const std::vector<double> mean = cfg.mean.empty() ? std::vector<double>(c, 0.0) : cfg.mean;
  const std::vector<double> stddev = cfg.std.empty() ? std::vector<double>(c, 1.0) : cfg.std;
  if (mean.size() != c || stddev.size() != c)
    throw std::invalid_argument(fmt::format("model config: {} input channels but {} means and {} standard deviations",
                                            c, mean.size(), stddev.size()));
  return std::make_shared<Normalize>(mean, stddev, cfg.dtype);
}

// The residual models' convs: "same" padding, no bias (a BatchNorm follows each of them).
std::shared_ptr<Conv2d> conv_no_bias(int64_t in, int64_t out, int64_t kernel, int64_t stride, Generator& gen, DType dt) {
  return std::make_shared<Conv2d>(in, out, kernel, gen,
                                  Conv2dOptions{.stride = stride, .padding = kernel / 2, .bias = false, .dtype = dt});
}

// Appends layers to a Sequential while tracking the activation shape [c, h, w] (or [features]
// after flatten), so each layer is sized from what actually reaches it.
class SequentialBuilder {
 public:
  explicit SequentialBuilder(const ModelConfig& cfg)
      : gen_(cfg.seed), dtype_(cfg.dtype), c_(cfg.in_channels), h_(cfg.height), w_(cfg.width) {
    net_->add("normalize", make_normalize(cfg));
  }

  // conv (+ BatchNorm2d) + ReLU
  SequentialBuilder& conv(int64_t out, int64_t kernel, int64_t stride, int64_t padding, bool batch_norm = false) {
    auto layer = std::make_shared<Conv2d>(c_, out, kernel, gen_,
                                          Conv2dOptions{.stride = stride, .padding = padding, .dtype = dtype_});
    h_ = layer->output_size(h_);
    w_ = layer->output_size(w_);
    c_ = out;
    net_->add(layer);
    if (batch_norm) net_->add(std::make_shared<BatchNorm2d>(out, dtype_));
    net_->add(std::make_shared<ReLU>());
    return *this;
  }
  SequentialBuilder& flatten() {
    net_->add(std::make_shared<Flatten>());
    features_ = c_ * h_ * w_;
    return *this;
  }
  // linear (+ BatchNorm1d) + ReLU
  SequentialBuilder& hidden(int64_t out, bool batch_norm = false) {
    net_->add(std::make_shared<Linear>(features_, out, gen_, LinearOptions{.dtype = dtype_}));
    if (batch_norm) net_->add(std::make_shared<BatchNorm1d>(out, dtype_));
    net_->add(std::make_shared<ReLU>());
    features_ = out;
    return *this;
  }
  std::shared_ptr<Module> logits(int64_t classes) {
    net_->add(std::make_shared<Linear>(features_, classes, gen_, LinearOptions{.dtype = dtype_}));
    return net_;
  }

 private:
  std::shared_ptr<Sequential> net_ = std::make_shared<Sequential>();
  Generator gen_;
  DType dtype_;
  int64_t c_, h_, w_, features_ = 0;
};

std::shared_ptr<Module> make_mlp(const ModelConfig& cfg) {
  return SequentialBuilder(cfg).flatten().hidden(100).hidden(100).logits(cfg.num_classes);
}

std::shared_ptr<Module> make_wong_small(const ModelConfig& cfg) {
  return SequentialBuilder(cfg).conv(16, 4, 2, 1).conv(32, 4, 2, 1).flatten().hidden(100).logits(cfg.num_classes);
}

std::shared_ptr<Module> make_wong_large(const ModelConfig& cfg) {
  return SequentialBuilder(cfg)
      .conv(32, 3, 1, 1).conv(32, 4, 2, 1).conv(64, 3, 1, 1).conv(64, 4, 2, 1)
      .flatten().hidden(512).hidden(512).logits(cfg.num_classes);
}

std::shared_ptr<Module> make_ibp_small(const ModelConfig& cfg) {
  return SequentialBuilder(cfg).conv(16, 4, 2, 0).conv(32, 4, 1, 0).flatten().hidden(100).logits(cfg.num_classes);
}

// Padding 1 on every conv, as in the CROWN-IBP code's IBP_large.
std::shared_ptr<Module> make_ibp_large(const ModelConfig& cfg) {
  return SequentialBuilder(cfg)
      .conv(64, 3, 1, 1).conv(64, 3, 1, 1).conv(128, 3, 2, 1).conv(128, 3, 1, 1).conv(128, 3, 1, 1)
      .flatten().hidden(512).logits(cfg.num_classes);
}

// cnn_7layer_bn of Shi et al. 2021 (width 64, linear size 512).
std::shared_ptr<Module> make_cnn7(const ModelConfig& cfg) {
  return SequentialBuilder(cfg)
      .conv(64, 3, 1, 1, true).conv(64, 3, 1, 1, true).conv(128, 3, 2, 1, true).conv(128, 3, 1, 1, true)
      .conv(128, 3, 1, 1, true).flatten().hidden(512, true).logits(cfg.num_classes);
}

constexpr std::string_view kSgnPrefix = "sgn:";

using Factory = std::function<std::shared_ptr<Module>(const ModelConfig&)>;

const std::vector<std::pair<std::string, Factory>>& registry() {
  static const std::vector<std::pair<std::string, Factory>> models = {
      {"mlp", make_mlp},
      {"wong_small", make_wong_small},
      {"wong_large", make_wong_large},
      {"ibp_small", make_ibp_small},
      {"ibp_large", make_ibp_large},
      {"cnn7", make_cnn7},
      {"preact_resnet18", [](const ModelConfig& cfg) { return std::make_shared<PreActResNet18>(cfg); }},
      {"wide_resnet", [](const ModelConfig& cfg) { return std::make_shared<WideResNet>(cfg); }},
  };
  return models;
}

void validate(const ModelConfig& cfg) {
  if (cfg.in_channels < 1 || cfg.height < 1 || cfg.width < 1)
    throw std::invalid_argument(fmt::format("model config: input shape {}x{}x{} must be positive", cfg.in_channels,
                                            cfg.height, cfg.width));
  if (cfg.num_classes < 2)
    throw std::invalid_argument(fmt::format("model config: num_classes is {}, a classifier needs at least 2", cfg.num_classes));
  if (cfg.dtype == DType::i32) throw std::invalid_argument("model config: dtype must be f32 or f64");
}

}  // namespace

std::vector<std::string> model_names() {
  std::vector<std::string> names;
  for (const auto& [name, factory] : registry()) names.push_back(name);
  return names;
}

std::vector<std::string> model_choices() {
  std::vector<std::string> names = model_names();
  for (const auto& [name, factory] : registry()) names.push_back(std::string(kSgnPrefix) + name);
  return names;
}

std::shared_ptr<Module> make_model(const std::string& name, const ModelConfig& cfg) {
  if (name.starts_with(kSgnPrefix)) {
    std::shared_ptr<Module> base = make_model(name.substr(kSgnPrefix.size()), cfg);
    return std::make_shared<SelfGradientNetwork>(std::move(base), cfg.sgn, Shape{cfg.in_channels, cfg.height, cfg.width});
  }
  for (const auto& [known, factory] : registry())
    if (known == name) {
      validate(cfg);
      return factory(cfg);
    }
  throw std::invalid_argument(fmt::format("unknown model '{}'; valid models: {}", name, fmt::join(model_choices(), ", ")));
}

// ---- PreAct ResNet-18 ----------------------------------------------------------------------------

PreActBlock::PreActBlock(int64_t in_planes, int64_t planes, int64_t stride, Generator& gen, DType dtype) {
  bn1 = register_module("bn1", std::make_shared<BatchNorm2d>(in_planes, dtype));
  conv1 = register_module("conv1", conv_no_bias(in_planes, planes, 3, stride, gen, dtype));
  bn2 = register_module("bn2", std::make_shared<BatchNorm2d>(planes, dtype));
  conv2 = register_module("conv2", conv_no_bias(planes, planes, 3, 1, gen, dtype));
  if (stride != 1 || in_planes != planes) {
    shortcut = register_module("shortcut", std::make_shared<Sequential>());
    shortcut->add(conv_no_bias(in_planes, planes, 1, stride, gen, dtype));
  }
}

Tensor PreActBlock::forward(const Tensor& x) {
  const Tensor a = relu_after(*bn1, x);
  const Tensor skip = shortcut ? shortcut->forward(a) : x;
  return conv2->forward(relu_after(*bn2, conv1->forward(a))) + skip;
}

namespace {

// IBP through a pre-activation residual block (PreActBlock, WideBasicBlock): out =
// conv2(relu(pre2)) + skip, pre2 = bn2(conv1(a)), a = relu(pre1), pre1 = bn1(x), skip =
// shortcut(a) or x. The two ReLUs' pre-activation boxes are recorded for CROWN.
template <class Shortcut>
Interval residual_interval_forward(const Interval& x, Conv2d& conv1, Conv2d& conv2, BatchNorm2d& bn1, BatchNorm2d& bn2,
                                   Interval& pre1, Interval& pre2, Shortcut* shortcut) {
  pre1 = interval_step(bn1, x);
  const Interval a = relu_step(pre1);
  // Under full CROWN the shortcut moves to_input along its branch; the main branch starts at a too.
  CrownTightening* t = CrownTightening::active();
  const CrownTightening::Backward at_a = t ? t->to_input() : CrownTightening::Backward{};
  const Interval skip = shortcut ? interval_step(*shortcut, a) : x;
  if (t) t->set_to_input(at_a);
  pre2 = interval_step(bn2, interval_step(conv1, a));
  return interval_add(interval_step(conv2, relu_step(pre2)), skip);
}

// The sum of two bounds on the same values (the branches meeting at a residual block's input).
LinearBound add_bounds(const LinearBound& a, const LinearBound& b) { return {a.A + b.A, a.bias + b.bias}; }

// A bound with the same A and no bias: a second branch starts from it, so the bias accumulated
// so far is counted once.
LinearBound without_bias(const LinearBound& b) { return {b.A, zeros_like(b.bias)}; }

// CROWN back through the same block (see residual_interval_forward).
template <class Shortcut>
LinearBound residual_crown_backward(const LinearBound& upper, const CrownOptions& o, Conv2d& conv1, Conv2d& conv2,
                                    BatchNorm2d& bn1, BatchNorm2d& bn2, const Interval& pre1, const Interval& pre2,
                                    Shortcut* shortcut) {
  LinearBound at_a = conv1.crown_backward(
      bn2.crown_backward(relu_crown_backward(conv2.crown_backward(upper, o), pre2, o.adaptive_lower), o), o);
  if (shortcut) at_a = add_bounds(at_a, shortcut->crown_backward(without_bias(upper), o));
  const LinearBound at_x = bn1.crown_backward(relu_crown_backward(at_a, pre1, o.adaptive_lower), o);
  return shortcut ? at_x : add_bounds(at_x, without_bias(upper));
}


// Global average pooling and flatten's CROWN step, [N, S, C] -> [N, S, C, H, W] (the mean's
// weight 1 / (H W) spread over each channel's H x W values).
LinearBound global_pool_crown_backward(const LinearBound& upper, const Shape& pooled_input) {
  const int64_t n = upper.A.size(0), s = upper.A.size(1), c = pooled_input[1], h = pooled_input[2], w = pooled_input[3];
  const Tensor spread = Tensor::full({1, 1, 1, h, w}, 1.0 / static_cast<double>(h * w), upper.A.dtype(), upper.A.device());
  return {upper.A.reshape({n, s, c, 1, 1}) * spread, upper.bias};
}

// relu, global average pooling and flatten: the ResNets' head before their final Linear, from the
// head ReLU's pre-activation box (tightened in place under full CROWN).
Interval pooled_features(Interval& pre) {
  const Interval a = relu_step(pre);
  if (CrownTightening* t = CrownTightening::active())
    t->passed([shape = pre.center.shape()](const LinearBound& b) { return global_pool_crown_backward(b, shape); });
  return interval_positive_linear(a, [](const Tensor& t) { return adaptive_avg_pool2d(t, 1, 1).flatten(1); });
}

}  // namespace

PreActResNet18::PreActResNet18(const ModelConfig& cfg) {
  Generator gen(cfg.seed);
  const DType dt = cfg.dtype;
  normalize = register_module("normalize", make_normalize(cfg));
  conv1 = register_module("conv1", conv_no_bias(cfg.in_channels, 64, 3, 1, gen, dt));
  int64_t in_planes = 64;
  auto make_layer = [&](const std::string& name, int64_t planes, int64_t stride) {
    auto layer = register_module(name, std::make_shared<Sequential>());
    for (int64_t s : {stride, int64_t{1}}) {
      layer->add(std::make_shared<PreActBlock>(in_planes, planes, s, gen, dt));
      in_planes = planes;
    }
    return layer;
  };
  layer1 = make_layer("layer1", 64, 1);
  layer2 = make_layer("layer2", 128, 2);
  layer3 = make_layer("layer3", 256, 2);
  layer4 = make_layer("layer4", 512, 2);
  bn = register_module("bn", std::make_shared<BatchNorm2d>(512, dt));
  linear = register_module("linear", std::make_shared<Linear>(512, cfg.num_classes, gen, LinearOptions{.dtype = dt}));
}

Tensor PreActResNet18::forward(const Tensor& x) {
  Tensor h = conv1->forward(normalize->forward(x));
  h = layer4->forward(layer3->forward(layer2->forward(layer1->forward(h))));
  h = adaptive_avg_pool2d(relu_after(*bn, h), 1, 1).flatten(1);
  return linear->forward(h);
}

namespace {
Interval preact_features(PreActResNet18& m, const Interval& x) {
  Interval h = interval_step(*m.conv1, interval_step(*m.normalize, x));
  for (const auto& layer : {m.layer1, m.layer2, m.layer3, m.layer4}) h = interval_step(*layer, h);
  m.head_pre = interval_step(*m.bn, h);
  return pooled_features(m.head_pre);
}
}  // namespace

Interval PreActResNet18::interval_forward(const Interval& in) { return interval_step(*linear, preact_features(*this, in)); }

Interval PreActResNet18::interval_margin(const Interval& in, const Tensor& labels) {
  return linear->interval_margin(preact_features(*this, in), labels);
}

Interval PreActBlock::interval_forward(const Interval& x) {
  return residual_interval_forward(x, *conv1, *conv2, *bn1, *bn2, pre1_, pre2_, shortcut.get());
}

LinearBound PreActBlock::crown_backward(const LinearBound& upper, const CrownOptions& o) {
  require_interval_pass(pre1_.center.defined());
  return residual_crown_backward(upper, o, *conv1, *conv2, *bn1, *bn2, pre1_, pre2_, shortcut.get());
}

namespace {

// CROWN back through the ResNets' head (relu, global average pooling, flatten) to the last
// stage's output, whose pre-activation box the interval pass recorded.
LinearBound pooled_features_crown_backward(const LinearBound& upper, const Interval& pre, const CrownOptions& o) {
  return relu_crown_backward(global_pool_crown_backward(upper, pre.center.shape()), pre, o.adaptive_lower);
}

}  // namespace

LinearBound PreActResNet18::crown_backward(const LinearBound& upper, const CrownOptions& o) {
  require_interval_pass(head_pre.center.defined());
  LinearBound b = bn->crown_backward(pooled_features_crown_backward(linear->crown_backward(upper, o), head_pre, o), o);
  for (const auto& layer : {layer4, layer3, layer2, layer1}) b = layer->crown_backward(b, o);
  return normalize->crown_backward(conv1->crown_backward(b, o), o);
}

// ---- WideResNet ------------------------------------------------------------------------------------

WideBasicBlock::WideBasicBlock(int64_t in_planes, int64_t out_planes, int64_t stride, Generator& gen, DType dtype) {
  bn1 = register_module("bn1", std::make_shared<BatchNorm2d>(in_planes, dtype));
  conv1 = register_module("conv1", conv_no_bias(in_planes, out_planes, 3, stride, gen, dtype));
  bn2 = register_module("bn2", std::make_shared<BatchNorm2d>(out_planes, dtype));
  conv2 = register_module("conv2", conv_no_bias(out_planes, out_planes, 3, 1, gen, dtype));
  // The original block skips with the identity whenever the channel counts agree; it is only
  // ever built with stride 1 in that case.
  if (in_planes != out_planes)
    convShortcut = register_module("convShortcut", conv_no_bias(in_planes, out_planes, 1, stride, gen, dtype));
  else if (stride != 1)
    throw std::invalid_argument("WideBasicBlock: an identity shortcut cannot have stride > 1");
}

Tensor WideBasicBlock::forward(const Tensor& x) {
  const Tensor a = relu_after(*bn1, x);
  const Tensor skip = convShortcut ? convShortcut->forward(a) : x;
  return conv2->forward(relu_after(*bn2, conv1->forward(a))) + skip;
}

Interval WideBasicBlock::interval_forward(const Interval& x) {
  return residual_interval_forward(x, *conv1, *conv2, *bn1, *bn2, pre1_, pre2_, convShortcut.get());
}

LinearBound WideBasicBlock::crown_backward(const LinearBound& upper, const CrownOptions& o) {
  require_interval_pass(pre1_.center.defined());
  return residual_crown_backward(upper, o, *conv1, *conv2, *bn1, *bn2, pre1_, pre2_, convShortcut.get());
}

WideNetworkBlock::WideNetworkBlock(int64_t num_blocks, int64_t in_planes, int64_t out_planes, int64_t stride,
                                   Generator& gen, DType dtype) {
  layer = register_module("layer", std::make_shared<Sequential>());
  for (int64_t i = 0; i < num_blocks; ++i)
    layer->add(std::make_shared<WideBasicBlock>(i == 0 ? in_planes : out_planes, out_planes, i == 0 ? stride : 1, gen, dtype));
}

WideResNet::WideResNet(const ModelConfig& cfg) {
  if (cfg.depth < 10 || (cfg.depth - 4) % 6 != 0)
    throw std::invalid_argument(fmt::format("wide_resnet: depth {} is not 6n + 4 with n >= 1 (e.g. 10, 16, 22, 28, 34)", cfg.depth));
  if (cfg.widen_factor < 1)
    throw std::invalid_argument(fmt::format("wide_resnet: widen_factor {} must be >= 1", cfg.widen_factor));
  Generator gen(cfg.seed);
  const DType dt = cfg.dtype;
  const int64_t n = (cfg.depth - 4) / 6, k = cfg.widen_factor;
  normalize = register_module("normalize", make_normalize(cfg));
  conv1 = register_module("conv1", conv_no_bias(cfg.in_channels, 16, 3, 1, gen, dt));
  block1 = register_module("block1", std::make_shared<WideNetworkBlock>(n, 16, 16 * k, 1, gen, dt));
  block2 = register_module("block2", std::make_shared<WideNetworkBlock>(n, 16 * k, 32 * k, 2, gen, dt));
  block3 = register_module("block3", std::make_shared<WideNetworkBlock>(n, 32 * k, 64 * k, 2, gen, dt));
  bn1 = register_module("bn1", std::make_shared<BatchNorm2d>(64 * k, dt));
  fc = register_module("fc", std::make_shared<Linear>(64 * k, cfg.num_classes, gen, LinearOptions{.dtype = dt}));
}

Tensor WideResNet::forward(const Tensor& x) {
  Tensor h = conv1->forward(normalize->forward(x));
  h = block3->forward(block2->forward(block1->forward(h)));
  h = adaptive_avg_pool2d(relu_after(*bn1, h), 1, 1).flatten(1);
  return fc->forward(h);
}

namespace {
Interval wide_features(WideResNet& m, const Interval& x) {
  Interval h = interval_step(*m.conv1, interval_step(*m.normalize, x));
  for (const auto& block : {m.block1, m.block2, m.block3}) h = interval_step(*block, h);
  m.head_pre = interval_step(*m.bn1, h);
  return pooled_features(m.head_pre);
}
}  // namespace

Interval WideResNet::interval_forward(const Interval& in) { return interval_step(*fc, wide_features(*this, in)); }

Interval WideResNet::interval_margin(const Interval& in, const Tensor& labels) {
  return fc->interval_margin(wide_features(*this, in), labels);
}

LinearBound WideResNet::crown_backward(const LinearBound& upper, const CrownOptions& o) {
  require_interval_pass(head_pre.center.defined());
  LinearBound b = bn1->crown_backward(pooled_features_crown_backward(fc->crown_backward(upper, o), head_pre, o), o);
  for (const auto& block : {block3, block2, block1}) b = block->crown_backward(b, o);
  return normalize->crown_backward(conv1->crown_backward(b, o), o);
}

}  // namespace bulwark

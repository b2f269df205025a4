// Interval bound propagation (models/interval.h, robust/bounds.h): soundness for every layer type
// and every zoo model (random points of the box and its corners land inside the bounds), exactness
// on one linear layer, elision never looser, gradients through the bound against finite
// differences in f64, the emulated CUDA backend against the CPU, verified never above PGD, and the
// errors for a layer the bound cannot pass and for a bad eps.
#include <catch2/catch.hpp>

#include <cmath>
#include <functional>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "engine/autograd.h"
#include "engine/ops.h"
#include "engine/rng.h"
#include "kernels/emu/execution.h"
#include "models/layers.h"
#include "models/symbolic.h"
#include "models/zoo.h"
#include "robust/attacks.h"
#include "robust/bounds.h"
#include "tests/attack_test_models.h"
#include "tests/cuda_test_util.h"

using namespace bulwark;
using bulwark::testing::launches_of;

namespace {

// Points of the box: its corners (each coordinate at lower or upper, at random) and uniform
// points inside, `count` of each, as one batch per point [n, ...].
std::vector<Tensor> box_points(const Interval& box, int count, uint64_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<double> u(0, 1);
  const std::vector<double> lo = box.lower().to(DType::f64).to_vector_f64(), hi = box.upper().to(DType::f64).to_vector_f64();
  std::vector<Tensor> points;
  for (int k = 0; k < 2 * count; ++k) {
    std::vector<double> p(lo.size());
    for (size_t i = 0; i < p.size(); ++i) {
      const double t = k < count ? (u(rng) < 0.5 ? 0.0 : 1.0) : u(rng);
      p[i] = lo[i] + t * (hi[i] - lo[i]);
    }
    points.push_back(Tensor::from_vector(p, box.center.shape()).to(box.center.dtype()));
  }
  return points;
}

// Largest amount by which `values` leaves [lower, upper] (0 when inside everywhere).
double escape(const Tensor& values, const Tensor& lower, const Tensor& upper) {
  const std::vector<double> v = values.to(DType::f64).to_vector_f64(), l = lower.to(DType::f64).to_vector_f64(),
                            h = upper.to(DType::f64).to_vector_f64();
  double worst = 0;
  for (size_t i = 0; i < v.size(); ++i) worst = std::max({worst, l[i] - v[i], v[i] - h[i]});
  return worst;
}

// A box around random centers with random radii, of `shape`.
Interval random_box(const Shape& shape, uint64_t seed, double max_radius = 0.2) {
  Generator gen(seed);
  const Tensor center = rand_uniform(shape, -1, 1, gen, DType::f64);
  const Tensor radius = rand_uniform(shape, 0, max_radius, gen, DType::f64);
  return {center, radius};
}

struct LayerCase {
  std::string name;
  std::function<std::shared_ptr<Module>(Generator&)> make;
  Shape input;
};

// Eval-mode BatchNorm with running statistics away from 0 and 1.
template <class BN>
std::shared_ptr<Module> moved_batch_norm(int64_t channels, uint64_t seed) {
  auto bn = std::make_shared<BN>(channels, DType::f64);
  Generator gen(seed);
  bn->weight.copy_(rand_uniform({channels}, -2, 2, gen, DType::f64));
  bn->bias.copy_(rand_uniform({channels}, -1, 1, gen, DType::f64));
  bn->running_mean.copy_(rand_uniform({channels}, -0.5, 0.5, gen, DType::f64));
  bn->running_var.copy_(rand_uniform({channels}, 0.2, 3, gen, DType::f64));
  bn->eval();
  return bn;
}

std::vector<LayerCase> layer_cases() {
  const DType f64 = DType::f64;
  return {
      {"Linear", [f64](Generator& g) { return std::make_shared<Linear>(7, 5, g, LinearOptions{.dtype = f64}); }, {3, 7}},
      {"Conv2d stride 2 padding 1",
       [f64](Generator& g) { return std::make_shared<Conv2d>(3, 4, 3, g, Conv2dOptions{.stride = 2, .padding = 1, .dtype = f64}); },
       {2, 3, 7, 6}},
      {"Conv2d no bias",
       [f64](Generator& g) { return std::make_shared<Conv2d>(2, 3, 2, g, Conv2dOptions{.bias = false, .dtype = f64}); },
       {2, 2, 5, 5}},
      {"BatchNorm1d (eval)", [](Generator&) { return moved_batch_norm<BatchNorm1d>(6, 3); }, {4, 6}},
      {"BatchNorm2d (eval)", [](Generator&) { return moved_batch_norm<BatchNorm2d>(3, 4); }, {2, 3, 4, 5}},
      {"ReLU", [](Generator&) { return std::make_shared<ReLU>(); }, {3, 9}},
      {"Flatten", [](Generator&) { return std::make_shared<Flatten>(); }, {2, 3, 2, 2}},
      {"MaxPool2d 2x2", [](Generator&) { return std::make_shared<MaxPool2d>(2); }, {2, 2, 5, 4}},
      {"MaxPool2d 3 stride 2 padding 1", [](Generator&) { return std::make_shared<MaxPool2d>(3, 2, 1); }, {1, 2, 6, 7}},
      {"AvgPool2d 2x2", [](Generator&) { return std::make_shared<AvgPool2d>(2); }, {2, 2, 4, 6}},
      {"AdaptiveAvgPool2d 1x1", [](Generator&) { return std::make_shared<AdaptiveAvgPool2d>(1, 1); }, {2, 3, 5, 5}},
      {"AdaptiveAvgPool2d 2x3", [](Generator&) { return std::make_shared<AdaptiveAvgPool2d>(2, 3); }, {1, 2, 5, 7}},
      {"Normalize", [f64](Generator&) { return std::make_shared<Normalize>(std::vector<double>{0.4, 0.5},
                                                                           std::vector<double>{0.2, 0.3}, f64); },
       {2, 2, 3, 3}},
      {"PreActBlock (projection shortcut)",
       [f64](Generator& g) {
         auto b = std::make_shared<PreActBlock>(3, 4, 2, g, f64);
         b->eval();
         return b;
       },
       {2, 3, 6, 6}},
      {"PreActBlock (identity shortcut)",
       [f64](Generator& g) {
         auto b = std::make_shared<PreActBlock>(3, 3, 1, g, f64);
         b->eval();
         return b;
       },
       {2, 3, 5, 5}},
      {"WideBasicBlock (projection shortcut)",
       [f64](Generator& g) {
         auto b = std::make_shared<WideBasicBlock>(2, 4, 2, g, f64);
         b->eval();
         return b;
       },
       {2, 2, 6, 6}},
  };
}

// The zoo at small sizes, f64, eval mode, BatchNorm statistics moved by one training forward.
std::shared_ptr<Module> small_zoo_model(const std::string& name, DType dtype, int64_t channels, int64_t side) {
  ModelConfig cfg;
  cfg.in_channels = channels;
  cfg.height = cfg.width = side;
  cfg.mean.assign(static_cast<size_t>(channels), 0.45);
  cfg.std.assign(static_cast<size_t>(channels), 0.25);
  cfg.seed = 3;
  cfg.depth = 10;
  cfg.widen_factor = 1;
  cfg.dtype = dtype;
  auto model = make_model(name, cfg);
  Generator gen(9);
  model->train();
  {
    NoGradGuard no_grad;
    model->forward(rand_uniform({8, channels, side, side}, 0, 1, gen, dtype));
  }
  model->eval();
  return model;
}

}  // namespace

TEST_CASE("every layer's interval holds all its outputs on random points and corners of the box", "[bounds]") {
  for (const LayerCase& c : layer_cases()) {
    INFO(c.name);
    Generator gen(17);
    const auto layer = c.make(gen);
    const Interval box = random_box(c.input, 5);
    const Interval out = layer->interval_forward(box);
    REQUIRE(out.center.shape() == layer->forward(box.center).shape());
    CHECK(escape(out.radius, Tensor::zeros(out.radius.shape(), DType::f64), out.radius) == 0);  // r >= 0
    double worst = 0;
    for (const Tensor& p : box_points(box, 200, 7)) worst = std::max(worst, escape(layer->forward(p), out.lower(), out.upper()));
    CHECK(worst <= 1e-12);
  }
}

TEST_CASE("every zoo model's margins stay inside their IBP bounds over the input box", "[bounds]") {
  for (const std::string& name : model_names()) {
    const bool big = name == "preact_resnet18" || name == "wide_resnet";
    const int64_t side = big ? 8 : (name == "ibp_large" || name == "wong_large" || name == "cnn7" ? 12 : 16);
    INFO(name);
    const auto model = small_zoo_model(name, DType::f64, 1, side);
    Generator gen(21);
    const Tensor x = rand_uniform({2, 1, side, side}, 0, 1, gen, DType::f64);
    const Tensor y = Tensor::from_vector(std::vector<int32_t>{3, 7}, {2});
    const double eps = 0.02;
    const Interval box = robust::input_box(x, eps);
    const Interval margins = model->interval_margin(box, y);
    const Interval logits = model->interval_forward(box);
    double worst_logit = 0, worst_margin = 0;
    for (const Tensor& p : box_points(box, big ? 20 : 60, 8)) {
      const Tensor z = model->forward(p);
      worst_logit = std::max(worst_logit, escape(z, logits.lower(), logits.upper()));
      const Interval exact = interval_margin_of_logits({z, zeros_like(z)}, y);
      worst_margin = std::max(worst_margin, escape(exact.center, margins.lower(), margins.upper()));
    }
    CHECK(worst_logit <= 1e-9);
    CHECK(worst_margin <= 1e-9);
    // The worst-case logits are the margins' upper bounds: 0 at the label.
    const std::vector<double> wc = robust::worst_case_logits(*model, x, y, eps).to_vector_f64();
    CHECK(wc[3] == 0.0);
    CHECK(wc[10 + 7] == 0.0);
  }
}

TEST_CASE("IBP is exact on one linear layer: each output's bound is reached at a corner", "[bounds]") {
  Generator gen(4);
  Linear layer(6, 4, gen, LinearOptions{.dtype = DType::f64});
  const Interval box = random_box({1, 6}, 9, 0.3);
  const Interval out = layer.interval_forward(box);
  const std::vector<double> w = layer.weight.to_vector_f64(), c = box.center.to_vector_f64(),
                            r = box.radius.to_vector_f64(), upper = out.upper().to_vector_f64(),
                            lower = out.lower().to_vector_f64();
  for (int64_t j = 0; j < 4; ++j) {
    std::vector<double> hi(6), lo(6);
    for (int64_t i = 0; i < 6; ++i) {
      const double s = w[j * 6 + i] >= 0 ? 1 : -1;
      hi[i] = c[i] + s * r[i];
      lo[i] = c[i] - s * r[i];
    }
    const std::vector<double> at_hi = layer.forward(Tensor::from_vector(hi, {1, 6})).to_vector_f64(),
                              at_lo = layer.forward(Tensor::from_vector(lo, {1, 6})).to_vector_f64();
    CHECK(at_hi[j] == Approx(upper[j]).epsilon(1e-12));
    CHECK(at_lo[j] == Approx(lower[j]).epsilon(1e-12));
  }
}

TEST_CASE("elision (the last Linear merged with the margins) is never looser, and tighter somewhere", "[bounds]") {
  for (const std::string& name : {"mlp", "wong_small", "cnn7", "preact_resnet18"}) {
    INFO(name);
    const int64_t side = std::string(name) == "preact_resnet18" ? 8 : 12;
    const auto model = small_zoo_model(name, DType::f64, 1, side);
    Generator gen(2);
    const Tensor x = rand_uniform({4, 1, side, side}, 0, 1, gen, DType::f64);
    const Tensor y = Tensor::from_vector(std::vector<int32_t>{0, 4, 9, 2}, {4});
    const Interval box = robust::input_box(x, 0.01);
    const Tensor elided = model->interval_margin(box, y).upper();
    const Tensor plain = interval_margin_of_logits(model->interval_forward(box), y).upper();
    const std::vector<double> e = elided.to_vector_f64(), p = plain.to_vector_f64();
    double gain = 0;
    for (size_t i = 0; i < e.size(); ++i) {
      CHECK(e[i] <= p[i] + 1e-12);
      gain = std::max(gain, p[i] - e[i]);
    }
    CHECK(gain > 0);
  }
}

namespace {

// Autograd's gradient of loss() against central differences (step 1e-6) at `probes` random
// coordinates of every `stride`-th parameter of the f64 model.
void check_parameter_gradients(Module& model, const std::function<Tensor()>& loss, int probes, size_t stride,
                               double rtol) {
  const NamedTensors params = model.named_parameters();
  std::vector<Tensor> leaves;
  for (const auto& [name, p] : params) leaves.push_back(p);
  const std::vector<Tensor> grads = grad({loss()}, leaves);
  std::mt19937 rng(3);
  for (size_t k = 0; k < params.size(); k += stride) {
    INFO(params[k].first);
    Tensor p = params[k].second;
    double* data = p.data<double>();
    const std::vector<double> g = grads[k].to_vector_f64();
    for (int probe = 0; probe < probes; ++probe) {
      const auto i = static_cast<size_t>(std::uniform_int_distribution<int64_t>(0, p.numel() - 1)(rng));
      const double keep = data[i], h = 1e-6;
      NoGradGuard no_grad;
      data[i] = keep + h;
      const double up = loss().item();
      data[i] = keep - h;
      const double down = loss().item();
      data[i] = keep;
      CHECK(g[i] == Approx((up - down) / (2 * h)).margin(1e-6).epsilon(rtol));
    }
  }
}

}  // namespace

TEST_CASE("gradients through the IBP verified loss match finite differences (f64)", "[bounds]") {
  const auto model = small_zoo_model("wong_small", DType::f64, 1, 12);
  Generator gen(6);
  const Tensor x = rand_uniform({3, 1, 12, 12}, 0, 1, gen, DType::f64);
  const Tensor y = Tensor::from_vector(std::vector<int32_t>{1, 5, 8}, {3});
  check_parameter_gradients(
      *model, [&] { return cross_entropy(robust::worst_case_logits(*model, x, y, 0.03), y); }, 3, 1, 1e-5);
}

TEST_CASE("IBP on the CUDA backend (emulated) gives the CPU's worst-case logits", "[bounds][cuda]") {
  // Small sizes: the emulator runs every CUDA thread as a fiber.
  for (const std::string& name : {"mlp", "wong_small", "ibp_small", "cnn7", "preact_resnet18"}) {
    INFO(name);
    const int64_t side = std::string(name) == "ibp_small" ? 12 : 8;
    const auto cpu = small_zoo_model(name, DType::f32, 3, side);
    const auto gpu = small_zoo_model(name, DType::f32, 3, side);
    gpu->to(Device::cuda);
    Generator gen(12);
    const Tensor x = rand_uniform({3, 3, side, side}, 0, 1, gen);
    const Tensor y = Tensor::from_vector(std::vector<int32_t>{0, 1, 9}, {3});
    const Tensor on_cpu = robust::worst_case_logits(*cpu, x, y, 0.02);
    const Tensor on_gpu = robust::worst_case_logits(*gpu, x.cuda(), y.cuda(), 0.02);
    CHECK(on_gpu.device() == Device::cuda);
    CHECK(max_abs_diff(on_gpu.cpu(), on_cpu) <= 1e-4 * std::max(1.0, max_abs_diff(on_cpu, zeros_like(on_cpu))));
  }
}

// The interval pass of a Sequential written out layer by layer with the unfused primitives: two
// products per affine layer, the ReLU on the bounds.
Interval unfused_interval_pass(const Sequential& model, const Interval& in) {
  Interval h = in;
  for (const auto& [name, layer] : model.layers()) {
    if (const auto* conv = dynamic_cast<const Conv2d*>(layer.get()))
      h = {conv2d(h.center, conv->weight, conv->bias, {conv->stride, conv->padding}),
           conv2d(h.radius, abs(conv->weight), Tensor(), {conv->stride, conv->padding})};
    else if (const auto* fc = dynamic_cast<const Linear*>(layer.get()))
      h = {linear(h.center, fc->weight, fc->bias), linear(h.radius, abs(fc->weight))};
    else if (dynamic_cast<const ReLU*>(layer.get()))
      h = interval_relu(h);
    else
      h = layer->interval_forward(h);
  }
  return h;
}


TEST_CASE("the fused interval pass (each affine layer and its ReLU in one kernel) equals the unfused one", "[bounds][cuda]") {
  for (const std::string& name : {"mlp", "wong_small", "ibp_small"}) {
    INFO(name);
    const int64_t side = name == "ibp_small" ? 12 : 8;
    const auto model = std::dynamic_pointer_cast<Sequential>(small_zoo_model(name, DType::f64, 1, side));
    REQUIRE(model);
    Generator gen(31);
    const Tensor x = rand_uniform({3, 1, side, side}, 0, 1, gen, DType::f64);
    const Interval box = robust::input_box(x, 0.05);
    const Interval fused = model->interval_forward(box), unfused = unfused_interval_pass(*model, box);
    CHECK(max_abs_diff(fused.center, unfused.center) <= 1e-12);
    CHECK(max_abs_diff(fused.radius, unfused.radius) <= 1e-12);
    // One dual tile launch per affine layer on the CUDA backend, no plain GEMM or elementwise ReLU.
    auto gpu = std::dynamic_pointer_cast<Sequential>(small_zoo_model(name, DType::f32, 1, side));
    gpu->to(Device::cuda);
    int64_t affine = 0;
    for (const auto& [n, layer] : gpu->layers())
      affine += dynamic_cast<const Conv2d*>(layer.get()) || dynamic_cast<const Linear*>(layer.get());
    const Interval gpu_box = robust::input_box(x.to(DType::f32).cuda(), 0.05);
    uint64_t dual = launches_of("dual_gemm_tiles"), plain = launches_of("gemm_tiles");
    {
      NoGradGuard no_grad;
      gpu->interval_forward(gpu_box);
    }
    CHECK(launches_of("dual_gemm_tiles") - dual == uint64_t(affine));
    CHECK(launches_of("gemm_tiles") == plain);
    // Training's backward: per affine layer one dual launch for the weight gradient, and one for
    // the input box's gradient except at the first layer (the input box needs none).
    const Interval out = gpu->interval_forward(gpu_box);
    dual = launches_of("dual_gemm_tiles"), plain = launches_of("gemm_tiles");
    std::vector<Tensor> weights;
    for (const auto& [n, p] : gpu->named_parameters()) weights.push_back(p);
    grad({sum(out.center) + sum(out.radius)}, weights);
    CHECK(launches_of("dual_gemm_tiles") - dual == uint64_t(2 * affine - 1));
    CHECK(launches_of("gemm_tiles") == plain);
  }
}

TEST_CASE("a verified sample is never broken by PGD, and verification falls as eps grows", "[bounds]") {
  auto model = testing::trained_mlp();
  const testing::Batch b = testing::test_batch(200);
  double previous = 1;
  for (const double eps : {0.0, 0.002, 0.005, 0.01}) {
    INFO("eps " << eps);
    const std::vector<uint8_t> verified =
        robust::verified_samples(robust::worst_case_logits(*model, b.x, b.y, eps), b.y);
    const AttackOutcome pgd = attack_outcome(*model, b.x, b.y, testing::options(AttackKind::pgd, Norm::linf, eps, 20, 2));
    int broken_but_verified = 0;
    for (size_t i = 0; i < verified.size(); ++i) broken_but_verified += verified[i] && !pgd.correct[i];
    CHECK(broken_but_verified == 0);
    const double fraction = testing::accuracy(verified);
    CHECK(fraction <= testing::accuracy(pgd.correct));
    CHECK(fraction <= previous);
    previous = fraction;
    if (eps == 0.0) CHECK(fraction == Approx(testing::accuracy(pgd.correct)));  // eps 0: verified = correct
  }
  CHECK(previous < 0.9);  // the largest eps verifies less than all
}

namespace {
class Squash final : public Module {  // a layer that does not say how a box passes through it
 public:
  Tensor forward(const Tensor& x) override { return sigmoid(x); }
};
}  // namespace

TEST_CASE("bounds name the layer they cannot pass, and refuse eps outside [0, 1]", "[bounds]") {
  Generator gen(1);
  Sequential net;
  net.add(std::make_shared<Flatten>());
  net.add(std::make_shared<Linear>(4, 3, gen));
  net.add(std::make_shared<Squash>());
  const Tensor x = rand_uniform({2, 1, 2, 2}, 0, 1, gen);
  const Tensor y = Tensor::from_vector(std::vector<int32_t>{0, 2}, {2});
  CHECK_THROWS_WITH(robust::worst_case_logits(net, x, y, 0.1),
                    Catch::Contains("Squash: interval bound propagation cannot pass this layer"));
  CHECK_THROWS_WITH(robust::input_box(x, 1.5), Catch::Contains("eps in [0, 1]"));
  CHECK_THROWS_WITH(robust::bound_from_name("alpha-crown"), Catch::Contains("bulwark implements: ibp, crown-ibp, crown, symbolic"));
}

// ---- CROWN-IBP ---------------------------------------------------------------------------------

// Conv, max pooling (overlapping windows, padding), average pooling and global pooling: the
// pooling layers' CROWN steps, which no zoo model exercises. The max pools see pre-ReLU values:
// after a ReLU, many lower bounds of a window are exactly 0 and the window's lower-bound choice
// (max_pool_crown_backward) switches under the finite differences' nudges, a jump of the bound
// that the gradient check would read as a wrong derivative.
std::shared_ptr<Sequential> pooling_net(uint64_t seed) {
  Generator g(seed);
  const DType f64 = DType::f64;
  auto net = std::make_shared<Sequential>();
  net->add(std::make_shared<Conv2d>(1, 4, 3, g, Conv2dOptions{.padding = 1, .dtype = f64}))
      .add(std::make_shared<MaxPool2d>(3, 2, 1))
      .add(std::make_shared<ReLU>())
      .add(std::make_shared<Conv2d>(4, 5, 3, g, Conv2dOptions{.padding = 1, .dtype = f64}))
      .add(std::make_shared<AvgPool2d>(2, 1))
      .add(std::make_shared<MaxPool2d>(2))
      .add(std::make_shared<ReLU>())
      .add(std::make_shared<AdaptiveAvgPool2d>(1, 1))
      .add(std::make_shared<Flatten>())
      .add(std::make_shared<Linear>(5, 10, g, LinearOptions{.dtype = f64}));
  return net;
}

TEST_CASE("CROWN through max, average and global pooling holds over the box, and is differentiable", "[bounds]") {
  for (const uint64_t seed : {3, 4, 5}) {
    INFO("seed " << seed);
    const auto net = pooling_net(seed);
    Generator gen(seed + 10);
    const Tensor x = rand_uniform({3, 1, 9, 9}, 0, 1, gen, DType::f64);
    const Tensor y = Tensor::from_vector(std::vector<int32_t>{2, 6, 9}, {3});
    const double eps = 0.03;
    const Interval box = robust::input_box(x, eps);
    for (const auto kind : {robust::BoundKind::crown_ibp, robust::BoundKind::crown}) {
      INFO(robust::bound_name(kind));
      const Tensor bound = robust::worst_case_logits(*net, x, y, eps, kind);
      double worst = 0;
      for (const Tensor& p : box_points(box, 100, seed)) {
        const Tensor z = net->forward(p);
        worst = std::max(worst, escape(interval_margin_of_logits({z, zeros_like(z)}, y).center, bound - 1e9, bound));
      }
      CHECK(worst <= 1e-9);
    }
  }
  const auto net = pooling_net(3);
  Generator gen(13);
  const Tensor x = rand_uniform({3, 1, 9, 9}, 0, 1, gen, DType::f64);
  const Tensor y = Tensor::from_vector(std::vector<int32_t>{1, 5, 8}, {3});
  check_parameter_gradients(
      *net, [&] { return cross_entropy(robust::mixed_worst_case_logits(*net, x, y, 0.03, 0.6), y); }, 3, 1, 1e-5);
}

TEST_CASE("every zoo model's margins stay below their CROWN-IBP bounds over the input box", "[bounds]") {
  for (const std::string& name : model_names()) {
    const bool big = name == "preact_resnet18" || name == "wide_resnet";
    const int64_t side = big ? 8 : (name == "ibp_large" || name == "wong_large" || name == "cnn7" ? 12 : 16);
    INFO(name);
    const auto model = small_zoo_model(name, DType::f64, 1, side);
    Generator gen(31);
    const Tensor x = rand_uniform({2, 1, side, side}, 0, 1, gen, DType::f64);
    const Tensor y = Tensor::from_vector(std::vector<int32_t>{2, 6}, {2});
    const double eps = 0.02;
    const Interval box = robust::input_box(x, eps);
    const Tensor crown = robust::worst_case_logits(*model, x, y, eps, robust::BoundKind::crown_ibp);
    const Tensor ibp = robust::worst_case_logits(*model, x, y, eps, robust::BoundKind::ibp);
    double worst = 0;
    for (const Tensor& p : box_points(box, big ? 20 : 60, 9)) {
      const Tensor z = model->forward(p);
      const Tensor margins = interval_margin_of_logits({z, zeros_like(z)}, y).center;
      worst = std::max(worst, escape(margins, margins - 1e9, crown));  // margins <= crown
    }
    CHECK(worst <= 1e-9);
    const std::vector<double> c = crown.to_vector_f64(), i = ibp.to_vector_f64();
    int tighter = 0;
    for (size_t k = 0; k < c.size(); ++k) tighter += c[k] < i[k];
    INFO("CROWN-IBP tighter than IBP on " << tighter << " of " << c.size() << " margins");
    CHECK(c[2] == 0.0);  // the label's own margin
  }
}

TEST_CASE("CROWN and symbolic intervals are exact on a multi-layer linear network, where IBP is not",
          "[bounds][symbolic]") {
  Generator gen(8);
  Sequential net;
  net.add(std::make_shared<Flatten>());
  net.add(std::make_shared<Linear>(12, 9, gen, LinearOptions{.dtype = DType::f64}));
  net.add(std::make_shared<Linear>(9, 7, gen, LinearOptions{.dtype = DType::f64}));
  net.add(std::make_shared<Linear>(7, 5, gen, LinearOptions{.dtype = DType::f64}));
  const Tensor x = rand_uniform({3, 1, 3, 4}, 0.2, 0.8, gen, DType::f64);
  const Tensor y = Tensor::from_vector(std::vector<int32_t>{0, 3, 4}, {3});
  const double eps = 0.05;
  const Interval box = robust::input_box(x, eps);
  net.interval_margin(box, y);
  const LinearBound start{robust::margin_specification(y, 5, DType::f64), Tensor::zeros({3, 5}, DType::f64)};
  const LinearBound back = net.crown_backward(start, {});
  const std::vector<double> crown = maximize_over_box(back, box).to_vector_f64();
  const std::vector<double> ibp = robust::worst_case_logits(net, x, y, eps).to_vector_f64();
  const std::vector<double> symbolic = robust::worst_case_logits(net, x, y, eps, robust::BoundKind::symbolic).to_vector_f64();
  // The maximiser of a linear function over the box is the corner c + r sign(A).
  const std::vector<double> A = back.A.to_vector_f64(), c = box.center.to_vector_f64(), r = box.radius.to_vector_f64();
  const std::vector<int32_t> labels = y.to_vector_i32();
  int looser = 0;
  for (int64_t n = 0; n < 3; ++n)
    for (int64_t j = 0; j < 5; ++j) {
      std::vector<double> corner(12);
      for (int64_t i = 0; i < 12; ++i) corner[i] = c[n * 12 + i] + r[n * 12 + i] * (A[(n * 5 + j) * 12 + i] >= 0 ? 1 : -1);
      const std::vector<double> z = net.forward(Tensor::from_vector(corner, {1, 1, 3, 4})).to_vector_f64();
      CHECK(crown[n * 5 + j] == Approx(z[j] - z[labels[n]]).margin(1e-12));
      CHECK(symbolic[n * 5 + j] == Approx(z[j] - z[labels[n]]).margin(1e-12));
      looser += ibp[n * 5 + j] > crown[n * 5 + j] + 1e-9;
    }
  CHECK(looser > 0);
}

TEST_CASE("CROWN with lower slope 0 is never looser than IBP on one hidden layer", "[bounds]") {
  for (uint64_t seed : {1, 2, 3}) {
    INFO("seed " << seed);
    Generator gen(seed);
    Sequential net;
    net.add(std::make_shared<Flatten>());
    net.add(std::make_shared<Linear>(16, 20, gen, LinearOptions{.dtype = DType::f64}));
    net.add(std::make_shared<ReLU>());
    net.add(std::make_shared<Linear>(20, 6, gen, LinearOptions{.dtype = DType::f64}));
    const Tensor x = rand_uniform({5, 1, 4, 4}, 0, 1, gen, DType::f64);
    const Tensor y = Tensor::from_vector(std::vector<int32_t>{0, 1, 2, 3, 5}, {5});
    for (const double eps : {0.01, 0.05, 0.2}) {
      const Interval box = robust::input_box(x, eps);
      const std::vector<double> ibp = net.interval_margin(box, y).upper().to_vector_f64();
      const LinearBound start{robust::margin_specification(y, 6, DType::f64), Tensor::zeros({5, 6}, DType::f64)};
      const std::vector<double> crown =
          maximize_over_box(net.crown_backward(start, CrownOptions{.adaptive_lower = false}), box).to_vector_f64();
      for (size_t k = 0; k < ibp.size(); ++k) CHECK(crown[k] <= ibp[k] + 1e-10);
    }
  }
}

TEST_CASE("gradients through the CROWN-IBP verified loss match finite differences (f64)", "[bounds]") {
  const auto model = small_zoo_model("cnn7", DType::f64, 1, 8);
  Generator gen(16);
  const Tensor x = rand_uniform({2, 1, 8, 8}, 0, 1, gen, DType::f64);
  const Tensor y = Tensor::from_vector(std::vector<int32_t>{4, 7}, {2});
  check_parameter_gradients(
      *model, [&] { return cross_entropy(robust::mixed_worst_case_logits(*model, x, y, 0.01, 0.7), y); }, 1, 3, 1e-4);
}

TEST_CASE("CROWN-IBP and symbolic bounds on the CUDA backend (emulated) give the CPU's worst-case logits",
          "[bounds][symbolic][cuda]") {
  const struct {
    robust::BoundKind bound;
    const char* model;
    int64_t channels, side;
  } cases[] = {{robust::BoundKind::crown_ibp, "wong_small", 3, 8}, {robust::BoundKind::crown_ibp, "preact_resnet18", 3, 8},
               {robust::BoundKind::symbolic, "wong_small", 1, 8}, {robust::BoundKind::symbolic, "wide_resnet", 1, 4}};
  for (const auto& c : cases) {
    INFO(robust::bound_name(c.bound) << " on " << c.model);
    const auto cpu = small_zoo_model(c.model, DType::f32, c.channels, c.side);
    const auto gpu = small_zoo_model(c.model, DType::f32, c.channels, c.side);
    gpu->to(Device::cuda);
    Generator gen(13);
    const Tensor x = rand_uniform({2, c.channels, c.side, c.side}, 0, 1, gen);
    const Tensor y = Tensor::from_vector(std::vector<int32_t>{0, 9}, {2});
    const Tensor on_cpu = robust::worst_case_logits(*cpu, x, y, 0.01, c.bound);
    const Tensor on_gpu = robust::worst_case_logits(*gpu, x.cuda(), y.cuda(), 0.01, c.bound);
    CHECK(on_gpu.device() == Device::cuda);
    CHECK(max_abs_diff(on_gpu.cpu(), on_cpu) <= 1e-4 * std::max(1.0, max_abs_diff(on_cpu, zeros_like(on_cpu))));
  }
}

TEST_CASE("a CROWN-IBP-verified sample is never broken by PGD", "[bounds]") {
  auto model = testing::trained_mlp();
  const testing::Batch b = testing::test_batch(200);
  for (const double eps : {0.002, 0.005}) {
    const std::vector<uint8_t> verified = robust::verified_samples(
        robust::worst_case_logits(*model, b.x, b.y, eps, robust::BoundKind::crown_ibp), b.y);
    const std::vector<uint8_t> ibp =
        robust::verified_samples(robust::worst_case_logits(*model, b.x, b.y, eps, robust::BoundKind::ibp), b.y);
    const AttackOutcome pgd = attack_outcome(*model, b.x, b.y, testing::options(AttackKind::pgd, Norm::linf, eps, 20, 2));
    int broken = 0;
    for (size_t i = 0; i < verified.size(); ++i) broken += verified[i] && !pgd.correct[i];
    INFO("eps " << eps << ": CROWN-IBP verifies " << testing::accuracy(verified) << ", IBP " << testing::accuracy(ibp)
                << ", PGD leaves " << testing::accuracy(pgd.correct));
    CHECK(broken == 0);
    CHECK(testing::accuracy(verified) > 0);
  }
}

TEST_CASE("full CROWN's tightened pre-activation boxes hold every ReLU input of the box, and are tighter than IBP's",
          "[bounds]") {
  for (const std::string& name : {"wong_small", "wide_resnet"}) {
    INFO(name);
    const int64_t side = name == "wide_resnet" ? 4 : 12;
    const auto model = small_zoo_model(name, DType::f64, 1, side);
    Generator gen(43);
    const Tensor x = rand_uniform({2, 1, side, side}, 0, 1, gen, DType::f64);
    const Interval box = robust::input_box(x, 0.03);
    NoGradGuard no_grad;
    const auto recorded = [&](const Interval& over, bool tighten) {
      CrownTightening t(over, tighten);
      model->interval_forward(over);
      return t.boxes();
    };
    const std::vector<Interval> tight = recorded(box, true), ibp = recorded(box, false);
    REQUIRE(tight.size() == ibp.size());
    REQUIRE(tight.size() >= 3);
    // A zero-radius box's interval pass is the forward pass: its boxes are the ReLUs' inputs.
    double worst = 0;
    for (const Tensor& p : box_points(box, 40, 12)) {
      const std::vector<Interval> exact = recorded({p, zeros_like(p)}, false);
      for (size_t k = 0; k < tight.size(); ++k)
        worst = std::max(worst, escape(exact[k].center, tight[k].lower(), tight[k].upper()));
    }
    CHECK(worst <= 1e-9);
    double width_tight = 0, width_ibp = 0;
    for (size_t k = 0; k < tight.size(); ++k) {
      CHECK(escape(tight[k].center, ibp[k].lower(), ibp[k].upper()) <= 1e-12);  // never looser than IBP's
      width_tight += sum(tight[k].radius).item();
      width_ibp += sum(ibp[k].radius).item();
    }
    INFO("total radius of the ReLUs' boxes: full CROWN " << width_tight << ", IBP " << width_ibp);
    CHECK(width_tight < 0.95 * width_ibp);
  }
}

TEST_CASE("full CROWN is sound on the zoo models, residual ones included, and tighter than CROWN-IBP on average",
          "[bounds]") {
  // wide_resnet (depth 10) has both kinds of residual block, identity and convolution shortcut, on
  // the code PreActResNet18 shares (residual_interval_forward), at a tenth of its cost.
  for (const std::string& name : {"mlp", "wong_small", "ibp_small", "wide_resnet"}) {
    INFO(name);
    const int64_t side = name == "wide_resnet" ? 4 : 12;  // every neuron is a backward pass
    const auto model = small_zoo_model(name, DType::f64, 1, side);
    Generator gen(41);
    const Tensor x = rand_uniform({2, 1, side, side}, 0, 1, gen, DType::f64);
    const Tensor y = Tensor::from_vector(std::vector<int32_t>{1, 8}, {2});
    const double eps = 0.03;
    const Tensor crown = robust::worst_case_logits(*model, x, y, eps, robust::BoundKind::crown);
    const Tensor crown_ibp = robust::worst_case_logits(*model, x, y, eps, robust::BoundKind::crown_ibp);
    double worst = 0;
    for (const Tensor& p : box_points(robust::input_box(x, eps), 60, 10)) {
      const Tensor z = model->forward(p);
      const Tensor margins = interval_margin_of_logits({z, zeros_like(z)}, y).center;
      worst = std::max(worst, escape(margins, margins - 1e9, crown));
    }
    CHECK(worst <= 1e-9);
    const double mean_crown = sum(crown).item(), mean_crown_ibp = sum(crown_ibp).item();
    INFO("sum of the worst-case margins: CROWN " << mean_crown << ", CROWN-IBP " << mean_crown_ibp);
    CHECK(mean_crown <= mean_crown_ibp + 1e-9);
  }
}

// ---- symbolic intervals (models/symbolic.h) -------------------------------------------------------

TEST_CASE("symbolic intervals are sound on every zoo model, hold every ReLU's input, and are never looser than IBP",
          "[bounds][symbolic]") {
  for (const std::string& name : model_names()) {
    // d + 3 rows per sample (d = side^2), each through the whole model
    const std::map<std::string, int64_t> sides{{"preact_resnet18", 2}, {"wide_resnet", 4}, {"ibp_small", 10},
                                               {"ibp_large", 6}, {"wong_large", 6}, {"cnn7", 6}};
    const int64_t side = sides.count(name) ? sides.at(name) : 8;
    INFO(name);
    const auto model = small_zoo_model(name, DType::f64, 1, side);
    Generator gen(51);
    const Tensor x = rand_uniform({2, 1, side, side}, 0, 1, gen, DType::f64);
    const Tensor y = Tensor::from_vector(std::vector<int32_t>{4, 1}, {2});
    const double eps = 0.02;
    const Interval box = robust::input_box(x, eps);
    NoGradGuard no_grad;
    std::vector<Interval> relu_boxes;
    Tensor symbolic;
    {
      SymbolicPass pass(box);
      symbolic = pass.bounds(model->interval_margin(pass.expanded(), pass.repeat_labels(y))).upper();
      relu_boxes = pass.boxes();
    }
    CHECK(max_abs_diff(symbolic, robust::worst_case_logits(*model, x, y, eps, robust::BoundKind::symbolic)) == 0);
    const Tensor ibp = robust::worst_case_logits(*model, x, y, eps, robust::BoundKind::ibp);
    double worst_margin = 0, worst_relu = 0;
    for (const Tensor& p : box_points(box, 20, 14)) {
      const Tensor z = model->forward(p);
      const Tensor margins = interval_margin_of_logits({z, zeros_like(z)}, y).center;
      worst_margin = std::max(worst_margin, escape(margins, margins - 1e9, symbolic));
      // A zero-radius box's interval pass is the forward pass: what each ReLU takes there.
      CrownTightening record({p, zeros_like(p)}, false);
      model->interval_forward({p, zeros_like(p)});
      REQUIRE(record.boxes().size() == relu_boxes.size());
      for (size_t k = 0; k < relu_boxes.size(); ++k)
        worst_relu = std::max(worst_relu, escape(record.boxes()[k].center, relu_boxes[k].lower(), relu_boxes[k].upper()));
    }
    CHECK(worst_margin <= 1e-9);
    CHECK(worst_relu <= 1e-9);
    CHECK(escape(symbolic, symbolic - 1e9, ibp) <= 1e-12);  // symbolic <= ibp everywhere
    const double total_symbolic = sum(symbolic).item(), total_ibp = sum(ibp).item();
    INFO("sum of the worst-case margins: symbolic " << total_symbolic << ", IBP " << total_ibp);
    CHECK(total_symbolic < total_ibp);
    CHECK(symbolic.to_vector_f64()[4] == 0.0);  // the label's own margin
  }
}

TEST_CASE("gradients through the symbolic verified loss match finite differences (f64)", "[bounds][symbolic]") {
  const auto model = small_zoo_model("wong_small", DType::f64, 1, 8);
  Generator gen(17);
  const Tensor x = rand_uniform({2, 1, 8, 8}, 0, 1, gen, DType::f64);
  const Tensor y = Tensor::from_vector(std::vector<int32_t>{3, 6}, {2});
  check_parameter_gradients(
      *model,
      [&] { return cross_entropy(robust::worst_case_logits(*model, x, y, 0.03, robust::BoundKind::symbolic), y); }, 3, 5,
      1e-5);
}

TEST_CASE("symbolic intervals take BatchNorm's batch statistics from the IBP rows, and pass max pooling soundly",
          "[bounds][symbolic]") {
  // In train mode both bounds normalise with the statistics of the same box centers, so the
  // symbolic bound stays below IBP's there too.
  const auto model = small_zoo_model("cnn7", DType::f64, 1, 8);
  model->train();
  Generator gen(23);
  const Tensor x = rand_uniform({4, 1, 8, 8}, 0, 1, gen, DType::f64);
  const Tensor y = Tensor::from_vector(std::vector<int32_t>{0, 1, 2, 3}, {4});
  const Tensor symbolic = robust::worst_case_logits(*model, x, y, 0.01, robust::BoundKind::symbolic);
  const Tensor ibp = robust::worst_case_logits(*model, x, y, 0.01, robust::BoundKind::ibp);
  CHECK(escape(symbolic, symbolic - 1e9, ibp) <= 1e-12);
  CHECK(sum(symbolic).item() < sum(ibp).item());

  // Max pooling (overlapping, padded) between two ReLU layers: sound at the box's points, never
  // looser than IBP.
  Sequential pooled;
  pooled.add(std::make_shared<Conv2d>(1, 3, 3, gen, Conv2dOptions{.padding = 1, .dtype = DType::f64}));
  pooled.add(std::make_shared<ReLU>());
  pooled.add(std::make_shared<MaxPool2d>(3, 2, 1));
  pooled.add(std::make_shared<Conv2d>(3, 4, 3, gen, Conv2dOptions{.dtype = DType::f64}));
  pooled.add(std::make_shared<ReLU>());
  pooled.add(std::make_shared<Flatten>());
  pooled.add(std::make_shared<Linear>(16, 5, gen, LinearOptions{.dtype = DType::f64}));
  // The pooling layer alone: its output box holds the pooled values of every point.
  {
    MaxPool2d pool(3, 2, 1);
    const Interval box = robust::input_box(x, 0.05);
    Interval out;
    {
      SymbolicPass pass(box);
      out = pass.bounds(pool.interval_forward(pass.expanded()));
    }
    double worst = 0;
    for (const Tensor& p : box_points(box, 100, 16)) worst = std::max(worst, escape(pool.forward(p), out.lower(), out.upper()));
    CHECK(worst <= 1e-12);
  }
  const Tensor y5 = Tensor::from_vector(std::vector<int32_t>{0, 1, 2, 4}, {4});
  for (const double eps : {0.01, 0.05}) {
    INFO("eps " << eps);
    const Tensor wc = robust::worst_case_logits(pooled, x, y5, eps, robust::BoundKind::symbolic);
    const Tensor wc_ibp = robust::worst_case_logits(pooled, x, y5, eps, robust::BoundKind::ibp);
    CHECK(escape(wc, wc - 1e9, wc_ibp) <= 1e-12);
    double worst = 0;
    for (const Tensor& p : box_points(robust::input_box(x, eps), 100, 15)) {
      const Tensor z = pooled.forward(p);
      const Tensor margins = interval_margin_of_logits({z, zeros_like(z)}, y5).center;
      worst = std::max(worst, escape(margins, margins - 1e9, wc));
    }
    CHECK(worst <= 1e-9);
  }
}

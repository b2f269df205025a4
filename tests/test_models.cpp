// The model zoo against PyTorch, and the Module plumbing around it.
//
// tests/fixtures/make_fixtures.py builds each zoo model's torch.nn twin, sets every parameter and running
// statistic by a closed formula, and records logits, losses, gradients and running statistics in
// float64 (see its docstring for the formulas and the summary format). These tests build the
// same models here, set the same formula weights, and compare. A wrong layer order, stride,
// padding, shortcut, BatchNorm rule or parameter name fails here.
#include <catch2/catch.hpp>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>

#include "engine/autograd.h"
#include "engine/safetensors.h"
#include "models/layers.h"
#include "models/zoo.h"

using namespace bulwark;
using Catch::Matchers::Contains;
using json = nlohmann::json;

namespace {

// float64 on both sides, only the summation order differs: agreement to ~1e-12 is expected;
// 1e-9 leaves room without letting a real mistake through.
constexpr double kRtol = 1e-9;

std::string fixture_path(const std::string& name) {
  return std::string(BULWARK_SOURCE_DIR) + "/tests/fixtures/" + name + ".safetensors";
}

ModelConfig config_from(const json& j) {
  ModelConfig cfg;
  cfg.in_channels = j.at("in_channels");
  cfg.height = j.at("height");
  cfg.width = j.at("width");
  cfg.num_classes = j.at("num_classes");
  cfg.mean = j.at("mean").get<std::vector<double>>();
  cfg.std = j.at("std").get<std::vector<double>>();
  cfg.depth = j.at("depth");
  cfg.widen_factor = j.at("widen_factor");
  cfg.dtype = DType::f64;
  return cfg;
}

// Every layer type of models/layers.h in one network (the fixture script's "layers" model).
std::shared_ptr<Module> make_layer_mix(const ModelConfig& cfg) {
  Generator gen(cfg.seed);
  const DType dt = cfg.dtype;
  auto net = std::make_shared<Sequential>();
  net->add("normalize", std::make_shared<Normalize>(cfg.mean, cfg.std, dt));
  net->add(std::make_shared<Conv2d>(cfg.in_channels, 8, 3, gen, Conv2dOptions{.stride = 1, .padding = 1, .bias = false, .dtype = dt}));
  net->add(std::make_shared<BatchNorm2d>(8, dt));
  net->add(std::make_shared<ReLU>());
  net->add(std::make_shared<MaxPool2d>(3, 2, 1));
  net->add(std::make_shared<Conv2d>(8, 8, 3, gen, Conv2dOptions{.stride = 2, .padding = 1, .dtype = dt}));
  net->add(std::make_shared<ReLU>());
  net->add(std::make_shared<AvgPool2d>(3, 1, 1));
  net->add(std::make_shared<AdaptiveAvgPool2d>(3, 3));
  net->add(std::make_shared<Flatten>());
  net->add(std::make_shared<Linear>(72, 16, gen, LinearOptions{.dtype = dt}));
  net->add(std::make_shared<BatchNorm1d>(16, dt));
  net->add(std::make_shared<ReLU>());
  net->add(std::make_shared<Linear>(16, cfg.num_classes, gen, LinearOptions{.dtype = dt}));
  return net;
}

std::shared_ptr<Module> build(const std::string& name, const ModelConfig& cfg) {
  return name == "layers" ? make_layer_mix(cfg) : make_model(name, cfg);
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// The fixture formulas; k = index in named_parameters() then named_buffers(), i = flat index.
Tensor formula_value(const std::string& name, const Shape& shape, int64_t k) {
  const int64_t n = shape_numel(shape);
  // value = offset + scale * s
  double offset = 0, scale = 0.1;  // biases
  if (ends_with(name, "running_var")) offset = 0.75, scale = 0.25;
  else if (ends_with(name, "running_mean")) scale = 0.1;
  else if (shape.size() >= 2) scale = 1 / std::sqrt(static_cast<double>(n / shape[0]));
  else if (ends_with(name, "weight")) offset = 1;  // BatchNorm
  std::vector<double> v(n);
  for (int64_t i = 0; i < n; ++i)
    v[i] = offset + scale * std::sin(0.37 * static_cast<double>(i) + 0.11 * static_cast<double>(k));
  return Tensor::from_vector(v, shape);
}

void set_formula_weights(Module& model) {
  NamedTensors all = model.named_parameters();
  for (auto& b : model.named_buffers()) all.push_back(b);
  for (size_t k = 0; k < all.size(); ++k) {
    auto& [name, t] = all[k];
    if (ends_with(name, "num_batches_tracked") || name == "normalize.mean" || name == "normalize.std") continue;
    t.copy_(formula_value(name, t.shape(), static_cast<int64_t>(k)));
  }
}

std::pair<Tensor, Tensor> formula_batch(const ModelConfig& cfg, int64_t batch = 2) {
  const Shape shape{batch, cfg.in_channels, cfg.height, cfg.width};
  std::vector<double> x(shape_numel(shape));
  for (size_t i = 0; i < x.size(); ++i) x[i] = 0.5 + 0.4 * std::sin(0.23 * static_cast<double>(i) + 0.7);
  std::vector<int32_t> y(batch);
  for (int64_t b = 0; b < batch; ++b) y[b] = static_cast<int32_t>((3 + 4 * b) % cfg.num_classes);
  return {Tensor::from_vector(x, shape), Tensor::from_vector(y, {batch})};
}

// [sum v, sum v^2, sum v_i sin(1.3 i + 0.5), v_0..v_7], as in make_fixtures.py.
std::vector<double> summary(const Tensor& t) {
  const std::vector<double> v = t.to_vector_f64();
  double sum = 0, sumsq = 0, probe = 0;
  for (size_t i = 0; i < v.size(); ++i) {
    sum += v[i];
    sumsq += v[i] * v[i];
    probe += v[i] * std::sin(1.3 * static_cast<double>(i) + 0.5);
  }
  std::vector<double> s{sum, sumsq, probe};
  for (size_t i = 0; i < std::min<size_t>(8, v.size()); ++i) s.push_back(v[i]);
  return s;
}

// Each entry within kRtol of the scale it could reach: sum and probe are bounded by
// sqrt(n * sumsq) (Cauchy-Schwarz), values by the rms, so cancellation does not make the
// comparison ill-posed (e.g. the last bias gradient sums to exactly zero). `atol` covers tensors
// that are zero in exact arithmetic: a bias right before a train-mode BatchNorm gets gradient 0
// (the batch mean removes it), and both sides return rounding noise instead.
void check_summary(const std::vector<double>& got, const Tensor& expected_t, int64_t numel, const std::string& what,
                   double atol = 0) {
  const std::vector<double> want = expected_t.to_vector_f64();
  REQUIRE(got.size() == want.size());
  const double sumsq = want[1];
  const double scale_sum = std::sqrt(static_cast<double>(numel) * sumsq);
  const double rms = std::sqrt(sumsq / static_cast<double>(numel));
  for (size_t i = 0; i < want.size(); ++i) {
    const double scale = i == 1 ? sumsq : i == 0 || i == 2 ? scale_sum : rms;
    INFO(what << " summary entry " << i << ": bulwark " << got[i] << ", PyTorch " << want[i]);
    CHECK(std::abs(got[i] - want[i]) <= kRtol * scale + atol);
  }
}

void check_values(const Tensor& got, const Tensor& want, const std::string& what) {
  REQUIRE(got.shape() == want.shape());
  double scale = 0;
  for (double v : want.to_vector_f64()) scale = std::max(scale, std::abs(v));
  INFO(what << ": max |bulwark - PyTorch| = " << max_abs_diff(got, want) << ", max |PyTorch| = " << scale);
  CHECK(max_abs_diff(got, want) <= kRtol * std::max(scale, 1.0));
}

// Names and shapes in the same order as PyTorch's named_parameters() / named_buffers().
void check_names(const NamedTensors& ours, const json& theirs, const std::string& what) {
  REQUIRE(ours.size() == theirs.size());
  for (size_t i = 0; i < ours.size(); ++i) {
    INFO(what << " " << i);
    CHECK(ours[i].first == theirs[i][0].get<std::string>());
    CHECK(ours[i].second.shape() == theirs[i][1].get<Shape>());
  }
}

void check_against_pytorch(const std::string& name) {
  const SafetensorsFile fx = load_safetensors(fixture_path(name));
  const ModelConfig cfg = config_from(json::parse(fx.metadata.at("config")));
  auto model = build(name, cfg);
  check_names(model->named_parameters(), json::parse(fx.metadata.at("parameters")), "parameter");
  check_names(model->named_buffers(), json::parse(fx.metadata.at("buffers")), "buffer");
  const auto [x, y] = formula_batch(cfg);

  // Train mode: batch statistics, parameter gradients, running-statistic updates.
  set_formula_weights(*model);
  model->train();
  const Tensor logits = model->forward(x);
  const Tensor loss = cross_entropy(logits, y);
  check_values(logits, fx.tensors.at("logits_train"), "train logits");
  check_values(loss, fx.tensors.at("loss_train"), "train loss");
  const NamedTensors params = model->named_parameters();
  std::vector<Tensor> leaves;
  for (const auto& [n, p] : params) leaves.push_back(p);
  const std::vector<Tensor> grads = grad({loss}, leaves);
  double grad_scale = 0;  // the largest rms of any parameter gradient
  for (const auto& [n, p] : params)
    grad_scale = std::max(grad_scale, std::sqrt(fx.tensors.at("grad." + n).to_vector_f64()[1] / static_cast<double>(p.numel())));
  for (size_t i = 0; i < params.size(); ++i)
    check_summary(summary(grads[i]), fx.tensors.at("grad." + params[i].first), params[i].second.numel(),
                  "d loss / d " + params[i].first, kRtol * grad_scale);
  for (const auto& [n, b] : model->named_buffers()) {
    if (ends_with(n, "running_mean") || ends_with(n, "running_var"))
      check_summary(summary(b), fx.tensors.at("after_train." + n), b.numel(), n + " after one train step");
    if (ends_with(n, "num_batches_tracked")) CHECK(b.item() == 1);
  }

  // Eval mode from fresh weights: running statistics, and the input gradient an attack uses.
  set_formula_weights(*model);
  model->eval();
  Tensor xg = x.clone();
  xg.set_requires_grad(true);
  const Tensor logits_eval = model->forward(xg);
  const Tensor loss_eval = cross_entropy(logits_eval, y);
  check_values(logits_eval, fx.tensors.at("logits_eval"), "eval logits");
  check_values(loss_eval, fx.tensors.at("loss_eval"), "eval loss");
  check_summary(summary(grad({loss_eval}, {xg})[0]), fx.tensors.at("input_grad"), xg.numel(), "d loss / d x");
}

}  // namespace

TEST_CASE("mlp matches PyTorch", "[models]") { check_against_pytorch("mlp"); }
TEST_CASE("wong_small matches PyTorch", "[models]") { check_against_pytorch("wong_small"); }
TEST_CASE("wong_large matches PyTorch", "[models]") { check_against_pytorch("wong_large"); }
TEST_CASE("ibp_small matches PyTorch on 3x20x20 inputs with 7 classes", "[models]") { check_against_pytorch("ibp_small"); }
TEST_CASE("ibp_large matches PyTorch", "[models]") { check_against_pytorch("ibp_large"); }
TEST_CASE("cnn7 matches PyTorch", "[models]") { check_against_pytorch("cnn7"); }
TEST_CASE("preact_resnet18 matches PyTorch", "[models]") { check_against_pytorch("preact_resnet18"); }
TEST_CASE("wide_resnet matches PyTorch as WRN-10-2", "[models]") { check_against_pytorch("wide_resnet"); }
TEST_CASE("every layer type matches PyTorch", "[models]") { check_against_pytorch("layers"); }

TEST_CASE("two SGD steps on wong_small match torch.optim.SGD", "[models]") {
  const SafetensorsFile fx = load_safetensors(fixture_path("sgd_wong_small"));
  const ModelConfig cfg = config_from(json::parse(fx.metadata.at("config")));
  const double lr = 0.1, momentum = 0.9, weight_decay = 5e-4;
  auto model = make_model("wong_small", cfg);
  set_formula_weights(*model);
  model->train();
  const auto [x, y] = formula_batch(cfg);
  const std::vector<Tensor> params = model->parameters();
  std::vector<Tensor> velocity(params.size());
  for (int step = 0; step < 2; ++step) {
    const Tensor loss = cross_entropy(model->forward(x), y);
    check_values(loss, fx.tensors.at("loss." + std::to_string(step)), "loss before step " + std::to_string(step));
    const std::vector<Tensor> grads = grad({loss}, params);
    // torch.optim.SGD: d = g + wd p; v = d on the first step, else momentum v + d; p -= lr v.
    NoGradGuard no_grad;
    for (size_t i = 0; i < params.size(); ++i) {
      const Tensor d = grads[i] + params[i].detach() * weight_decay;
      velocity[i] = step == 0 ? d : velocity[i] * momentum + d;
      Tensor p = params[i];
      p.copy_(params[i].detach() - velocity[i] * lr);
    }
  }
  for (const auto& [name, p] : model->named_parameters())
    check_summary(summary(p), fx.tensors.at("after." + name), p.numel(), name + " after two SGD steps");
}

TEST_CASE("zoo parameter counts are the published ones", "[models]") {
  ModelConfig cifar;  // 3x32x32, 10 classes
  CHECK(make_model("preact_resnet18", cifar)->num_parameters() == 11172170);  // fast_adversarial's PreActResNet18
  ModelConfig wrn34 = cifar;
  wrn34.depth = 34;
  wrn34.widen_factor = 10;
  CHECK(make_model("wide_resnet", wrn34)->num_parameters() == 46160474);  // WRN-34-10 of TRADES / Rice et al.
  ModelConfig mnist;
  mnist.in_channels = 1;
  mnist.height = mnist.width = 28;
  CHECK(make_model("mlp", mnist)->num_parameters() == 784 * 100 + 100 + 100 * 100 + 100 + 100 * 10 + 10);
  CHECK(make_model("wong_small", mnist)->num_parameters() == 166406);  // Wong & Kolter's small MNIST model
}

TEST_CASE("every zoo model runs on MNIST- and CIFAR-shaped batches in f32", "[models]") {
  NoGradGuard no_grad;
  Generator gen(7);
  for (const std::string& name : model_choices())  // the self-gradient networks of each too
    for (int64_t channels : {1, 3}) {
      ModelConfig cfg;
      cfg.in_channels = channels;
      cfg.height = cfg.width = channels == 1 ? 28 : 32;
      auto model = make_model(name, cfg);
      model->eval();
      const Tensor x = rand_uniform({1, channels, cfg.height, cfg.width}, 0, 1, gen);
      const Tensor logits = model->forward(x);
      INFO(name << " on " << channels << "x" << cfg.height << "x" << cfg.width);
      CHECK(logits.shape() == Shape{1, 10});
      CHECK(logits.dtype() == DType::f32);
      for (float v : logits.to_vector()) CHECK(std::isfinite(v));
    }
}

TEST_CASE("models from the same seed are identical and other seeds differ", "[models]") {
  ModelConfig cfg;
  cfg.height = cfg.width = 16;
  cfg.seed = 11;
  const NamedTensors a = make_model("cnn7", cfg)->state_dict(), b = make_model("cnn7", cfg)->state_dict();
  cfg.seed = 12;
  const NamedTensors c = make_model("cnn7", cfg)->state_dict();
  REQUIRE(a.size() == b.size());
  for (size_t i = 0; i < a.size(); ++i) CHECK(max_abs_diff(a[i].second, b[i].second) == 0);
  CHECK(max_abs_diff(a[0].second, c[0].second) > 0);
}

TEST_CASE("Linear and Conv2d use PyTorch's default uniform init with bound 1/sqrt(fan_in)", "[models]") {
  Generator gen(3);
  const Linear lin(400, 300, gen);
  const Conv2d conv(16, 64, 5, gen);  // fan_in 400 as well
  for (const Tensor& t : {lin.weight, lin.bias, conv.weight, conv.bias}) {
    const std::vector<double> v = t.to_vector_f64();
    double lo = 1, hi = -1, sum = 0, sumsq = 0;
    for (double e : v) {
      lo = std::min(lo, e);
      hi = std::max(hi, e);
      sum += e;
      sumsq += e * e;
    }
    const double bound = 1.0 / 20.0, n = static_cast<double>(v.size());
    CHECK(lo >= -bound);
    CHECK(hi < bound);
    if (v.size() >= 1000) {  // U(-b, b): mean 0, variance b^2 / 3
      CHECK(std::abs(sum / n) < 0.05 * bound);
      CHECK(sumsq / n == Approx(bound * bound / 3).epsilon(0.05));
    } else {  // a bias: at least spread over the range
      CHECK(hi - lo > bound);
    }
  }
  // One generator feeds both layers: the second continues the stream instead of repeating it.
  CHECK(max_abs_diff(lin.weight.reshape({-1}).slice(0, 0, 8), conv.weight.reshape({-1}).slice(0, 0, 8)) > 0);
}

TEST_CASE("state_dict round trip through safetensors", "[models]") {
  ModelConfig cfg;
  cfg.height = cfg.width = 8;
  cfg.seed = 1;
  cfg.mean = {0.4, 0.5, 0.6};
  cfg.std = {0.2, 0.25, 0.3};
  auto source = make_model("cnn7", cfg);
  const auto [x, y] = formula_batch(cfg, 4);
  const Tensor xf = x.to(DType::f32);
  source->train();
  source->forward(xf);  // moves the running statistics and num_batches_tracked off their defaults
  const std::string path = (std::filesystem::temp_directory_path() / "bulwark_test_models_state.safetensors").string();
  save_safetensors(path, source->state_dict());

  cfg.seed = 2;
  cfg.mean = {0, 0, 0};
  cfg.std = {1, 1, 1};
  auto target = make_model("cnn7", cfg);
  target->load_state_dict(load_safetensors(path).tensors);
  std::filesystem::remove(path);

  const NamedTensors a = source->state_dict(), b = target->state_dict();
  REQUIRE(a.size() == b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    INFO(a[i].first);
    CHECK(a[i].first == b[i].first);
    CHECK(a[i].second.dtype() == b[i].second.dtype());
    CHECK(max_abs_diff(a[i].second, b[i].second) == 0);
  }
  source->eval();
  target->eval();
  CHECK(max_abs_diff(source->forward(xf), target->forward(xf)) == 0);
}

TEST_CASE("safetensors I64 tensors (PyTorch's integer buffers) read into i32, and out-of-range ones are refused", "[models]") {
  // Written by hand as PyTorch writes a state_dict: num_batches_tracked is an I64 scalar.
  const auto write = [](const std::string& path, int64_t value) {
    const std::string header = R"({"bn.num_batches_tracked":{"dtype":"I64","shape":[],"data_offsets":[0,8]},)"
                               R"("bn.weight":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})";
    std::ofstream out(path, std::ios::binary);
    const uint64_t length = header.size();
    out.write(reinterpret_cast<const char*>(&length), 8);  // little-endian on every machine bulwark runs on
    out << header;
    out.write(reinterpret_cast<const char*>(&value), 8);
    const float weight[2] = {1.5f, -2.0f};
    out.write(reinterpret_cast<const char*>(weight), sizeof weight);
  };
  const std::string path = (std::filesystem::temp_directory_path() / "bulwark_test_i64.safetensors").string();
  write(path, 7);
  const SafetensorsFile file = load_safetensors(path);
  const Tensor tracked = file.tensors.at("bn.num_batches_tracked");
  CHECK(tracked.dtype() == DType::i32);
  CHECK(tracked.dim() == 0);
  CHECK(tracked.item() == 7);
  CHECK(file.tensors.at("bn.weight").to_vector() == std::vector<float>{1.5f, -2.0f});
  write(path, int64_t{1} << 40);
  CHECK_THROWS_WITH(load_safetensors(path), Catch::Contains("I64 tensor 'bn.num_batches_tracked' holds 1099511627776"));
  std::filesystem::remove(path);
}

TEST_CASE("safetensors headers that lie are refused before anything is allocated", "[models]") {
  const std::string path = (std::filesystem::temp_directory_path() / "bulwark_test_hostile.safetensors").string();
  const auto load_with = [&](const std::string& header, size_t data_bytes) {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    const uint64_t length = header.size();
    out.write(reinterpret_cast<const char*>(&length), 8);
    out << header << std::string(data_bytes, '\0');
    out.close();
    return load_safetensors(path);
  };
  // A 16-byte data section: the base case loads.
  CHECK(load_with(R"({"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}})", 16).tensors.at("a").numel() == 4);
  CHECK(load_with(R"({"e":{"dtype":"F32","shape":[0,3],"data_offsets":[0,0]}})", 0).tensors.at("e").numel() == 0);
  // Dimensions whose product wraps around 2^64 to the declared byte count, negative or fractional
  // ones, more elements than the file holds.
  CHECK_THROWS_WITH(load_with(R"({"a":{"dtype":"F32","shape":[4611686018427387904,4],"data_offsets":[0,0]}})", 16),
                    Catch::Contains("tensor 'a' has shape [4611686018427387904,4], more elements than the file's 16 data bytes"));
  CHECK_THROWS_WITH(load_with(R"({"a":{"dtype":"F32","shape":[-4],"data_offsets":[0,16]}})", 16),
                    Catch::Contains("dimension -4 that is not a non-negative integer"));
  CHECK_THROWS_WITH(load_with(R"({"a":{"dtype":"F32","shape":[2.5],"data_offsets":[0,10]}})", 16),
                    Catch::Contains("dimension 2.5"));
  CHECK_THROWS_WITH(load_with(R"({"a":{"dtype":"F32","shape":[0,4294967296,4294967296],"data_offsets":[0,0]}})", 16),
                    Catch::Contains("more elements than"));
  // Two tensors on the same bytes: each fits, together they would double what the file holds.
  CHECK_THROWS_WITH(load_with(R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},)"
                              R"("b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})", 16),
                    Catch::Contains("tensors 'a' and 'b' overlap in the data section"));
  // Wrong JSON types name the file and the entry instead of a JSON library error.
  CHECK_THROWS_WITH(load_with(R"([1,2])", 0), Catch::Contains("not an object of tensors"));
  CHECK_THROWS_WITH(load_with(R"({"a":5})", 0), Catch::Contains("tensor 'a' is not an object with dtype, shape and data_offsets"));
  CHECK_THROWS_WITH(load_with(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0]}})", 4),
                    Catch::Contains("data_offsets that are not two non-negative integers"));
  CHECK_THROWS_WITH(load_with(R"({"__metadata__":{"k":1}})", 0), Catch::Contains("metadata 'k' is not a string"));
  CHECK_THROWS_WITH(load_with(R"({"a":{"dtype":"F32","shape":[8],"data_offsets":[0,32]}})", 16),
                    Catch::Contains("ends at byte 32 of a 16-byte data section"));
  std::filesystem::remove(path);
}

TEST_CASE("BatchNorm uses and updates batch statistics in train mode and uses running ones in eval mode", "[models]") {
  BatchNorm2d bn(2, DType::f64);
  bn.weight.copy_(Tensor::from_vector(std::vector<double>{2.0, 0.5}, {2}));
  bn.bias.copy_(Tensor::from_vector(std::vector<double>{0.1, -0.3}, {2}));
  bn.running_mean.copy_(Tensor::from_vector(std::vector<double>{0.2, -1.0}, {2}));
  bn.running_var.copy_(Tensor::from_vector(std::vector<double>{4.0, 0.25}, {2}));
  Generator gen(5);
  const Tensor x = rand_uniform({3, 2, 2, 2}, -1, 3, gen, DType::f64);
  const std::vector<double> xv = x.to_vector_f64();

  bn.eval();
  const std::vector<double> eval_out = bn.forward(x).to_vector_f64();
  const double w[2] = {2.0, 0.5}, b[2] = {0.1, -0.3}, rm[2] = {0.2, -1.0}, rv[2] = {4.0, 0.25};
  for (size_t i = 0; i < xv.size(); ++i) {
    const size_t c = (i / 4) % 2;
    CHECK(eval_out[i] == Approx((xv[i] - rm[c]) / std::sqrt(rv[c] + 1e-5) * w[c] + b[c]).epsilon(1e-12));
  }
  CHECK(bn.running_mean.to_vector_f64() == std::vector<double>{0.2, -1.0});
  CHECK(bn.num_batches_tracked.item() == 0);

  bn.train();
  const std::vector<double> train_out = bn.forward(x).to_vector_f64();
  for (size_t c = 0; c < 2; ++c) {
    double mean = 0, var = 0, out_mean = 0;
    std::vector<double> xs;
    for (size_t i = 0; i < xv.size(); ++i)
      if ((i / 4) % 2 == c) {
        xs.push_back(xv[i]);
        out_mean += train_out[i] / 12;
      }
    for (double v : xs) mean += v / 12;
    for (double v : xs) var += (v - mean) * (v - mean) / 11;  // unbiased, for the running estimate
    CHECK(out_mean == Approx(b[c]).margin(1e-12));  // normalised by the batch's own mean
    CHECK(bn.running_mean.to_vector_f64()[c] == Approx(0.9 * rm[c] + 0.1 * mean).epsilon(1e-12));
    CHECK(bn.running_var.to_vector_f64()[c] == Approx(0.9 * rv[c] + 0.1 * var).epsilon(1e-12));
  }
  CHECK(bn.num_batches_tracked.item() == 1);
}

TEST_CASE("in eval mode a model's samples do not interact through BatchNorm", "[models]") {
  ModelConfig cfg;
  cfg.height = cfg.width = 8;
  auto model = make_model("preact_resnet18", cfg);
  NoGradGuard no_grad;
  Generator gen(9);
  const Tensor batch = rand_uniform({3, 3, 8, 8}, 0, 1, gen);
  const Tensor first = batch.slice(0, 0, 1).contiguous();
  model->eval();
  CHECK(max_abs_diff(model->forward(batch).slice(0, 0, 1), model->forward(first)) < 1e-5);
  model->train();  // batch statistics: the rest of the batch changes sample 0's logits
  CHECK(max_abs_diff(model->forward(batch).slice(0, 0, 1), model->forward(batch.slice(0, 0, 2).contiguous()).slice(0, 0, 1)) > 1e-4);
}

TEST_CASE("load_state_dict names the missing or mis-shaped or unexpected tensor", "[models]") {
  ModelConfig cfg;
  cfg.in_channels = 1;
  cfg.height = cfg.width = 28;
  auto model = make_model("wong_small", cfg);
  std::map<std::string, Tensor> state;
  for (auto& [name, t] : model->state_dict()) state[name] = t.clone().detach();

  auto missing = state;
  missing.erase("2.weight");
  CHECK_THROWS_WITH(model->load_state_dict(missing), Contains("missing") && Contains("2.weight"));

  auto misshaped = state;
  misshaped["5.weight"] = Tensor::zeros({100, 1000});
  CHECK_THROWS_WITH(model->load_state_dict(misshaped), Contains("5.weight") && Contains("[100, 1000]") && Contains("[100, 1568]"));

  auto extra = state;
  extra["classifier.weight"] = Tensor::zeros({3});
  CHECK_THROWS_WITH(model->load_state_dict(extra), Contains("unexpected") && Contains("classifier.weight"));
  CHECK_NOTHROW(model->load_state_dict(extra, /*strict=*/false));
}

TEST_CASE("model and layer errors say what is valid", "[models]") {
  ModelConfig cfg;
  CHECK(model_names() == std::vector<std::string>{"mlp", "wong_small", "wong_large", "ibp_small", "ibp_large", "cnn7",
                                                  "preact_resnet18", "wide_resnet"});
  CHECK_THROWS_WITH(make_model("resnet50", cfg), Contains("resnet50") && Contains("preact_resnet18") && Contains("wide_resnet"));

  ModelConfig bad_depth = cfg;
  bad_depth.depth = 12;
  CHECK_THROWS_WITH(make_model("wide_resnet", bad_depth), Contains("depth 12") && Contains("6n + 4"));

  ModelConfig bad_mean = cfg;
  bad_mean.mean = {0.5};
  bad_mean.std = {0.5};
  CHECK_THROWS_WITH(make_model("mlp", bad_mean), Contains("3 input channels") && Contains("1 means"));

  ModelConfig tiny = cfg;
  tiny.height = tiny.width = 3;
  CHECK_THROWS_WITH(make_model("ibp_small", tiny), Contains("smaller than the kernel"));

  ModelConfig one_class = cfg;
  one_class.num_classes = 1;
  CHECK_THROWS_WITH(make_model("mlp", one_class), Contains("num_classes"));

  auto mlp = make_model("mlp", cfg);  // expects 3x32x32
  CHECK_THROWS_WITH(mlp->forward(Tensor::zeros({2, 1, 28, 28})), Contains("Normalize") && Contains("[N, 3, H, W]"));
  CHECK_THROWS_WITH(mlp->forward(Tensor::zeros({2, 3, 28, 28})), Contains("Linear(3072 -> 100)") && Contains("[2, 2352]"));

  Sequential seq;
  seq.add("head", std::make_shared<ReLU>());
  CHECK_THROWS_WITH(seq.add("head", std::make_shared<ReLU>()), Contains("two layers named 'head'"));
}

TEST_CASE("Sequential numbers unnamed layers around a named one like the authors' nn.Sequential", "[models]") {
  ModelConfig cfg;
  cfg.in_channels = 1;
  cfg.height = cfg.width = 28;
  std::vector<std::string> names;
  for (auto& [name, t] : make_model("wong_small", cfg)->state_dict()) names.push_back(name);
  CHECK(names == std::vector<std::string>{"0.weight", "0.bias", "2.weight", "2.bias", "5.weight", "5.bias", "7.weight",
                                          "7.bias", "normalize.mean", "normalize.std"});
}

namespace {
// The op names of y's autograd graph, each node once.
std::multiset<std::string> graph_ops(const Tensor& y) {
  std::multiset<std::string> ops;
  std::set<const Node*> seen;
  std::vector<const Node*> pending{y.impl()->grad_fn.get()};
  while (!pending.empty()) {
    const Node* n = pending.back();
    pending.pop_back();
    if (n == nullptr || !seen.insert(n).second) continue;
    ops.insert(n->op);
    for (const Tensor& in : n->inputs) pending.push_back(in.impl()->grad_fn.get());
  }
  return ops;
}
}  // namespace

// Sequential runs a Conv2d, Linear or BatchNorm and the ReLU after it as one fused op (the ReLU
// in the kernel's epilogue) and computes what the layers one by one compute, to the bit; under
// activation taps (self-gradient networks read layer outputs) it runs them one by one.
TEST_CASE("Sequential fuses each layer with the ReLU after it, bitwise equal to the layers one by one", "[models][cuda]") {
  for (const Device dev : {Device::cpu, Device::cuda}) {
    INFO(device_name(dev));
    Generator gen(3);
    const auto relu = std::make_shared<ReLU>();
    const std::vector<std::shared_ptr<Module>> layers = {
        std::make_shared<Conv2d>(3, 8, 3, gen, Conv2dOptions{.stride = 2, .padding = 1}),
        relu,
        std::make_shared<Conv2d>(8, 6, 3, gen, Conv2dOptions{.padding = 1, .bias = false}),
        std::make_shared<BatchNorm2d>(6),
        relu,
        std::make_shared<Flatten>(),
        std::make_shared<Linear>(6 * 5 * 5, 20, gen),
        relu,
        std::make_shared<Linear>(20, 10, gen)};
    Sequential net(layers);
    net.to(dev);
    const Tensor x = rand_uniform({4, 3, 10, 10}, 0, 1, gen).to(dev), u = rand_uniform({4, 10}, -1, 1, gen).to(dev);
    const std::vector<Tensor> params = net.parameters();
    const auto grads_of = [&](const Tensor& y) { return grad({sum(y * u)}, params); };

    const Tensor fused = net.forward(x);
    const std::multiset<std::string> ops = graph_ops(fused);
    CHECK(ops.count("conv2d_relu") == 1);
    CHECK(ops.count("batch_norm_relu") == 1);
    CHECK(ops.count("linear_relu") == 1);
    CHECK(ops.count("conv2d") == 1);
    CHECK(ops.count("relu") == 0);
    Tensor h = x;
    for (const auto& layer : layers) h = layer->forward(h);
    CHECK(graph_ops(h).count("relu") == 3);
    const std::vector<Tensor> gf = grads_of(fused), gl = grads_of(h);
    const auto bits = [](const Tensor& t) { return t.to(Device::cpu).to_vector_f64(); };
    CHECK(bits(fused) == bits(h));
    for (size_t i = 0; i < params.size(); ++i) {
      INFO("parameter " << i);
      CHECK(bits(gf[i]) == bits(gl[i]));
    }
    // With taps in scope every layer runs on its own (a tapped Conv2d's output is its own).
    ActivationTaps taps({layers[0].get()}, [](size_t, const Tensor& out) { return out; });
    const Tensor tapped = net.forward(x);
    CHECK(graph_ops(tapped).count("relu") == 3);
    CHECK(bits(tapped) == bits(fused));
  }
}

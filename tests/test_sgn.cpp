// Self-gradient networks (models/sgn.h): the definition against a layer-by-layer reference, the
// full-graph gradient against finite differences, the emulated CUDA backend against the CPU, the
// pass counts, the taps and their errors, and that an SGN learns.
#include <catch2/catch.hpp>

#include <cmath>
#include <set>

#include "engine/autograd.h"
#include "engine/ops.h"
#include "engine/rng.h"
#include "models/sgn.h"
#include "models/zoo.h"
#include "robust/attacks.h"
#include "robust/registry.h"
#include "test_util.h"
#include "training/trainer.h"

using namespace bulwark;
using bulwark::testing::TempDir;
using Catch::Matchers::Contains;

namespace {

ModelConfig small_config(DType dtype, double gate_init = 0.1, SgnGrad grad = SgnGrad::full) {
  ModelConfig cfg;
  cfg.in_channels = 1;
  cfg.height = cfg.width = 8;
  cfg.seed = 7;
  cfg.dtype = dtype;
  cfg.sgn.gate_init = gate_init;
  cfg.sgn.grad = grad;
  return cfg;
}

Tensor small_batch(int64_t n, DType dtype, uint64_t seed = 11) {
  Generator gen(seed);
  return rand_uniform({n, 1, 8, 8}, 0.05, 0.95, gen, dtype);
}

// The SGN of a Sequential base written out layer by layer, without ActivationTaps: the probe's
// activations at the tapped layers, the gradient of CE at the predicted label, the main pass.
Tensor reference_sgn(Sequential& base, const std::vector<std::string>& taps, const std::vector<Tensor>& gamma,
                     const Tensor& x) {
  const auto tap_of = [&](const std::string& name) {
    return static_cast<int64_t>(std::find(taps.begin(), taps.end(), name) - taps.begin());
  };
  std::vector<Tensor> h(taps.size());
  Tensor z = x;
  for (const auto& [name, layer] : base.layers()) {
    z = layer->forward(z);
    const int64_t k = tap_of(name);
    if (k < static_cast<int64_t>(taps.size())) h[k] = z;
  }
  const Tensor loss = sum(cross_entropy(z, argmax(z.detach(), 1), false));
  const std::vector<Tensor> g = grad({loss}, h, {}, true);
  Tensor out = x;
  for (const auto& [name, layer] : base.layers()) {
    out = layer->forward(out);
    const int64_t k = tap_of(name);
    if (k == static_cast<int64_t>(taps.size())) continue;
    const Tensor& gk = g[k];
    const int64_t n = gk.size(0), per = gk.numel() / n;
    const Tensor rms = add(sqrt(add(sum(square(gk.reshape({n, per})), {1}, true) * (1.0 / per), 1e-24)), 1e-12);
    Shape gate_shape(static_cast<size_t>(out.dim()), 1);
    gate_shape[1] = out.size(1);
    Shape rms_shape(static_cast<size_t>(out.dim()), 1);
    rms_shape[0] = n;
    out = out - gamma[k].reshape(gate_shape) * gk / rms.reshape(rms_shape);
  }
  return out;
}

// sum(u * f(x)) for a fixed random u: the scalar whose gradient the checks compare.
Tensor projected(Module& m, const Tensor& x, const Tensor& u) { return sum(m(x) * u); }

}  // namespace

TEST_CASE("sgn: the output is the base continued from h - gamma g / rms(g) at each tap", "[sgn]") {
  for (const char* name : {"mlp", "wong_small"}) {
    INFO(name);
    const ModelConfig cfg = small_config(DType::f64, 0.3);
    auto m = std::dynamic_pointer_cast<SelfGradientNetwork>(make_model(std::string("sgn:") + name, cfg));
    REQUIRE(m);
    auto* base = dynamic_cast<Sequential*>(m->base.get());
    REQUIRE(base);
    const Tensor x = small_batch(5, DType::f64);
    const Tensor got = (*m)(x), want = reference_sgn(*base, m->taps(), m->gates(), x);
    CHECK(max_abs_diff(got, want) < 1e-12);
    // The taps change the output (a reference that ignored them would not match a real SGN).
    CHECK(max_abs_diff(got, (*m->base)(x)) > 1e-3);
    // Moving against the gradient of CE at the predicted label raises that label's probability.
    const Tensor z = (*m->base)(x), p_probe = softmax(z, 1), p_main = softmax(got, 1);
    const std::vector<int32_t> pred = argmax(z, 1).to_vector_i32();
    const std::vector<double> a = p_probe.to_vector_f64(), b = p_main.to_vector_f64();
    for (size_t i = 0; i < pred.size(); ++i) CHECK(b[i * 10 + pred[i]] > a[i * 10 + pred[i]]);
  }
}

TEST_CASE("sgn: the gates start at gamma_init, per channel, saved as gates.<k>", "[sgn]") {
  auto m = make_model("sgn:wong_small", small_config(DType::f32, 0.25));
  auto* sgn = as_self_gradient(*m);
  REQUIRE(sgn);
  CHECK(sgn->taps() == std::vector<std::string>{"1", "3", "6"});  // the ReLUs of conv, conv, FC100
  const std::vector<Tensor> gamma = sgn->gates();
  REQUIRE(gamma.size() == 3);
  CHECK(gamma[0].shape() == Shape{16});
  CHECK(gamma[1].shape() == Shape{32});
  CHECK(gamma[2].shape() == Shape{100});
  for (float v : gamma[1].to_vector()) CHECK(v == Approx(0.25).epsilon(1e-6));
  std::set<std::string> names;
  for (const auto& [name, t] : m->state_dict()) names.insert(name);
  CHECK(names.count("base.0.weight") == 1);  // the base's own names under "base."
  for (const char* gate : {"gates.0", "gates.1", "gates.2"}) CHECK(names.count(gate) == 1);
}

TEST_CASE("sgn: default taps are a residual model's blocks; a bad tap lists the layers", "[sgn]") {
  ModelConfig cfg = small_config(DType::f32);
  cfg.in_channels = 3;
  cfg.height = cfg.width = 8;
  cfg.depth = 10;
  cfg.widen_factor = 1;
  auto wrn = make_model("sgn:wide_resnet", cfg);
  CHECK(as_self_gradient(*wrn)->taps() == std::vector<std::string>{"block1.layer.0", "block2.layer.0", "block3.layer.0"});
  auto resnet = make_model("sgn:preact_resnet18", cfg);
  CHECK(as_self_gradient(*resnet)->taps().size() == 8);
  CHECK(as_self_gradient(*resnet)->taps().front() == "layer1.0");

  cfg.sgn.taps = {"1", "9"};
  cfg.in_channels = 1;
  CHECK_THROWS_WITH(make_model("sgn:wong_small", cfg),
                    Contains("'9' is not a layer of the base model") && Contains("normalize, 0, 1, 2, 3, 4, 5, 6, 7"));
  cfg.sgn.taps = {"1", "1"};
  CHECK_THROWS_WITH(make_model("sgn:wong_small", cfg), Contains("tapped twice"));
  cfg.sgn.taps = {"4"};  // the Flatten: a tap may be any layer
  CHECK(as_self_gradient(*make_model("sgn:wong_small", cfg))->gates()[0].shape() == Shape{128});
  CHECK(parse_sgn_taps(" 1, 3 ,layer2.0") == std::vector<std::string>{"1", "3", "layer2.0"});
  CHECK(parse_sgn_taps("").empty());
  CHECK_THROWS_WITH(parse_sgn_taps("1,,3"), Contains("empty layer name"));
}

TEST_CASE("sgn: the full-graph gradient is the derivative of the output; the detached one is not", "[sgn]") {
  // f64 central differences of sum(u * f(x)) in x, in a weight of the base and in a gate; on
  // wong_small, and on a WRN-10-1 in training mode (BatchNorm on batch statistics, residual joins).
  const std::string name = GENERATE(std::string("wong_small"), std::string("wide_resnet"));
  INFO(name);
  ModelConfig cfg = small_config(DType::f64, 1.0);
  cfg.depth = 10;
  cfg.widen_factor = 1;
  auto m = make_model("sgn:" + name, cfg);
  auto* sgn = as_self_gradient(*m);
  Tensor x = small_batch(3, DType::f64);
  Generator gen(5);
  const Tensor u = rand_uniform({3, 10}, -1, 1, gen, DType::f64);
  const auto param = [&](const std::string& key) {
    for (const auto& [n, t] : m->named_parameters())
      if (n == key) return t;
    FAIL("no parameter " << key);
    return Tensor();
  };
  const Tensor w = param(name == "wong_small" ? "base.2.weight" : "base.block2.layer.0.conv1.weight");
  const Tensor gate = param("gates.1");

  const auto autograd = [&](SgnGrad mode) {
    SgnGradScope scope(*m, mode);
    Tensor xx = x.clone().set_requires_grad(true);
    return grad({projected(*m, xx, u)}, {xx, w, gate});
  };
  // Coordinates spread over each tensor; f is smooth there (no ReLU kink or argmax tie within h).
  const auto numeric = [&](Tensor t, int64_t i) {
    const double h = 1e-6;
    double* p = t.data<double>() + i;
    const double keep = *p;
    NoGradGuard no_grad;
    *p = keep + h;
    const double up = projected(*m, x, u).item();
    *p = keep - h;
    const double down = projected(*m, x, u).item();
    *p = keep;
    return (up - down) / (2 * h);
  };
  const std::vector<Tensor> full = autograd(SgnGrad::full), detached = autograd(SgnGrad::detached);
  double full_err = 0, detached_err = 0;
  int checked = 0;
  const std::vector<Tensor> targets = {x, w, gate};
  for (size_t t = 0; t < targets.size(); ++t) {
    const int64_t n = targets[t].numel();
    for (int64_t i = 0; i < n; i += std::max<int64_t>(1, n / 7)) {
      const double want = numeric(targets[t], i);
      const double a = full[t].to_vector_f64()[i], b = detached[t].to_vector_f64()[i];
      INFO("tensor " << t << " index " << i << ": numeric " << want << ", full " << a << ", detached " << b);
      CHECK(a == Approx(want).epsilon(1e-5).margin(1e-8));
      full_err = std::max(full_err, std::abs(a - want));
      detached_err = std::max(detached_err, std::abs(b - want));
      ++checked;
    }
  }
  CHECK(checked > 15);
  INFO("largest error: full " << full_err << ", detached " << detached_err);
  CHECK(detached_err > 1000 * full_err);
  CHECK(sgn->grad_mode() == SgnGrad::full);  // the scopes restored it
}

TEST_CASE("sgn: the emulated CUDA backend computes the CPU's output and full-graph gradients", "[sgn][cuda]") {
  // wong_small (conv, ReLU, linear) and a WRN-10-1 in training mode (BatchNorm's batch statistics
  // and its composite double backward, residual joins, global pooling).
  const std::string name = GENERATE(std::string("wong_small"), std::string("wide_resnet"));
  INFO(name);
  ModelConfig cfg = small_config(DType::f32, 0.5);
  cfg.depth = 10;
  cfg.widen_factor = 1;
  auto cpu = make_model("sgn:" + name, cfg), gpu = make_model("sgn:" + name, cfg);
  gpu->to(Device::cuda);
  const Tensor x = small_batch(5, DType::f32);
  Generator gen(9);
  const Tensor u = rand_uniform({5, 10}, -1, 1, gen);
  Tensor xc = x.clone().set_requires_grad(true), xg = x.cuda().set_requires_grad(true);
  const Tensor zc = (*cpu)(xc), zg = (*gpu)(xg);
  CHECK(max_abs_diff(zc, zg.cpu()) < 1e-4);
  std::vector<Tensor> wrt_c = {xc}, wrt_g = {xg};
  for (const auto& p : cpu->parameters()) wrt_c.push_back(p);
  for (const auto& p : gpu->parameters()) wrt_g.push_back(p);
  const std::vector<Tensor> gc = grad({sum(zc * u)}, wrt_c), gg = grad({sum(zg * u.cuda())}, wrt_g);
  for (size_t i = 0; i < gc.size(); ++i) {
    INFO("gradient " << i);
    const double scale = std::max(1.0, max_abs_diff(gc[i], zeros_like(gc[i])));
    CHECK(max_abs_diff(gc[i], gg[i].cpu()) < 2e-4 * scale);
  }
}

TEST_CASE("sgn: a call counts the probe's passes; a full-graph backward counts twice", "[sgn]") {
  ModelConfig cfg = small_config(DType::f32);
  auto plain = make_model("wong_small", cfg), sgn = make_model("sgn:wong_small", cfg);
  const Tensor x = small_batch(4, DType::f32);
  const Tensor y = Tensor::from_vector(std::vector<int32_t>{1, 2, 3, 4}, {4});
  AttackOptions o;
  o.kind = AttackKind::pgd;
  o.eps = 0.1;
  o.steps = 3;
  const auto passes = [&](Module& m) {
    AttackStats stats;
    attack(m, x, y, o, &stats);
    return std::pair{stats.forward_passes, stats.backward_passes};
  };
  const auto [pf, pb] = passes(*plain);
  CHECK(pb == 3);
  const auto [ff, fb] = passes(*sgn);
  CHECK(ff == 2 * pf);
  CHECK(fb == pf + 2 * pb);  // a probe backward per call, two per backward through the full graph
  SgnGradScope detached(*sgn, SgnGrad::detached);
  const auto [df, db] = passes(*sgn);
  CHECK(df == 2 * pf);
  CHECK(db == pf + pb);
}

TEST_CASE("sgn --sgn-grad full names an op on the path that has no double backward", "[sgn]") {
  // A layer whose backward is outside the tape (record_once_differentiable).
  class OnceDifferentiable : public Module {
   public:
    Tensor forward(const Tensor& x) override {
      return record_once_differentiable(x.detach().clone() * 2.0, "fused_doubling", {x},
                                        [](const Node&, const Tensor& g, const std::vector<bool>&) {
                                          return std::vector<Tensor>{g.detach() * 2.0};
                                        });
    }
  };
  auto base = std::make_shared<Sequential>();
  base->add(std::make_shared<Flatten>());
  Generator gen(1);
  base->add(std::make_shared<Linear>(64, 12, gen));
  base->add(std::make_shared<ReLU>());
  base->add(std::make_shared<OnceDifferentiable>());
  base->add(std::make_shared<Linear>(12, 10, gen));
  SgnConfig sc;
  sc.taps = {"1"};
  SelfGradientNetwork m(base, sc, {1, 8, 8});
  const Tensor x = small_batch(2, DType::f32);
  CHECK_THROWS_WITH(m(x), Contains("fused_doubling") && Contains("no double backward") && Contains("--sgn-grad"));
  m.set_grad_mode(SgnGrad::detached);
  CHECK(m(x).shape() == Shape{2, 10});
  m.set_grad_mode(SgnGrad::full);
  NoGradGuard no_grad;  // nothing to differentiate: the probe needs no graph of its backward
  CHECK(m(x).shape() == Shape{2, 10});
}

TEST_CASE("sgn: SGN training learns, and interval bounds refuse it clearly", "[sgn]") {
  TempDir dir("sgn-learns");
  training::TrainConfig c = bulwark::testing::synthetic_run("sgn:mlp", "standard", dir / "run");
  c.data.train_size = 1000;
  c.data.val_size = 100;
  c.data.test_size = 200;
  c.epochs = 5;
  c.batch_size = 50;
  c.optimizer.name = "adam";
  c.optimizer.lr = 1e-3;
  c.robust_val_size = 0;
  c.final_attack_size = 0;
  training::RunOptions quiet;
  quiet.quiet = true;
  const training::RunSummary s = training::train(c, quiet);
  CHECK(s.test_acc > 0.8);
  CHECK(s.fwd_passes == 2 * 20 * 5);  // 20 batches an epoch: probe and main forward
  CHECK(s.bwd_passes == 3 * 20 * 5);  // the probe's backward, and two through the full graph

  c.method.name = "ibp";
  c.out = dir / "ibp";
  CHECK_THROWS_WITH(training::train(c, quiet), Contains("self-gradient") && Contains("cannot pass"));
}

TEST_CASE("sgn: every adversarial method trains an SGN; every certified one refuses it by name", "[sgn]") {
  for (const std::string& name : robust::method_registry().names()) {
    INFO(name);
    TempDir dir("sgn-methods");
    training::TrainConfig c = bulwark::testing::synthetic_run("sgn:mlp", name, dir / "run");
    c.data.train_size = 64;
    training::RunOptions quiet;
    quiet.quiet = true;
    if (robust::method_registry().at(name).certified) {
      CHECK_THROWS_WITH(training::train(c, quiet), Contains("self-gradient network"));
      continue;
    }
    const training::RunSummary s = training::train(c, quiet);
    CHECK(s.complete);
    // Every model call is a probe forward and backward and a main forward; every backward through
    // the full graph counts twice: bwd = 1.5 fwd whatever the method.
    CHECK(2 * s.bwd_passes == 3 * s.fwd_passes);
  }
}

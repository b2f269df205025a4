// FAB-T (robust/fab.h): the box-constrained L-inf and L2 projections, the analytic distance to a
// linear model's decision boundary in both norms, and the attack's examples within eps and [0,1].
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>

#include "engine/ops.h"
#include "engine/rng.h"
#include "models/layers.h"
#include "robust/fab.h"

using namespace bulwark;

namespace {

// f(x) = W flatten(x) + b with W and b given: a model whose decision boundaries are hyperplanes.
class LinearModel final : public Module {
 public:
  LinearModel(int64_t in, int64_t out, uint64_t seed) {
    Generator gen(seed);
    linear_ = register_module("fc", std::make_shared<Linear>(in, out, gen));
  }
  Tensor forward(const Tensor& x) override { return linear_->forward(x.reshape({x.size(0), x.numel() / x.size(0)})); }
  Linear& linear() { return *linear_; }

 private:
  std::shared_ptr<Linear> linear_;
};

}  // namespace

TEST_CASE("the box-constrained L-inf projection reaches the hyperplane with the smallest step", "[attacks]") {
  std::mt19937 rng(5);
  std::uniform_real_distribution<float> u(-1, 1);
  const int64_t n = 6, d = 40;
  std::vector<float> w(n * d), x(n * d, 0.5f);
  for (float& v : w) v = u(rng);
  std::vector<float> c{0.3f, -0.2f, 0.0f, 1.5f, -0.05f, 100.0f};
  const Tensor W = Tensor::from_vector(w, {n, d}), X = Tensor::from_vector(x, {n, d});
  const Tensor step = linf_box_projection(W, Tensor::from_vector(c, {n}), neg(X), affine(X, -1, 1));
  const std::vector<float> s = step.to_vector();
  for (int64_t i = 0; i < n; ++i) {
    INFO("row " << i);
    double l1 = 0, reached = 0, largest = 0;
    for (int64_t j = 0; j < d; ++j) {
      l1 += std::abs(w[i * d + j]);
      reached += w[i * d + j] * s[i * d + j];
      largest = std::max(largest, static_cast<double>(std::abs(s[i * d + j])));
      CHECK(x[i * d + j] + s[i * d + j] >= -1e-6);  // in the box
      CHECK(x[i * d + j] + s[i * d + j] <= 1 + 1e-6);
    }
    if (i == 5) {  // unreachable within [0,1]: the box's farthest step towards c
      CHECK(largest == Approx(0.5).epsilon(1e-4));
      continue;
    }
    CHECK(reached == Approx(c[i]).margin(1e-4));
    // Without the box binding, the smallest L-inf step onto w . d = c has size |c| / ||w||_1.
    CHECK(largest == Approx(std::abs(c[i]) / l1).margin(1e-5));
  }
}

TEST_CASE("the box-constrained L2 projection reaches the hyperplane with the smallest step", "[attacks]") {
  std::mt19937 rng(6);
  std::uniform_real_distribution<float> u(-1, 1);
  const int64_t n = 6, d = 40;
  std::vector<float> w(n * d), x(n * d, 0.5f);
  for (float& v : w) v = u(rng);
  for (int64_t j = 0; j < d; ++j) x[4 * d + j] = 0.98f;  // row 4: the box binds on one side
  std::vector<float> c{0.3f, -0.2f, 0.0f, 1.5f, 0.8f, 100.0f};
  const Tensor W = Tensor::from_vector(w, {n, d}), X = Tensor::from_vector(x, {n, d});
  const Tensor step = l2_box_projection(W, Tensor::from_vector(c, {n}), neg(X), affine(X, -1, 1));
  const std::vector<float> s = step.to_vector();
  for (int64_t i = 0; i < n; ++i) {
    INFO("row " << i);
    double w2 = 0, reached = 0, size2 = 0;
    for (int64_t j = 0; j < d; ++j) {
      w2 += static_cast<double>(w[i * d + j]) * w[i * d + j];
      reached += w[i * d + j] * s[i * d + j];
      size2 += static_cast<double>(s[i * d + j]) * s[i * d + j];
      CHECK(x[i * d + j] + s[i * d + j] >= -1e-6);
      CHECK(x[i * d + j] + s[i * d + j] <= 1 + 1e-6);
    }
    if (i == 5) {  // unreachable within [0,1]: every coordinate at its face towards c
      for (int64_t j = 0; j < d; ++j) CHECK(std::abs(s[i * d + j]) == Approx(0.5).margin(1e-3));
      continue;
    }
    CHECK(reached == Approx(c[i]).margin(1e-4));
    if (i == 4) {
      // The box binds: the step is longer than |c| / ||w||_2, and is the KKT point clip(lambda w).
      CHECK(std::sqrt(size2) > std::abs(c[i]) / std::sqrt(w2) * 1.01);
      double lambda = 0;
      for (int64_t j = 0; j < d; ++j)
        if (std::abs(s[i * d + j]) < 0.019 && std::abs(w[i * d + j]) > 0.05) lambda = s[i * d + j] / w[i * d + j];
      REQUIRE(lambda > 0);
      for (int64_t j = 0; j < d; ++j)
        CHECK(s[i * d + j] == Approx(std::clamp(lambda * w[i * d + j], -0.98, 0.02)).margin(1e-4));
      continue;
    }
    // Without the box binding the step is c w / ||w||^2, of size |c| / ||w||_2.
    CHECK(std::sqrt(size2) == Approx(std::abs(c[i]) / std::sqrt(w2)).margin(1e-5));
  }
}

TEST_CASE("FAB-T finds a linear model's distance to its decision boundary within 1%", "[attacks]") {
  const int64_t d = 30, k = 2;
  LinearModel model(d, k, 7);
  model.eval();
  std::mt19937 rng(11);
  std::uniform_real_distribution<float> u(0.4f, 0.6f);  // far from the box's faces
  const int64_t n = 8;
  std::vector<float> x(n * d);
  for (float& v : x) v = u(rng);
  const Tensor X = Tensor::from_vector(x, {n, d});
  // Label each sample with the class the model gives it, so every sample starts correct.
  const std::vector<int32_t> predicted = argmax(model.forward(X), 1).to_vector_i32();
  const Tensor Y = Tensor::from_vector(predicted, {n});
  const std::vector<float> W = model.linear().weight.to_vector(), B = model.linear().bias.to_vector();
  FabOptions o;
  o.eps = 1;
  o.targets = 1;
  const FabResult r = fab_targeted(model, X, Y, o);
  for (int64_t i = 0; i < n; ++i) {
    const int y = predicted[i], t = 1 - y;
    double g = B[y] - B[t], l1 = 0;
    for (int64_t j = 0; j < d; ++j) {
      g += (W[y * d + j] - W[t * d + j]) * x[i * d + j];
      l1 += std::abs(W[y * d + j] - W[t * d + j]);
    }
    const double analytic = g / l1;  // L-inf distance to the hyperplane f_y = f_t
    INFO("sample " << i << ": analytic " << analytic << ", found " << r.norm[i]);
    REQUIRE(std::isfinite(r.norm[i]));
    CHECK(r.norm[i] >= analytic * (1 - 1e-3));  // nothing misclassified is closer
    CHECK(r.norm[i] <= analytic * 1.01);
  }
}

TEST_CASE("L2 FAB-T finds a linear model's L2 distance to its decision boundary within 1%", "[attacks]") {
  const int64_t d = 30, k = 2;
  LinearModel model(d, k, 8);
  model.eval();
  std::mt19937 rng(12);
  std::uniform_real_distribution<float> u(0.45f, 0.55f);  // far from the box's faces
  const int64_t n = 8;
  std::vector<float> x(n * d);
  for (float& v : x) v = u(rng);
  const Tensor X = Tensor::from_vector(x, {n, d});
  const std::vector<int32_t> predicted = argmax(model.forward(X), 1).to_vector_i32();
  const std::vector<float> W = model.linear().weight.to_vector(), B = model.linear().bias.to_vector();
  FabOptions o;
  o.norm = Norm::l2;
  o.eps = 10;
  o.targets = 1;
  const FabResult r = fab_targeted(model, X, Tensor::from_vector(predicted, {n}), o);
  for (int64_t i = 0; i < n; ++i) {
    const int y = predicted[i], t = 1 - y;
    double g = B[y] - B[t], l2 = 0;
    for (int64_t j = 0; j < d; ++j) {
      g += (W[y * d + j] - W[t * d + j]) * x[i * d + j];
      l2 += std::pow(W[y * d + j] - W[t * d + j], 2.0);
    }
    const double analytic = g / std::sqrt(l2);  // L2 distance to the hyperplane f_y = f_t
    INFO("sample " << i << ": analytic " << analytic << ", found " << r.norm[i]);
    REQUIRE(std::isfinite(r.norm[i]));
    CHECK(r.norm[i] >= analytic * (1 - 1e-3));
    CHECK(r.norm[i] <= analytic * 1.01);
  }
}

TEST_CASE("FAB-T returns examples within eps and [0,1], and x itself where none is that close", "[attacks]") {
  const int64_t d = 30;
  LinearModel model(d, 3, 9);
  model.eval();
  std::mt19937 rng(2);
  std::uniform_real_distribution<float> u(0, 1);
  const int64_t n = 12;
  std::vector<float> x(n * d);
  for (float& v : x) v = u(rng);
  const Tensor X = Tensor::from_vector(x, {n, d});
  const Tensor Y = argmax(model.forward(X), 1);
  for (const Norm norm : {Norm::linf, Norm::l2}) {
    FabOptions o;
    o.norm = norm;
    o.eps = norm == Norm::linf ? 0.05 : 0.15;
    o.steps = 30;
    INFO((norm == Norm::linf ? "L-inf" : "L2"));
    AttackStats stats;
    const FabResult r = fab_targeted(model, X, Y, o, &stats);
    CHECK(stats.forward_passes == 1 + 2 * 2 * 30);  // clean ranking, then 2 targets x 30 steps x 2 forwards
    CHECK(stats.backward_passes == 2 * 30);
    const std::vector<float> a = r.x_adv.to_vector();
    const std::vector<int32_t> after = argmax(model.forward(r.x_adv), 1).to_vector_i32(), y = Y.to_vector_i32();
    int broken = 0, kept = 0;
    for (int64_t i = 0; i < n; ++i) {
      double dist = 0;
      for (int64_t j = 0; j < d; ++j) {
        CHECK(a[i * d + j] >= 0.0f);
        CHECK(a[i * d + j] <= 1.0f);
        const double diff = std::abs(a[i * d + j] - x[i * d + j]);
        dist = norm == Norm::linf ? std::max(dist, diff) : dist + diff * diff;
      }
      if (norm == Norm::l2) dist = std::sqrt(dist);
      CHECK(dist <= o.eps + 1e-6);
      if (r.norm[i] <= o.eps) {
        CHECK(r.norm[i] == Approx(dist).margin(1e-5).epsilon(1e-4));  // the distance it reports
        CHECK(after[i] != y[i]);
        ++broken;
      } else {
        CHECK(dist == 0);
        ++kept;
      }
    }
    CHECK(broken > 0);
    CHECK(kept > 0);
  }
}

TEST_CASE("FAB-T through attack(): the same examples, no randomness, its name and checks", "[attacks]") {
  const int64_t d = 30;
  LinearModel model(d, 4, 3);
  model.eval();
  std::mt19937 rng(4);
  std::uniform_real_distribution<float> u(0, 1);
  std::vector<float> x(10 * d);
  for (float& v : x) v = u(rng);
  const Tensor X = Tensor::from_vector(x, {10, d});
  const Tensor Y = argmax(model.forward(X), 1);
  AttackOptions o;
  o.kind = AttackKind::fab_t;
  o.eps = 0.05;
  o.steps = 15;
  o.targets = 2;
  FabOptions f;
  f.eps = o.eps;
  f.steps = o.steps;
  f.targets = o.targets;
  CHECK(attack(model, X, Y, o).to_vector() == fab_targeted(model, X, Y, f).x_adv.to_vector());
  CHECK(attack_name(resolve_attack(o)) == "FAB-T-15x2");
  CHECK(attack_counters(o, X.shape()) == 0);  // deterministic: no random start
  o.norm = Norm::l2;
  f.norm = Norm::l2;
  CHECK(attack_name(resolve_attack(o)) == "L2 FAB-T-15x2");
  CHECK(attack(model, X, Y, o).to_vector() == fab_targeted(model, X, Y, f).x_adv.to_vector());
}

TEST_CASE("FAB-T on the CUDA backend (emulated) finds the CPU's distances, L-inf and L2", "[attacks][cuda]") {
  const int64_t d = 30;
  LinearModel cpu_model(d, 3, 12), gpu_model(d, 3, 12);
  cpu_model.eval();
  gpu_model.eval();
  gpu_model.to(Device::cuda);
  std::mt19937 rng(8);
  std::uniform_real_distribution<float> u(0, 1);
  std::vector<float> x(10 * d);
  for (float& v : x) v = u(rng);
  const Tensor X = Tensor::from_vector(x, {10, d});
  const Tensor Y = argmax(cpu_model.forward(X), 1);
  for (const Norm norm : {Norm::linf, Norm::l2}) {
    INFO((norm == Norm::linf ? "L-inf" : "L2"));
    FabOptions o;
    o.norm = norm;
    o.eps = norm == Norm::linf ? 0.05 : 0.15;
    o.steps = 10;
    o.targets = 2;
    AttackStats cpu_stats, gpu_stats;
    const FabResult on_cpu = fab_targeted(cpu_model, X, Y, o, &cpu_stats);
    const FabResult on_gpu = fab_targeted(gpu_model, X.cuda(), Y.cuda(), o, &gpu_stats);
    CHECK(on_gpu.x_adv.device() == Device::cuda);
    CHECK(gpu_stats.forward_passes == cpu_stats.forward_passes);
    CHECK(gpu_stats.backward_passes == cpu_stats.backward_passes);
    for (size_t i = 0; i < on_cpu.norm.size(); ++i) {
      INFO("sample " << i);
      if (std::isinf(on_cpu.norm[i]))
        CHECK(std::isinf(on_gpu.norm[i]));
      else
        CHECK(on_gpu.norm[i] == Approx(on_cpu.norm[i]).margin(1e-4));
    }
    const std::vector<float> a = on_cpu.x_adv.to_vector(), b = on_gpu.x_adv.cpu().to_vector();
    double largest = 0;
    for (size_t k = 0; k < a.size(); ++k) largest = std::max(largest, static_cast<double>(std::abs(a[k] - b[k])));
    CHECK(largest < 1e-4);
  }
}

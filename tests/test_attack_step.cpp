// The fused attack step and random start (kernels/common/attack_step.h, kernels/cpu/attack.cpp,
// robust/attacks.cpp) against their formulas, and PGD on a small random model.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "engine/autograd.h"
#include "engine/ops.h"
#include "kernels/common/philox.h"
#include "kernels/cpu/attack_kernels.h"
#include "kernels/cpu/cpu_kernels.h"
#include "models/module.h"
#include "robust/attacks.h"

using namespace bulwark;

namespace {

struct StepCase {
  std::vector<float> x, x_adv, g;
};

// x in [0,1] (with exact 0s and 1s), x_adv somewhere in the ball, g with exact zeros.
StepCase make_step_case(int64_t n, float eps, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> unit(0.f, 1.f), ball(-eps, eps), grad(-1.f, 1.f);
  StepCase c;
  for (int64_t i = 0; i < n; ++i) {
    float xi = unit(rng);
    if (i % 17 == 3) xi = 0.f;
    if (i % 19 == 5) xi = 1.f;
    c.x.push_back(xi);
    c.x_adv.push_back(std::clamp(xi + ball(rng), 0.f, 1.f));
    c.g.push_back(i % 11 == 0 ? 0.f : grad(rng) * std::pow(10.f, static_cast<float>(i % 7) - 3.f));
  }
  return c;
}

// The formula as written, one operation at a time.
float naive_step(float x, float x_adv, float g, float eps, float alpha) {
  const float s = g > 0 ? 1.f : (g < 0 ? -1.f : 0.f);
  const float v = std::min(std::max(x_adv + alpha * s, x - eps), x + eps);
  return std::min(std::max(v, 0.f), 1.f);
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

// A small conv net with random weights: conv 4 3x3 s2 p1 -> ReLU -> linear 10.
class TinyNet : public Module {
 public:
  explicit TinyNet(uint32_t seed) {
    std::mt19937 rng(seed);
    auto init = [&](Shape shape, float scale) {
      std::normal_distribution<float> normal(0.f, scale);
      std::vector<float> v(static_cast<size_t>(shape_numel(shape)));
      for (float& e : v) e = normal(rng);
      return Tensor::from_vector(v, shape).set_requires_grad(true);
    };
    conv_w_ = register_parameter("conv.weight", init({4, 1, 3, 3}, 0.5f));
    conv_b_ = register_parameter("conv.bias", init({4}, 0.1f));
    fc_w_ = register_parameter("fc.weight", init({10, 4 * 4 * 4}, 0.3f));
    fc_b_ = register_parameter("fc.bias", init({10}, 0.1f));
  }
  Tensor forward(const Tensor& x) override {
    const Tensor h = relu(conv2d(x, conv_w_, conv_b_, {2, 1}));
    return linear(h.flatten(1), fc_w_, fc_b_);
  }

 private:
  Tensor conv_w_, conv_b_, fc_w_, fc_b_;
};

}  // namespace

TEST_CASE("fused pgd step matches the formula and its L1 at awkward sizes", "[attack]") {
  const float eps = 0.3f, alpha = 0.07f;
  for (int64_t n : {1, 3, 7, 8191, 8192, 8193, 3 * 8192 + 5, 70001}) {
    const StepCase c = make_step_case(n, eps, static_cast<uint32_t>(n));
    std::vector<float> expected(c.x_adv.size());
    double expected_l1 = 0;
    for (int64_t i = 0; i < n; ++i) {
      expected[i] = naive_step(c.x[i], c.x_adv[i], c.g[i], eps, alpha);
      expected_l1 += std::abs(static_cast<double>(c.g[i]));
    }
    std::vector<float> got = c.x_adv;
    double l1 = -1;
    cpu::pgd_step(c.x.data(), got.data(), c.g.data(), n, eps, alpha, &l1);
    INFO("n = " << n);
    CHECK(same_bits(got, expected));
    CHECK(l1 == Approx(expected_l1).epsilon(1e-12));
    // Without an L1 address: the same step, and no L1.
    std::vector<float> step_only = c.x_adv;
    cpu::pgd_step(c.x.data(), step_only.data(), c.g.data(), n, eps, alpha, static_cast<double*>(nullptr));
    CHECK(same_bits(step_only, expected));
  }
}

TEST_CASE("pgd steps stay in the eps-ball and in [0,1]", "[attack]") {
  const float eps = 8.f / 255.f, alpha = 2.f / 255.f;
  const int64_t n = 3 * 32 * 32 * 5 + 1;
  StepCase c = make_step_case(n, eps, 11);
  std::mt19937 rng(5);
  std::uniform_real_distribution<float> grad(-1.f, 1.f);
  for (int step = 0; step < 12; ++step) {
    for (float& g : c.g) g = grad(rng);
    cpu::pgd_step(c.x.data(), c.x_adv.data(), c.g.data(), n, eps, alpha, static_cast<double*>(nullptr));
  }
  float worst = 0.f;
  for (int64_t i = 0; i < n; ++i) {
    REQUIRE(c.x_adv[i] >= 0.f);
    REQUIRE(c.x_adv[i] <= 1.f);
    worst = std::max(worst, std::abs(c.x_adv[i] - c.x[i]));
  }
  CHECK(worst <= eps * (1 + 1e-6f));
}

TEST_CASE("pgd step L1 does not depend on the thread count", "[attack]") {
  const int64_t n = 5 * 8192 + 123;
  const StepCase c = make_step_case(n, 0.1f, 3);
  const int threads = cpu::num_threads();
  std::vector<float> one = c.x_adv, two = c.x_adv;
  double l1_one = 0, l1_two = 0;
  cpu::set_num_threads(1);
  cpu::pgd_step(c.x.data(), one.data(), c.g.data(), n, 0.1f, 0.01f, &l1_one);
  cpu::set_num_threads(2);
  cpu::pgd_step(c.x.data(), two.data(), c.g.data(), n, 0.1f, 0.01f, &l1_two);
  cpu::set_num_threads(threads);
  CHECK(std::memcmp(&l1_one, &l1_two, sizeof(double)) == 0);
  CHECK(same_bits(one, two));
}

TEST_CASE("random start is a function of (seed, offset, index)", "[attack]") {
  const float eps = 0.25f;
  const int64_t n = 70003;  // not a multiple of 4: the last Philox block is partial
  const StepCase c = make_step_case(n, eps, 9);
  const Tensor x = Tensor::from_vector(c.x, {n});

  const std::vector<float> a = random_start(x, eps, 42, 7).to_vector();
  for (int64_t i = 0; i < n; ++i) {
    const float u = philox::uniform(42, 7, static_cast<uint64_t>(i));
    REQUIRE(a[i] == std::clamp(c.x[i] + eps * (2.f * u - 1.f), 0.f, 1.f));
    REQUIRE(std::abs(a[i] - c.x[i]) <= eps * (1 + 1e-6f));
  }
  CHECK(same_bits(random_start(x, eps, 42, 7).to_vector(), a));
  CHECK_FALSE(same_bits(random_start(x, eps, 43, 7).to_vector(), a));
  CHECK_FALSE(same_bits(random_start(x, eps, 42, 8).to_vector(), a));

  // One thread or two: the same bits.
  const int threads = cpu::num_threads();
  cpu::set_num_threads(1);
  const std::vector<float> serial = random_start(x, eps, 42, 7).to_vector();
  cpu::set_num_threads(threads);
  CHECK(same_bits(serial, a));

  // Offset k of the stream is element 4k onwards of offset 0.
  const int64_t k = 100;
  const Tensor zeros = Tensor::zeros({n});
  const std::vector<float> from0 = random_start(zeros, 0.5f, 42, 0).to_vector();
  const std::vector<float> fromk = random_start(zeros, 0.5f, 42, k).to_vector();
  for (int64_t i = 0; i + 4 * k < n; i += 997) REQUIRE(fromk[i] == from0[i + 4 * k]);
  CHECK(random_start_counters(n) == static_cast<uint64_t>((n + 3) / 4));
}

TEST_CASE("engine pgd_step_ updates in place for f32 and f64 and checks its arguments", "[attack]") {
  const StepCase c = make_step_case(1000, 0.2f, 21);
  const Tensor x = Tensor::from_vector(c.x, {10, 100});
  const Tensor g = Tensor::from_vector(c.g, {10, 100});
  Tensor x_adv = Tensor::from_vector(c.x_adv, {10, 100});
  const Tensor l1_slot = Tensor::full({1}, -1.0, DType::f64);
  pgd_step_(x_adv, x, g, 0.2, 0.05, l1_slot);
  const double l1 = l1_slot.item();
  const std::vector<float> got = x_adv.to_vector();
  double expected_l1 = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    REQUIRE(got[i] == naive_step(c.x[i], c.x_adv[i], c.g[i], 0.2f, 0.05f));
    expected_l1 += std::abs(static_cast<double>(c.g[i]));
  }
  CHECK(l1 == Approx(expected_l1).epsilon(1e-12));

  Tensor x_adv64 = Tensor::from_vector(c.x_adv, {10, 100}).to(DType::f64);
  pgd_step_(x_adv64, x.to(DType::f64), g.to(DType::f64), 0.2, 0.05);
  CHECK(max_abs_diff(x_adv64, x_adv.to(DType::f64)) < 1e-6);

  // A transposed (strided) gradient is read correctly.
  Tensor x_adv_t = Tensor::from_vector(c.x_adv, {10, 100});
  pgd_step_(x_adv_t, x, g.t().contiguous().t(), 0.2, 0.05);
  CHECK(same_bits(x_adv_t.to_vector(), got));

  CHECK_THROWS_AS(pgd_step_(x_adv, x, Tensor::zeros({10, 99}), 0.2, 0.05), std::invalid_argument);
  CHECK_THROWS_AS(pgd_step_(x_adv, x, g, -0.1, 0.05), std::invalid_argument);
  // The L1 goes to one contiguous f64 element.
  CHECK_THROWS_AS(pgd_step_(x_adv, x, g, 0.2, 0.05, Tensor::zeros({1})), std::invalid_argument);
  CHECK_THROWS_AS(pgd_step_(x_adv, x, g, 0.2, 0.05, Tensor::zeros({2}, DType::f64)), std::invalid_argument);
}

TEST_CASE("PGD raises the loss of a random model, inside the budget, with input gradients only", "[attack]") {
  TinyNet model(17);
  const int64_t n = 16;
  std::mt19937 rng(23);
  std::uniform_real_distribution<float> unit(0.f, 1.f);
  std::vector<float> xv(static_cast<size_t>(n * 8 * 8));
  for (float& v : xv) v = unit(rng);
  std::vector<int32_t> yv(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) yv[i] = static_cast<int32_t>(i % 10);
  const Tensor x = Tensor::from_vector(xv, {n, 1, 8, 8});
  const Tensor y = Tensor::from_vector(yv, {n});

  PgdOptions options;
  options.eps = 0.1;
  options.alpha = 0.025;
  options.steps = 10;
  options.seed = 3;
  backward_stats() = {};
  AttackStats stats;
  const Tensor x_adv = pgd_attack(model, x, y, options, &stats);

  CHECK(stats.forward_passes == 10);
  CHECK(stats.backward_passes == 10);
  CHECK(stats.last_grad_l1.item() > 0);
  CHECK(backward_stats().inputs_skipped > 0);  // the weights' gradients were never computed
  for (const Tensor& p : model.parameters()) CHECK_FALSE(p.grad().defined());
  CHECK_FALSE(x_adv.requires_grad());

  const std::vector<float> adv = x_adv.to_vector();
  for (size_t i = 0; i < adv.size(); ++i) {
    REQUIRE(adv[i] >= 0.f);
    REQUIRE(adv[i] <= 1.f);
    REQUIRE(std::abs(adv[i] - xv[i]) <= 0.1f * (1 + 1e-6f));
  }

  NoGradGuard no_grad;
  const double clean_loss = cross_entropy(model(x), y).item();
  const double adv_loss = cross_entropy(model(x_adv), y).item();
  CHECK(adv_loss > clean_loss + 0.05);

  // Same options, same example: the attack is deterministic.
  GradModeGuard grad_on(true);
  CHECK(max_abs_diff(pgd_attack(model, x, y, options), x_adv) == 0.0);
}

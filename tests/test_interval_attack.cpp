// The interval attack (robust/interval_attack.h): where PGD's gradient gives no direction, the
// symbolic bound of a widening box does.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

#include "engine/ops.h"
#include "engine/rng.h"
#include "models/layers.h"
#include "robust/attack_registry.h"
#include "robust/attacks.h"

using namespace bulwark;

namespace {

constexpr int64_t kSide = 8, kD = kSide * kSide;

// z_0 = 0.01, z_1 = 100 relu(sum_i x_i - t): the label 0 holds until the sum of the pixels passes
// t. With t = sum(x0) + 0.04 d - 0.2 that takes nearly +0.04 on every pixel at once. Below t the
// ReLU is off and every gradient is 0, so PGD from x0 never moves, and a random start reaches the
// sum with probability about 1e-7 (64 uniforms of +-0.1, 5 standard deviations).
std::shared_ptr<Sequential> plateau_model(double threshold) {
  Generator gen(1);
  auto net = std::make_shared<Sequential>();
  net->add(std::make_shared<Flatten>());
  auto sum = std::make_shared<Linear>(kD, 1, gen);
  sum->weight.copy_(Tensor::ones({1, kD}));
  sum->bias.copy_(Tensor::full({1}, -threshold, DType::f32));
  net->add(sum);
  net->add(std::make_shared<ReLU>());
  auto head = std::make_shared<Linear>(1, 2, gen);
  head->weight.copy_(Tensor::from_vector(std::vector<double>{0.0, 100.0}, {2, 1}).to(DType::f32));
  head->bias.copy_(Tensor::from_vector(std::vector<double>{0.01, 0.0}, {2}).to(DType::f32));
  net->add(head);
  net->eval();
  return net;
}

}  // namespace

TEST_CASE("the interval attack breaks a plateau that PGD with as many passes cannot", "[attacks][interval]") {
  // Four samples with the same pixels in different orders (so the same sum), in [0.2, 0.8].
  std::vector<double> pixels(kD);
  for (int64_t i = 0; i < kD; ++i) pixels[i] = 0.2 + 0.6 * static_cast<double>((i * 37) % kD) / kD;
  std::vector<double> batch;
  std::mt19937 rng(3);
  for (int s = 0; s < 4; ++s) {
    std::shuffle(pixels.begin(), pixels.end(), rng);
    batch.insert(batch.end(), pixels.begin(), pixels.end());
  }
  const Tensor x = Tensor::from_vector(batch, {4, 1, kSide, kSide}).to(DType::f32);
  const Tensor y = Tensor::from_vector(std::vector<int32_t>{0, 0, 0, 0}, {4});
  const double eps = 0.1, sum = std::accumulate(pixels.begin(), pixels.end(), 0.0);
  const auto model = plateau_model(sum + 0.04 * kD - 0.2);
  REQUIRE(argmax(model->forward(x), 1).to_vector_i32() == std::vector<int32_t>{0, 0, 0, 0});

  AttackOptions interval;
  interval.kind = AttackKind::interval;
  interval.eps = eps;
  interval.steps = 40;
  interval.restarts = 1;
  AttackStats cost;
  const AttackOutcome guided = attack_outcome(*model, x, y, interval, &cost);
  int broken = 0;
  for (uint8_t c : guided.correct) broken += c == 0;
  CHECK(broken == 4);
  // In the eps-ball and [0, 1].
  const std::vector<double> adv = guided.x_adv.to(DType::f64).to_vector_f64(), orig = x.to(DType::f64).to_vector_f64();
  for (size_t i = 0; i < adv.size(); ++i) {
    CHECK(std::fabs(adv[i] - orig[i]) <= eps + 1e-6);
    CHECK(adv[i] >= 0.0);
    CHECK(adv[i] <= 1.0);
  }

  // PGD-40 (step 0.01) with random restarts until it has spent as many images through the model,
  // forward and backward, as the interval attack (its bound's d + 3 rows a sample included).
  AttackOptions pgd;
  pgd.kind = AttackKind::pgd;
  pgd.eps = eps;
  pgd.steps = 40;
  pgd.alpha = 0.01;
  const int64_t spent = cost.forward_images + cost.backward_images;
  pgd.restarts = static_cast<int>(spent / (4 * (2 * 40 + 1))) + 1;
  AttackStats pgd_cost;
  const AttackOutcome plain = attack_outcome(*model, x, y, pgd, &pgd_cost);
  INFO("interval attack: " << spent << " images; PGD-40 x" << pgd.restarts << ": "
                           << pgd_cost.forward_images + pgd_cost.backward_images << " images");
  CHECK(pgd_cost.forward_images + pgd_cost.backward_images >= spent);
  for (uint8_t c : plain.correct) CHECK(c == 1);
}

TEST_CASE("the interval attack is registered for bulwark eval, L-inf only", "[attacks][interval]") {
  const robust::EvalAttackInfo& info = robust::eval_attack_info("interval");
  OptionValues v;
  v.set("steps", 40);
  v.set("restarts", 2);
  const AttackOptions o = info.make(v, 0.3, 5);
  CHECK(o.kind == AttackKind::interval);
  CHECK(attack_name(resolve_attack(o)) == "Interval-PGD-40x2");
  CHECK(resolve_attack(o).alpha == 0.01);
  CHECK_THROWS_WITH(robust::require_norm(info, Norm::l2), Catch::Contains("interval"));
}

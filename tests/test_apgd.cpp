// APGD-CE, APGD-DLR and APGD-T (robust/apgd.h) on the attack tests' small MLPs over synthetic
// 1x12x12 images: the DLR losses against hand-computed values, the paper's checkpoints, the
// ball and [0,1], no weaker than PGD of the same budget, determinism from the seed, the pass
// counts, the registry's names and options, and the emulated CUDA backend against the CPU.
#include <catch2/catch.hpp>

#include <map>
#include <string>
#include <utility>
#include <vector>

#include "engine/autograd.h"
#include "engine/ops.h"
#include "engine/rng.h"
#include "robust/apgd.h"
#include "robust/attack_registry.h"
#include "robust/attacks.h"
#include "tests/attack_test_models.h"

using namespace bulwark;
using namespace bulwark::testing;

namespace {

// The attack tests' options (seed 11, offset 3 unless given), L-inf.
AttackOptions apgd(AttackKind kind, double eps, int steps, uint64_t seed = 11, int restarts = 1) {
  AttackOptions o = options(kind, Norm::linf, eps, steps, restarts);
  o.seed = seed;
  return o;
}

Tensor logits(const std::vector<float>& values, int64_t rows) {
  return Tensor::from_vector(values, {rows, static_cast<int64_t>(values.size()) / rows});
}

Tensor labels(const std::vector<int32_t>& values) {
  return Tensor::from_vector(values, {static_cast<int64_t>(values.size())});
}

const AttackKind kApgdKinds[] = {AttackKind::apgd_ce, AttackKind::apgd_dlr, AttackKind::apgd_t};

}  // namespace

TEST_CASE("the DLR losses match hand-computed values and ignore the logits' shift and scale", "[attacks]") {
  // Row 0: z = (1, 4, 2, 3), y = 0: -(1 - 4) / (4 - 2) = 1.5.
  // Row 1: z = (5, 1, 0, 2), y = 0: -(5 - 2) / (5 - 1) = -0.75.
  // Row 2: z = (0, -1, 2, 1.5), y = 3: -(1.5 - 2) / (2 - 0) = 0.25.
  const Tensor z = logits({1, 4, 2, 3, 5, 1, 0, 2, 0, -1, 2, 1.5f}, 3);
  const Tensor y = labels({0, 0, 3});
  const std::vector<double> dlr = dlr_loss(z, y).to_vector_f64();
  CHECK(dlr[0] == Approx(1.5));
  CHECK(dlr[1] == Approx(-0.75));
  CHECK(dlr[2] == Approx(0.25));
  // Targeted, t = (2, 3, 1): -(1 - 2) / (4 - (2 + 1) / 2) = 0.4; -(5 - 2) / (5 - (1 + 0) / 2) =
  // -2/3; -(1.5 - -1) / (2 - (0 + -1) / 2) = -1.
  const std::vector<double> targeted = targeted_dlr_loss(z, y, labels({2, 3, 1})).to_vector_f64();
  CHECK(targeted[0] == Approx(0.4));
  CHECK(targeted[1] == Approx(-2.0 / 3));
  CHECK(targeted[2] == Approx(-1.0));

  const Tensor moved = z * 3.0 + 7.0;
  CHECK(max_abs_diff(dlr_loss(moved, y), dlr_loss(z, y)) < 1e-5);
  CHECK(max_abs_diff(targeted_dlr_loss(moved, y, labels({2, 3, 1})), targeted_dlr_loss(z, y, labels({2, 3, 1}))) < 1e-5);

  // The gradient of row 0 by hand: d/dz of (z_1 - z_0) / (z_1 - z_2) at (1, 4, 2, 3) is
  // (-1/2, (2 - 3) / 4, 3 / 4, 0) = (-0.5, -0.25, 0.75, 0).
  const Tensor leaf = logits({1, 4, 2, 3}, 1).set_requires_grad(true);
  const std::vector<float> g = grad({sum(dlr_loss(leaf, labels({0})))}, {leaf})[0].to_vector();
  CHECK(g[0] == Approx(-0.5));
  CHECK(g[1] == Approx(-0.25));
  CHECK(g[2] == Approx(0.75));
  CHECK(g[3] == Approx(0.0));

  CHECK_THROWS_WITH(dlr_loss(logits({1, 2}, 1), labels({0})), Catch::Contains("K >= 3"));
  CHECK_THROWS_WITH(targeted_dlr_loss(logits({1, 2, 3}, 1), labels({0}), labels({1})), Catch::Contains("K >= 4"));
}

TEST_CASE("APGD's checkpoints follow the paper's rule", "[attacks]") {
  // p = 0, .22, .41, .57, .70, .80, .87, .93, .99 (then 1.05 > 1): steps of .22, .19, .16, .13,
  // .10, .07, then the floor .06.
  CHECK(apgd_checkpoints(100) == std::vector<int>{0, 22, 41, 57, 70, 80, 87, 93, 99});
  CHECK(apgd_checkpoints(1000) == std::vector<int>{0, 220, 410, 570, 700, 800, 870, 930, 990});
  // ceil(p N) with N = 10: 3, 5, 6, 7, 8, 9, 10, 10 (the repeat dropped).
  CHECK(apgd_checkpoints(10) == std::vector<int>{0, 3, 5, 6, 7, 8, 9, 10});
  CHECK(apgd_checkpoints(1) == std::vector<int>{0, 1});
  CHECK(apgd_checkpoints(0) == std::vector<int>{0});
}

TEST_CASE("APGD stays in the eps-ball and [0,1], counts its passes and names itself", "[attacks]") {
  auto model = trained_mlp();
  const Batch b = test_batch(32);
  for (AttackKind kind : kApgdKinds) {
    AttackOptions o = apgd(kind, 0.05, 6);
    o.targets = 3;
    INFO(attack_name(o));
    AttackStats stats;
    const Tensor x_adv = attack(*model, b.x, b.y, o, &stats);
    CHECK(x_adv.shape() == b.x.shape());
    CHECK_FALSE(x_adv.requires_grad());
    const Perturbation p = perturbation(x_adv, b.x, Norm::linf);
    CHECK(p.largest <= o.eps + 1e-6);
    CHECK(p.lo >= 0.f);
    CHECK(p.hi <= 1.f);
    CHECK(p.mean > 0.5 * o.eps);
    CHECK(stats.last_grad_l1.item() > 0);
    // Each run: the start and 6 steps forward, 6 backward (the last point needs no gradient).
    // APGD-T: one clean forward, then up to 3 target runs on what is left standing.
    if (kind == AttackKind::apgd_t) {
      CHECK(stats.backward_passes % 6 == 0);
      CHECK(stats.backward_passes >= 6);
      CHECK(stats.backward_passes <= 18);
      CHECK(stats.forward_passes == 1 + stats.backward_passes / 6 * 7);
      CHECK(stats.forward_images <= stats.forward_passes * 32);
      CHECK(stats.forward_images >= 32 + 7 * 32);  // the clean pass and the first target on everything
    } else {
      CHECK(stats.forward_passes == 7);
      CHECK(stats.backward_passes == 6);
      CHECK(stats.forward_images == 7 * 32);
      CHECK(stats.backward_images == 6 * 32);
    }
  }
  CHECK(attack_name(apgd(AttackKind::apgd_ce, 0.1, 100)) == "APGD-CE-100");
  CHECK(attack_name(apgd(AttackKind::apgd_dlr, 0.1, 100, 0, 5)) == "APGD-DLR-100x5");
  CHECK(attack_name(apgd(AttackKind::apgd_t, 0.1, 100)) == "APGD-T-100x9");
  CHECK(attack_name(apgd(AttackKind::apgd_t, 0.1, 100, 0, 2)) == "APGD-T-100x9x2");
  CHECK(resolve_attack(apgd(AttackKind::apgd_ce, 0.1, 100)).alpha == Approx(0.2));  // eta_0 = 2 eps
  AttackOptions l2 = apgd(AttackKind::apgd_t, 0.1, 100);
  l2.norm = Norm::l2;
  l2.eot = 20;
  CHECK(attack_name(l2) == "L2 APGD-T-100x9 EOT-20");
  l2.eot = 0;
  CHECK_THROWS_WITH(resolve_attack(l2), Catch::Contains("eot must be >= 1"));
  AttackOptions pgd_eot = apgd(AttackKind::pgd, 0.1, 10);
  pgd_eot.eot = 2;
  CHECK_THROWS_WITH(resolve_attack(pgd_eot), Catch::Contains("APGD attacks only"));
  AttackOptions no_targets = apgd(AttackKind::apgd_t, 0.1, 10);
  no_targets.targets = 0;
  CHECK_THROWS_WITH(resolve_attack(no_targets), Catch::Contains("targets"));
}

TEST_CASE("L2 APGD stays in the L2 ball and [0,1] and leaves no higher accuracy than L2 PGD", "[attacks]") {
  auto model = trained_mlp();
  const Batch b = test_batch(200);
  constexpr int kSteps = 20;
  constexpr double kEps = 0.1;  // L2, over 144 pixels: about 0.008 per pixel
  for (uint64_t seed : {1, 2}) {
    AttackOptions pgd = apgd(AttackKind::pgd, kEps, kSteps, seed);
    pgd.norm = Norm::l2;
    const double pgd_accuracy = accuracy(attack_outcome(*model, b.x, b.y, pgd).correct);
    REQUIRE(pgd_accuracy > 0.2);
    for (AttackKind kind : kApgdKinds) {
      AttackOptions o = apgd(kind, kEps, kSteps, seed);
      o.norm = Norm::l2;
      o.targets = 3;
      const AttackOutcome out = attack_outcome(*model, b.x, b.y, o);
      const Perturbation p = perturbation(out.x_adv, b.x, Norm::l2);
      INFO("seed " << seed << ": L2 PGD-" << kSteps << " " << pgd_accuracy << ", " << attack_name(o) << " "
                   << accuracy(out.correct) << ", largest L2 step " << p.largest);
      CHECK(p.largest <= kEps * (1 + 1e-5));
      CHECK(p.mean > 0.5 * kEps);
      CHECK(perturbation(out.x_adv, b.x, Norm::linf).largest > kEps / 12);  // not an L-inf ball of kEps / 12
      CHECK(p.lo >= 0.f);
      CHECK(p.hi <= 1.f);
      CHECK(accuracy(out.correct) <= pgd_accuracy);
    }
  }
}

namespace {

// A randomised defence that hides its gradient: the trained MLP's logits z(x) plus
//   c s * (F x - stop_gradient(F x)),   s ~ uniform {-1, +1}^K afresh each forward,
// which is 0 in value (the model answers exactly as the MLP does) but adds c s F to the input
// gradient of every logit: noise of mean 0 that swamps the true gradient in any one draw.
// EOT's mean over m draws shrinks it by sqrt(m).
class NoisyGradientModel final : public Module {
 public:
  NoisyGradientModel(std::shared_ptr<Module> inner, double scale, uint64_t seed)
      : inner_(std::move(inner)), scale_(scale), gen_(seed) {
    Generator f_gen(seed + 1);
    f_ = rand_normal({10, kSide * kSide}, 0.0, 1.0, f_gen);
  }
  Tensor forward(const Tensor& x) override {
    const Tensor flat = x.reshape({x.size(0), kSide * kSide});
    const Tensor fx = matmul(flat, f_.transpose(0, 1));
    const Tensor s = sign(rand_uniform(fx.shape(), -1.0, 1.0, gen_, x.dtype()));
    return inner_->forward(x) + scale_ * s * (fx - fx.detach());
  }

 private:
  std::shared_ptr<Module> inner_;
  double scale_;
  Generator gen_;
  Tensor f_;
};

// The model's accuracy at x (its answers carry no randomness).
double accuracy_at(Module& model, const Tensor& x, const Tensor& y) {
  NoGradGuard no_grad;
  const std::vector<int32_t> predicted = argmax(model.forward(x), 1).to_vector_i32(), labels = y.to_vector_i32();
  double right = 0;
  for (size_t i = 0; i < labels.size(); ++i) right += predicted[i] == labels[i];
  return right / static_cast<double>(labels.size());
}

}  // namespace

TEST_CASE("APGD with EOT averages a randomised model's gradient noise away and breaks it where one draw does not", "[attacks]") {
  NoisyGradientModel model(trained_mlp(), 3, 21);
  const Batch b = test_batch(200);
  AttackOptions o = apgd(AttackKind::apgd_ce, 0.012, 10);
  AttackStats one_stats, eot_stats;
  const Tensor one = attack(model, b.x, b.y, o, &one_stats);
  o.eot = 10;
  const Tensor eot = attack(model, b.x, b.y, o, &eot_stats);
  CHECK(one_stats.forward_passes == 11);
  CHECK(one_stats.backward_passes == 10);
  CHECK(eot_stats.forward_passes == 110);  // every point: 10 draws
  CHECK(eot_stats.backward_passes == 100);
  const double clean = accuracy_at(model, b.x, b.y);
  const double without = accuracy_at(model, one, b.y), with = accuracy_at(model, eot, b.y);
  INFO("accuracy: clean " << clean << ", APGD-CE-10 " << without << ", with EOT-10 " << with);
  REQUIRE(clean > 0.5);
  CHECK(without > clean - 0.1);  // one draw's gradient is mostly noise
  CHECK(with < without - 0.1);
}

TEST_CASE("APGD leaves no higher accuracy than PGD with the same steps and restarts", "[attacks]") {
  auto model = trained_mlp();
  const Batch b = test_batch(200);
  constexpr int kSteps = 20;
  constexpr double kEps = 0.012;
  for (uint64_t seed : {1, 2, 3}) {
    AttackOptions pgd = apgd(AttackKind::pgd, kEps, kSteps, seed);
    const double pgd_accuracy = accuracy(attack_outcome(*model, b.x, b.y, pgd).correct);
    REQUIRE(pgd_accuracy > 0.2);  // the comparison means something
    for (AttackKind kind : kApgdKinds) {
      const AttackOptions o = apgd(kind, kEps, kSteps, seed);
      const double apgd_accuracy = accuracy(attack_outcome(*model, b.x, b.y, o).correct);
      INFO("seed " << seed << ": PGD-" << kSteps << " " << pgd_accuracy << ", " << attack_name(o) << " "
                   << apgd_accuracy);
      CHECK(apgd_accuracy <= pgd_accuracy);
    }
  }
}

TEST_CASE("APGD is a function of its seed", "[attacks]") {
  auto model = trained_mlp();
  const Batch b = test_batch(24);
  for (AttackKind kind : kApgdKinds) {
    AttackOptions o = apgd(kind, 0.05, 5, 7, 2);
    o.targets = 2;
    INFO(attack_name(o));
    const Tensor first = attack(*model, b.x, b.y, o);
    CHECK(max_abs_diff(attack(*model, b.x, b.y, o), first) == 0.0);
    o.seed = 8;
    CHECK(max_abs_diff(attack(*model, b.x, b.y, o), first) > 0.0);
  }
}

TEST_CASE("APGD restarts and APGD-T's targets are never weaker than one run, per sample", "[attacks]") {
  auto model = trained_mlp();
  const Batch b = test_batch(100);
  AttackOptions one = apgd(AttackKind::apgd_ce, 0.02, 8);
  AttackOptions three = one;
  three.restarts = 3;
  const AttackOutcome a = attack_outcome(*model, b.x, b.y, one), r = attack_outcome(*model, b.x, b.y, three);
  for (size_t i = 0; i < a.correct.size(); ++i) CHECK(r.correct[i] <= a.correct[i]);

  AttackOptions first_target = apgd(AttackKind::apgd_t, 0.02, 8);
  first_target.targets = 1;
  AttackOptions four_targets = first_target;
  four_targets.targets = 4;
  const AttackOutcome t1 = attack_outcome(*model, b.x, b.y, first_target);
  const AttackOutcome t4 = attack_outcome(*model, b.x, b.y, four_targets);
  for (size_t i = 0; i < t1.correct.size(); ++i) CHECK(t4.correct[i] <= t1.correct[i]);
  INFO("APGD-CE-8 " << accuracy(a.correct) << ", x3 " << accuracy(r.correct) << "; APGD-T-8x1 " << accuracy(t1.correct)
                    << ", x4 " << accuracy(t4.correct));
  CHECK(accuracy(t4.correct) < accuracy(t1.correct));
}

TEST_CASE("the APGD attacks are registered for bulwark eval with their options", "[attacks][registry]") {
  for (const auto& [name, expected] : std::vector<std::pair<std::string, std::string>>{
           {"apgd-ce", "APGD-CE-100"}, {"apgd-dlr", "APGD-DLR-100"}, {"apgd-t", "APGD-T-100x9"}}) {
    const robust::EvalAttackInfo& info = robust::eval_attack_info(name);
    OptionValues values;
    resolve_options(info.options, values, DefaultScope{values, "", false, 0}, name);
    const AttackOptions o = resolve_attack(info.make(values, 8.0 / 255, 4));
    CHECK(attack_name(o) == expected);
    CHECK(o.seed == 4);
    CHECK(o.eps == 8.0 / 255);
  }
  CHECK(find_option(robust::eval_attack_info("apgd-ce").options, "targets") == nullptr);
  const Option* targets = find_option(robust::eval_attack_info("apgd-t").options, "targets");
  REQUIRE(targets != nullptr);
  CHECK(targets->flag == "--apgd-targets");
  CHECK_THROWS_WITH(check_option_value(*targets, 0, "attack 'apgd-t'"), Catch::Contains("--apgd-targets"));
}

TEST_CASE("APGD on the CUDA backend (emulated) matches the CPU, L-inf and L2", "[attacks][cuda]") {
  auto cpu_model = trained_mlp();
  auto gpu_model = small_mlp(3);
  std::map<std::string, Tensor> weights;
  for (const auto& [name, t] : cpu_model->state_dict()) weights[name] = t;
  gpu_model->load_state_dict(weights);
  gpu_model->eval();
  gpu_model->to(Device::cuda);
  const Batch b = test_batch(16);
  const Tensor x_gpu = b.x.cuda(), y_gpu = b.y.cuda();
  for (const auto& [kind, norm] : {std::pair{AttackKind::apgd_ce, Norm::linf}, std::pair{AttackKind::apgd_dlr, Norm::linf},
                                   std::pair{AttackKind::apgd_t, Norm::linf}, std::pair{AttackKind::apgd_ce, Norm::l2},
                                   std::pair{AttackKind::apgd_t, Norm::l2}}) {
    AttackOptions o = apgd(kind, norm == Norm::linf ? 0.03 : 0.3, 6);
    o.targets = 2;
    o.norm = norm;
    INFO(attack_name(o));
    AttackStats cpu_stats, gpu_stats;
    const AttackOutcome on_cpu = attack_outcome(*cpu_model, b.x, b.y, o, &cpu_stats);
    const AttackOutcome on_gpu = attack_outcome(*gpu_model, x_gpu, y_gpu, o, &gpu_stats);
    CHECK(on_gpu.x_adv.device() == Device::cuda);
    const double cpu_acc = accuracy(on_cpu.correct), gpu_acc = accuracy(on_gpu.correct);
    INFO("accuracy CPU " << cpu_acc << ", CUDA " << gpu_acc);
    CHECK(std::abs(cpu_acc - gpu_acc) <= 1.0 / 16 + 1e-9);
    CHECK(max_abs_diff(on_gpu.x_adv.cpu(), on_cpu.x_adv) <= 1e-4);
    CHECK(perturbation(on_gpu.x_adv, b.x, norm).largest <= o.eps * (1 + 1e-5));
    CHECK(gpu_stats.forward_passes == cpu_stats.forward_passes);
  }
}

// AutoAttack's protocol (training/evaluate.h evaluate_sequence): each attack on the samples the
// earlier ones left correct. The suite is never weaker than its strongest member or than PGD with
// the same budget, and compaction changes the work, not the verdict of a deterministic attack.
#include <catch2/catch.hpp>

#include "engine/rng.h"
#include "robust/attack_registry.h"
#include "tests/attack_test_models.h"
#include "training/evaluate.h"

using namespace bulwark;
using namespace bulwark::testing;

namespace {

AttackOptions with(AttackKind kind, int steps, int targets = 9) {
  AttackOptions o = options(kind, Norm::linf, 0.012, steps);
  o.targets = targets;
  return o;
}

}  // namespace

TEST_CASE("an APGD-CE + APGD-T + FAB-T suite leaves no more than PGD with equal iterations x restarts", "[attacks]") {
  auto model = trained_mlp();
  const data::Dataset d = synthetic(200, false);
  const std::vector<AttackOptions> suite{with(AttackKind::apgd_ce, 20), with(AttackKind::apgd_t, 20, 3),
                                         with(AttackKind::fab_t, 20, 3)};
  // PGD with the suite's gradient budget: 20 steps, 1 + 3 + 3 restarts' worth.
  const double pgd = training::evaluate_attack(*model, d, 0, d.n, with(AttackKind::pgd, 20), 100, Device::cpu).accuracy;
  AttackOptions pgd_restarts = with(AttackKind::pgd, 20);
  pgd_restarts.restarts = 7;
  const double pgd7 = training::evaluate_attack(*model, d, 0, d.n, pgd_restarts, 100, Device::cpu).accuracy;
  const training::SequenceResult on = training::evaluate_sequence(*model, d, 0, d.n, suite, 100, Device::cpu, true);
  const training::SequenceResult off = training::evaluate_sequence(*model, d, 0, d.n, suite, 100, Device::cpu, false);
  INFO("PGD-20 " << pgd << ", PGD-20x7 " << pgd7 << ", suite " << on.robust.accuracy << " (compacted), "
                 << off.robust.accuracy << " (masked); clean " << on.clean.accuracy);
  CHECK(on.robust.accuracy <= pgd);
  CHECK(on.robust.accuracy <= pgd7 + 1.0 / 200);  // one sample of randomness
  // Robust so far only falls, and the compacted suite attacks only the survivors.
  double before = on.clean.accuracy;
  for (size_t i = 0; i < suite.size(); ++i) {
    CHECK(on.attacks[i].accuracy <= before);
    before = on.attacks[i].accuracy;
    CHECK(off.attacks[i].count == d.n);
  }
  CHECK(on.attacks[0].count == std::lround(on.clean.accuracy * d.n));
  CHECK(on.robust.forward_passes < off.robust.forward_passes);
  CHECK(on.robust.forward_images < off.robust.forward_images);
  CHECK(on.robust.backward_images < off.robust.backward_images);
  // Masked, every attack's first pass runs on all 200 images; compacted, on the survivors.
  CHECK(off.attacks[0].forward_images >= 200);
  CHECK(on.attacks[0].forward_images % on.attacks[0].count == 0);  // APGD-CE: k + 2 passes over its survivors
  CHECK(std::abs(on.robust.accuracy - off.robust.accuracy) <= 3.0 / 200);
  // FAB-T has no randomness: on the samples both runs still had, its verdict is the same.
  const training::SequenceResult fab_on =
      training::evaluate_sequence(*model, d, 0, d.n, {with(AttackKind::fab_t, 20, 3)}, 100, Device::cpu, true);
  const training::SequenceResult fab_off =
      training::evaluate_sequence(*model, d, 0, d.n, {with(AttackKind::fab_t, 20, 3)}, 100, Device::cpu, false);
  CHECK(fab_on.robust.correct == fab_off.robust.correct);
}

namespace {

// The trained MLP with something at its end: a softmax (probabilities, not logits), a sum over
// the classes (one number per sample), a log-softmax (logits shifted per row), or input noise.
class Wrapped final : public Module {
 public:
  enum class Tail { softmax, one_number, log_softmax, noise };
  // The trained MLP is built here, not under the suite's no-grad forward (it trains on first use).
  explicit Wrapped(Tail tail) : tail_(tail), gen_(4), inner_(trained_mlp()) {}
  Tensor forward(const Tensor& x) override {
    if (tail_ == Tail::noise) return inner_->forward(x + rand_normal(x.shape(), 0.0, 0.1, gen_, x.dtype()));
    const Tensor z = inner_->forward(x);
    const Tensor log_p = log_softmax(z, 1);
    if (tail_ == Tail::softmax) return exp(log_p);
    if (tail_ == Tail::one_number) return sum(z, {1});
    return log_p;
  }

 private:
  Tail tail_;
  Generator gen_;
  std::shared_ptr<Module> inner_;
};

}  // namespace

TEST_CASE("a suite on a model whose outputs are not logits stops with a clear error", "[attacks]") {
  const data::Dataset d = synthetic(50, false);
  const std::vector<AttackOptions> suite{with(AttackKind::apgd_ce, 2)};
  Wrapped softmax(Wrapped::Tail::softmax), one_number(Wrapped::Tail::one_number), log_softmax(Wrapped::Tail::log_softmax);
  CHECK_THROWS_WITH(training::evaluate_sequence(softmax, d, 0, d.n, suite, 25, Device::cpu, true),
                    Catch::Contains("look like probabilities") && Catch::Contains("without its final softmax"));
  CHECK_THROWS_WITH(training::evaluate_sequence(one_number, d, 0, d.n, suite, 25, Device::cpu, true),
                    Catch::Contains("not logits [N, K]"));
  const training::SequenceResult ok = training::evaluate_sequence(log_softmax, d, 0, d.n, suite, 25, Device::cpu, true);
  CHECK_FALSE(ok.randomised);
  CHECK(ok.clean.forward_passes == 2 + 2);  // the two checking forwards, then 2 batches
}

TEST_CASE("the suite notices a randomised model, and autoattack-rand attacks it with EOT", "[attacks]") {
  const data::Dataset d = synthetic(50, false);
  Wrapped noisy(Wrapped::Tail::noise);
  const training::SequenceResult r =
      training::evaluate_sequence(noisy, d, 0, d.n, {with(AttackKind::apgd_ce, 2)}, 25, Device::cpu, true);
  CHECK(r.randomised);
  const std::vector<std::string> rand = robust::suite_attacks("autoattack-rand");
  CHECK(rand == std::vector<std::string>{"apgd-ce", "apgd-dlr"});
  CHECK(robust::suite_settings("autoattack-rand").at("--apgd-eot") == "20");
  CHECK(robust::suite_settings("autoattack").empty());
  CHECK(robust::suite_settings("apgd-ce,square").empty());
}

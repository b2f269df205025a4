// AutoAttack's protocol (training/evaluate.h evaluate_sequence): each attack on the samples the
// earlier ones left correct. The suite is never weaker than its strongest member or than PGD with
// the same budget, and compaction changes the work, not the verdict of a deterministic attack.
#include <catch2/catch.hpp>

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
  CHECK(std::abs(on.robust.accuracy - off.robust.accuracy) <= 3.0 / 200);
  // FAB-T has no randomness: on the samples both runs still had, its verdict is the same.
  const training::SequenceResult fab_on =
      training::evaluate_sequence(*model, d, 0, d.n, {with(AttackKind::fab_t, 20, 3)}, 100, Device::cpu, true);
  const training::SequenceResult fab_off =
      training::evaluate_sequence(*model, d, 0, d.n, {with(AttackKind::fab_t, 20, 3)}, 100, Device::cpu, false);
  CHECK(fab_on.robust.correct == fab_off.robust.correct);
}

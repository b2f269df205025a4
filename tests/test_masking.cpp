// The gradient-masking checks of `bulwark eval` (robust/masking_checks.h): each fires on the
// pattern it names and stays quiet on an honest evaluation.
#include <catch2/catch.hpp>

#include <algorithm>

#include "robust/masking_checks.h"

using namespace bulwark::robust;

namespace {

AttackRow row(const std::string& name, AttackRole role, double acc, double eps = 0.1, bool transfer = false) {
  return {name, role, transfer, eps, acc, 1000};
}

const MaskingCheck& check(const std::vector<MaskingCheck>& checks, const std::string& name) {
  const auto it = std::find_if(checks.begin(), checks.end(), [&](const MaskingCheck& c) { return c.name == name; });
  REQUIRE(it != checks.end());
  return *it;
}

// An honest evaluation: clean > FGSM > PGD ~ Square ~ transfer (a bit weaker), falling with eps.
std::vector<AttackRow> honest() {
  return {row("clean", AttackRole::clean, 0.80), row("PGD-50x10", AttackRole::white_box, 0.55),
          row("CW-20", AttackRole::white_box, 0.56), row("FGSM", AttackRole::single_step, 0.62),
          row("Square-5000", AttackRole::black_box, 0.545), row("transfer PGD-50x10", AttackRole::white_box, 0.70, 0.1, true)};
}

std::vector<AttackRow> honest_sweep() {
  return {row("PGD-50x10", AttackRole::white_box, 0.70, 0.05), row("PGD-50x10", AttackRole::white_box, 0.55, 0.1),
          row("PGD-50x10", AttackRole::white_box, 0.20, 0.2), row("PGD-50x10", AttackRole::white_box, 0.0, 1.0)};
}

}  // namespace

TEST_CASE("masking checks stay quiet on an honest evaluation and say what they did not run", "[attacks]") {
  const auto checks = masking_checks(honest(), honest_sweep());
  REQUIRE(checks.size() == 5);
  for (const MaskingCheck& c : checks) {
    INFO(c.name << ": " << c.detail);
    CHECK(c.applicable);
    CHECK_FALSE(c.fired);
  }
  const auto without_sweep = masking_checks(honest(), {});
  CHECK_FALSE(check(without_sweep, "rises-with-eps").applicable);
  CHECK_FALSE(check(without_sweep, "nonzero-at-eps-1").applicable);
  const auto clean_only = masking_checks({row("clean", AttackRole::clean, 0.8)}, {});
  for (const MaskingCheck& c : clean_only) CHECK_FALSE(c.applicable);
}

TEST_CASE("each masking check fires on the pattern it names", "[attacks]") {
  auto rows = honest();
  rows[3].accuracy = 0.50;  // FGSM below PGD-50x10's 0.55
  auto c = check(masking_checks(rows, {}), "fgsm-below-pgd");
  CHECK(c.fired);
  CHECK(c.detail.find("FGSM 50.00% < PGD-50x10 55.00%") != std::string::npos);

  rows = honest();
  rows[2].accuracy = 0.85;  // CW above clean
  c = check(masking_checks(rows, {}), "above-clean");
  CHECK(c.fired);
  CHECK(c.detail.find("CW-20 85.00% > clean 80.00%") != std::string::npos);

  auto sweep = honest_sweep();
  sweep[2].accuracy = 0.60;  // more accurate at 0.2 than at 0.1
  c = check(masking_checks(honest(), sweep), "rises-with-eps");
  CHECK(c.fired);
  CHECK(c.detail.find("PGD-50x10: 60.00% at eps 0.2 > 55.00% at eps 0.1") != std::string::npos);

  rows = honest();
  rows[4].accuracy = 0.51;  // Square 4 points under the strongest white-box attack
  c = check(masking_checks(rows, {}), "black-box-below-white");
  CHECK(c.fired);
  CHECK(c.detail.find("Square-5000 51.00% < PGD-50x10 55.00%") != std::string::npos);
  rows = honest();
  rows[5].accuracy = 0.52;  // a transfer attack too
  CHECK(check(masking_checks(rows, {}), "black-box-below-white").fired);
  rows = honest();
  rows[4].accuracy = 0.535;  // 1.5 points under: within the 2-point margin
  CHECK_FALSE(check(masking_checks(rows, {}), "black-box-below-white").fired);

  sweep = honest_sweep();
  sweep[3].accuracy = 0.01;
  c = check(masking_checks(honest(), sweep), "nonzero-at-eps-1");
  CHECK(c.fired);
  CHECK(c.detail.find("1.00% at eps 1") != std::string::npos);
}

TEST_CASE("a difference under one sample is noise, not a masking sign", "[attacks]") {
  auto rows = honest();
  rows[3].accuracy = 0.55 - 0.0004;  // FGSM 0.4 of a sample under PGD on 1,000 samples
  CHECK_FALSE(check(masking_checks(rows, {}), "fgsm-below-pgd").fired);
  rows[3].accuracy = 0.55 - 0.001;  // one sample
  CHECK(check(masking_checks(rows, {}), "fgsm-below-pgd").fired);
}

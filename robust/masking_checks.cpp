#include "robust/masking_checks.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cmath>
#include <map>

namespace bulwark::robust {

namespace {

std::string pct(double a) { return fmt::format("{:.2f}%", 100 * a); }

// One sample's worth of accuracy: differences smaller than that are float noise in a mean.
double one_sample(const AttackRow& r) { return 0.5 / static_cast<double>(std::max<int64_t>(r.samples, 1)); }

bool white(const AttackRow& r) { return r.role == AttackRole::white_box && !r.transfer; }

}  // namespace

std::vector<MaskingCheck> masking_checks(const std::vector<AttackRow>& rows, const std::vector<AttackRow>& sweep) {
  std::vector<MaskingCheck> checks;

  // The strongest iterative white-box attack: one step from the same gradients must not beat it.
  const AttackRow* strongest = nullptr;
  for (const AttackRow& r : rows)
    if (white(r) && (!strongest || r.accuracy < strongest->accuracy)) strongest = &r;

  MaskingCheck fgsm;
  fgsm.name = "fgsm-below-pgd";
  for (const AttackRow& one : rows) {
    if (one.role != AttackRole::single_step || one.transfer || !strongest) continue;
    fgsm.applicable = true;
    if (one.accuracy < strongest->accuracy - one_sample(one)) {
      fgsm.fired = true;
      fgsm.detail += fmt::format("{}{} {} < {} {}", fgsm.detail.empty() ? "" : "; ", one.name, pct(one.accuracy),
                                 strongest->name, pct(strongest->accuracy));
    }
  }
  checks.push_back(fgsm);

  MaskingCheck above;
  above.name = "above-clean";
  const auto clean = std::find_if(rows.begin(), rows.end(), [](const AttackRow& r) { return r.role == AttackRole::clean; });
  if (clean != rows.end())
    for (const AttackRow& r : rows) {
      if (r.role == AttackRole::clean) continue;
      above.applicable = true;
      if (r.accuracy > clean->accuracy + one_sample(r)) {
        above.fired = true;
        above.detail += fmt::format("{}{} {} > clean {}", above.detail.empty() ? "" : "; ", r.name, pct(r.accuracy),
                                    pct(clean->accuracy));
      }
    }
  checks.push_back(above);

  MaskingCheck rises;
  rises.name = "rises-with-eps";
  std::map<std::string, std::vector<const AttackRow*>> by_name;
  for (const AttackRow& r : sweep)
    if (r.role != AttackRole::clean) by_name[r.name].push_back(&r);
  for (auto& [name, points] : by_name) {
    std::sort(points.begin(), points.end(), [](const AttackRow* a, const AttackRow* b) { return a->eps < b->eps; });
    for (size_t i = 1; i < points.size(); ++i) {
      rises.applicable = true;
      if (points[i]->accuracy > points[i - 1]->accuracy + one_sample(*points[i])) {
        rises.fired = true;
        rises.detail += fmt::format("{}{}: {} at eps {:.4g} > {} at eps {:.4g}", rises.detail.empty() ? "" : "; ", name,
                                    pct(points[i]->accuracy), points[i]->eps, pct(points[i - 1]->accuracy),
                                    points[i - 1]->eps);
      }
    }
  }
  checks.push_back(rises);

  MaskingCheck blind;
  blind.name = "black-box-below-white";
  if (strongest)
    for (const AttackRow& r : rows) {
      if (r.role != AttackRole::black_box && !r.transfer) continue;
      blind.applicable = true;
      if (r.accuracy < strongest->accuracy - 0.02) {
        blind.fired = true;
        blind.detail += fmt::format("{}{} {} < {} {} - 2 points", blind.detail.empty() ? "" : "; ", r.name,
                                    pct(r.accuracy), strongest->name, pct(strongest->accuracy));
      }
    }
  checks.push_back(blind);

  MaskingCheck unbounded;
  unbounded.name = "nonzero-at-eps-1";
  for (const AttackRow& r : sweep) {
    if (r.role == AttackRole::clean || r.transfer || r.norm != Norm::linf || std::abs(r.eps - 1.0) > 1e-12) continue;
    unbounded.applicable = true;
    if (r.accuracy > 0) {
      unbounded.fired = true;
      unbounded.detail += fmt::format("{}{} {} at eps 1", unbounded.detail.empty() ? "" : "; ", r.name, pct(r.accuracy));
    }
  }
  checks.push_back(unbounded);
  return checks;
}

}  // namespace bulwark::robust

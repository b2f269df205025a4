#include "training/schedule.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <numbers>
#include <stdexcept>

namespace bulwark::training {

namespace {
// np.interp: linear between the knots (xs ascending), constant outside them.
double interp(double t, const std::vector<double>& xs, const std::vector<double>& ys) {
  if (t <= xs.front()) return ys.front();
  for (size_t i = 1; i < xs.size(); ++i)
    if (t < xs[i]) return ys[i - 1] + (ys[i] - ys[i - 1]) * (t - xs[i - 1]) / (xs[i] - xs[i - 1]);
  return ys.back();
}

// A schedule that is a fixed function of the progress t.
class ShapeSchedule final : public LrSchedule {
 public:
  explicit ShapeSchedule(std::function<double(double)> f) : f_(std::move(f)) {}
  double lr(double t) const override { return f_(t); }

 private:
  std::function<double(double)> f_;
};
}  // namespace

std::vector<std::string> schedule_names() { return {"constant", "multistep", "cosine", "cyclic", "one-cycle", "piecewise"}; }

std::vector<double> default_milestones(int64_t epochs) {
  const double T = static_cast<double>(epochs);
  return {T / 2, 3 * T / 4};
}

void validate(const ScheduleConfig& cfg, int64_t epochs) {
  const auto names = schedule_names();
  if (std::find(names.begin(), names.end(), cfg.name) == names.end())
    throw std::invalid_argument(fmt::format("unknown schedule '{}' (use one of {})", cfg.name, fmt::join(names, ", ")));
  if (!std::is_sorted(cfg.milestones.begin(), cfg.milestones.end()))
    throw std::invalid_argument(fmt::format("--milestones must be ascending, got {}", fmt::join(cfg.milestones, ",")));
  for (double m : cfg.milestones)
    if (!(m > 0 && m <= static_cast<double>(epochs)))
      throw std::invalid_argument(fmt::format("milestone {} is outside (0, {}] (the number of epochs)", m, epochs));
  if (!(cfg.gamma > 0 && cfg.gamma <= 1)) throw std::invalid_argument(fmt::format("--gamma must be in (0, 1], got {}", cfg.gamma));
  if (!(cfg.min_lr >= 0)) throw std::invalid_argument(fmt::format("--min-lr must be >= 0, got {}", cfg.min_lr));
  if (!(cfg.peak > 0 && cfg.peak < 1)) throw std::invalid_argument(fmt::format("--cyclic-peak must be in (0, 1), got {}", cfg.peak));
}

std::unique_ptr<LrSchedule> make_schedule(const ScheduleConfig& cfg, double lr0, int64_t epochs) {
  validate(cfg, epochs);
  const double T = static_cast<double>(epochs);
  std::function<double(double)> f;
  if (cfg.name == "constant") {
    f = [lr0](double) { return lr0; };
  } else if (cfg.name == "multistep") {
    const std::vector<double> ms = cfg.milestones.empty() ? default_milestones(epochs) : cfg.milestones;
    f = [lr0, ms, gamma = cfg.gamma](double t) {
      const auto passed = std::upper_bound(ms.begin(), ms.end(), t) - ms.begin();
      return lr0 * std::pow(gamma, static_cast<double>(passed));
    };
  } else if (cfg.name == "cosine") {
    f = [lr0, T, lo = cfg.min_lr](double t) { return lo + (lr0 - lo) * (1 + std::cos(std::numbers::pi * std::min(t, T) / T)) / 2; };
  } else if (cfg.name == "cyclic") {
    f = [lr0, T, peak = cfg.peak](double t) { return interp(t, {0, peak * T, T}, {0, lr0, 0}); };
  } else if (cfg.name == "one-cycle") {
    f = [lr0, T](double t) { return interp(t, {0, 2 * T / 5, 4 * T / 5, T}, {lr0, 10 * lr0, lr0, lr0 / 100}); };
  } else {  // piecewise
    f = [lr0, T](double t) { return t < T / 3 ? lr0 : (t < 2 * T / 3 ? lr0 / 10 : lr0 / 100); };
  }
  return std::make_unique<ShapeSchedule>(std::move(f));
}

}  // namespace bulwark::training

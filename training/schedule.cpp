#include "training/schedule.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
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

// AccelAT's rule (see schedule.h): the lr moves only in on_epoch_end, from the windowed mean
// of the validation accuracies; everything the rule reads is state, so a resume continues it.
class AccelatSchedule final : public LrSchedule {
 public:
  AccelatSchedule(const ScheduleConfig& cfg, double lr0) : cfg_(cfg), lr_(lr0), quiet_(cfg.accelat_cooldown) {}

  double lr(double) const override { return lr_; }

  void on_epoch_end(const EpochMetrics& metrics) override {
    accuracies_.push_back(metrics.robust_val_acc >= 0 ? metrics.robust_val_acc : metrics.val_acc);
    const double mean = window_mean();
    ++quiet_;
    const auto window = static_cast<size_t>(cfg_.accelat_window);
    if (means_.size() > window && quiet_ > cfg_.accelat_cooldown && mean - means_.back() < cfg_.accelat_threshold) {
      lr_ *= cfg_.accelat_factor;
      quiet_ = 1;
      ++decays_;
    }
    lr_ = std::max(lr_, cfg_.accelat_floor);
    means_.push_back(mean);
  }

  nlohmann::json state() const override {
    return {{"lr", lr_}, {"quiet", quiet_}, {"decays", decays_}, {"accuracies", accuracies_}, {"means", means_}};
  }

  void load_state(const nlohmann::json& state) override {
    try {
      lr_ = state.at("lr").get<double>();
      quiet_ = state.at("quiet").get<int64_t>();
      decays_ = state.at("decays").get<int64_t>();
      accuracies_ = state.at("accuracies").get<std::vector<double>>();
      means_ = state.at("means").get<std::vector<double>>();
    } catch (const nlohmann::json::exception& e) {
      throw std::invalid_argument(fmt::format("the checkpoint's schedule state is not AccelAT's ({}): was the run "
                                              "started with another --schedule?",
                                              e.what()));
    }
  }

  // Decays counts the rule's decisions, including those the floor absorbed.
  std::map<std::string, double> epoch_report() const override {
    if (means_.empty()) return {};
    return {{"accelat_mean", means_.back()},
            {"accelat_quiet", static_cast<double>(quiet_)},
            {"accelat_decays", static_cast<double>(decays_)}};
  }

 private:
  // mean(acc[-window:]): fewer values while fewer epochs are done.
  double window_mean() const {
    const size_t count = std::min(accuracies_.size(), static_cast<size_t>(cfg_.accelat_window));
    double sum = 0;
    for (auto a = accuracies_.end() - static_cast<std::ptrdiff_t>(count); a != accuracies_.end(); ++a) sum += *a;
    return sum / static_cast<double>(count);
  }

  ScheduleConfig cfg_;
  double lr_;
  int64_t quiet_;
  int64_t decays_ = 0;
  std::vector<double> accuracies_, means_;
};
}  // namespace

std::vector<std::string> schedule_names() {
  return {"constant",  "multistep",      "cosine",     "cyclic", "one-cycle",
          "piecewise", "cyclic-restart", "range-test", "accelat"};
}

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
  if (cfg.accelat_window < 1)
    throw std::invalid_argument(fmt::format("--accelat-window must be >= 1 epoch, got {}", cfg.accelat_window));
  if (!std::isfinite(cfg.accelat_threshold))
    throw std::invalid_argument(
        fmt::format("--accelat-threshold must be a finite number, got {}", cfg.accelat_threshold));
  if (!(cfg.accelat_factor > 0 && cfg.accelat_factor <= 1))
    throw std::invalid_argument(fmt::format("--accelat-factor must be in (0, 1], got {}", cfg.accelat_factor));
  if (cfg.accelat_cooldown < 0)
    throw std::invalid_argument(fmt::format("--accelat-cooldown must be >= 0 epochs, got {}", cfg.accelat_cooldown));
  if (!(cfg.accelat_floor >= 0 && std::isfinite(cfg.accelat_floor)))
    throw std::invalid_argument(fmt::format("--accelat-floor must be a finite number >= 0, got {}", cfg.accelat_floor));
}

std::unique_ptr<LrSchedule> make_schedule(const ScheduleConfig& cfg, double lr0, int64_t epochs) {
  validate(cfg, epochs);
  if (cfg.name == "accelat") return std::make_unique<AccelatSchedule>(cfg, lr0);
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
  } else if (cfg.name == "cyclic-restart") {
    // u = 5t/T counts the cycles (one rounding fewer than t / (T/5)); the lr restarts at lr0 at
    // each integer u < 5 and reaches 0 at the end of the fifth cycle.
    f = [lr0, T](double t) {
      const double u = std::clamp(5 * t / T, 0.0, 5.0);
      const double cycle = std::min(std::floor(u), 4.0);
      return lr0 * (1 - (u - cycle));
    };
  } else if (cfg.name == "range-test") {
    f = [T](double t) { return 1e-8 * std::pow(10.0, 10 * t / T); };
  } else {  // piecewise
    f = [lr0, T](double t) { return t < T / 3 ? lr0 : (t < 2 * T / 3 ? lr0 / 10 : lr0 / 100); };
  }
  return std::make_unique<ShapeSchedule>(std::move(f));
}

}  // namespace bulwark::training

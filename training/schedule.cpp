#include "training/schedule.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <functional>
#include <numbers>
#include <stdexcept>

#include "engine/check.h"
#include "engine/json_field.h"

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
  struct Constants {
    int64_t window, cooldown;
    double threshold, factor, floor;
    std::string signal;  // robust, verified or clean: which validation accuracy drives the rule
  };
  AccelatSchedule(Constants c, double lr0) : cfg_(c), lr_(lr0), quiet_(c.cooldown) {}

  double lr(double) const override { return lr_; }

  void on_epoch_end(const EpochMetrics& metrics) override {
    accuracies_.push_back(signal(metrics));
    const double mean = window_mean();
    ++quiet_;
    const auto window = static_cast<size_t>(cfg_.window);
    if (means_.size() > window && quiet_ > cfg_.cooldown && mean - means_.back() < cfg_.threshold) {
      lr_ *= cfg_.factor;
      quiet_ = 1;
      ++decays_;
    }
    lr_ = std::max(lr_, cfg_.floor);
    means_.push_back(mean);
  }

  nlohmann::json state() const override {
    return {{"lr", lr_}, {"quiet", quiet_}, {"decays", decays_}, {"accuracies", accuracies_}, {"means", means_}};
  }

  void load_state(const nlohmann::json& state) override {
    try {
      lr_ = state.at("lr").get<double>();
      quiet_ = json_get<int64_t>(state.at("quiet"));
      decays_ = json_get<int64_t>(state.at("decays"));
      accuracies_ = state.at("accuracies").get<std::vector<double>>();
      means_ = state.at("means").get<std::vector<double>>();
    } catch (const std::exception& e) {
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
  // The accuracy the rule follows this epoch.
  double signal(const EpochMetrics& m) const {
    if (cfg_.signal == "clean") return m.val_acc;
    if (cfg_.signal == "verified") {
      const auto it = m.extra.find("verified_val_acc");
      if (it == m.extra.end())
        throw std::invalid_argument("--accelat-signal verified needs a certified method (ibp, crown-ibp), whose "
                                    "validation reports verified accuracy, and --robust-val-size > 0");
      return it->second;
    }
    return m.robust_val_acc >= 0 ? m.robust_val_acc : m.val_acc;
  }

  double window_mean() const {
    const size_t count = std::min(accuracies_.size(), static_cast<size_t>(cfg_.window));
    double sum = 0;
    for (auto a = accuracies_.end() - static_cast<std::ptrdiff_t>(count); a != accuracies_.end(); ++a) sum += *a;
    return sum / static_cast<double>(count);
  }

  Constants cfg_;
  double lr_;
  int64_t quiet_;
  int64_t decays_ = 0;
  std::vector<double> accuracies_, means_;
};

// A schedule that is a function of (t; lr0, T) alone, without options of its own.
ScheduleInfo shape(std::string name, std::string summary, std::function<double(double t, double lr0, double T)> f) {
  ScheduleInfo info;
  info.name = std::move(name);
  info.summary = std::move(summary);
  info.make = [f](const OptionValues&, double lr0, int64_t epochs) {
    const double T = static_cast<double>(epochs);
    return std::make_unique<ShapeSchedule>([f, lr0, T](double t) { return f(t, lr0, T); });
  };
  return info;
}

ScheduleInfo multistep_schedule() {
  ScheduleInfo info;
  info.name = "multistep";
  info.summary = "lr0 * gamma^(milestones passed) (PyTorch's MultiStepLR; DEAT's x0.1 at 50% and 80%)";
  info.options = {
      Option::make("milestones", "--milestones", OptionType::reals,
                   "multistep: epochs at which the LR is multiplied by --gamma, comma-separated")
          .above(0)
          .default_by(
              [](const DefaultScope& s) -> DefaultChoice {
                const double T = static_cast<double>(s.epochs);
                return {nlohmann::ordered_json::array({T / 2, 3 * T / 4}), "T/2 and 3T/4"};
              },
              "T/2,3T/4"),
      Option::make("gamma", "--gamma", OptionType::real, "multistep: decay factor").above(0).at_most(1).default_to(0.1),
  };
  info.check = [](const OptionValues& o, int64_t epochs) {
    const std::vector<double> ms = o.reals("milestones");
    require(std::is_sorted(ms.begin(), ms.end()), fmt::format("--milestones must be ascending, got {}", fmt::join(ms, ",")));
    for (double m : ms)
      require(m <= static_cast<double>(epochs),
              fmt::format("milestone {} is outside (0, {}] (the number of epochs)", m, epochs));
  };
  info.make = [](const OptionValues& o, double lr0, int64_t) {
    return std::make_unique<ShapeSchedule>([lr0, ms = o.reals("milestones"), gamma = o.real("gamma")](double t) {
      const auto passed = std::upper_bound(ms.begin(), ms.end(), t) - ms.begin();
      return lr0 * std::pow(gamma, static_cast<double>(passed));
    });
  };
  return info;
}

ScheduleInfo cosine_schedule() {
  ScheduleInfo info;
  info.name = "cosine";
  info.summary = "min_lr + (lr0 - min_lr) (1 + cos(pi t / T)) / 2 (PyTorch's CosineAnnealingLR)";
  info.options = {Option::make("min_lr", "--min-lr", OptionType::real, "cosine: the final learning rate")
                      .at_least(0)
                      .default_to(0.0)};
  info.make = [](const OptionValues& o, double lr0, int64_t epochs) {
    const double T = static_cast<double>(epochs);
    return std::make_unique<ShapeSchedule>([lr0, T, lo = o.real("min_lr")](double t) {
      return lo + (lr0 - lo) * (1 + std::cos(std::numbers::pi * std::min(t, T) / T)) / 2;
    });
  };
  return info;
}

ScheduleInfo cyclic_schedule() {
  ScheduleInfo info;
  info.name = "cyclic";
  info.summary = "0 -> lr0 at peak*T -> 0 at T, linear (Fast-AT's triangle, Wong et al. 2020)";
  info.options = {Option::make("peak", "--cyclic-peak", OptionType::real,
                               "cyclic: where the LR peaks, as a fraction of training")
                      .above(0)
                      .below(1)
                      .default_to(0.4)};
  info.make = [](const OptionValues& o, double lr0, int64_t epochs) {
    const double T = static_cast<double>(epochs);
    return std::make_unique<ShapeSchedule>(
        [lr0, T, peak = o.real("peak")](double t) { return interp(t, {0, peak * T, T}, {0, lr0, 0}); });
  };
  return info;
}

ScheduleInfo accelat_schedule() {
  ScheduleInfo info;
  info.name = "accelat";
  info.summary = "AccelAT (Nikfam et al. 2022): lr0, multiplied by --accelat-factor when the windowed mean of the "
                 "robust validation accuracy gained less than --accelat-threshold in an epoch";
  info.options = {
      Option::make("accelat_window", "--accelat-window", OptionType::integer,
                   "accelat: epochs of accuracy averaged, and means needed before the first decay")
          .at_least(1)
          .default_to(5),
      Option::make("accelat_threshold", "--accelat-threshold", OptionType::real,
                   "accelat: decay when the averaged accuracy gained less than this in an epoch")
          .default_to(0.005),
      Option::make("accelat_factor", "--accelat-factor", OptionType::real,
                   "accelat: the LR is multiplied by this on a decay")
          .above(0)
          .at_most(1)
          .default_to(0.8),
      Option::make("accelat_cooldown", "--accelat-cooldown", OptionType::integer,
                   "accelat: epochs without a decay after one")
          .at_least(0)
          .default_to(5),
      Option::make("accelat_floor", "--accelat-floor", OptionType::real, "accelat: the lowest learning rate")
          .at_least(0)
          .default_to(1e-6),
  };
  info.options.push_back(
      Option::make("accelat_signal", "--accelat-signal", OptionType::text,
                   "accelat: the validation accuracy it follows: robust (PGD; clean when no robust validation runs), "
                   "verified (IBP, for the certified methods) or clean")
          .one_of({"robust", "verified", "clean"})
          .default_to(std::string("robust")));
  info.make = [](const OptionValues& o, double lr0, int64_t) {
    return std::make_unique<AccelatSchedule>(
        AccelatSchedule::Constants{o.integer("accelat_window"), o.integer("accelat_cooldown"),
                                   o.real("accelat_threshold"), o.real("accelat_factor"), o.real("accelat_floor"),
                                   o.text("accelat_signal")},
        lr0);
  };
  return info;
}

// The schedules, one line each.
std::vector<ScheduleInfo> builtin_schedules() {
  std::vector<ScheduleInfo> all;
  all.push_back(shape("constant", "lr0", [](double, double lr0, double) { return lr0; }));
  all.push_back(multistep_schedule());
  all.push_back(cosine_schedule());
  all.push_back(cyclic_schedule());
  all.push_back(shape("one-cycle", "lr0 -> 10 lr0 at 2T/5 -> lr0 at 4T/5 -> lr0/100 at T, linear (AccelAT's comparison)",
                      [](double t, double lr0, double T) {
                        return interp(t, {0, 2 * T / 5, 4 * T / 5, T}, {lr0, 10 * lr0, lr0, lr0 / 100});
                      }));
  all.push_back(shape("piecewise", "lr0, lr0/10 from T/3, lr0/100 from 2T/3 (AccelAT's comparison)",
                      [](double t, double lr0, double T) {
                        return t < T / 3 ? lr0 : (t < 2 * T / 3 ? lr0 / 10 : lr0 / 100);
                      }));
  // u = 5t/T counts the cycles (one rounding fewer than t / (T/5)); the lr restarts at lr0 at
  // each integer u < 5 and reaches 0 at the end of the fifth cycle.
  all.push_back(shape("cyclic-restart", "lr0 * (1 - frac(5t/T)): 5 linear cycles lr0 -> 0 (AccelAT's comparison)",
                      [](double t, double lr0, double T) {
                        const double u = std::clamp(5 * t / T, 0.0, 5.0);
                        const double cycle = std::min(std::floor(u), 4.0);
                        return lr0 * (1 - (u - cycle));
                      }));
  all.push_back(shape("range-test", "1e-8 * 10^(t / (T/10)), one decade per T/10, ignores lr0 (AccelAT's comparison)",
                      [](double t, double, double T) { return 1e-8 * std::pow(10.0, 10 * t / T); }));
  all.push_back(accelat_schedule());
  return all;
}

// Every schedule's option keys: the fields of the single block written before schedules had their own.
std::vector<std::string> all_schedule_keys() {
  std::vector<std::string> keys;
  for (const ScheduleInfo& s : schedule_registry())
    for (const Option& o : s.options) keys.push_back(o.key);
  return keys;
}

std::string owner(const std::string& name) { return fmt::format("schedule '{}'", name); }

}  // namespace

const std::vector<ScheduleInfo>& schedule_registry() {
  static const std::vector<ScheduleInfo> all = builtin_schedules();
  return all;
}

std::vector<std::string> schedule_names() {
  std::vector<std::string> names;
  for (const ScheduleInfo& s : schedule_registry()) names.push_back(s.name);
  return names;
}

const ScheduleInfo& schedule_info(const std::string& name) {
  for (const ScheduleInfo& s : schedule_registry())
    if (s.name == name) return s;
  throw std::invalid_argument(fmt::format("unknown schedule '{}' (available: {})", name, fmt::join(schedule_names(), ", ")));
}

std::vector<std::string> resolve_schedule(ScheduleConfig& cfg, int64_t epochs) {
  const ScheduleInfo& info = schedule_info(cfg.name);
  const DefaultScope scope{cfg.options, "", false, epochs};
  std::vector<std::string> notes = resolve_options(info.options, cfg.options, scope, owner(cfg.name));
  validate(cfg, epochs);
  return notes;
}

void validate(const ScheduleConfig& cfg, int64_t epochs) {
  const ScheduleInfo& info = schedule_info(cfg.name);
  check_complete(info.options, cfg.options, owner(cfg.name));
  if (info.check) info.check(cfg.options, epochs);
}

nlohmann::ordered_json to_json(const ScheduleConfig& cfg) {
  nlohmann::ordered_json j{{"name", cfg.name}};
  const nlohmann::ordered_json values = ordered_values(schedule_info(cfg.name).options, cfg.options);
  for (const auto& [key, value] : values.items()) j[key] = value;
  return j;
}

ScheduleConfig schedule_config_from_json(const nlohmann::json& j) {
  require(j.is_object() && j.contains("name") && j.at("name").is_string(),
          fmt::format("config key 'schedule' must be an object with a \"name\", got {}", j.dump()));
  ScheduleConfig c;
  c.name = j.at("name").get<std::string>();
  nlohmann::json block = j;
  // Blocks written before schedules had their own options held an empty list for "the default
  // milestones"; leave it to the default rule.
  if (block.contains("milestones") && block["milestones"].is_array() && block["milestones"].empty())
    block.erase("milestones");
  c.options = read_options(schedule_info(c.name).options, block, "schedule", all_schedule_keys());
  return c;
}

std::unique_ptr<LrSchedule> make_schedule(ScheduleConfig cfg, double lr0, int64_t epochs) {
  resolve_schedule(cfg, epochs);
  return schedule_info(cfg.name).make(cfg.options, lr0, epochs);
}

}  // namespace bulwark::training

#pragma once
// Learning-rate schedules, evaluated per iteration.
//
// The trainer asks lr(t) before every optimizer step, with t the training progress in epochs
// (batch i of n in epoch e: t = e + i / n), and calls on_epoch_end(metrics) after each epoch's
// validation. The fixed shapes below are functions of t alone; a metric-driven schedule (AccelAT)
// changes its state in on_epoch_end and saves that state through state()/load_state() so a
// resumed run continues it. T is the number of training epochs, lr0 the base learning rate.
//
//   constant   lr0
//   multistep  lr0 * gamma^(number of milestones <= t)                  (PyTorch MultiStepLR)
//   cosine     min_lr + (lr0 - min_lr) (1 + cos(pi t / T)) / 2             (CosineAnnealingLR)
//   cyclic     0 -> lr0 at peak*T -> 0 at T, linear (triangular)     (Fast-AT, Wong et al. 2020)
//   one-cycle  lr0 -> 10 lr0 at 2T/5 -> lr0 at 4T/5 -> lr0/100 at T, linear  (AccelAT's comparison)
//   piecewise  lr0, lr0/10 from T/3, lr0/100 from 2T/3                   (AccelAT's comparison)
//   cyclic-restart  lr0 * (1 - frac(5t/T)): 5 cycles of T/5, each lr0 -> 0, linear (AccelAT's comparison)
//   range-test 1e-8 * 10^(t / (T/10)): one decade per T/10, ignores lr0     (AccelAT's comparison)
//   accelat    AccelAT: lr0, multiplied by `factor` when the robust validation accuracy plateaus
//
// AccelAT (Nikfam, Marchisio, Martina, Shafique), implemented from the public pseudocode of
// docs/training.md. After each epoch, with a the robust validation accuracy (metrics.robust_val_acc;
// when that was not measured, i.e. is -1, the clean metrics.val_acc stands in for it):
//   acc.append(a); m = mean(acc[-window:]); quiet += 1
//   if len(means) > window and quiet > cooldown and m - means[-1] < threshold:
//       lr *= factor; quiet = 1
//   lr = max(lr, floor); means.append(m)
// with quiet = cooldown at the start (the pseudocode's 5 and 5), so the first decay can land at epoch
// window + 2, and after a decay the next one waits `cooldown` epochs. lr(t) is the current lr:
// constant within an epoch.
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "engine/options.h"

#include "training/metrics.h"

namespace bulwark::training {

// A schedule and its option values (given, then resolved). config.json's "schedule" block is
// {"name": ..., <the schedule's options>}.
struct ScheduleConfig {
  std::string name = "cosine";
  OptionValues options;
};

class LrSchedule {
 public:
  virtual ~LrSchedule() = default;
  // The learning rate at progress t in [0, T] epochs.
  virtual double lr(double t) const = 0;
  // After each epoch's validation. The fixed shapes ignore it.
  virtual void on_epoch_end(const EpochMetrics& metrics) {}
  // State that on_epoch_end changed, for checkpoints (empty object for the fixed shapes).
  virtual nlohmann::json state() const { return nlohmann::json::object(); }
  virtual void load_state(const nlohmann::json& state) {}
  // What on_epoch_end decided, for the epoch's metrics extras (empty for the fixed shapes).
  virtual std::map<std::string, double> epoch_report() const { return {}; }
};

// Each schedule describes itself (name, shape, options, factory) like a training method does
// (robust/registry.h); the registry in schedule.cpp holds them all, one line each, and is the one
// place that looks schedules up by name.
struct ScheduleInfo {
  std::string name;
  std::string summary;          // the shape, and the paper it comes from
  std::vector<Option> options;  // its own options
  // Checks between options, and against the run's length (milestones within the epochs).
  std::function<void(const OptionValues&, int64_t epochs)> check;
  std::function<std::unique_ptr<LrSchedule>(const OptionValues&, double lr0, int64_t epochs)> make;
};

const std::vector<ScheduleInfo>& schedule_registry();
// Throws std::invalid_argument "unknown schedule 'x' (available: ...)".
const ScheduleInfo& schedule_info(const std::string& name);
std::vector<std::string> schedule_names();

// Fills in the options cfg lacks (multistep's milestones depend on `epochs`) and checks them all.
// Returns one line per rule-chosen default.
std::vector<std::string> resolve_schedule(ScheduleConfig& cfg, int64_t epochs);
// Throws std::invalid_argument naming the bad option (a missing one counts).
void validate(const ScheduleConfig& cfg, int64_t epochs);
nlohmann::ordered_json to_json(const ScheduleConfig& cfg);
// Reads a "schedule" block; blocks written before schedules had their own options carried every
// schedule's fields, and the others' are skipped.
ScheduleConfig schedule_config_from_json(const nlohmann::json& j);

// The schedule `cfg` describes for base rate lr0 over `epochs` epochs; fills in the options cfg
// lacks from their defaults and validates.
std::unique_ptr<LrSchedule> make_schedule(ScheduleConfig cfg, double lr0, int64_t epochs);

}  // namespace bulwark::training

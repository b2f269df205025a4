#pragma once
// The per-epoch rules of the adversarial training methods, apart from any model or tensor, so
// each can be driven with scripted inputs (tests/test_methods.cpp) and read in one screen:
//
//   ReplaySchedule   how many replays (Free-AT, DEAT) or attack steps (M+PGD) the next epoch
//                    gets: FixedReplays (Free-AT's m), MplusRule (DEAT's M+ acceleration),
//                    DeatDSchedule and DeatPSchedule (DEAT's two ablations)
//   OverfitGuard     Fast-AT's catastrophic-overfitting guard
//
// Each rule saves what it adapts as JSON (doubles round-trip exactly), so a resumed run follows
// the same schedule bit for bit.
#include <cstdint>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "engine/json_field.h"

namespace bulwark::robust {

// state[key] as T, for load_state. A missing key or a wrong type means the checkpoint's method
// state was not written by `owner`: a clear error beats a silently different schedule.
template <class T>
T saved_state(const nlohmann::json& state, const char* key, const char* owner) {
  try {
    return json_get<T>(state.at(key));
  } catch (const std::exception& e) {
    throw std::runtime_error(fmt::format("the checkpoint's method state has no valid '{}' for {} ({}); it was written "
                                         "by another method or version: start the run again",
                                         key, owner, e.what()));
  }
}

// What a schedule may look at after epoch t (0-based).
struct EpochSignals {
  int64_t epoch = 0;
  double grad_l1 = 0;    // G: the epoch's summed input-gradient L1 magnitude (the M+ signal)
  double train_acc = 0;  // the epoch's training accuracy, as the method trained (DEAT-p)
};

class ReplaySchedule {
 public:
  virtual ~ReplaySchedule() = default;
  // The count the current epoch uses (replays per batch, or attack steps for M+PGD).
  virtual int r() const = 0;
  // Adapts to the epoch just finished; afterwards r() is the next epoch's count.
  virtual void epoch_end(const EpochSignals& signals) = 0;
  // The schedule's own values for the epoch's metrics (M+: "threshold").
  virtual void add_metrics(std::map<std::string, double>& extra) const {}
  virtual nlohmann::json state() const = 0;
  virtual void load_state(const nlohmann::json& state) = 0;
};

// Free-AT: the same m replays every epoch.
class FixedReplays final : public ReplaySchedule {
 public:
  explicit FixedReplays(int replays);
  int r() const override { return replays_; }
  void epoch_end(const EpochSignals&) override {}
  nlohmann::json state() const override;
  void load_state(const nlohmann::json& state) override;

 private:
  int replays_;
};

// M+ acceleration (Wang et al., DEAT): r grows when the input gradient's magnitude G grows,
// which the paper ties to the curvature of the loss landscape, i.e. to AT still having work
// to do. After epoch t:
//   t == 0:  r = r0 + 1                  (M+DEAT: 1 -> 2 as in docs/methods.md; M+PGD: 0 -> 1, assumed)
//   t == 1:  threshold = gamma * G       (the reference magnitude, once r is past its start)
//   t >= 2:  if G > threshold and r < r_max: threshold = gamma * G, r = r + 1
// threshold is 0 until epoch 1 sets it. r never exceeds r_max, the epoch-0 step included.
class MplusRule final : public ReplaySchedule {
 public:
  MplusRule(int r0, int r_max, double gamma);
  int r() const override { return r_; }
  double threshold() const { return threshold_; }
  void epoch_end(const EpochSignals& signals) override;
  void add_metrics(std::map<std::string, double>& extra) const override;
  nlohmann::json state() const override;
  void load_state(const nlohmann::json& state) override;

 private:
  int r_, r_max_;
  double gamma_;
  double threshold_ = 0;
};

// DEAT-d (ablation of Wang et al.): one more replay every d epochs, r = min(floor(t / d) + 1, r_max).
class DeatDSchedule final : public ReplaySchedule {
 public:
  DeatDSchedule(int epochs_per_increment, int r_max);
  int r() const override { return r_; }
  void epoch_end(const EpochSignals& signals) override;
  nlohmann::json state() const override;
  void load_state(const nlohmann::json& state) override;

 private:
  int d_, r_max_;
  int r_ = 1;
};

// DEAT-p (ablation of Wang et al.): one more replay (up to r_max) after every epoch whose
// training accuracy exceeds `acc_threshold` (0.4 in the paper).
class DeatPSchedule final : public ReplaySchedule {
 public:
  DeatPSchedule(double acc_threshold, int r_max);
  int r() const override { return r_; }
  void epoch_end(const EpochSignals& signals) override;
  nlohmann::json state() const override;
  void load_state(const nlohmann::json& state) override;

 private:
  double acc_threshold_;
  int r_max_;
  int r_ = 1;
};

// Fast-AT's guard against catastrophic overfitting (Wong, Rice, Kolter 2020): FGSM training can
// suddenly lose all PGD robustness within an epoch. After each epoch the method measures PGD
// accuracy on a fixed training batch; the guard fires when it falls more than `max_drop` below
// the best seen so far, and the run keeps the previous epoch's model.
class OverfitGuard {
 public:
  explicit OverfitGuard(double max_drop);
  // Records one epoch's robust accuracy; true when it is more than max_drop below the best seen
  // (the best is then left as it was), false otherwise (the best is updated).
  bool observe(double robust_acc);
  double best() const { return best_; }  // -1 before the first observation
  nlohmann::json state() const;
  void load_state(const nlohmann::json& state);

 private:
  double max_drop_;
  double best_ = -1;
};

}  // namespace bulwark::robust

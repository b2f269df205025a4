#include "robust/epoch_rules.h"

#include <fmt/format.h>

#include <algorithm>
#include <stdexcept>

namespace bulwark::robust {

namespace {

void require_count(int value, const char* what) {
  if (value < 1) throw std::invalid_argument(fmt::format("{} must be >= 1, got {}", what, value));
}

}  // namespace

FixedReplays::FixedReplays(int replays) : replays_(replays) { require_count(replays, "--replays"); }

nlohmann::json FixedReplays::state() const { return {{"r", replays_}}; }

void FixedReplays::load_state(const nlohmann::json& state) {
  const int saved_r = saved_state<int>(state, "r", "Free-AT");
  if (saved_r != replays_)
    throw std::runtime_error(fmt::format("the checkpoint replays each batch {} times but the run's --replays is {}",
                                         saved_r, replays_));
}

MplusRule::MplusRule(int r0, int r_max, double gamma) : r_(r0), r_max_(r_max), gamma_(gamma) {
  require_count(r_max, "--r-max");
  if (r0 < 0 || r0 > r_max) throw std::invalid_argument(fmt::format("M+: the start r0 = {} must be in [0, r_max = {}]", r0, r_max));
  if (!(gamma > 1)) throw std::invalid_argument(fmt::format("--gamma-mplus must be > 1, got {}", gamma));
}

void MplusRule::epoch_end(const EpochSignals& s) {
  if (s.epoch == 0) {
    r_ = std::min(r_ + 1, r_max_);
  } else if (s.epoch == 1) {
    threshold_ = gamma_ * s.grad_l1;
  } else if (s.grad_l1 > threshold_ && r_ < r_max_) {
    threshold_ = gamma_ * s.grad_l1;
    ++r_;
  }
}

void MplusRule::add_metrics(std::map<std::string, double>& extra) const { extra["threshold"] = threshold_; }

nlohmann::json MplusRule::state() const { return {{"r", r_}, {"threshold", threshold_}}; }

void MplusRule::load_state(const nlohmann::json& state) {
  r_ = saved_state<int>(state, "r", "M+");
  threshold_ = saved_state<double>(state, "threshold", "M+");
}

DeatDSchedule::DeatDSchedule(int epochs_per_increment, int r_max) : d_(epochs_per_increment), r_max_(r_max) {
  require_count(epochs_per_increment, "--deat-d");
  require_count(r_max, "--r-max");
}

void DeatDSchedule::epoch_end(const EpochSignals& s) {
  const int64_t next = s.epoch + 1;
  r_ = static_cast<int>(std::min<int64_t>(next / d_ + 1, r_max_));
}

nlohmann::json DeatDSchedule::state() const { return {{"r", r_}}; }

void DeatDSchedule::load_state(const nlohmann::json& state) { r_ = saved_state<int>(state, "r", "DEAT-d"); }

DeatPSchedule::DeatPSchedule(double acc_threshold, int r_max) : acc_threshold_(acc_threshold), r_max_(r_max) {
  require_count(r_max, "--r-max");
}

void DeatPSchedule::epoch_end(const EpochSignals& s) {
  if (s.train_acc > acc_threshold_ && r_ < r_max_) ++r_;
}

nlohmann::json DeatPSchedule::state() const { return {{"r", r_}}; }

void DeatPSchedule::load_state(const nlohmann::json& state) { r_ = saved_state<int>(state, "r", "DEAT-p"); }

OverfitGuard::OverfitGuard(double max_drop) : max_drop_(max_drop) {
  if (!(max_drop > 0)) throw std::invalid_argument(fmt::format("--guard-drop must be > 0, got {}", max_drop));
}

bool OverfitGuard::observe(double robust_acc) {
  if (best_ >= 0 && best_ - robust_acc > max_drop_) return true;
  best_ = std::max(best_, robust_acc);
  return false;
}

nlohmann::json OverfitGuard::state() const { return {{"best", best_}}; }

void OverfitGuard::load_state(const nlohmann::json& state) { best_ = saved_state<double>(state, "best", "the overfitting guard"); }

}  // namespace bulwark::robust

#pragma once
// Free-style replay, the step shared by Free-AT, M+DEAT and DEAT's two ablations (free.cpp,
// mplus_deat.cpp, deat_d.cpp, deat_p.cpp): each batch is replayed r times (r from the method's
// ReplaySchedule); every replay is one forward at x + delta and ONE backward that gives both the
// weight gradient (one optimizer step) and the input gradient g, with which
// delta <- clip(delta + alpha sign(g)) within the eps-ball and [0,1] (the fused pgd_step_). delta
// starts at zero (Free-AT) or U(-eps, eps) clipped to [0,1] (DEAT) for each batch and persists
// across the batch's replays. Work per batch: r forward and r backward passes; the loss and
// accuracy are reported once per replay.
//
// Extras every epoch: "r" (the replays it used), "alpha" (its step), "G" (the epoch's summed
// L1 magnitude of each batch's last input gradient, the M+ signal, free to measure here; its
// per-batch terms stay on the device until the epoch's end) and the schedule's own values.
#include <memory>
#include <string>

#include "robust/epoch_rules.h"
#include "robust/method.h"
#include "robust/step_log.h"

namespace bulwark::robust {

class ReplayTraining final : public Method {
 public:
  enum class Start { zero, uniform };
  struct Options {
    std::string name;
    double eps = 0, alpha = 0;
    Start start = Start::uniform;
    bool alpha_per_r = false;  // after r grows: alpha = max(eps / r, alpha_min)
    double alpha_min = 0;
  };
  ReplayTraining(Options options, std::unique_ptr<ReplaySchedule> schedule);
  std::string name() const override { return options_.name; }
  void train_batch(StepContext& ctx, const Tensor& x, const Tensor& y) override;
  EpochVerdict on_epoch_end(EpochEnd& end) override;
  nlohmann::json state() const override;
  void load_state(const nlohmann::json& state) override;

 private:
  Options options_;
  std::unique_ptr<ReplaySchedule> schedule_;
  double alpha_;
  double grad_l1_ = 0;                      // G carried into this epoch (a checkpoint's)
  DeviceSeries batch_grad_l1_{DType::f64};  // the L1 of each batch's last replay, from pgd_step_
};

}  // namespace bulwark::robust

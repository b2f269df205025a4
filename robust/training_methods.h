#pragma once
// The methods behind robust/methods.h's names (see robust/methods.cpp for the registry and the
// papers' defaults, docs/methods.md for the rules, constants and commands). Every method runs
// its passes with the model in training mode, as the authors' code does (BatchNorm uses and
// updates batch statistics during the attack too), and counts every pass in ctx.passes.
//
// Every adversarial method adds to the epoch's metrics: "r" (the replays or attack steps it
// used this epoch), "alpha" (its step size this epoch); the replay methods and M+PGD also "G"
// (the epoch's summed input-gradient L1 magnitude, the M+ signal, free to measure there), and
// the M+ methods "threshold" (after this epoch's rule; 0 until set). G's per-batch terms stay on
// the model's device (a DeviceSeries, robust/step_log.h) and are added up at the epoch's end.
#include <memory>
#include <string>

#include "robust/attacks.h"
#include "robust/epoch_rules.h"
#include "robust/method.h"
#include "robust/methods.h"

namespace bulwark::robust {

// Standard training (no inner maximisation): one forward, mean cross-entropy, one backward, one
// optimizer step per batch.
class StandardTraining final : public Method {
 public:
  std::string name() const override { return "standard"; }
  void train_batch(StepContext& ctx, const Tensor& x, const Tensor& y) override;
};

// PGD-AT (Madry, Makelov, Schmidt, Tsipras, Vladu 2018, "Towards deep learning models resistant
// to adversarial attacks"): min over the weights of the loss at the PGD-k example, i.e. every
// batch is replaced by its PGD-k example (random start, k signed steps of alpha, projected to
// the eps-ball and [0,1]) and the model takes one step on it. Work per batch: k + 1 forward and
// k + 1 backward passes. The paper's settings: `--method pgd` resolves to k = 7, alpha = 2/255
// at eps 8/255 on CIFAR-like data and k = 40, alpha = 0.01 at eps 0.3 on MNIST.
class PgdTraining final : public Method {
 public:
  PgdTraining(double eps, double alpha, int steps);
  std::string name() const override { return "pgd"; }
  void train_batch(StepContext& ctx, const Tensor& x, const Tensor& y) override;
  EpochVerdict on_epoch_end(EpochEnd& end) override;

 private:
  double eps_, alpha_;
  int steps_;
};

// Fast-AT (Wong, Rice, Kolter 2020, "Fast is better than free"): PGD-AT with a single FGSM step
// of alpha = 1.25 eps from a uniform random start, 2 forward and 2 backward passes per batch.
// FGSM training can collapse within an epoch ("catastrophic overfitting"), so after every epoch
// the guard runs PGD-`guard_steps` (step 2.5 eps / steps, fixed start) on the trainer's probe
// batch in eval mode and stops the run at the previous epoch's model when that accuracy falls
// more than `guard_drop` below the best seen (extras "guard_acc", "guard_best"). The paper's
// CIFAR-10 setting: `--method fgsm-rs --model preact_resnet18 --epochs 15 --schedule cyclic --lr 0.2
// --cyclic-peak 0.5` (alpha 10/255 at 8/255, the guard on with PGD-5 and a 0.2 drop: the defaults).
class FastAtTraining final : public Method {
 public:
  FastAtTraining(double eps, double alpha, bool guard, double guard_drop, int guard_steps);
  std::string name() const override { return "fgsm-rs"; }
  void train_batch(StepContext& ctx, const Tensor& x, const Tensor& y) override;
  EpochVerdict on_epoch_end(EpochEnd& end) override;
  nlohmann::json state() const override;
  void load_state(const nlohmann::json& state) override;

 private:
  double eps_, alpha_;
  bool guard_on_;
  int guard_steps_;
  OverfitGuard guard_;
};

// Free-style replay, the step shared by Free-AT, DEAT and its ablations: each batch is replayed
// r times (r from the schedule); every replay is one forward at x + delta and ONE backward that
// gives both the weight gradient (one optimizer step) and the input gradient g, with which
// delta <- clip(delta + alpha sign(g)) within the eps-ball and [0,1] (the fused pgd_step_). delta
// starts at zero (Free-AT) or U(-eps, eps) clipped to [0,1] (DEAT) for each batch and persists
// across the batch's replays. Work per batch: r forward and r backward passes; the loss and
// accuracy are reported once per replay.
//
//   free        Free-AT (Shafahi et al. 2019, "Adversarial training for free!"): m fixed replays,
//               alpha = eps, zero start. The paper's setting: `--method free --replays 8` with
//               --epochs divided by m (the same number of passes as the natural run). Shafahi's
//               code also carries delta from one batch to the next; here each batch starts afresh
//               from zero, as METHODS.md specifies.
//   mplus-deat  DEAT with M+ acceleration (Wang, Zhang, Zheng, Ruan, "Dynamic efficient
//               adversarial training guided by gradient magnitude"): r starts at 1 and follows
//               MplusRule on G = sum over batches of sum |grad| of each batch's last replay;
//               alpha = 10/255 at 8/255 (1.25 eps), gamma 1.01, r_max 8. With `alpha_per_r`,
//               after an increase alpha = max(eps / r, alpha_min). The paper's CIFAR-10 setting:
//               `--method mplus-deat --model preact_resnet18 --epochs 50 --lr 0.05 --schedule multistep
//               --milestones 25,40` (docs/methods.md has the full command lines).
//   deat-d      the paper's ablation: r = min(floor(t / d) + 1, r_max), d = 3, r_max = 5
//   deat-p      the paper's ablation: r += 1 after an epoch with training accuracy > 0.4, r_max 4
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

// M+PGD (Wang et al., M+ applied to PGD-AT): PGD-AT whose step count r follows MplusRule from
// r = 0 (epoch 0 trains on x + U(-eps, eps) alone; after it r = 1, assumed: METHODS.md only says
// "the same rule"), with step alpha = 2/255 at 8/255 and r_max 7; one weight update per batch.
// G sums sum |grad_x L| of the training pass: its input is made to require grad, so the one
// backward that gives the weight gradient gives the input gradient too. Work per batch: r + 1
// forward and r + 1 backward passes. The paper's setting: `--method mplus-pgd` (CIFAR-like data).
class MplusPgdTraining final : public Method {
 public:
  MplusPgdTraining(double eps, double alpha, int r_max, double gamma);
  std::string name() const override { return "mplus-pgd"; }
  void train_batch(StepContext& ctx, const Tensor& x, const Tensor& y) override;
  EpochVerdict on_epoch_end(EpochEnd& end) override;
  nlohmann::json state() const override;
  void load_state(const nlohmann::json& state) override;

 private:
  double eps_, alpha_;
  MplusRule rule_;
  double grad_l1_ = 0;                      // G carried into this epoch (a checkpoint's)
  DeviceSeries batch_grad_l1_{DType::f32};  // sum |grad_x L| of each batch's training pass
};

// Every method but "standard", from a resolved and validated config.
std::unique_ptr<Method> make_adversarial_method(const MethodConfig& cfg);

}  // namespace bulwark::robust

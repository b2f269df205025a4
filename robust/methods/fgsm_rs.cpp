// Fast-AT (Wong, Rice, Kolter 2020, "Fast is better than free: revisiting adversarial
// training"): PGD-AT with a single FGSM step of alpha = 1.25 eps from a uniform random start,
// 2 forward and 2 backward passes per batch (the attack runs in training mode, as in their code).
//
// FGSM training can collapse within an epoch ("catastrophic overfitting": robust accuracy falls to
// near 0 while FGSM accuracy stays high), so after every epoch the guard runs PGD-`guard_steps`
// (step 2.5 eps / steps, a fixed random start) on the trainer's probe batch in eval mode, and
// stops the run at the previous epoch's model when that accuracy falls more than `guard_drop`
// below the best seen (extras "guard_acc", "guard_best").
#include "models/module.h"
#include "robust/epoch_rules.h"
#include "robust/method_steps.h"
#include "robust/registry.h"

namespace bulwark::robust {

namespace {

// The Philox stream of the guard's probe attack: fixed, so every epoch's probe starts from the
// same random point and the accuracies it compares differ only by the model.
constexpr uint64_t kGuardSeed = 0x6A2D5EED;

class FastAtTraining final : public Method {
 public:
  FastAtTraining(double eps, double alpha, bool guard, double guard_drop, int guard_steps)
      : eps_(eps), alpha_(alpha), guard_on_(guard), guard_steps_(guard_steps), guard_(guard_drop) {}
  std::string name() const override { return "fgsm-rs"; }
  bool capturable() const override { return true; }

  void train_batch(StepContext& ctx, const Tensor& x, const Tensor& y) override {
    const double s = ctx.eps_scale;
    const Tensor x_adv = counted_attack(ctx, x, y, linf_attack(AttackKind::fgsm_rs, s * eps_, s * alpha_, 1));
    train_on(ctx, x_adv, y, false);
  }

  EpochVerdict on_epoch_end(EpochEnd& end) override {
    end.extra["r"] = 1;
    end.extra["alpha"] = alpha_;
    if (!guard_on_) return EpochVerdict::keep_going;
    double probe_acc = 0;
    {
      EvalModeGuard eval(end.model);
      AttackOptions probe = linf_attack(AttackKind::pgd, eps_, 0.0, guard_steps_);  // alpha 0: 2.5 eps / steps
      probe.seed = kGuardSeed;
      probe_acc = robust_accuracy(end.model, end.probe_x, end.probe_y, probe);
    }
    const bool collapsed = guard_.observe(probe_acc);
    end.extra["guard_acc"] = probe_acc;
    end.extra["guard_best"] = guard_.best();
    return collapsed ? EpochVerdict::stop_at_previous : EpochVerdict::keep_going;
  }

  nlohmann::json state() const override { return {{"guard", guard_.state()}}; }
  void load_state(const nlohmann::json& state) override {
    guard_.load_state(saved_state<nlohmann::json>(state, "guard", "fgsm-rs"));
  }

 private:
  double eps_, alpha_;
  bool guard_on_;
  int guard_steps_;
  OverfitGuard guard_;
};

}  // namespace

MethodInfo fgsm_rs_method() {
  MethodInfo m;
  m.name = "fgsm-rs";
  m.title = "FGSM-RS / Fast-AT (Wong, Rice, Kolter 2020)";
  m.summary =
      "One FGSM step of alpha = 1.25 eps from a uniform random start per batch (2 forward and 2 backward "
      "passes), with the catastrophic-overfitting guard: after every epoch PGD-5 on a fixed training batch; "
      "when its accuracy falls more than 0.2 below the best seen, training stops and keeps the previous "
      "epoch's model. The paper's CIFAR-10 setting: --model preact_resnet18 --epochs 15 --schedule cyclic "
      "--lr 0.2 --cyclic-peak 0.5.";
  m.options = {
      eps_option(),
      alpha_times_eps(1.25, "Wong et al.'s 10/255 at 8/255"),
      eps_ramp_option(),
      Option::make("guard", "--guard", OptionType::flag, "fgsm-rs: the catastrophic-overfitting guard")
          .default_to(true),
      Option::make("guard_drop", "--guard-drop", OptionType::real,
                   "fgsm-rs guard: stop when the probe's robust accuracy falls this far below the best")
          .above(0)
          .at_most(1)
          .default_to(0.2),
      Option::make("guard_steps", "--guard-steps", OptionType::integer, "fgsm-rs guard: PGD steps on the probe batch")
          .at_least(1)
          .at_most(10000)
          .default_to(5),
  };
  m.make = [](const OptionValues& o) {
    return std::make_unique<FastAtTraining>(o.real("eps"), o.real("alpha"), o.flag("guard"), o.real("guard_drop"),
                                            static_cast<int>(o.integer("guard_steps")));
  };
  return m;
}

}  // namespace bulwark::robust

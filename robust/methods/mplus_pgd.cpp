// M+PGD (Wang et al., M+ applied to PGD-AT): PGD-AT whose step count r follows the M+ rule
// (epoch_rules.h) from r = 0 (epoch 0 trains on x + U(-eps, eps) alone; after it r = 1, assumed:
// the paper only says "the same rule"), with step alpha = 2/255 at 8/255 and r_max 7; one weight
// update per batch. G sums sum |grad_x L| of the training pass: its input is made to require
// grad, so the one backward that gives the weight gradient gives the input gradient too. Work
// per batch: r + 1 forward and r + 1 backward passes.
#include "engine/ops.h"
#include "robust/epoch_rules.h"
#include "robust/method_steps.h"
#include "robust/registry.h"

namespace bulwark::robust {

namespace {

class MplusPgdTraining final : public Method {
 public:
  MplusPgdTraining(double eps, double alpha, int r_max, double gamma)
      : eps_(eps), alpha_(alpha), rule_(0, r_max, gamma) {}
  std::string name() const override { return "mplus-pgd"; }

  void train_batch(StepContext& ctx, const Tensor& x, const Tensor& y) override {
    // With r = 0 steps the attack is its random start alone: x + U(-eps, eps), clipped to [0,1].
    const double s = ctx.eps_scale;
    const Tensor x_adv = counted_attack(ctx, x, y, linf_attack(AttackKind::pgd, s * eps_, s * alpha_, rule_.r()));
    const Tensor input_grad = train_on(ctx, x_adv, y, true);
    batch_grad_l1_.append(input_grad.device()).copy_(sum(abs(input_grad)).reshape({1}));
  }

  EpochVerdict on_epoch_end(EpochEnd& end) override {
    const double G = end.sum_over_ranks(epoch_grad_l1(grad_l1_, batch_grad_l1_));
    end.extra["r"] = rule_.r();
    end.extra["alpha"] = alpha_;
    end.extra["G"] = G;
    rule_.epoch_end({end.epoch, G, end.train_acc});
    rule_.add_metrics(end.extra);
    grad_l1_ = 0;
    batch_grad_l1_.clear();
    return EpochVerdict::keep_going;
  }

  nlohmann::json state() const override {
    return {{"rule", rule_.state()}, {"G", epoch_grad_l1(grad_l1_, batch_grad_l1_)}};
  }

  void load_state(const nlohmann::json& state) override {
    rule_.load_state(saved_state<nlohmann::json>(state, "rule", "mplus-pgd"));
    grad_l1_ = saved_state<double>(state, "G", "mplus-pgd");
    batch_grad_l1_.clear();
  }

 private:
  double eps_, alpha_;
  MplusRule rule_;
  double grad_l1_ = 0;                      // G carried into this epoch (a checkpoint's)
  DeviceSeries batch_grad_l1_{DType::f32};  // sum |grad_x L| of each batch's training pass
};

}  // namespace

MethodInfo mplus_pgd_method() {
  MethodInfo m;
  m.name = "mplus-pgd";
  m.title = "M+PGD (Wang et al.)";
  m.summary =
      "PGD-AT whose attack step count r follows the M+ rule from r = 0 (epoch 0 trains on uniform noise alone), "
      "step 2/255 at 8/255 (eps / 4), r_max 7, one weight update per batch; G comes from the training pass's "
      "input gradient.";
  m.options = {
      eps_option(),         alpha_times_eps(0.25, "M+PGD's 2/255 at 8/255"), eps_ramp_option(), r_max_option(7),
      gamma_mplus_option(),
  };
  m.make = [](const OptionValues& o) {
    return std::make_unique<MplusPgdTraining>(o.real("eps"), o.real("alpha"), static_cast<int>(o.integer("r_max")),
                                              o.real("gamma"));
  };
  return m;
}

}  // namespace bulwark::robust

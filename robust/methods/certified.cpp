// Certified training: the methods whose loss is a verified bound rather than an attack.
//
// IBP (Gowal, Dvijotham, Stanforth, Bunel, Qin, Uesato, Arandjelovic, Mann, Kohli 2018, "On the
// effectiveness of interval bound propagation for training verifiably robust models"): each
// batch's loss mixes the clean cross-entropy with the verified loss, the cross-entropy of the
// worst-case logits over the eps-box (robust/bounds.h):
//
//   L = kappa CE(f(x), y) + (1 - kappa) CE(wc(x, eps_t), y)
//
// with eps_t growing from 0 to eps over --eps-ramp epochs (the trainer's warm-up; the paper ramps
// over the first part of training) and kappa falling from 1 to --kappa-end (0.5, the paper's) on
// the same ramp. The paper's MNIST setting trains at eps 0.4 to test at 0.3.
//
// CROWN-IBP (Zhang, Chen, Xiao, Gowal, Stanforth, Li, Boning, Hsieh 2020, "Towards stable and
// efficient training of verifiably robust neural networks"): the same loss with
//   wc = beta * (CROWN-IBP bound) + (1 - beta) * (IBP bound),
// beta falling from 1 to --beta-end (0, the paper's) on the ramp: the tighter CROWN-IBP bound
// guides the start, IBP's the end. IBP is the case beta = 0 throughout.
//
// A batch costs the clean forward and the bound pass (the interval pass, and CROWN's backward
// pass while beta > 0: counted as one forward and, for CROWN, one more), and one backward through
// all of it (counted as many). BatchNorm in training mode normalises the bound pass with the
// batch statistics of the box centers.
#include <fmt/format.h>

#include <utility>

#include "engine/autograd.h"
#include "engine/ops.h"
#include "robust/bounds.h"
#include "robust/method_steps.h"
#include "robust/registry.h"

namespace bulwark::robust {

namespace {

class BoundTraining final : public Method {
 public:
  // beta goes from beta_start to beta_end on the ramp (IBP: 0 -> 0).
  BoundTraining(std::string name, double eps, double kappa_end, double beta_start, double beta_end)
      : name_(std::move(name)), eps_(eps), kappa_end_(kappa_end), beta_start_(beta_start), beta_end_(beta_end) {}
  std::string name() const override { return name_; }

  void train_batch(StepContext& ctx, const Tensor& x, const Tensor& y) override {
    const double s = ctx.eps_scale;
    kappa_ = 1 - (1 - kappa_end_) * s;
    beta_ = beta_start_ + (beta_end_ - beta_start_) * s;
    ctx.optimizer.zero_grad();
    const Tensor logits = ctx.model(x);
    const Tensor worst = mixed_worst_case_logits(ctx.model, x, y, s * eps_, beta_);
    const Tensor loss = cross_entropy(logits, y) * kappa_ + cross_entropy(worst, y) * (1 - kappa_);
    const int64_t passes = beta_ > 0 ? 3 : 2;  // clean, interval, and CROWN's backward pass
    ctx.passes.fwd += passes;
    ctx.optimizer.backward(loss, true);
    ctx.passes.bwd += passes;
    ctx.optimizer.step();
    ctx.log.record(loss, correct_predictions(logits, y), x.size(0));
  }

  EpochVerdict on_epoch_end(EpochEnd& end) override {
    end.extra["kappa"] = kappa_;
    if (beta_start_ > 0 || beta_end_ > 0) end.extra["beta"] = beta_;
    return EpochVerdict::keep_going;
  }

 private:
  std::string name_;
  double eps_, kappa_end_, beta_start_, beta_end_, kappa_ = 1, beta_ = 0;
};

Option kappa_end_option() {
  return Option::make("kappa_end", "--kappa-end", OptionType::real,
                      "ibp, crown-ibp: the clean loss's weight kappa at the end of the eps ramp (it starts at 1)")
      .at_least(0)
      .at_most(1)
      .default_to(0.5);
}

}  // namespace

MethodInfo ibp_method() {
  MethodInfo m;
  m.name = "ibp";
  m.title = "IBP training (Gowal et al. 2018)";
  m.summary =
      "Verifiably robust training: loss = kappa CE(f(x), y) + (1 - kappa) CE(worst-case logits, y), the worst case "
      "over the eps-box by interval bound propagation; eps and kappa (1 -> --kappa-end) follow the --eps-ramp "
      "warm-up. The paper trains MNIST at eps 0.4 to test at 0.3, ramping eps over the first part of training.";
  m.adversarial = false;  // it trains on bounds, not on attacked inputs
  m.certified = true;
  m.options = {eps_option(), kappa_end_option(), eps_ramp_option(), eps_ramp_start_option(), eps_ramp_shape_option()};
  m.make = [](const OptionValues& o) {
    return std::make_unique<BoundTraining>("ibp", o.real("eps"), o.real("kappa_end"), 0.0, 0.0);
  };
  return m;
}

MethodInfo crown_ibp_method() {
  MethodInfo m;
  m.name = "crown-ibp";
  m.title = "CROWN-IBP training (Zhang et al. 2020)";
  m.summary =
      "Verifiably robust training on beta * CROWN-IBP + (1 - beta) * IBP worst-case logits, beta 1 -> --beta-end and "
      "kappa 1 -> --kappa-end over the --eps-ramp warm-up: CROWN's tighter bound early, IBP's cheaper one late. "
      "The paper: kappa_end 0 or 0.5, beta_end 0.";
  m.adversarial = false;
  m.certified = true;
  m.options = {eps_option(), kappa_end_option(),
               Option::make("beta_end", "--beta-end", OptionType::real,
                            "crown-ibp: the CROWN-IBP bound's weight beta at the end of the eps ramp (it starts at 1)")
                   .at_least(0)
                   .at_most(1)
                   .default_to(0.0),
               eps_ramp_option(), eps_ramp_start_option(), eps_ramp_shape_option()};
  m.make = [](const OptionValues& o) {
    return std::make_unique<BoundTraining>("crown-ibp", o.real("eps"), o.real("kappa_end"), 1.0, o.real("beta_end"));
  };
  return m;
}

}  // namespace bulwark::robust

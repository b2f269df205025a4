// IBP training (Gowal, Dvijotham, Stanforth, Bunel, Qin, Uesato, Arandjelovic, Mann, Kohli 2018,
// "On the effectiveness of interval bound propagation for training verifiably robust models"):
// each batch's loss mixes the clean cross-entropy with the verified loss, the cross-entropy of
// the worst-case logits that interval bound propagation gives over the eps-box (robust/bounds.h):
//
//   L = kappa CE(f(x), y) + (1 - kappa) CE(wc(x, eps_t), y)
//
// with eps_t growing from 0 to eps over --eps-ramp epochs (the trainer's warm-up; the paper ramps
// over the first part of training) and kappa falling from 1 to --kappa-end (0.5, the paper's) on
// the same ramp. A batch costs the clean forward and the bound pass (a center and a radius pass:
// counted as one forward each), and one backward through both (counted as two). BatchNorm in
// training mode normalises the bound pass with the batch statistics of the box centers.
// The paper's MNIST setting: eps_train 0.4 for eps_test 0.3 (train at the larger radius).
#include <fmt/format.h>

#include "engine/autograd.h"
#include "engine/ops.h"
#include "robust/bounds.h"
#include "robust/method_steps.h"
#include "robust/registry.h"

namespace bulwark::robust {

namespace {

class IbpTraining final : public Method {
 public:
  IbpTraining(double eps, double kappa_end) : eps_(eps), kappa_end_(kappa_end) {}
  std::string name() const override { return "ibp"; }

  void train_batch(StepContext& ctx, const Tensor& x, const Tensor& y) override {
    const double s = ctx.eps_scale;
    kappa_ = 1 - (1 - kappa_end_) * s;
    ctx.optimizer.zero_grad();
    const Tensor logits = ctx.model(x);
    const Tensor worst = worst_case_logits(ctx.model, x, y, s * eps_);
    const Tensor loss = cross_entropy(logits, y) * kappa_ + cross_entropy(worst, y) * (1 - kappa_);
    ctx.passes.fwd += 2;
    backward(loss);
    ctx.passes.bwd += 2;
    ctx.optimizer.step();
    ctx.log.record(loss, correct_predictions(logits, y), x.size(0));
  }

  EpochVerdict on_epoch_end(EpochEnd& end) override {
    end.extra["kappa"] = kappa_;
    return EpochVerdict::keep_going;
  }

 private:
  double eps_, kappa_end_, kappa_ = 1;
};

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
  m.options = {
      eps_option(),
      Option::make("kappa_end", "--kappa-end", OptionType::real,
                   "ibp: the clean loss's weight kappa at the end of the eps ramp (it starts at 1)")
          .at_least(0)
          .at_most(1)
          .default_to(0.5),
      eps_ramp_option(),
  };
  m.make = [](const OptionValues& o) { return std::make_unique<IbpTraining>(o.real("eps"), o.real("kappa_end")); };
  return m;
}

}  // namespace bulwark::robust

// PGD-AT (Madry, Makelov, Schmidt, Tsipras, Vladu 2018, "Towards deep learning models resistant
// to adversarial attacks"): min over the weights of the loss at the PGD-k example. Every batch is
// replaced by its PGD-k example (random start U(-eps, eps), k signed steps of alpha, projected to
// the eps-ball and [0,1]) and the model takes one step on it: k + 1 forward and k + 1 backward
// passes per batch. The attack sees the model in training mode, as in Madry's and Rice et al.'s
// code: its forwards normalise with batch statistics and update BatchNorm's running ones.
//
// The step size. k steps of alpha travel k * alpha; a step that cannot cross the ball in k steps
// is a weak attack in disguise, so the default is the papers' own step where (input, eps, k) is
// a paper's setting and Madry's 2.5 eps / k (cross the ball 2.5 times) everywhere else:
//   MNIST-like, eps 0.3, k 40   -> 0.01   (Madry et al.'s MNIST setting)
//   CIFAR-like, eps 8/255, k 7  -> 2/255  (Madry et al.'s CIFAR-10 setting)
//   otherwise                   -> 2.5 eps / k
// and k itself defaults to the paper's in the paper's setting (40, 7), else to 10.
#include <fmt/format.h>

#include <cmath>

#include "robust/method_steps.h"
#include "robust/registry.h"

namespace bulwark::robust {

namespace {

class PgdTraining final : public Method {
 public:
  PgdTraining(double eps, double alpha, int steps, bool interval)
      : eps_(eps), alpha_(alpha), steps_(steps), interval_(interval) {}
  std::string name() const override { return "pgd"; }
  bool capturable() const override { return !interval_; }  // the interval attack is not tested under capture

  void train_batch(StepContext& ctx, const Tensor& x, const Tensor& y) override {
    const double s = ctx.eps_scale;
    if (!interval_) {
      train_on(ctx, counted_attack(ctx, x, y, linf_attack(AttackKind::pgd, s * eps_, s * alpha_, steps_)), y, false);
      return;
    }
    // The interval attack (robust/interval_attack.h), one restart from x. Its symbolic bounds carry
    // d + 3 rows a sample: passes are counted as the images it ran over batches of this size.
    AttackOptions o = linf_attack(AttackKind::interval, s * eps_, s * alpha_, steps_);
    o.seed = ctx.gen.seed();
    o.offset = ctx.gen.reserve(attack_counters(o, x.shape()));
    AttackStats stats;
    const Tensor x_adv = attack(ctx.model, x, y, o, &stats);
    const int64_t n = x.size(0);
    ctx.passes.fwd += (stats.forward_images + n - 1) / n;
    ctx.passes.bwd += (stats.backward_images + n - 1) / n;
    train_on(ctx, x_adv, y, false);
  }

  EpochVerdict on_epoch_end(EpochEnd& end) override {
    end.extra["r"] = steps_;
    end.extra["alpha"] = alpha_;
    return EpochVerdict::keep_going;
  }

 private:
  double eps_, alpha_;
  int steps_;
  bool interval_;
};

bool near(double a, double b) { return std::abs(a - b) <= 1e-9; }

DefaultChoice pgd_alpha(const DefaultScope& s) {
  const double eps = s.values.real("eps");
  const int64_t k = s.values.integer("steps");
  if (s.mnist_like && near(eps, 0.3) && k == 40) return {0.01, "Madry et al.'s MNIST step at eps 0.3, k = 40"};
  if (!s.mnist_like && near(eps, 8.0 / 255.0) && k == 7)
    return {2.0 / 255.0, "Madry et al.'s CIFAR-10 step 2/255 at eps 8/255, k = 7"};
  return {2.5 * eps / static_cast<double>(k), fmt::format("2.5 eps / k = 2.5 * {:.6g} / {}", eps, k)};
}

}  // namespace

MethodInfo pgd_method() {
  MethodInfo m;
  m.name = "pgd";
  m.title = "PGD-AT (Madry et al. 2018)";
  m.summary =
      "Trains on the PGD-k example of every batch (random start, k signed steps of alpha, projected to the "
      "eps-ball and [0,1]): k + 1 forward and backward passes per batch. The paper's settings are the "
      "defaults: k = 40, alpha = 0.01 at eps 0.3 on MNIST; k = 7, alpha = 2/255 at eps 8/255 on CIFAR-10.";
  m.options = {
      eps_option(),
      Option::make("steps", "--steps", OptionType::integer, "pgd: attack steps k per batch")
          .at_least(1)
          .at_most(10000)
          .default_by(
              [](const DefaultScope& s) -> DefaultChoice {
                const double eps = s.values.real("eps");
                if (s.mnist_like && near(eps, 0.3)) return {40, "Madry et al.'s MNIST setting at eps 0.3"};
                if (!s.mnist_like && near(eps, 8.0 / 255.0)) return {7, "Madry et al.'s CIFAR-10 setting at 8/255"};
                return {10, "no paper's setting: 10 steps"};
              },
              "40 at MNIST-like eps 0.3, 7 at CIFAR-like eps 8/255 (the papers'), else 10"),
      alpha_option(pgd_alpha,
                   "the paper's step in the paper's setting (0.01 at MNIST eps 0.3 with k = 40; 2/255 at "
                   "CIFAR eps 8/255 with k = 7), else 2.5 eps / k"),
      eps_ramp_option(),
      Option::make("inner", "--inner", OptionType::text,
                   "pgd: the inner maximisation: pgd, or interval (the interval attack: PGD-k from x, then steps "
                   "guided by the symbolic bound where it fails; MNIST-scale, docs/attacks.md)")
          .one_of({"pgd", "interval"})
          .default_to("pgd"),
  };
  m.make = [](const OptionValues& o) {
    return std::make_unique<PgdTraining>(o.real("eps"), o.real("alpha"), static_cast<int>(o.integer("steps")),
                                         o.text("inner") == "interval");
  };
  return m;
}

}  // namespace bulwark::robust

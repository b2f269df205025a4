// M+DEAT (Wang, Zhang, Zheng, Ruan, "Dynamic efficient adversarial training guided by gradient
// magnitude"; code TrustAI/DEAT): Free-style replay (replay.h) from a uniform start whose replay
// count r starts at 1 and follows the M+ rule (epoch_rules.h: r = 2 after epoch 0; after epoch 1
// the threshold is gamma G; later r += 1 whenever G exceeds it, and the threshold moves to gamma G),
// with G = the epoch's sum of |grad| over each batch's last replay. With --alpha-per-r, after an
// increase alpha = max(eps / r, alpha_min).
#include <fmt/format.h>

#include "robust/method_steps.h"
#include "robust/methods/replay.h"
#include "robust/registry.h"

namespace bulwark::robust {

MethodInfo mplus_deat_method() {
  MethodInfo m;
  m.name = "mplus-deat";
  m.steps_once_per_batch = false;  // a step on every replay
  m.title = "M+DEAT (Wang et al.)";
  m.summary =
      "Free-style replay from a uniform random start whose replay count r grows when the epoch's input-gradient "
      "L1 magnitude G grows (the M+ rule: r starts at 1, gamma 1.01, r_max 8, alpha 1.25 eps). The paper's "
      "CIFAR-10 setting: --model preact_resnet18 --epochs 50 --optimizer sgd --lr 0.05 --schedule multistep "
      "--milestones 25,40.";
  m.options = {
      eps_option(),
      alpha_times_eps(1.25, "the paper's 10/255 at 8/255"),
      eps_ramp_option(),
      r_max_option(8),
      gamma_mplus_option(),
      Option::make("alpha_per_r", "--alpha-per-r", OptionType::flag,
                   "mplus-deat: after r grows, alpha = max(eps / r, --alpha-min)")
          .default_to(false),
      Option::make("alpha_min", "--alpha-min", OptionType::real, "mplus-deat with --alpha-per-r: the smallest step")
          .at_least(0)
          .default_by(
              [](const DefaultScope& s) -> DefaultChoice {
                if (!s.values.flag("alpha_per_r")) return {0.0, "unused without --alpha-per-r"};
                return {s.values.real("eps") / static_cast<double>(s.values.integer("r_max")),
                        "assumed: eps / r_max, the smallest eps / r the rule reaches"};
              },
              "eps / r_max (assumed), with --alpha-per-r"),
  };
  m.make = [](const OptionValues& o) {
    ReplayTraining::Options r{"mplus-deat",          o.real("eps"),
                              o.real("alpha"),       ReplayTraining::Start::uniform,
                              o.flag("alpha_per_r"), o.real("alpha_min")};
    return std::make_unique<ReplayTraining>(
        r, std::make_unique<MplusRule>(1, static_cast<int>(o.integer("r_max")), o.real("gamma")));
  };
  return m;
}

}  // namespace bulwark::robust

// DEAT-p, an ablation of DEAT (Wang et al.): Free-style replay (replay.h) from a uniform start
// whose replay count grows by one after every epoch whose training accuracy exceeds 0.4, r_max 4.
#include "robust/method_steps.h"
#include "robust/methods/replay.h"
#include "robust/registry.h"

namespace bulwark::robust {

MethodInfo deat_p_method() {
  MethodInfo m;
  m.name = "deat-p";
  m.steps_once_per_batch = false;  // a step on every replay
  m.title = "DEAT-p (Wang et al., ablation)";
  m.summary =
      "DEAT's replay driven by training accuracy instead of M+: r += 1 after an epoch whose training accuracy "
      "exceeds 0.4, up to r_max = 4, alpha 1.25 eps.";
  m.options = {
      eps_option(),
      alpha_times_eps(1.25, "the paper's 10/255 at 8/255"),
      eps_ramp_option(),
      r_max_option(4),
      Option::make("deat_p_acc", "--deat-p-acc", OptionType::real, "deat-p: training accuracy that adds a replay")
          .at_least(0)
          .at_most(1)
          .default_to(0.4),
  };
  m.make = [](const OptionValues& o) {
    ReplayTraining::Options r{"deat-p", o.real("eps"), o.real("alpha"), ReplayTraining::Start::uniform, false, 0};
    return std::make_unique<ReplayTraining>(
        r, std::make_unique<DeatPSchedule>(o.real("deat_p_acc"), static_cast<int>(o.integer("r_max"))));
  };
  return m;
}

}  // namespace bulwark::robust

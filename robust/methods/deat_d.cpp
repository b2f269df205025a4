// DEAT-d, an ablation of DEAT (Wang et al.): Free-style replay (replay.h) from a uniform start
// whose replay count grows on a fixed timetable, r = min(floor(t / d) + 1, r_max), d = 3, r_max 5.
#include "robust/method_steps.h"
#include "robust/methods/replay.h"
#include "robust/registry.h"

namespace bulwark::robust {

MethodInfo deat_d_method() {
  MethodInfo m;
  m.name = "deat-d";
  m.steps_once_per_batch = false;  // a step on every replay
  m.title = "DEAT-d (Wang et al., ablation)";
  m.summary =
      "DEAT's replay with a fixed timetable instead of M+: r = min(floor(t / d) + 1, r_max) at epoch t, "
      "d = 3, r_max = 5, alpha 1.25 eps.";
  m.options = {
      eps_option(),
      alpha_times_eps(1.25, "the paper's 10/255 at 8/255"),
      eps_ramp_option(),
      r_max_option(5),
      Option::make("deat_d", "--deat-d", OptionType::integer, "deat-d: epochs per replay increment")
          .at_least(1)
          .default_to(3),
  };
  m.make = [](const OptionValues& o) {
    ReplayTraining::Options r{"deat-d", o.real("eps"), o.real("alpha"), ReplayTraining::Start::uniform, false, 0};
    return std::make_unique<ReplayTraining>(r, std::make_unique<DeatDSchedule>(static_cast<int>(o.integer("deat_d")),
                                                                               static_cast<int>(o.integer("r_max"))));
  };
  return m;
}

}  // namespace bulwark::robust

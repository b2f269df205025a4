// Free-AT (Shafahi et al. 2019, "Adversarial training for free!"): every batch is replayed m
// times; each replay's one backward gives the weight step and the perturbation step (replay.h),
// with alpha = eps from a zero start. The paper trains --epochs / m epochs, so the run makes as
// many passes as natural training. Shafahi's code also carries delta from one batch to the next;
// here each batch starts afresh from zero.
#include "robust/method_steps.h"
#include "robust/methods/replay.h"
#include "robust/registry.h"

namespace bulwark::robust {

MethodInfo free_method() {
  MethodInfo m;
  m.name = "free";
  m.steps_once_per_batch = false;  // a step on every replay
  m.title = "Free-AT (Shafahi et al. 2019)";
  m.summary =
      "Replays each batch m times from a zero perturbation; each replay's one backward gives both the weight "
      "step and the perturbation step (alpha = eps). The paper's setting: --replays 8 with --epochs divided "
      "by m, so the run makes as many passes as natural training.";
  m.options = {
      eps_option(),
      alpha_times_eps(1, "Free-AT steps by eps"),
      eps_ramp_option(),
      Option::make("replays", "--replays", OptionType::integer, "free: replays m of each batch")
          .at_least(1)
          .at_most(1000)
          .default_to(8),
  };
  m.make = [](const OptionValues& o) {
    ReplayTraining::Options r{"free", o.real("eps"), o.real("alpha"), ReplayTraining::Start::zero, false, 0};
    return std::make_unique<ReplayTraining>(r, std::make_unique<FixedReplays>(static_cast<int>(o.integer("replays"))));
  };
  return m;
}

}  // namespace bulwark::robust

#include "robust/methods/replay.h"

#include <algorithm>
#include <vector>

#include "robust/attacks.h"
#include "robust/method_steps.h"

namespace bulwark::robust {

ReplayTraining::ReplayTraining(Options options, std::unique_ptr<ReplaySchedule> schedule)
    : options_(std::move(options)), schedule_(std::move(schedule)), alpha_(options_.alpha) {}

void ReplayTraining::train_batch(StepContext& ctx, const Tensor& x, const Tensor& y) {
  const Tensor x_clean = x.detach().contiguous();
  const double eps = ctx.eps_scale * options_.eps, alpha = ctx.eps_scale * alpha_;
  Tensor x_adv = options_.start == Start::zero ? x_clean.clone() : uniform_start(x_clean, eps, ctx.gen);
  // --grad-accum: every replay's step sums the replay of each micro-batch, each with its own delta
  // (a rank of a parallel run does exactly this with its one micro-batch).
  const int64_t n = x.size(0), micro = ctx.micro_batch > 0 ? ctx.micro_batch : n, parts = n / micro;
  std::vector<Tensor> clean(static_cast<size_t>(parts)), adv(clean.size()), labels(clean.size());
  for (int64_t a = 0; a < parts; ++a) {
    clean[a] = parts == 1 ? x_clean : x_clean.slice(0, a * micro, (a + 1) * micro).contiguous();
    adv[a] = parts == 1 ? x_adv : x_adv.slice(0, a * micro, (a + 1) * micro).contiguous();
    labels[a] = parts == 1 ? y : y.slice(0, a * micro, (a + 1) * micro).contiguous();
  }
  const int replays = schedule_->r();
  for (int replay = 0; replay < replays; ++replay) {
    for (int64_t a = 0; a < parts; ++a) {
      const Tensor input_grad = train_on(ctx, adv[a], labels[a], true, a == 0, a + 1 == parts);
      // G takes the L1 of the batch's last replay only: that step writes it to the batch's slot.
      const Tensor l1 = replay + 1 == replays ? batch_grad_l1_.append(adv[a].device()) : Tensor();
      pgd_step_(adv[a], clean[a], input_grad, eps, alpha, l1);
    }
  }
}

EpochVerdict ReplayTraining::on_epoch_end(EpochEnd& end) {
  const int used = schedule_->r();
  const double G = end.sum_over_ranks(epoch_grad_l1(grad_l1_, batch_grad_l1_));
  end.extra["r"] = used;
  end.extra["alpha"] = alpha_;
  end.extra["G"] = G;
  schedule_->epoch_end({end.epoch, G, end.train_acc});
  schedule_->add_metrics(end.extra);
  grad_l1_ = 0;
  batch_grad_l1_.clear();
  if (options_.alpha_per_r && schedule_->r() > used)
    alpha_ = std::max(options_.eps / schedule_->r(), options_.alpha_min);
  return EpochVerdict::keep_going;
}

nlohmann::json ReplayTraining::state() const {
  return {{"schedule", schedule_->state()}, {"alpha", alpha_}, {"G", epoch_grad_l1(grad_l1_, batch_grad_l1_)}};
}

void ReplayTraining::load_state(const nlohmann::json& state) {
  const char* owner = options_.name.c_str();
  schedule_->load_state(saved_state<nlohmann::json>(state, "schedule", owner));
  alpha_ = saved_state<double>(state, "alpha", owner);
  grad_l1_ = saved_state<double>(state, "G", owner);
  batch_grad_l1_.clear();
}

}  // namespace bulwark::robust

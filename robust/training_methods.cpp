#include "robust/training_methods.h"

#include <fmt/format.h>

#include <algorithm>
#include <stdexcept>

#include "engine/autograd.h"
#include "engine/ops.h"

namespace bulwark::robust {

namespace {

// The Philox stream of the overfitting guard's probe attack: fixed, so every epoch's probe
// starts from the same random point and the accuracies it compares differ only by the model.
constexpr uint64_t kGuardSeed = 0x6A2D5EED;

// One optimizer step on L = mean CE(f(x_train), y): one forward, one backward; the loss and the
// correct predictions go to ctx.log on the device. With `input_grad` the training input is a
// leaf that requires grad, so the same backward that gives the weight gradient also gives
// grad_x L, which is returned (Free-AT's and DEAT's perturbation step, M+PGD's G); else an
// undefined tensor.
Tensor train_on(StepContext& ctx, const Tensor& x_train, const Tensor& y, bool input_grad) {
  Tensor input = x_train.detach();
  if (input_grad) input.set_requires_grad(true);
  ctx.optimizer.zero_grad();
  const Tensor logits = ctx.model(input);
  const Tensor loss = cross_entropy(logits, y);
  ++ctx.passes.fwd;
  backward(loss);
  ++ctx.passes.bwd;
  ctx.optimizer.step();
  ctx.log.record(loss, correct_predictions(logits, y), x_train.size(0));
  return input_grad ? input.grad() : Tensor();
}

AttackOptions linf_attack(AttackKind kind, double eps, double alpha, int steps) {
  AttackOptions o;
  o.kind = kind;
  o.norm = Norm::linf;
  o.eps = eps;
  o.alpha = alpha;
  o.steps = steps;
  o.restarts = 1;
  o.random_start = true;
  return o;
}

// The attack's example for (x, y), its random start drawn from the method's stream (reserved, so
// each batch gets fresh counters and a resumed run draws the same ones), its passes counted.
Tensor counted_attack(StepContext& ctx, const Tensor& x, const Tensor& y, AttackOptions o) {
  o.seed = ctx.gen.seed();
  o.offset = ctx.gen.reserve(attack_counters(o, x.shape()));
  AttackStats stats;
  Tensor x_adv = attack(ctx.model, x, y, o, &stats);
  ctx.passes.fwd += stats.forward_passes;
  ctx.passes.bwd += stats.backward_passes;
  return x_adv;
}

// The epoch's G: `carried` (restored from a checkpoint) plus the batches' L1 magnitudes, added in
// batch order in double, as they were when each was read back right away. One read of the series.
double epoch_grad_l1(double carried, const DeviceSeries& batches) {
  double G = carried;
  for (double l1 : batches.read()) G += l1;
  return G;
}

// clip_[0,1](x + U(-eps, eps)) from the method's stream.
Tensor uniform_start(const Tensor& x, double eps, Generator& gen) {
  return random_start(x, eps, gen.seed(), gen.reserve(random_start_counters(x.numel())));
}

}  // namespace

void StandardTraining::train_batch(StepContext& ctx, const Tensor& x, const Tensor& y) { train_on(ctx, x, y, false); }

// ---- PGD-AT ------------------------------------------------------------------------------

PgdTraining::PgdTraining(double eps, double alpha, int steps) : eps_(eps), alpha_(alpha), steps_(steps) {}

void PgdTraining::train_batch(StepContext& ctx, const Tensor& x, const Tensor& y) {
  // The attack sees the model in training mode, as in Madry's and Rice et al.'s code: its
  // forwards normalise with batch statistics and update BatchNorm's running ones.
  const double s = ctx.eps_scale;
  const Tensor x_adv = counted_attack(ctx, x, y, linf_attack(AttackKind::pgd, s * eps_, s * alpha_, steps_));
  train_on(ctx, x_adv, y, false);
}

EpochVerdict PgdTraining::on_epoch_end(EpochEnd& end) {
  end.extra["r"] = steps_;
  end.extra["alpha"] = alpha_;
  return EpochVerdict::keep_going;
}

// ---- Fast-AT -----------------------------------------------------------------------------

FastAtTraining::FastAtTraining(double eps, double alpha, bool guard, double guard_drop, int guard_steps)
    : eps_(eps), alpha_(alpha), guard_on_(guard), guard_steps_(guard_steps), guard_(guard_drop) {}

void FastAtTraining::train_batch(StepContext& ctx, const Tensor& x, const Tensor& y) {
  // Training mode during the attack, as in Wong et al.'s code.
  const double s = ctx.eps_scale;
  const Tensor x_adv = counted_attack(ctx, x, y, linf_attack(AttackKind::fgsm_rs, s * eps_, s * alpha_, 1));
  train_on(ctx, x_adv, y, false);
}

EpochVerdict FastAtTraining::on_epoch_end(EpochEnd& end) {
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

nlohmann::json FastAtTraining::state() const { return {{"guard", guard_.state()}}; }

void FastAtTraining::load_state(const nlohmann::json& state) {
  guard_.load_state(saved_state<nlohmann::json>(state, "guard", "fgsm-rs"));
}

// ---- Free-style replay: Free-AT, M+DEAT, DEAT-d, DEAT-p -----------------------------------

ReplayTraining::ReplayTraining(Options options, std::unique_ptr<ReplaySchedule> schedule)
    : options_(std::move(options)), schedule_(std::move(schedule)), alpha_(options_.alpha) {}

void ReplayTraining::train_batch(StepContext& ctx, const Tensor& x, const Tensor& y) {
  const Tensor x_clean = x.detach().contiguous();
  const double eps = ctx.eps_scale * options_.eps, alpha = ctx.eps_scale * alpha_;
  Tensor x_adv = options_.start == Start::zero ? x_clean.clone() : uniform_start(x_clean, eps, ctx.gen);
  const int replays = schedule_->r();
  for (int replay = 0; replay < replays; ++replay) {
    const Tensor input_grad = train_on(ctx, x_adv, y, true);
    // G takes the L1 of the batch's last replay only: that step writes it to the batch's slot.
    const Tensor l1 = replay + 1 == replays ? batch_grad_l1_.append(x_adv.device()) : Tensor();
    pgd_step_(x_adv, x_clean, input_grad, eps, alpha, l1);
  }
}

EpochVerdict ReplayTraining::on_epoch_end(EpochEnd& end) {
  const int used = schedule_->r();
  const double G = epoch_grad_l1(grad_l1_, batch_grad_l1_);
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

// ---- M+PGD -------------------------------------------------------------------------------

MplusPgdTraining::MplusPgdTraining(double eps, double alpha, int r_max, double gamma)
    : eps_(eps), alpha_(alpha), rule_(0, r_max, gamma) {}

void MplusPgdTraining::train_batch(StepContext& ctx, const Tensor& x, const Tensor& y) {
  // With r = 0 steps the attack is its random start alone: x + U(-eps, eps), clipped to [0,1].
  const double s = ctx.eps_scale;
  const Tensor x_adv = counted_attack(ctx, x, y, linf_attack(AttackKind::pgd, s * eps_, s * alpha_, rule_.r()));
  const Tensor input_grad = train_on(ctx, x_adv, y, true);
  batch_grad_l1_.append(input_grad.device()).copy_(sum(abs(input_grad)).reshape({1}));
}

EpochVerdict MplusPgdTraining::on_epoch_end(EpochEnd& end) {
  const double G = epoch_grad_l1(grad_l1_, batch_grad_l1_);
  end.extra["r"] = rule_.r();
  end.extra["alpha"] = alpha_;
  end.extra["G"] = G;
  rule_.epoch_end({end.epoch, G, end.train_acc});
  rule_.add_metrics(end.extra);
  grad_l1_ = 0;
  batch_grad_l1_.clear();
  return EpochVerdict::keep_going;
}

nlohmann::json MplusPgdTraining::state() const {
  return {{"rule", rule_.state()}, {"G", epoch_grad_l1(grad_l1_, batch_grad_l1_)}};
}

void MplusPgdTraining::load_state(const nlohmann::json& state) {
  rule_.load_state(saved_state<nlohmann::json>(state, "rule", "mplus-pgd"));
  grad_l1_ = saved_state<double>(state, "G", "mplus-pgd");
  batch_grad_l1_.clear();
}

// ---- the registry ------------------------------------------------------------------------

std::unique_ptr<Method> make_adversarial_method(const MethodConfig& c) {
  if (!(c.eps > 0) || !(c.alpha > 0))
    throw std::logic_error(fmt::format("method '{}': eps ({}) and alpha ({}) must be resolved to positive values "
                                       "(resolve_method_defaults)",
                                       c.name, c.eps, c.alpha));
  using Start = ReplayTraining::Start;
  const auto replay = [&](Start start, std::unique_ptr<ReplaySchedule> schedule) {
    ReplayTraining::Options o{c.name, c.eps, c.alpha, start, c.alpha_per_r, c.alpha_min};
    return std::make_unique<ReplayTraining>(std::move(o), std::move(schedule));
  };
  const std::string& n = c.name;
  if (n == "pgd") {
    if (c.steps < 1) throw std::invalid_argument(fmt::format("--steps must be >= 1 for pgd, got {}", c.steps));
    return std::make_unique<PgdTraining>(c.eps, c.alpha, c.steps);
  }
  if (n == "fgsm-rs") return std::make_unique<FastAtTraining>(c.eps, c.alpha, c.guard, c.guard_drop, c.guard_steps);
  if (n == "free") return replay(Start::zero, std::make_unique<FixedReplays>(c.replays));
  if (n == "mplus-deat") return replay(Start::uniform, std::make_unique<MplusRule>(1, c.r_max, c.gamma));
  if (n == "deat-d") return replay(Start::uniform, std::make_unique<DeatDSchedule>(c.deat_d, c.r_max));
  if (n == "deat-p") return replay(Start::uniform, std::make_unique<DeatPSchedule>(c.deat_p_acc, c.r_max));
  if (n == "mplus-pgd") return std::make_unique<MplusPgdTraining>(c.eps, c.alpha, c.r_max, c.gamma);
  throw std::invalid_argument(fmt::format("unknown adversarial method '{}'", n));
}

}  // namespace bulwark::robust

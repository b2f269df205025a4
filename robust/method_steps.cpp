#include "robust/method_steps.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "engine/autograd.h"
#include "engine/ops.h"

namespace bulwark::robust {

Option eps_option() {
  return Option::make("eps", "--eps", OptionType::radius,
                      "L-inf radius in pixel units, as a fraction or k/255; also the radius of the per-epoch robust "
                      "validation and the final attack")
      .default_by(
          [](const DefaultScope& s) -> DefaultChoice {
            if (s.dataset == "fashion-mnist") return {0.1, "Fashion-MNIST's usual radius"};
            if (s.mnist_like) return {0.3, "MNIST's usual radius"};
            return {8.0 / 255.0, "the usual radius of CIFAR-like input"};
          },
          "0.3 MNIST, 0.1 Fashion-MNIST, 8/255 CIFAR-like and synthetic");
}

Option alpha_option(DefaultRule rule, std::string how) {
  return Option::make("alpha", "--alpha", OptionType::radius, "Attack step size, as --eps")
      .above(0)
      .default_by(std::move(rule), std::move(how));
}

Option alpha_times_eps(double factor, std::string why) {
  std::string how = factor == 1 ? "eps" : fmt::format("{:g} eps", factor);
  return alpha_option(
      [factor, why](const DefaultScope& s) -> DefaultChoice {
        return {factor * s.values.real("eps"), why};
      },
      how + " (" + why + ")");
}

Option eps_ramp_option() {
  return Option::make("eps_ramp", "--eps-ramp", OptionType::real,
                      "Warm-up: eps and alpha grow linearly from 0 over this many epochs (0 = off)")
      .at_least(0)
      .default_to(0.0);
}
Option eps_ramp_start_option() {
  return Option::make("eps_ramp_start", "--eps-ramp-start", OptionType::real,
                      "Epochs trained at eps 0 before the --eps-ramp starts")
      .at_least(0)
      .default_to(0.0);
}

Option eps_ramp_shape_option() {
  return Option::make("eps_ramp_shape", "--eps-ramp-shape", OptionType::text,
                      "The ramp's shape: linear, or smoothed (eps ~ t^4 for the first quarter, then linear; "
                      "auto_LiRPA's SmoothedScheduler)")
      .one_of({"linear", "smoothed"})
      .default_to(std::string("linear"));
}

double eps_ramp_scale(double progress, double start, double length, EpsRampShape shape) {
  if (length <= 0) return progress >= start ? 1.0 : 0.0;
  const double p = std::clamp((progress - start) / length, 0.0, 1.0);
  if (shape == EpsRampShape::linear) return p;
  constexpr double kMid = 0.25, kPower = 4;
  const double alpha = 1 / (std::pow(kMid, kPower - 1) * ((1 - kMid) * kPower + kMid));
  const double at_mid = alpha * std::pow(kMid, kPower);
  return p < kMid ? alpha * std::pow(p, kPower) : at_mid + (1 - at_mid) * (p - kMid) / (1 - kMid);
}

Option r_max_option(int paper_default) {
  return Option::make("r_max", "--r-max", OptionType::integer,
                      "M+ and DEAT ablations: the most replays (or attack steps) per batch")
      .at_least(1)
      .at_most(1000)
      .default_to(paper_default);
}

Option gamma_mplus_option() {
  return Option::make("gamma", "--gamma-mplus", OptionType::real,
                      "M+: the threshold factor gamma (r grows when G exceeds the threshold; 1.1 for ImageNet)")
      .at_least(1)
      .default_to(1.01);
}

Tensor train_on(StepContext& ctx, const Tensor& x_train, const Tensor& y, bool input_grad) {
  return train_on(ctx, x_train, y, input_grad, true, true);
}

Tensor train_on(StepContext& ctx, const Tensor& x_train, const Tensor& y, bool input_grad, bool first, bool last) {
  Tensor input = x_train.detach();
  if (input_grad) input.set_requires_grad(true);
  if (first) ctx.optimizer.zero_grad();
  const Tensor logits = ctx.model(input);
  const LossAndCorrect out = cross_entropy_and_correct(logits, y);
  const Module::PassCost cost = ctx.model.pass_cost();
  ctx.passes.fwd += cost.forward;
  ctx.optimizer.backward(out.loss, last);
  ctx.passes.bwd += cost.forward_backward + cost.backward;
  if (last) ctx.optimizer.step();
  ctx.log.record(out.loss, out.correct, x_train.size(0));
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

Tensor counted_attack(StepContext& ctx, const Tensor& x, const Tensor& y, AttackOptions o) {
  o.seed = ctx.gen.seed();
  o.offset = ctx.gen.reserve(attack_counters(o, x.shape()));
  o.fused = ctx.fused_attack;
  AttackStats stats;
  Tensor x_adv = attack(ctx.model, x, y, o, &stats);
  ctx.passes.fwd += stats.forward_passes;
  ctx.passes.bwd += stats.backward_passes;
  return x_adv;
}

double epoch_grad_l1(double carried, const DeviceSeries& batches) {
  double G = carried;
  for (double l1 : batches.read()) G += l1;
  return G;
}

Tensor uniform_start(const Tensor& x, double eps, Generator& gen) {
  return random_start(x, eps, gen.seed(), gen.reserve(random_start_counters(x.numel())));
}

Tensor correct_predictions(const Tensor& logits, const Tensor& labels) {
  if (logits.dim() != 2 || !labels.defined() || labels.dtype() != DType::i32 || labels.dim() != 1 ||
      labels.size(0) != logits.size(0))
    throw std::invalid_argument(
        fmt::format("correct_predictions: needs logits [n, k] and i32 labels [n], got {} and {}", logits.str(),
                    labels.defined() ? labels.str() : std::string("undefined")));
  NoGradGuard no_grad;
  // argmax and the labels as f32 (class indices are exact), compared and summed on the device.
  const Tensor predicted = argmax(logits.detach(), 1).to(DType::f32);
  return sum(eq(predicted, labels.to(DType::f32)));
}

int64_t count_correct(const Tensor& logits, const Tensor& labels) {
  return static_cast<int64_t>(correct_predictions(logits, labels).item());
}

}  // namespace bulwark::robust

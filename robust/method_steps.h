#pragma once
// What the methods in robust/methods/ share: their common options (eps, alpha, the eps warm-up)
// and the steps they are built from (one optimizer step on a batch, a counted attack, the
// random start, the epoch's G). Every method runs its passes with the model in training mode,
// as the authors' code does (BatchNorm uses and updates batch statistics during the attack too),
// and counts every pass in ctx.passes.
#include <string>

#include "engine/options.h"
#include "robust/attacks.h"
#include "robust/method.h"
#include "robust/step_log.h"

namespace bulwark::robust {

// --eps: the L-inf radius; by default the dataset's usual one (0.3 MNIST, 0.1 Fashion-MNIST,
// 8/255 CIFAR-like). Every method has it: the per-epoch robust validation attacks at it.
Option eps_option();
// --alpha with the method's default rule (a function of eps and the method's other options).
Option alpha_option(DefaultRule rule, std::string how);
// alpha = factor * eps, for the rules that are a multiple of eps.
Option alpha_times_eps(double factor, std::string why);
// --eps-ramp: eps and alpha grow linearly from 0 over this many epochs (0 = off).
Option eps_ramp_option();

// --eps-ramp-start: epochs at eps 0 before the ramp starts (IBP's warm-up), and --eps-ramp-shape
// (linear, or auto_LiRPA's smoothed: see eps_ramp_scale). The certified methods have them.
Option eps_ramp_start_option();
Option eps_ramp_shape_option();

enum class EpsRampShape { linear, smoothed };
// The fraction of eps used `progress` epochs into training for a ramp of `length` epochs that
// starts after `start` epochs (1 without a ramp: length 0). With p = (progress - start) / length
// clamped to [0, 1]:
//   linear    p
//   smoothed  alpha p^4 while p < 1/4, then the straight line from there to 1, with alpha chosen so
//             the slope is continuous at 1/4 (alpha = 1 / (m^3 ((1 - m) 4 + m)), m = 1/4): eps
//             grows slowly at first, the shape of auto_LiRPA's SmoothedScheduler (beta 4, mid 0.25).
double eps_ramp_scale(double progress, double start, double length, EpsRampShape shape);

// --r-max for the methods whose replay or step count grows (M+DEAT, M+PGD, DEAT-d, DEAT-p),
// with the method's paper's cap as the default.
Option r_max_option(int paper_default);
// --gamma-mplus: M+'s threshold factor (1.01; 1.1 on ImageNet; the authors' fast variant uses 1.0).
Option gamma_mplus_option();

// One optimizer step on L = mean CE(f(x_train), y): one forward, one backward; the loss and the
// correct predictions go to ctx.log on the device. With `input_grad` the training input is a
// leaf that requires grad, so the same backward that gives the weight gradient also gives
// grad_x L, which is returned (Free-AT's and DEAT's perturbation step, M+PGD's G); else an
// undefined tensor.
Tensor train_on(StepContext& ctx, const Tensor& x_train, const Tensor& y, bool input_grad);
// The same for one micro-batch of a step that sums several (StepContext::micro_batch): the
// gradients are zeroed only before the `first` and the optimizer steps only after the `last`.
Tensor train_on(StepContext& ctx, const Tensor& x_train, const Tensor& y, bool input_grad, bool first, bool last);

// An L-inf attack with one random start.
AttackOptions linf_attack(AttackKind kind, double eps, double alpha, int steps);

// The attack's example for (x, y), its random start drawn from the method's stream (reserved, so
// each batch gets fresh counters and a resumed run draws the same ones), its passes counted.
Tensor counted_attack(StepContext& ctx, const Tensor& x, const Tensor& y, AttackOptions o);

// The epoch's G: `carried` (restored from a checkpoint) plus the batches' L1 magnitudes, added in
// batch order in double, as they were when each was read back right away. One read of the series.
double epoch_grad_l1(double carried, const DeviceSeries& batches);

// clip_[0,1](x + U(-eps, eps)) from the method's stream.
Tensor uniform_start(const Tensor& x, double eps, Generator& gen);

}  // namespace bulwark::robust

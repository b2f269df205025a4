#pragma once
// L-inf attacks in pixel space (inputs in [0,1]; the models normalise inside).
//
// PGD-k (Madry et al. 2018, "Towards Deep Learning Models Resistant to Adversarial Attacks"):
// start at x + U(-eps, eps) (or at x), then k times
//
//   x_adv <- clip_[0,1](clip_[x-eps, x+eps](x_adv + alpha * sign(grad_x_adv L(f(x_adv), y))))
//
// with L the mean cross-entropy. FGSM is PGD-1 from x with alpha = eps; FGSM-RS (Wong et al.
// 2020) is PGD-1 from a random start with alpha = 1.25 eps. Each step costs one forward and one
// backward that computes the input gradient only (autograd's selective grad: no weight
// gradients). The model is used in whatever mode the caller set (train mode updates BatchNorm
// running statistics during the attack, exactly as in PyTorch).
//
// pgd_step_ and random_start are the fused kernels (kernels/common/attack_step.h) over tensors;
// pgd_step_ also returns the input gradient's L1 magnitude sum |g| from the same pass, the
// signal DEAT and M+PGD use to decide when to add attack steps.
#include <cstdint>

#include "engine/tensor.h"
#include "models/module.h"

namespace bulwark {

// x_adv <- clip_[0,1](clip_[x-eps, x+eps](x_adv + alpha * sign(g))) in place; returns sum |g|.
// x_adv must be contiguous; x and g must have x_adv's shape and dtype (any strides).
double pgd_step_(Tensor& x_adv, const Tensor& x, const Tensor& g, double eps, double alpha);

// clip_[0,1](x + U(-eps, eps)): element i draws Philox word i of the stream (seed, offset), so
// the start is a function of (seed, offset) alone. Consumes random_start_counters(x.numel())
// counters: a caller drawing several starts from one seed advances offset by that much.
Tensor random_start(const Tensor& x, double eps, uint64_t seed, uint64_t offset);
uint64_t random_start_counters(int64_t numel);

struct PgdOptions {
  double eps = 0.3;
  double alpha = 0.01;
  int steps = 40;
  bool random_start = true;
  uint64_t seed = 0;    // Philox stream of the random start
  uint64_t offset = 0;
};

// What an attack did, for the trainers' counters and DEAT's magnitude signal.
struct AttackStats {
  int64_t forward_passes = 0;
  int64_t backward_passes = 0;
  double last_grad_l1 = 0.0;  // sum |grad_x L| of the last step (0 when steps == 0)
};

// The PGD adversarial example of (x, y) for `model`: a tensor of x's shape, detached, in the
// eps-ball around x and in [0,1]. `stats`, when given, receives the passes and the L1 signal.
Tensor pgd_attack(Module& model, const Tensor& x, const Tensor& y, const PgdOptions& options,
                  AttackStats* stats = nullptr);

}  // namespace bulwark

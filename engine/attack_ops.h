#pragma once
// The fused L-inf attack step and the random start, outside autograd: the kernels of
// kernels/common/attack_step.h behind shape, dtype and device checks, like the optimizer updates
// of engine/optim_ops.h. robust/ builds every attack (and the methods that drive their own loop)
// on these two; they dispatch on the tensor's device (CPU loops, or the CUDA kernels in f32).
#include <cstdint>

#include "engine/tensor.h"

namespace bulwark {

// Throws std::invalid_argument unless the attack budget eps and step alpha are finite and >= 0.
void check_attack_budget(double eps, double alpha);

// x_adv <- clip_[0,1](clip_[x-eps, x+eps](x_adv + alpha * sign(g))) in place. x_adv must be
// contiguous; x and g must have x_adv's shape and dtype (any strides). With `l1` (a contiguous
// one-element f64 tensor on x_adv's device, such as a DeviceSeries slot), sum |g| from the same
// pass is written there; nothing is read back, so on CUDA the step never makes the host wait.
// Without it the L1 is not computed.
void pgd_step_(Tensor& x_adv, const Tensor& x, const Tensor& g, double eps, double alpha, const Tensor& l1 = Tensor());

// clip_[0,1](x + U(-eps, eps)): element i draws Philox word i of the stream (seed, offset), so
// the start is a function of (seed, offset) alone. Consumes random_start_counters(x.numel())
// counters: a caller drawing several starts from one seed advances offset by that much.
Tensor random_start(const Tensor& x, double eps, uint64_t seed, uint64_t offset);
uint64_t random_start_counters(int64_t numel);

}  // namespace bulwark

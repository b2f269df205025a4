#pragma once
// Scalar bodies of the optimizer updates, one parameter element at a time, shared by the CPU
// loop (kernels/cpu/optim.cpp) and a CUDA kernel, so both backends apply the same arithmetic.
// The rules are PyTorch's (torch.optim.SGD and torch.optim.Adam, non-foreach), in the order
// PyTorch evaluates them, so a run can be checked against PyTorch step for step.
//
// Per element, SGD reads p, g, buf and writes p, buf: 12 bytes read + 8 written (f32), 6 FLOPs.
// Adam reads p, g, m, v and writes p, m, v: 16 + 12 bytes, about 14 FLOPs and one sqrt.
// Both are bandwidth-bound; the point of a fused kernel is one pass over the parameters instead
// of the six or so elementwise launches the same update takes when written with tensor ops.
#include <cmath>
#include <cstdint>

#include "kernels/common/hd.h"

namespace bulwark::optim {

// SGD with momentum m, dampening 0, optional Nesterov, L2 weight decay wd:
//   d = g + wd * p;  buf = m * buf + d;  d = nesterov ? d + m * buf : buf;  p -= lr * d
// PyTorch initialises buf to d on the first step; a zero-initialised buf gives the same bits
// (m * 0 + d == d), so the buffer can be allocated up front and the kernel has no first-step
// branch. With m == 0 the buffer is still written but never changes the update.
struct SgdHyper {
  double lr = 0.1, momentum = 0, weight_decay = 0;
  bool nesterov = false;
};

template <class T>
BW_HD inline void sgd_update(T& p, T g, T& buf, T lr, T momentum, T weight_decay, bool nesterov) {
  T d = g;
  if (weight_decay != T(0)) d = d + weight_decay * p;
  buf = momentum * buf + d;
  d = nesterov ? d + momentum * buf : buf;
  p = p - lr * d;
}

// Adam (Kingma & Ba) with PyTorch's bias correction and L2-style weight decay (added to the
// gradient, not AdamW's decoupled decay). At step t (from 1):
//   g += wd * p;  m += (1 - b1) * (g - m);  v = b2 * v + (1 - b2) * g * g
//   p -= (lr / (1 - b1^t)) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
// m's update is PyTorch's lerp form, which rounds differently from b1 * m + (1 - b1) * g.
struct AdamHyper {
  double lr = 1e-3, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0;
};

// The per-step scalars, computed once on the host in double and rounded to T, as PyTorch does.
template <class T>
struct AdamStep {
  T step_size, one_minus_beta1, beta2, one_minus_beta2, eps, weight_decay, bias_correction2_sqrt;
  AdamStep(const AdamHyper& h, int64_t t)
      : step_size(static_cast<T>(h.lr / (1 - std::pow(h.beta1, static_cast<double>(t))))),
        one_minus_beta1(static_cast<T>(1 - h.beta1)),
        beta2(static_cast<T>(h.beta2)),
        one_minus_beta2(static_cast<T>(1 - h.beta2)),
        eps(static_cast<T>(h.eps)),
        weight_decay(static_cast<T>(h.weight_decay)),
        bias_correction2_sqrt(static_cast<T>(std::sqrt(1 - std::pow(h.beta2, static_cast<double>(t))))) {}
};

template <class T>
BW_HD inline void adam_update(T& p, T g, T& m, T& v, const AdamStep<T>& s) {
  if (s.weight_decay != T(0)) g = g + s.weight_decay * p;
  m = m + s.one_minus_beta1 * (g - m);
  v = s.beta2 * v + s.one_minus_beta2 * g * g;
  const T denom = std::sqrt(v) / s.bias_correction2_sqrt + s.eps;
  p = p - s.step_size * (m / denom);
}

}  // namespace bulwark::optim

#pragma once
// CPU loops of the fused optimizer updates (scalar bodies: kernels/common/optim.h). Every
// array is contiguous with n elements and updated in place; nothing is allocated.
#include <cstdint>

#include "kernels/common/optim.h"

namespace bulwark::cpu {

template <class T> void sgd_step(T* param, const T* grad, T* momentum_buf, int64_t n, const optim::SgdHyper& h);
// t: the 1-based step number, for the bias corrections.
template <class T> void adam_step(T* param, const T* grad, T* exp_avg, T* exp_avg_sq, int64_t n,
                                  const optim::AdamHyper& h, int64_t t);

}  // namespace bulwark::cpu

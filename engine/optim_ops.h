#pragma once
// In-place optimizer updates of one parameter tensor, outside autograd: the fused kernels of
// kernels/common/optim.h behind shape, dtype and device checks. The optimizers in training/
// call these once per parameter per step; nothing is allocated.
#include "engine/tensor.h"
#include "kernels/common/optim.h"

namespace bulwark {

// PyTorch SGD (dampening 0): momentum_buf must start at zero.
void sgd_step_(Tensor& param, const Tensor& grad, Tensor& momentum_buf, const optim::SgdHyper& h);

// PyTorch Adam, step t >= 1 (the count including this step); moments must start at zero.
void adam_step_(Tensor& param, const Tensor& grad, Tensor& exp_avg, Tensor& exp_avg_sq, const optim::AdamHyper& h,
                int64_t t);

}  // namespace bulwark

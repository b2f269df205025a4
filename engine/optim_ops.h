#pragma once
// In-place optimizer updates, outside autograd: the fused kernels of kernels/common/optim.h
// behind shape, dtype and device checks. The group versions update every parameter of a model in
// one call: on CUDA that is one launch over all of them (a table of segments), on the CPU a loop.
// The optimizers in training/ call the group versions once per step; nothing is allocated on the
// device.
#include <vector>

#include "engine/tensor.h"
#include "kernels/common/optim.h"

namespace bulwark {

struct SgdParam {
  Tensor param, grad, momentum_buf;
};
struct AdamParam {
  Tensor param, grad, exp_avg, exp_avg_sq;
};

// Every tensor of one group on one device and dtype (f32 on CUDA).
void sgd_step_(const std::vector<SgdParam>& group, const optim::SgdHyper& h);
void adam_step_(const std::vector<AdamParam>& group, const optim::AdamHyper& h, int64_t t);

// PyTorch SGD (dampening 0): momentum_buf must start at zero.
void sgd_step_(Tensor& param, const Tensor& grad, Tensor& momentum_buf, const optim::SgdHyper& h);

// PyTorch Adam, step t >= 1 (the count including this step); moments must start at zero.
void adam_step_(Tensor& param, const Tensor& grad, Tensor& exp_avg, Tensor& exp_avg_sq, const optim::AdamHyper& h,
                int64_t t);

}  // namespace bulwark

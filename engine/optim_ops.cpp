#include "engine/optim_ops.h"

#include <fmt/format.h>

#include <stdexcept>

#include "engine/dispatch.h"
#include "kernels/cpu/optim.h"

namespace bulwark {

namespace {
// Every tensor of an update: the parameter's shape, dtype and device, contiguous.
void check_state(const Tensor& param, const Tensor& t, const char* op, const char* what) {
  require_float(t, op);
  require_same_device(param, t, op);
  if (t.shape() != param.shape() || t.dtype() != param.dtype())
    throw std::invalid_argument(fmt::format("{}: {} is {}, the parameter is {}", op, what, t.str(), param.str()));
  if (!t.is_contiguous()) throw std::invalid_argument(fmt::format("{}: {} {} is not contiguous", op, what, t.str()));
}
}  // namespace

void sgd_step_(const std::vector<SgdParam>& group, const optim::SgdHyper& h) {
  const char* op = "sgd_step_";
  for (const SgdParam& p : group) {
    check_state(p.param, p.param, op, "parameter");
    check_state(p.param, p.grad, op, "gradient");
    check_state(p.param, p.momentum_buf, op, "momentum buffer");
    require_same_device(group.front().param, p.param, op);
  }
  if (group.empty()) return;
  if (group.front().param.device() == Device::cuda) {
    std::vector<cuda::SgdSegment> segs;
    for (const SgdParam& p : group) {
      require_cuda_dtype(p.param.dtype(), op);
      segs.push_back({p.param.data<float>(), p.grad.data<float>(), p.momentum_buf.data<float>(), p.param.numel()});
    }
    cuda::sgd_step_multi(segs.data(), static_cast<int>(segs.size()), h);
    return;
  }
  for (const SgdParam& p : group)
    BW_DISPATCH_FLOAT(p.param.dtype(), op,
                      cpu::sgd_step(p.param.data<T>(), p.grad.data<T>(), p.momentum_buf.data<T>(), p.param.numel(), h));
}

void adam_step_(const std::vector<AdamParam>& group, const optim::AdamHyper& h, int64_t t) {
  const char* op = "adam_step_";
  if (t < 1) throw std::invalid_argument(fmt::format("{}: step {} (steps count from 1)", op, t));
  for (const AdamParam& p : group) {
    check_state(p.param, p.param, op, "parameter");
    check_state(p.param, p.grad, op, "gradient");
    check_state(p.param, p.exp_avg, op, "exp_avg");
    check_state(p.param, p.exp_avg_sq, op, "exp_avg_sq");
    require_same_device(group.front().param, p.param, op);
  }
  if (group.empty()) return;
  if (group.front().param.device() == Device::cuda) {
    std::vector<cuda::AdamSegment> segs;
    for (const AdamParam& p : group) {
      require_cuda_dtype(p.param.dtype(), op);
      segs.push_back({p.param.data<float>(), p.grad.data<float>(), p.exp_avg.data<float>(), p.exp_avg_sq.data<float>(),
                      p.param.numel()});
    }
    cuda::adam_step_multi(segs.data(), static_cast<int>(segs.size()), h, t);
    return;
  }
  for (const AdamParam& p : group)
    BW_DISPATCH_FLOAT(p.param.dtype(), op,
                      cpu::adam_step(p.param.data<T>(), p.grad.data<T>(), p.exp_avg.data<T>(), p.exp_avg_sq.data<T>(),
                                     p.param.numel(), h, t));
}

void sgd_step_(Tensor& param, const Tensor& grad, Tensor& momentum_buf, const optim::SgdHyper& h) {
  sgd_step_(std::vector<SgdParam>{{param, grad, momentum_buf}}, h);
}

void adam_step_(Tensor& param, const Tensor& grad, Tensor& exp_avg, Tensor& exp_avg_sq, const optim::AdamHyper& h,
                int64_t t) {
  adam_step_(std::vector<AdamParam>{{param, grad, exp_avg, exp_avg_sq}}, h, t);
}

}  // namespace bulwark

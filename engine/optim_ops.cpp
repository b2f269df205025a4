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

void sgd_step_(Tensor& param, const Tensor& grad, Tensor& momentum_buf, const optim::SgdHyper& h) {
  const char* op = "sgd_step_";
  check_state(param, param, op, "parameter");
  check_state(param, grad, op, "gradient");
  check_state(param, momentum_buf, op, "momentum buffer");
  if (param.device() == Device::cuda) {
    require_cuda_dtype(param.dtype(), op);
    const cuda::SgdSegment seg{param.data<float>(), grad.data<float>(), momentum_buf.data<float>(), param.numel()};
    cuda::sgd_step_multi(&seg, 1, h);
    return;
  }
  BW_DISPATCH_FLOAT(param.dtype(), op,
                    cpu::sgd_step(param.data<T>(), grad.data<T>(), momentum_buf.data<T>(), param.numel(), h));
}

void adam_step_(Tensor& param, const Tensor& grad, Tensor& exp_avg, Tensor& exp_avg_sq, const optim::AdamHyper& h,
                int64_t t) {
  const char* op = "adam_step_";
  if (t < 1) throw std::invalid_argument(fmt::format("{}: step {} (steps count from 1)", op, t));
  check_state(param, param, op, "parameter");
  check_state(param, grad, op, "gradient");
  check_state(param, exp_avg, op, "exp_avg");
  check_state(param, exp_avg_sq, op, "exp_avg_sq");
  if (param.device() == Device::cuda) {
    require_cuda_dtype(param.dtype(), op);
    const cuda::AdamSegment seg{param.data<float>(), grad.data<float>(), exp_avg.data<float>(),
                                exp_avg_sq.data<float>(), param.numel()};
    cuda::adam_step_multi(&seg, 1, h, t);
    return;
  }
  BW_DISPATCH_FLOAT(param.dtype(), op,
                    cpu::adam_step(param.data<T>(), grad.data<T>(), exp_avg.data<T>(), exp_avg_sq.data<T>(),
                                   param.numel(), h, t));
}

}  // namespace bulwark

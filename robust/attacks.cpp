// PGD and the fused attack step over tensors. The step and the random start dispatch on the
// tensor's device like every engine op (engine/dispatch.h): the CPU loops of
// kernels/cpu/attack.cpp, or the CUDA kernels of kernels/cuda/attack.cu (f32).
#include "robust/attacks.h"

#include <fmt/format.h>

#include <stdexcept>

#include "engine/autograd.h"
#include "engine/dispatch.h"
#include "engine/ops.h"
#include "kernels/common/philox.h"
#include "kernels/cpu/attack_kernels.h"

namespace bulwark {

namespace {
void require_float_tensor(const Tensor& t, const char* what) {
  if (!t.defined()) throw std::invalid_argument(fmt::format("{}: undefined tensor", what));
  if (t.dtype() != DType::f32 && t.dtype() != DType::f64)
    throw std::invalid_argument(fmt::format("{}: needs a float tensor, got {}", what, t.str()));
}

void require_budget(double eps, double alpha) {
  if (!(eps >= 0.0) || !(alpha >= 0.0))
    throw std::invalid_argument(fmt::format("attack: eps ({}) and alpha ({}) must be >= 0", eps, alpha));
}
}  // namespace

double pgd_step_(Tensor& x_adv, const Tensor& x_in, const Tensor& g_in, double eps, double alpha) {
  require_float_tensor(x_adv, "pgd_step_ x_adv");
  require_budget(eps, alpha);
  if (!x_adv.is_contiguous()) throw std::invalid_argument("pgd_step_: x_adv must be contiguous (it is updated in place)");
  for (const Tensor* t : {&x_in, &g_in}) {
    require_float_tensor(*t, "pgd_step_");
    if (t->shape() != x_adv.shape() || t->dtype() != x_adv.dtype())
      throw std::invalid_argument(fmt::format("pgd_step_: x_adv is {} but got {}", x_adv.str(), t->str()));
    require_same_device(x_adv, *t, "pgd_step_");
  }
  const Tensor x = x_in.detach().contiguous(), g = g_in.detach().contiguous();
  double l1 = 0;
  BW_KERNEL_RESULT(l1, x_adv.device(), x_adv.dtype(), "pgd_step_", pgd_step, x.data<T>(), x_adv.data<T>(), g.data<T>(),
                   x_adv.numel(), static_cast<T>(eps), static_cast<T>(alpha));
  return l1;
}

uint64_t random_start_counters(int64_t numel) { return philox::counters_for(static_cast<uint64_t>(numel)); }

Tensor random_start(const Tensor& x_in, double eps, uint64_t seed, uint64_t offset) {
  require_float_tensor(x_in, "random_start");
  require_budget(eps, 0.0);
  const Tensor x = x_in.detach().contiguous();
  Tensor out = Tensor::empty(x.shape(), x.dtype(), x.device());
  BW_KERNEL(x.device(), x.dtype(), "random_start", random_start, x.data<T>(), out.data<T>(), x.numel(), static_cast<T>(eps),
            seed, offset);
  return out;
}

Tensor pgd_attack(Module& model, const Tensor& x_in, const Tensor& y, const PgdOptions& o, AttackStats* stats) {
  require_float_tensor(x_in, "pgd_attack");
  require_budget(o.eps, o.alpha);
  if (o.steps < 0) throw std::invalid_argument(fmt::format("pgd_attack: steps must be >= 0, got {}", o.steps));
  const Tensor x = x_in.detach().contiguous();
  Tensor x_adv = o.random_start ? random_start(x, o.eps, o.seed, o.offset) : x.clone();
  AttackStats local;
  for (int step = 0; step < o.steps; ++step) {
    // A fresh leaf over x_adv's storage each step: the graph of the previous step is gone, and
    // the in-place update below happens after this step's graph has been used.
    Tensor leaf = x_adv.detach();
    leaf.set_requires_grad(true);
    Tensor loss;
    {
      GradModeGuard record_graph(true);
      loss = cross_entropy(model.forward(leaf), y);
    }
    const Tensor g = grad({loss}, {leaf})[0];
    local.last_grad_l1 = pgd_step_(x_adv, x, g, o.eps, o.alpha);
    ++local.forward_passes;
    ++local.backward_passes;
  }
  if (stats) *stats = local;
  return x_adv;
}

}  // namespace bulwark

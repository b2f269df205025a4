#include "engine/attack_ops.h"

#include <fmt/format.h>

#include <cmath>
#include <stdexcept>

#include "engine/dispatch.h"
#include "engine/rng.h"
#include "kernels/cpu/attack_kernels.h"

namespace bulwark {

void check_attack_budget(double eps, double alpha) {
  if (!(eps >= 0.0) || !(alpha >= 0.0) || !std::isfinite(eps) || !std::isfinite(alpha))
    throw std::invalid_argument(fmt::format("attack: eps ({}) and alpha ({}) must be finite and >= 0", eps, alpha));
}

void pgd_step_(Tensor& x_adv, const Tensor& x_in, const Tensor& g_in, double eps, double alpha, const Tensor& l1) {
  require_float(x_adv, "pgd_step_ x_adv");
  check_attack_budget(eps, alpha);
  if (!x_adv.is_contiguous()) throw std::invalid_argument("pgd_step_: x_adv must be contiguous (it is updated in place)");
  for (const Tensor* t : {&x_in, &g_in}) {
    require_float(*t, "pgd_step_");
    if (t->shape() != x_adv.shape() || t->dtype() != x_adv.dtype())
      throw std::invalid_argument(fmt::format("pgd_step_: x_adv is {} but got {}", x_adv.str(), t->str()));
    require_same_device(x_adv, *t, "pgd_step_");
  }
  if (l1.defined()) {
    if (l1.dtype() != DType::f64 || l1.numel() != 1 || !l1.is_contiguous())
      throw std::invalid_argument(fmt::format("pgd_step_: l1 must be one contiguous f64 element, got {}", l1.str()));
    require_same_device(x_adv, l1, "pgd_step_");
  }
  const Tensor x = x_in.detach().contiguous(), g = g_in.detach().contiguous();
  double* l1_out = l1.defined() ? l1.data<double>() : nullptr;
  BW_KERNEL(x_adv.device(), x_adv.dtype(), "pgd_step_", pgd_step, x.data<T>(), x_adv.data<T>(), g.data<T>(), x_adv.numel(),
            static_cast<T>(eps), static_cast<T>(alpha), l1_out);
}

// One Philox word per element, as rand_uniform draws them.
uint64_t random_start_counters(int64_t numel) { return uniform_counters(numel); }

Tensor random_start(const Tensor& x_in, double eps, uint64_t seed, uint64_t offset) {
  require_float(x_in, "random_start");
  check_attack_budget(eps, 0.0);
  const Tensor x = x_in.detach().contiguous();
  Tensor out = Tensor::empty(x.shape(), x.dtype(), x.device());
  BW_KERNEL(x.device(), x.dtype(), "random_start", random_start, x.data<T>(), out.data<T>(), x.numel(), static_cast<T>(eps),
            seed, offset);
  return out;
}

}  // namespace bulwark

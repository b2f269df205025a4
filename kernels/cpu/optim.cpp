// The optimizer updates on the CPU: one pass over a parameter, each element independent, so the
// result is the same for any thread count.
#include "kernels/cpu/optim.h"

namespace bulwark::cpu {

namespace {
constexpr int64_t kParallelMin = 1 << 15;  // below this, threads cost more than they save
}

template <class T>
void sgd_step(T* param, const T* grad, T* momentum_buf, int64_t n, const optim::SgdHyper& h) {
  const T lr = static_cast<T>(h.lr), m = static_cast<T>(h.momentum), wd = static_cast<T>(h.weight_decay);
  const bool nesterov = h.nesterov;
#pragma omp parallel for simd if (n >= kParallelMin) schedule(static)
  for (int64_t i = 0; i < n; ++i) optim::sgd_update(param[i], grad[i], momentum_buf[i], lr, m, wd, nesterov);
}

template <class T>
void adam_step(T* param, const T* grad, T* exp_avg, T* exp_avg_sq, int64_t n, const optim::AdamHyper& h,
               int64_t t) {
  const optim::AdamStep<T> s(h, t);
#pragma omp parallel for simd if (n >= kParallelMin) schedule(static)
  for (int64_t i = 0; i < n; ++i) optim::adam_update(param[i], grad[i], exp_avg[i], exp_avg_sq[i], s);
}

template void sgd_step<float>(float*, const float*, float*, int64_t, const optim::SgdHyper&);
template void sgd_step<double>(double*, const double*, double*, int64_t, const optim::SgdHyper&);
template void adam_step<float>(float*, const float*, float*, float*, int64_t, const optim::AdamHyper&, int64_t);
template void adam_step<double>(double*, const double*, double*, double*, int64_t, const optim::AdamHyper&,
                                int64_t);

}  // namespace bulwark::cpu

// The fused L-inf attack step and the random start on the CPU: one pass over the batch each.
//
// pgd_step reads x, x_adv, g and writes x_adv (16 B/element in f32, ~9 FLOPs/element with the
// |g| sum when it is asked for), so it runs at memory bandwidth; fusing the sign, the step, both
// clips and the L1 reduction saves the 5-6 separate elementwise passes (and their temporaries)
// that the same step costs when written with engine ops.
//
// Determinism: the L1 sum is reduced over fixed chunks of kAttackChunk elements (chunk sums in
// double, added in chunk order), so its bits do not depend on the thread count. random_start
// draws element i from Philox counter offset + i / 4, word i % 4, whichever thread runs it.
#include "kernels/cpu/attack_kernels.h"

#include <omp.h>

#include <algorithm>
#include <utility>
#include <vector>

#include "kernels/common/attack_step.h"
#include "kernels/common/fused_attack.h"
#include "kernels/common/philox.h"

namespace bulwark::cpu {

namespace {
constexpr int64_t kParallelMin = 1 << 15;  // below this, threads cost more than they save
}

template <class T>
void pgd_step(const T* x, T* x_adv, const T* g, int64_t n, T eps, T alpha, double* l1) {
  if (l1 == nullptr) {
#pragma omp parallel for simd if (n >= kParallelMin) schedule(static)
    for (int64_t i = 0; i < n; ++i) x_adv[i] = attack::pgd_step(x[i], x_adv[i], g[i], eps, alpha);
    return;
  }
  const int64_t chunks = (n + kAttackChunk - 1) / kAttackChunk;
  std::vector<double> chunk_l1(static_cast<size_t>(chunks), 0.0);
#pragma omp parallel for if (n >= kParallelMin) schedule(static)
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t begin = c * kAttackChunk, end = std::min(n, begin + kAttackChunk);
    double sum = 0.0;
#pragma omp simd reduction(+ : sum)
    for (int64_t i = begin; i < end; ++i) {
      x_adv[i] = attack::pgd_step(x[i], x_adv[i], g[i], eps, alpha);
      sum += static_cast<double>(attack::l1_term(g[i]));
    }
    chunk_l1[c] = sum;
  }
  double total = 0.0;
  for (double chunk : chunk_l1) total += chunk;
  *l1 = total;
}

template <class T>
void random_start(const T* x, T* x_adv, int64_t n, T eps, uint64_t seed, uint64_t offset) {
  const int64_t blocks = static_cast<int64_t>(philox::counters_for(static_cast<uint64_t>(n)));
#pragma omp parallel for if (n >= kParallelMin) schedule(static)
  for (int64_t b = 0; b < blocks; ++b) {
    const philox::Block bits = philox::philox4x32_10(offset + static_cast<uint64_t>(b), seed);
    const int64_t first = 4 * b, count = std::min<int64_t>(4, n - first);
    for (int64_t k = 0; k < count; ++k) {
      const T u = static_cast<T>(philox::to_unit_float(bits.v[k]));
      x_adv[first + k] = attack::random_start(x[first + k], u, eps);
    }
  }
}

namespace {

// One sample's attack; `ws` holds net.workspace() elements. Returns sum |g| of the last step.
template <class T>
double fused_pgd_sample(const fused::Net<T>& net, const T* x, T* x_adv, int32_t y, int steps, T eps, T alpha, T scale,
                        T* ws) {
  T* act = ws;
  T* grad_a = ws + net.act_size;
  T* grad_b = grad_a + net.grad_size;
  double l1 = 0.0;
  for (int step = 0; step < steps; ++step) {
    const T* in = x_adv;
    for (int l = 0; l < net.layers; ++l) {
      const fused::Layer<T>& L = net.layer[l];
      T* out = act + L.out_offset;
      for (int o = 0; o < L.out_size(); ++o) out[o] = fused::forward_at(L, in, o);
      in = out;
    }
    fused::cross_entropy_grad(in, net.classes(), y, scale, grad_a);
    T *g = grad_a, *spare = grad_b;
    for (int l = net.layers - 1; l >= 1; --l) {
      const fused::Layer<T>& below = net.layer[l - 1];
      const T* a = act + below.out_offset;
      for (int i = 0; i < net.layer[l].in_size(); ++i) {
        const T v = fused::backward_at(net.layer[l], g, i);
        spare[i] = below.relu && !(a[i] > T(0)) ? T(0) : v;
      }
      std::swap(g, spare);
    }
    const bool last = step + 1 == steps;
    for (int i = 0; i < net.in_size(); ++i) {
      const T gi = fused::backward_at(net.layer[0], g, i);
      if (last) l1 += static_cast<double>(attack::l1_term(gi));
      x_adv[i] = attack::pgd_step(x[i], x_adv[i], gi, eps, alpha);
    }
  }
  return l1;
}

}  // namespace

template <class T>
void fused_pgd(const fused::Net<T>& net, const T* x, T* x_adv, const int32_t* y, int64_t n, int steps, T eps, T alpha,
               double* l1) {
  const int64_t size = net.in_size();
  const T scale = n > 0 ? T(1) / static_cast<T>(n) : T(0);
  std::vector<double> sample_l1(static_cast<size_t>(n), 0.0);
#pragma omp parallel if (n > 1)
  {
    std::vector<T> ws(static_cast<size_t>(net.workspace()));
#pragma omp for schedule(static)
    for (int64_t s = 0; s < n; ++s)
      sample_l1[s] = fused_pgd_sample(net, x + s * size, x_adv + s * size, y[s], steps, eps, alpha, scale, ws.data());
  }
  if (l1 == nullptr) return;
  double total = 0.0;
  for (double v : sample_l1) total += v;
  *l1 = total;
}

#define BW_INST(T)                                                                 \
  template void pgd_step<T>(const T*, T*, const T*, int64_t, T, T, double*);       \
  template void random_start<T>(const T*, T*, int64_t, T, uint64_t, uint64_t);                            \
  template void fused_pgd<T>(const fused::Net<T>&, const T*, T*, const int32_t*, int64_t, int, T, T, double*);
BW_INST(float)
BW_INST(double)
#undef BW_INST

}  // namespace bulwark::cpu

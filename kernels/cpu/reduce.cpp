// Reductions and index ops over a tensor viewed as [outer, n, inner]: every reduction or
// gather along one axis (or a run of contiguous axes) is this shape after a reshape.
#include <omp.h>

#include "kernels/cpu/cpu_kernels.h"

namespace bulwark::cpu {

namespace {
constexpr int64_t kParallelMin = 1 << 14;
}

template <class T>
void sum_middle(const T* x, T* y, int64_t outer, int64_t n, int64_t inner) {
  // Accumulate in the input order per output so results do not depend on the thread count.
  if (inner == 1) {
#pragma omp parallel for if (outer * n >= kParallelMin) schedule(static)
    for (int64_t o = 0; o < outer; ++o) {
      const T* p = x + o * n;
      T acc = 0;
      for (int64_t k = 0; k < n; ++k) acc += p[k];
      y[o] = acc;
    }
    return;
  }
#pragma omp parallel for if (outer * n * inner >= kParallelMin) schedule(static)
  for (int64_t o = 0; o < outer; ++o) {
    T* out = y + o * inner;
    for (int64_t i = 0; i < inner; ++i) out[i] = 0;
    for (int64_t k = 0; k < n; ++k) {
      const T* p = x + (o * n + k) * inner;
#pragma omp simd
      for (int64_t i = 0; i < inner; ++i) out[i] += p[i];
    }
  }
}

template <class T>
void argmax_middle(const T* x, int32_t* idx, int64_t outer, int64_t n, int64_t inner) {
#pragma omp parallel for if (outer * n * inner >= kParallelMin) schedule(static)
  for (int64_t o = 0; o < outer; ++o) {
    for (int64_t i = 0; i < inner; ++i) {
      const T* p = x + o * n * inner + i;
      int64_t best = 0;
      T bv = p[0];
      for (int64_t k = 1; k < n; ++k) {
        const T v = p[k * inner];
        if (v > bv || (bv != bv && v == v)) {  // a NaN never stays the maximum over numbers
          bv = v;
          best = k;
        }
      }
      idx[o * inner + i] = static_cast<int32_t>(best);
    }
  }
}

template <class T>
void gather_middle(const T* x, const int32_t* idx, T* out, int64_t outer, int64_t n, int64_t m, int64_t inner) {
#pragma omp parallel for if (outer * m * inner >= kParallelMin) schedule(static)
  for (int64_t o = 0; o < outer; ++o) {
    const T* src = x + o * n * inner;
    for (int64_t k = 0; k < m; ++k) {
      const int64_t base = (o * m + k) * inner;
      for (int64_t i = 0; i < inner; ++i) out[base + i] = src[static_cast<int64_t>(idx[base + i]) * inner + i];
    }
  }
}

template <class T>
void scatter_add_middle(const T* src, const int32_t* idx, T* out, int64_t outer, int64_t n, int64_t m, int64_t inner) {
  // Parallel over `outer` only: two k of one row may hit the same slot, so rows are sequential.
#pragma omp parallel for if (outer * m * inner >= kParallelMin) schedule(static)
  for (int64_t o = 0; o < outer; ++o) {
    T* dst = out + o * n * inner;
    for (int64_t k = 0; k < m; ++k) {
      const int64_t base = (o * m + k) * inner;
      for (int64_t i = 0; i < inner; ++i) dst[static_cast<int64_t>(idx[base + i]) * inner + i] += src[base + i];
    }
  }
}

#define BW_INST(T)                                                                               \
  template void sum_middle<T>(const T*, T*, int64_t, int64_t, int64_t);                          \
  template void argmax_middle<T>(const T*, int32_t*, int64_t, int64_t, int64_t);                 \
  template void gather_middle<T>(const T*, const int32_t*, T*, int64_t, int64_t, int64_t, int64_t); \
  template void scatter_add_middle<T>(const T*, const int32_t*, T*, int64_t, int64_t, int64_t, int64_t);
BW_INST(float)
BW_INST(double)
#undef BW_INST

}  // namespace bulwark::cpu

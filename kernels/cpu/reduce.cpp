// Reductions and index ops over a tensor viewed as [outer, n, inner]: every reduction or
// gather along one axis (or a run of contiguous axes) is this shape after a reshape.
#include <omp.h>

#include <algorithm>
#include <vector>

#include "kernels/cpu/cpu_kernels.h"

namespace bulwark::cpu {

namespace {
constexpr int64_t kParallelMin = 1 << 14;
constexpr int64_t kLeaf = 2048;   // a row is summed as leaves of this many elements...
constexpr int64_t kLanes = 16;    // ...each with 16 interleaved accumulators (vectorises)...
constexpr int64_t kColumns = 4096;  // (columns per task when summing rows of a [n, inner] block)

template <class T>
T sum_leaf(const T* p, int64_t n) {
  T acc[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int64_t l = 0; l < kLanes; ++l) acc[l] += p[i + l];
  for (; i < n; ++i) acc[i % kLanes] += p[i];
  for (int64_t w = kLanes / 2; w > 0; w /= 2)
    for (int64_t l = 0; l < w; ++l) acc[l] += acc[l + w];
  return acc[0];
}

// ...and the leaf sums are added pairwise: the rounding error grows like log(n), not n.
template <class T>
T sum_pairwise(T* v, int64_t n) {
  while (n > 1) {
    const int64_t half = n / 2;
    for (int64_t i = 0; i < half; ++i) v[i] = v[2 * i] + v[2 * i + 1];
    if (n & 1) v[half] = v[n - 1];
    n = half + (n & 1);
  }
  return v[0];
}

template <class T>
void sum_middle_unscaled(const T* x, T* y, int64_t outer, int64_t n, int64_t inner) {
  // Every output is accumulated in a fixed order that does not depend on the thread count.
  if (inner == 1) {
    const int64_t leaves = (n + kLeaf - 1) / kLeaf;
    if (leaves <= 1) {
#pragma omp parallel for if (outer * n >= kParallelMin) schedule(static)
      for (int64_t o = 0; o < outer; ++o) y[o] = sum_leaf(x + o * n, n);
      return;
    }
    std::vector<T> part(static_cast<size_t>(outer * leaves));
#pragma omp parallel for if (outer * n >= kParallelMin) schedule(static)
    for (int64_t t = 0; t < outer * leaves; ++t) {
      const int64_t o = t / leaves, k = t % leaves;
      part[t] = sum_leaf(x + o * n + k * kLeaf, std::min(kLeaf, n - k * kLeaf));
    }
    for (int64_t o = 0; o < outer; ++o) y[o] = sum_pairwise(part.data() + o * leaves, leaves);
    return;
  }
  // Rows of length `inner` are added one after another, vectorised across the row; the work
  // is split over (outer, column block) so a single big block still uses every thread.
  const int64_t blocks = (inner + kColumns - 1) / kColumns;
#pragma omp parallel for if (outer * n * inner >= kParallelMin) schedule(static)
  for (int64_t t = 0; t < outer * blocks; ++t) {
    const int64_t o = t / blocks, i0 = (t % blocks) * kColumns, i1 = std::min(inner, i0 + kColumns);
    T* out = y + o * inner;
    for (int64_t i = i0; i < i1; ++i) out[i] = 0;
    for (int64_t k = 0; k < n; ++k) {
      const T* p = x + (o * n + k) * inner;
#pragma omp simd
      for (int64_t i = i0; i < i1; ++i) out[i] += p[i];
    }
  }
}
}  // namespace

// y = scale * sum: the sum first, then one multiply per output (a mean's 1/n), the same rounding
// as scaling the sum afterwards.
template <class T>
void sum_middle(const T* x, T* y, int64_t outer, int64_t n, int64_t inner, T scale) {
  sum_middle_unscaled(x, y, outer, n, inner);
  if (scale != T(1))
    for (int64_t i = 0; i < outer * inner; ++i) y[i] = scale * y[i];
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
  template void sum_middle<T>(const T*, T*, int64_t, int64_t, int64_t, T);                       \
  template void argmax_middle<T>(const T*, int32_t*, int64_t, int64_t, int64_t);                 \
  template void gather_middle<T>(const T*, const int32_t*, T*, int64_t, int64_t, int64_t, int64_t); \
  template void scatter_add_middle<T>(const T*, const int32_t*, T*, int64_t, int64_t, int64_t, int64_t);
BW_INST(float)
BW_INST(double)
#undef BW_INST

}  // namespace bulwark::cpu

// Elementwise CPU kernels: unary maps, broadcasting binary maps, where, strided copies.
// The scalar bodies are kernels/common/elementwise.h; here we only iterate. The op is a
// template parameter so the switch in unary_apply folds away and the loops vectorise.
#include <omp.h>

#include <cstring>

#include "kernels/cpu/cpu_kernels.h"

namespace bulwark::cpu {

namespace {
constexpr int64_t kParallelMin = 1 << 15;  // below this, threads cost more than they save

// Merges adjacent dims that every view walks as one (stride[d] == stride[d+1] * shape[d+1])
// and drops size-1 dims, so [N,C,H,W] + bias[1,C,1,1] is walked as [N, C, H*W] with long rows.
template <int K>
void coalesce(Strided (&v)[K]) {
  Strided out[K];
  int nd = 0;
  for (int d = 0; d < v[0].ndim; ++d) {
    if (v[0].shape[d] == 1) continue;
    bool merge = nd > 0;
    for (int k = 0; k < K && merge; ++k) merge = out[k].stride[nd - 1] == v[k].stride[d] * v[k].shape[d];
    for (int k = 0; k < K; ++k) {
      if (merge) {
        out[k].shape[nd - 1] *= v[k].shape[d];
        out[k].stride[nd - 1] = v[k].stride[d];
      } else {
        out[k].shape[nd] = v[k].shape[d];
        out[k].stride[nd] = v[k].stride[d];
      }
    }
    if (!merge) ++nd;
  }
  for (int k = 0; k < K; ++k) {
    out[k].ndim = nd;
    v[k] = out[k];
  }
}

// Walks the rows (all dims but the last) of up to three strided views of one shape, in
// row-major order, and calls f(out_row_start, off[0..2], inner, inner_stride[0..2]) per row.
// The caller runs the innermost dimension as a tight loop. Dims are coalesced first.
template <int K, class F>
void for_rows(const Strided* const (&views_in)[K], F&& f) {
  Strided views[K];
  for (int k = 0; k < K; ++k) views[k] = *views_in[k];
  coalesce<K>(views);
  const Strided& s = views[0];
  int64_t total = 1;
  for (int d = 0; d < s.ndim; ++d) total *= s.shape[d];
  if (total == 0) return;
  if (s.ndim == 0) {
    int64_t off[K] = {}, st[K] = {};
    f(0, off, 1, st);
    return;
  }
  const int last = s.ndim - 1;
  const int64_t inner = s.shape[last];
  const int64_t rows = total / inner;
  int64_t inner_stride[K];
  for (int k = 0; k < K; ++k) inner_stride[k] = views[k].stride[last];
#pragma omp parallel for if (total >= kParallelMin) schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    int64_t rem = r, off[K] = {};
    for (int d = last - 1; d >= 0; --d) {
      const int64_t i = rem % s.shape[d];
      rem /= s.shape[d];
      for (int k = 0; k < K; ++k) off[k] += i * views[k].stride[d];
    }
    f(r * inner, off, inner, inner_stride);
  }
}

bool is_dense(const Strided& s) {
  int64_t expect = 1;
  for (int d = s.ndim - 1; d >= 0; --d) {
    if (s.shape[d] != 1 && s.stride[d] != expect) return false;
    expect *= s.shape[d];
  }
  return true;
}

int64_t count(const Strided& s) {
  int64_t n = 1;
  for (int d = 0; d < s.ndim; ++d) n *= s.shape[d];
  return n;
}

template <class T, ew::Unary OP>
void unary_loop(const T* x, T* y, int64_t n, T p0, T p1) {
#pragma omp parallel for simd if (n >= kParallelMin) schedule(static)
  for (int64_t i = 0; i < n; ++i) y[i] = ew::unary_apply(OP, x[i], p0, p1);
}

template <class T, ew::Binary OP>
void binary_loop(const T* a, const Strided& sa, const T* b, const Strided& sb, T* out) {
  const int64_t n = count(sa);
  const bool a_dense = is_dense(sa), b_dense = is_dense(sb);
  bool b_scalar = true;
  for (int d = 0; d < sb.ndim; ++d) b_scalar &= (sb.stride[d] == 0 || sb.shape[d] == 1);
  if (a_dense && b_dense) {
#pragma omp parallel for simd if (n >= kParallelMin) schedule(static)
    for (int64_t i = 0; i < n; ++i) out[i] = ew::binary_apply(OP, a[i], b[i]);
  } else if (a_dense && b_scalar) {
    const T bv = b[0];
#pragma omp parallel for simd if (n >= kParallelMin) schedule(static)
    for (int64_t i = 0; i < n; ++i) out[i] = ew::binary_apply(OP, a[i], bv);
  } else {
    // Rows of a broadcast: unit/zero inner strides get their own (vectorised) loops.
    const Strided* const views[2] = {&sa, &sb};
    for_rows<2>(views, [&](int64_t o, const int64_t* off, int64_t inner, const int64_t* st) {
      const T* pa = a + off[0];
      const T* pb = b + off[1];
      T* po = out + o;
      if (st[0] == 1 && st[1] == 1) {
#pragma omp simd
        for (int64_t j = 0; j < inner; ++j) po[j] = ew::binary_apply(OP, pa[j], pb[j]);
      } else if (st[0] == 1 && st[1] == 0) {
        const T bv = pb[0];
#pragma omp simd
        for (int64_t j = 0; j < inner; ++j) po[j] = ew::binary_apply(OP, pa[j], bv);
      } else if (st[0] == 0 && st[1] == 1) {
        const T av = pa[0];
#pragma omp simd
        for (int64_t j = 0; j < inner; ++j) po[j] = ew::binary_apply(OP, av, pb[j]);
      } else {
        for (int64_t j = 0; j < inner; ++j) po[j] = ew::binary_apply(OP, pa[j * st[0]], pb[j * st[1]]);
      }
    });
  }
}
}  // namespace

void set_num_threads(int n) { omp_set_num_threads(n > 0 ? n : 1); }
int num_threads() { return omp_get_max_threads(); }

template <class T>
void strided_copy(const T* src, const Strided& s, T* dst) {
  if (is_dense(s)) {
    std::memcpy(dst, src, sizeof(T) * count(s));
    return;
  }
  const Strided* const views[1] = {&s};
  for_rows<1>(views, [&](int64_t o, const int64_t* off, int64_t inner, const int64_t* st) {
    if (st[0] == 1)
      std::memcpy(dst + o, src + off[0], sizeof(T) * inner);
    else
      for (int64_t j = 0; j < inner; ++j) dst[o + j] = src[off[0] + j * st[0]];
  });
}

template <class T>
void fill(T* dst, int64_t n, T value) {
#pragma omp parallel for simd if (n >= kParallelMin) schedule(static)
  for (int64_t i = 0; i < n; ++i) dst[i] = value;
}

template <class T>
void normalize_channels(const T* x, const T* mean, const T* stddev, T* y, int64_t n, int64_t channels, int64_t inner) {
#pragma omp parallel for collapse(2) if (n * channels * inner >= kParallelMin) schedule(static)
  for (int64_t i = 0; i < n; ++i)
    for (int64_t c = 0; c < channels; ++c) {
      const int64_t o = (i * channels + c) * inner;
      const T m = mean[c], s = stddev[c];
      for (int64_t j = 0; j < inner; ++j) {
        const T d = x[o + j] - m;
        y[o + j] = d / s;
      }
    }
}

template <class Src, class Dst>
void convert(const Src* src, Dst* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<Dst>(src[i]);
}

template <class T>
void unary(ew::Unary op, const T* x, T* y, int64_t n, T p0, T p1) {
  using U = ew::Unary;
  switch (op) {
#define BW_UNARY(name) case U::name: return unary_loop<T, U::name>(x, y, n, p0, p1);
    BW_UNARY(neg) BW_UNARY(abs) BW_UNARY(sign) BW_UNARY(exp) BW_UNARY(log) BW_UNARY(sqrt)
    BW_UNARY(square) BW_UNARY(relu) BW_UNARY(softplus) BW_UNARY(sigmoid)
    BW_UNARY(affine) BW_UNARY(clamp) BW_UNARY(clamp_mask) BW_UNARY(gt_scalar)
#undef BW_UNARY
  }
}

template <class T>
void binary(ew::Binary op, const T* a, const Strided& sa, const T* b, const Strided& sb, T* out) {
  using B = ew::Binary;
  switch (op) {
#define BW_BINARY(name) case B::name: return binary_loop<T, B::name>(a, sa, b, sb, out);
    BW_BINARY(add) BW_BINARY(sub) BW_BINARY(mul) BW_BINARY(div) BW_BINARY(maximum)
    BW_BINARY(minimum) BW_BINARY(gt) BW_BINARY(ge) BW_BINARY(le) BW_BINARY(eq) BW_BINARY(relu_grad)
#undef BW_BINARY
  }
}

template <class T>
void where(const T* c, const Strided& sc, const T* a, const Strided& sa, const T* b, const Strided& sb, T* out) {
  const Strided* const views[3] = {&sc, &sa, &sb};
  for_rows<3>(views, [&](int64_t o, const int64_t* off, int64_t inner, const int64_t* st) {
    for (int64_t j = 0; j < inner; ++j)
      out[o + j] = c[off[0] + j * st[0]] != T(0) ? a[off[1] + j * st[1]] : b[off[2] + j * st[2]];
  });
}

#define BW_INST(T)                                                                              \
  template void strided_copy<T>(const T*, const Strided&, T*);                                  \
  template void fill<T>(T*, int64_t, T);                                                        \
  template void normalize_channels<T>(const T*, const T*, const T*, T*, int64_t, int64_t, int64_t); \
  template void unary<T>(ew::Unary, const T*, T*, int64_t, T, T);                               \
  template void binary<T>(ew::Binary, const T*, const Strided&, const T*, const Strided&, T*);  \
  template void where<T>(const T*, const Strided&, const T*, const Strided&, const T*, const Strided&, T*);
BW_INST(float)
BW_INST(double)
#undef BW_INST
template void strided_copy<int32_t>(const int32_t*, const Strided&, int32_t*);
template void fill<int32_t>(int32_t*, int64_t, int32_t);
template void convert<float, double>(const float*, double*, int64_t);
template void convert<double, float>(const double*, float*, int64_t);
template void convert<int32_t, float>(const int32_t*, float*, int64_t);
template void convert<int32_t, double>(const int32_t*, double*, int64_t);
template void convert<float, int32_t>(const float*, int32_t*, int64_t);
template void convert<double, int32_t>(const double*, int32_t*, int64_t);

}  // namespace bulwark::cpu

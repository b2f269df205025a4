// Interval affine layers on the CPU: the center and radius of a box through one conv or linear
// layer (W c + b and |W| r), the interval ReLU in the same call, and their backward. The CUDA
// kernels (kernels/cuda/interval.cu) read W once for both products in a two-accumulator tile
// loop; here the products are the tuned sgemm/conv kernels of this folder, called back to back
// on |W| made once per call (O x C*KH*KW floats, against 2 N O C KH KW L FLOPs of products). What
// the fusion saves on the CPU is everything around the products: the unfused composition
// conv(c) + conv(r, abs(W)) then relu(c - r), relu(c + r), (u + l) / 2, (u - l) / 2 makes seven
// more passes over the activations, each a new tensor and an autograd node; here the epilogue
// is one pass (kernels/common/interval.h), the backward one GEMM pair per input.
//
// FLOPs: 2x the layer's (4 N O CKK L for a conv, 4 N in o for a linear) + 8 per output element
// for the ReLU. Bytes: c, r, W once each, out 2 (4 with the ReLU) x N O L.
#include <omp.h>

#include <algorithm>
#include <vector>

#include "kernels/common/interval.h"
#include "kernels/cpu/cpu_kernels.h"

namespace bulwark::cpu {

namespace {
template <class T>
std::vector<T> abs_of(const T* w, int64_t n) {
  std::vector<T> a(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) a[i] = w[i] < T(0) ? -w[i] : w[i];
  return a;
}

// out [4, count]: out[2:4] = the interval ReLU of out[0:2].
template <class T>
void relu_epilogue(int64_t count, T* out) {
  const T* __restrict c = out;
  const T* __restrict r = out + count;
  T* __restrict cp = out + 2 * count;
  T* __restrict rp = out + 3 * count;
#pragma omp parallel for simd schedule(static) if (count > 65536)
  for (int64_t i = 0; i < count; ++i) interval::relu(c[i], r[i], cp + i, rp + i);
}

// dw += sign(w) * extra, elementwise over n.
template <class T>
void add_signed(int64_t n, const T* w, const T* extra, T* dw) {
  for (int64_t i = 0; i < n; ++i) dw[i] += interval::sign(w[i]) * extra[i];
}
}  // namespace

template <class T>
void interval_conv2d_forward(const ConvShape& s, const T* c, const T* r, const T* w, const T* bias, bool relu, T* out) {
  const int64_t count = s.n * s.o * s.oh * s.ow, wn = s.o * s.c * s.kh * s.kw;
  const std::vector<T> aw = abs_of(w, wn);
  conv2d_forward<T>(s, c, w, bias, out);
  conv2d_forward<T>(s, r, aw.data(), nullptr, out + count);
  if (relu) relu_epilogue(count, out);
}

template <class T>
void interval_conv2d_backward_input(const ConvShape& s, const T* gc, const T* gr, const T* w, T* dc, T* dr) {
  const std::vector<T> aw = abs_of(w, s.o * s.c * s.kh * s.kw);
  conv2d_backward_input<T>(s, gc, w, dc);
  conv2d_backward_input<T>(s, gr, aw.data(), dr);
}

template <class T>
void interval_conv2d_backward_weight(const ConvShape& s, const T* c, const T* r, const T* gc, const T* gr, const T* w,
                                     T* dw) {
  const int64_t wn = s.o * s.c * s.kh * s.kw;
  std::vector<T> radius_part(static_cast<size_t>(wn));
  conv2d_backward_weight<T>(s, c, gc, dw);
  conv2d_backward_weight<T>(s, r, gr, radius_part.data());
  add_signed(wn, w, radius_part.data(), dw);
}

template <class T>
void interval_linear_forward(int64_t n, int64_t in, int64_t o, const T* c, const T* r, const T* w, const T* bias,
                             bool relu, T* out) {
  const int64_t count = n * o;
  const std::vector<T> aw = abs_of(w, o * in);
  gemm<T>(false, true, n, o, in, T(1), c, in, w, in, T(0), out, o);
  gemm<T>(false, true, n, o, in, T(1), r, in, aw.data(), in, T(0), out + count, o);
  if (bias)
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < o; ++j) out[i * o + j] += bias[j];
  if (relu) relu_epilogue(count, out);
}

template <class T>
void interval_linear_backward_input(int64_t n, int64_t in, int64_t o, const T* gc, const T* gr, const T* w, T* dc,
                                    T* dr) {
  const std::vector<T> aw = abs_of(w, o * in);
  gemm<T>(false, false, n, in, o, T(1), gc, o, w, in, T(0), dc, in);
  gemm<T>(false, false, n, in, o, T(1), gr, o, aw.data(), in, T(0), dr, in);
}

template <class T>
void interval_linear_backward_weight(int64_t n, int64_t in, int64_t o, const T* c, const T* r, const T* gc,
                                     const T* gr, const T* w, T* dw) {
  std::vector<T> radius_part(static_cast<size_t>(o * in));
  gemm<T>(true, false, o, in, n, T(1), gc, o, c, in, T(0), dw, in);
  gemm<T>(true, false, o, in, n, T(1), gr, o, r, in, T(0), radius_part.data(), in);
  add_signed(o * in, w, radius_part.data(), dw);
}

template <class T>
void interval_relu_backward(int64_t count, const T* pre, const T* g, T* gpre) {
  const T* __restrict c = pre;
  const T* __restrict r = pre + count;
  const T* __restrict g_pre_c = g;
  const T* __restrict g_pre_r = g + count;
  const T* __restrict g_post_c = g + 2 * count;
  const T* __restrict g_post_r = g + 3 * count;
  T* __restrict out_c = gpre;
  T* __restrict out_r = gpre + count;
#pragma omp parallel for simd schedule(static) if (count > 65536)
  for (int64_t i = 0; i < count; ++i) {
    T gc, gr;
    interval::relu_backward(c[i], r[i], g_post_c[i], g_post_r[i], &gc, &gr);
    out_c[i] = g_pre_c[i] + gc;
    out_r[i] = g_pre_r[i] + gr;
  }
}

template <class T>
void elided_radius_forward(int64_t n, int64_t in, int64_t k, const T* r, const T* w, const int32_t* labels, T* out) {
#pragma omp parallel for schedule(static) if (n * k * in > 1 << 20)
  for (int64_t s = 0; s < n; ++s) {
    const T* wy = w + labels[s] * in;
    const T* rs = r + s * in;
    for (int64_t j = 0; j < k; ++j) {
      const T* wj = w + j * in;
      T acc = 0;
      for (int64_t i = 0; i < in; ++i) {
        const T d = wj[i] - wy[i];
        acc += (d < T(0) ? -d : d) * rs[i];
      }
      out[s * k + j] = acc;
    }
  }
}

// dr[s, i] = sum_j g[s, j] |W_j,i - W_y,i|; with t = g[s, j] sign(W_j,i - W_y,i) r[s, i], dW_j += t
// and dW_y -= t. One pass over the samples in order (dW is shared), so the sums are deterministic.
template <class T>
void elided_radius_backward(int64_t n, int64_t in, int64_t k, const T* r, const T* w, const int32_t* labels,
                            const T* g, T* dr, T* dw) {
  if (dw) std::fill(dw, dw + k * in, T(0));
  for (int64_t s = 0; s < n; ++s) {
    const int64_t y = labels[s];
    const T *wy = w + y * in, *rs = r + s * in, *gs = g + s * k;
    if (dr) std::fill(dr + s * in, dr + (s + 1) * in, T(0));
    for (int64_t j = 0; j < k; ++j) {
      const T* wj = w + j * in;
      for (int64_t i = 0; i < in; ++i) {
        const T d = wj[i] - wy[i];
        if (dr) dr[s * in + i] += gs[j] * (d < T(0) ? -d : d);
        if (dw && j != y) {
          const T t = gs[j] * interval::sign(d) * rs[i];
          dw[j * in + i] += t;
          dw[y * in + i] -= t;
        }
      }
    }
  }
}

#define BW_INTERVAL_INSTANTIATE(T)                                                                                 \
  template void interval_conv2d_forward<T>(const ConvShape&, const T*, const T*, const T*, const T*, bool, T*);    \
  template void interval_conv2d_backward_input<T>(const ConvShape&, const T*, const T*, const T*, T*, T*);         \
  template void interval_conv2d_backward_weight<T>(const ConvShape&, const T*, const T*, const T*, const T*,       \
                                                   const T*, T*);                                                  \
  template void interval_linear_forward<T>(int64_t, int64_t, int64_t, const T*, const T*, const T*, const T*, bool, \
                                           T*);                                                                    \
  template void interval_linear_backward_input<T>(int64_t, int64_t, int64_t, const T*, const T*, const T*, T*, T*); \
  template void interval_linear_backward_weight<T>(int64_t, int64_t, int64_t, const T*, const T*, const T*,        \
                                                   const T*, const T*, T*);                                        \
  template void interval_relu_backward<T>(int64_t, const T*, const T*, T*);                                         \
  template void elided_radius_forward<T>(int64_t, int64_t, int64_t, const T*, const T*, const int32_t*, T*);        \
  template void elided_radius_backward<T>(int64_t, int64_t, int64_t, const T*, const T*, const int32_t*, const T*,  \
                                          T*, T*);
BW_INTERVAL_INSTANTIATE(float)
BW_INTERVAL_INSTANTIATE(double)

}  // namespace bulwark::cpu

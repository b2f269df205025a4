// Elementwise kernels: unary maps, broadcasting binary maps, where, strided copies, fill and
// dtype conversion. The scalar bodies are kernels/common/elementwise.h, the same functions the
// CPU loops call, so both backends compute the same thing (bit for bit except libm calls).
//
// Math: y[i] = f(x[i]); out[i] = f(a[idx_a(i)], b[idx_b(i)]) where idx_v(i) unravels the
// contiguous output index i over the shape and dots it with view v's strides (0 on broadcast dims).
// FLOPs: 1-20 per element (exp/log/softplus the most). Bytes: f32 unary 8 B/element; binary
// 12 B/element when nothing is broadcast, down to ~4 B when one side is a broadcast scalar.
// All memory-bound: the target is the copy bandwidth (about 1.5 TB/s on an A100, 3 TB/s H100).
//
// Versions:
//   v1 (this file) one grid-stride kernel per family, the op a template parameter so its switch
//      folds away; strided views unravel the index with one div/mod per dimension. Dense views
//      take the same path (ndim 1 after the host merges nothing; a dense fast path with float4
//      loads and host-side dim coalescing as in kernels/cpu/elementwise.cpp is the next version).
#include "kernels/cuda/common.cuh"

namespace bulwark::cuda {

namespace {

// Offset into a strided view of contiguous output element i.
__device__ inline int64_t strided_offset(const Strided& s, int64_t i) {
  int64_t off = 0;
  for (int d = s.ndim - 1; d >= 0; --d) {
    const int64_t k = i % s.shape[d];
    i /= s.shape[d];
    off += k * s.stride[d];
  }
  return off;
}

int64_t count(const Strided& s) {
  int64_t n = 1;
  for (int d = 0; d < s.ndim; ++d) n *= s.shape[d];
  return n;
}

// The elements a strided view actually holds (a broadcast dimension, stride 0, holds one): what
// DRAM supplies when the view is read once.
double distinct(const Strided& s) {
  double n = 1;
  for (int d = 0; d < s.ndim; ++d)
    if (s.stride[d] != 0) n *= static_cast<double>(s.shape[d]);
  return n;
}

#define BW_GRID_STRIDE(i, n) \
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < (n); i += int64_t(gridDim.x) * blockDim.x)

template <ew::Unary OP>
__global__ void unary_kernel(const float* x, float* y, int64_t n, float p0, float p1) {
  BW_GRID_STRIDE(i, n) y[i] = ew::unary_apply(OP, x[i], p0, p1);
}

template <ew::Binary OP>
__global__ void binary_kernel(const float* a, Strided sa, const float* b, Strided sb, float* out, int64_t n) {
  BW_GRID_STRIDE(i, n) out[i] = ew::binary_apply(OP, a[strided_offset(sa, i)], b[strided_offset(sb, i)]);
}

__global__ void where_kernel(const float* c, Strided sc, const float* a, Strided sa, const float* b, Strided sb,
                             float* out, int64_t n) {
  BW_GRID_STRIDE(i, n) {
    out[i] = c[strided_offset(sc, i)] != 0.0f ? a[strided_offset(sa, i)] : b[strided_offset(sb, i)];
  }
}

template <class T>
__global__ void strided_copy_kernel(const T* src, Strided s, T* dst, int64_t n) {
  BW_GRID_STRIDE(i, n) dst[i] = src[strided_offset(s, i)];
}

template <class T>
__global__ void fill_kernel(T* dst, int64_t n, T value) {
  BW_GRID_STRIDE(i, n) dst[i] = value;
}

template <class Src, class Dst>
__global__ void convert_kernel(const Src* src, Dst* dst, int64_t n) {
  BW_GRID_STRIDE(i, n) dst[i] = static_cast<Dst>(src[i]);
}

template <class T>
void launch_strided_copy(const T* src, const Strided& s, T* dst) {
  const int64_t n = count(s);
  const LaunchCost cost{0, static_cast<double>(sizeof(T)) * (distinct(s) + static_cast<double>(n))};
  if (n) BW_LAUNCH_COSTED(cost, (strided_copy_kernel<T>), blocks_for(n), kThreads, 0, current_stream(), src, s, dst, n);
}

// In place: a step counter (BatchNorm's num_batches_tracked) moves on the device, not through
// the host (1 integer add, 4 B read and written per element).
__global__ void add_i32_kernel(int32_t* dst, int64_t n, int32_t value) {
  BW_GRID_STRIDE(i, n) dst[i] += value;
}

// A model's input normalisation in one pass instead of a broadcast subtract and a broadcast
// divide (2 FLOPs, 8 B per element; the per-channel constants are a few bytes).
__global__ void normalize_channels_kernel(const float* x, const float* mean, const float* stddev, float* y, int64_t total,
                                          int64_t channels, int64_t inner) {
  BW_GRID_STRIDE(i, total) {
    const int64_t c = i / inner % channels;
    const float d = x[i] - mean[c];
    y[i] = d / stddev[c];
  }
}

template <class T>
void launch_fill(T* dst, int64_t n, T value) {
  if (n > 0)
    BW_LAUNCH_COSTED(elementwise_cost(n, 0, 1, 0, sizeof(T)), (fill_kernel<T>), blocks_for(n), kThreads, 0,
                     current_stream(), dst, n, value);
}

template <class Src, class Dst>
void launch_convert(const Src* src, Dst* dst, int64_t n) {
  const LaunchCost cost{static_cast<double>(n), static_cast<double>(n) * (sizeof(Src) + sizeof(Dst))};
  if (n > 0) BW_LAUNCH_COSTED(cost, (convert_kernel<Src, Dst>), blocks_for(n), kThreads, 0, current_stream(), src, dst, n);
}

}  // namespace

void strided_copy(const float* src, const Strided& s, float* dst) { launch_strided_copy(src, s, dst); }
void strided_copy_i32(const int32_t* src, const Strided& s, int32_t* dst) { launch_strided_copy(src, s, dst); }
void fill(float* dst, int64_t n, float value) { launch_fill(dst, n, value); }
void fill_i32(int32_t* dst, int64_t n, int32_t value) { launch_fill(dst, n, value); }
void normalize_channels(const float* x, const float* mean, const float* stddev, float* y, int64_t n, int64_t channels,
                        int64_t inner) {
  const int64_t total = n * channels * inner;
  if (total > 0)
    BW_LAUNCH_COSTED((LaunchCost{2.0 * double(total), 8.0 * double(total) + 8.0 * double(channels)}),
                     normalize_channels_kernel, blocks_for(total), kThreads, 0, current_stream(), x, mean, stddev, y,
                     total, channels, inner);
}

void add_i32(int32_t* dst, int64_t n, int32_t value) {
  if (n > 0)
    BW_LAUNCH_COSTED((LaunchCost{0, 8.0 * n}), add_i32_kernel, blocks_for(n), kThreads, 0, current_stream(), dst, n, value);
}
void convert_i32_to_f32(const int32_t* src, float* dst, int64_t n) { launch_convert(src, dst, n); }
void convert_f32_to_i32(const float* src, int32_t* dst, int64_t n) { launch_convert(src, dst, n); }

void unary(ew::Unary op, const float* x, float* y, int64_t n, float p0, float p1) {
  if (n <= 0) return;
  using U = ew::Unary;
  const unsigned grid = blocks_for(n);
  const LaunchCost cost = elementwise_cost(n, 1, 1, 1);  // one operation each, exp and log included
  switch (op) {
#define BW_UNARY(name)                                                                                         \
  case U::name:                                                                                                \
    BW_LAUNCH_COSTED(cost, (unary_kernel<U::name>), grid, kThreads, 0, current_stream(), x, y, n, p0, p1); \
    return;
    BW_UNARY(neg) BW_UNARY(abs) BW_UNARY(sign) BW_UNARY(exp) BW_UNARY(log) BW_UNARY(sqrt)
    BW_UNARY(square) BW_UNARY(relu) BW_UNARY(softplus) BW_UNARY(sigmoid)
    BW_UNARY(affine) BW_UNARY(clamp) BW_UNARY(clamp_mask) BW_UNARY(gt_scalar)
#undef BW_UNARY
  }
}

void binary(ew::Binary op, const float* a, const Strided& sa, const float* b, const Strided& sb, float* out) {
  const int64_t n = count(sa);
  if (n <= 0) return;
  using B = ew::Binary;
  const unsigned grid = blocks_for(n);
  const LaunchCost cost{static_cast<double>(n), 4.0 * (distinct(sa) + distinct(sb) + static_cast<double>(n))};
  switch (op) {
#define BW_BINARY(name)                                                                                       \
  case B::name:                                                                                               \
    BW_LAUNCH_COSTED(cost, (binary_kernel<B::name>), grid, kThreads, 0, current_stream(), a, sa, b, sb, out, n); \
    return;
    BW_BINARY(add) BW_BINARY(sub) BW_BINARY(mul) BW_BINARY(div) BW_BINARY(maximum)
    BW_BINARY(minimum) BW_BINARY(gt) BW_BINARY(ge) BW_BINARY(le) BW_BINARY(eq) BW_BINARY(relu_grad)
#undef BW_BINARY
  }
}

void where(const float* c, const Strided& sc, const float* a, const Strided& sa, const float* b, const Strided& sb,
           float* out) {
  const int64_t n = count(sc);
  const LaunchCost cost{static_cast<double>(n),
                        4.0 * (distinct(sc) + distinct(sa) + distinct(sb) + static_cast<double>(n))};
  if (n > 0)
    BW_LAUNCH_COSTED(cost, where_kernel, blocks_for(n), kThreads, 0, current_stream(), c, sc, a, sa, b, sb, out, n);
}

}  // namespace bulwark::cuda

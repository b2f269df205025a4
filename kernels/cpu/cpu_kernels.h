#pragma once
// CPU kernels: the reference implementation of every op, and the CPU backend.
// Raw pointers in, raw pointers out; the engine does shapes, dtypes and autograd.
// Instantiated for float and double (double is used by the gradient checks).
#include <cstdint>

#include "kernels/common/elementwise.h"
#include "kernels/common/precision.h"
#include "kernels/common/shapes.h"

namespace bulwark::cpu {

constexpr int kMaxDims = 8;

// Iteration over an N-d strided view, outputs written contiguously.
struct Strided {
  int ndim = 0;
  int64_t shape[kMaxDims] = {};
  int64_t stride[kMaxDims] = {};
};

void set_num_threads(int n);  // OpenMP threads for the kernels (BLAS stays single-threaded)
int num_threads();
// The input format of gemm<float> (and so of the convolutions, which are GEMMs): fp32, or the
// operands rounded to TF32 / BF16 before an f32 sgemm, the tensor cores' arithmetic emulated
// (kernels/common/precision.h). Process-wide, fp32 by default; f64 GEMMs are never rounded.
void set_math_precision(MathPrecision precision);
MathPrecision math_precision();

template <class T> void strided_copy(const T* src, const Strided& s, T* dst);
template <class T> void fill(T* dst, int64_t n, T value);
// y = (x - mean[c]) / stddev[c] over x [n, C, inner] contiguous: per-channel input normalisation,
// rounded as the subtraction and the division one after the other.
template <class T> void normalize_channels(const T* x, const T* mean, const T* stddev, T* y, int64_t n, int64_t channels,
                                           int64_t inner);
template <class Src, class Dst> void convert(const Src* src, Dst* dst, int64_t n);

template <class T> void unary(ew::Unary op, const T* x, T* y, int64_t n, T p0, T p1);
// out (contiguous, shape `a.shape` == `b.shape` after broadcasting, strides 0 on broadcast dims)
template <class T> void binary(ew::Binary op, const T* a, const Strided& sa, const T* b, const Strided& sb, T* out);
template <class T> void where(const T* c, const Strided& sc, const T* a, const Strided& sa, const T* b,
                              const Strided& sb, T* out);

// x viewed as [outer, n, inner]: y[o, i] = sum_k x[o, k, i]
template <class T> void sum_middle(const T* x, T* y, int64_t outer, int64_t n, int64_t inner, T scale = T(1));
// idx[o, i] = argmax_k x[o, k, i] (first maximum)
template <class T> void argmax_middle(const T* x, int32_t* idx, int64_t outer, int64_t n, int64_t inner);
// out[o, k, i] = x[o, idx[o, k, i], i]; x is [outer, n, inner], idx/out are [outer, m, inner]
template <class T> void gather_middle(const T* x, const int32_t* idx, T* out, int64_t outer, int64_t n, int64_t m, int64_t inner);
// out (zeroed by the caller) [outer, n, inner] += src[o, k, i] at idx[o, k, i]
template <class T> void scatter_add_middle(const T* src, const int32_t* idx, T* out, int64_t outer, int64_t n, int64_t m, int64_t inner);

// C[M,N] = alpha * op(A) op(B) + beta * C, row-major, op = transpose when ta/tb.
template <class T> void gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, T alpha, const T* A, int64_t lda,
                             const T* B, int64_t ldb, T beta, T* C, int64_t ldc);
// C[M,N] = op(A) op(B) + bias[N] broadcast over the rows: a linear layer's forward, with the
// bias added to each product as add() would add it (the same rounding); relu(...) with `relu`.
template <class T> void gemm_bias(bool ta, bool tb, int64_t M, int64_t N, int64_t K, const T* A, int64_t lda,
                                  const T* B, int64_t ldb, const T* bias, T* C, int64_t ldc, bool relu = false);

// The conv and pool geometry of kernels/common/shapes.h, shared with the CUDA backend.
using ::bulwark::ConvShape;
using ::bulwark::PoolShape;

// The f32 convolutions' algorithm (process-wide, for benches that compare the two): `automatic`
// takes the direct kernels (conv_direct.cpp) for the passes and shapes where they win and
// im2col + GEMM elsewhere; `direct` takes them wherever they apply; `im2col` never.
enum class ConvAlgorithm { automatic, im2col, direct };
void set_conv_algorithm(ConvAlgorithm algorithm);
ConvAlgorithm conv_algorithm();

// y = conv(x, w) + bias (bias may be null), and relu(y) with `relu`: the bias+ReLU epilogue.
template <class T> void conv2d_forward(const ConvShape& s, const T* x, const T* w, const T* bias, T* y,
                                       bool relu = false);
template <class T> void conv2d_backward_input(const ConvShape& s, const T* g, const T* w, T* dx);
template <class T> void conv2d_backward_weight(const ConvShape& s, const T* x, const T* g, T* dw);

// Interval affine layers (kernels/cpu/interval.cpp): a box (center c, radius r) through a conv or
// a linear layer, out = [W c + b; |W| r] stacked as [2, N, ...]; with `relu` the interval ReLU
// follows in the epilogue and out is [4, N, ...]: the pre-activation box, then the ReLU's box.
template <class T> void interval_conv2d_forward(const ConvShape& s, const T* c, const T* r, const T* w, const T* bias,
                                                bool relu, T* out);
// dc = W^T gc, dr = |W|^T gr (transposed convolutions).
template <class T> void interval_conv2d_backward_input(const ConvShape& s, const T* gc, const T* gr, const T* w, T* dc,
                                                       T* dr);
// dW = sum_n gc col(c)^T + sign(W) * sum_n gr col(r)^T.
template <class T> void interval_conv2d_backward_weight(const ConvShape& s, const T* c, const T* r, const T* gc,
                                                        const T* gr, const T* w, T* dw);
// The same for a linear layer y = x W^T + b with x [n, in], W [o, in].
template <class T> void interval_linear_forward(int64_t n, int64_t in, int64_t o, const T* c, const T* r, const T* w,
                                                const T* bias, bool relu, T* out);
template <class T> void interval_linear_backward_input(int64_t n, int64_t in, int64_t o, const T* gc, const T* gr,
                                                       const T* w, T* dc, T* dr);
template <class T> void interval_linear_backward_weight(int64_t n, int64_t in, int64_t o, const T* c, const T* r,
                                                        const T* gc, const T* gr, const T* w, T* dw);
// The elided last layer's radius (IBP's margins z_j - z_y merged into a linear layer W [k, in]):
// out[n, j] = sum_i |W[j, i] - W[y_n, i]| r[n, i] for r [n, in], labels y [n] in [0, k); the
// difference rows are formed per term, never stored per sample. The backward: dr, and dW.
template <class T> void elided_radius_forward(int64_t n, int64_t in, int64_t k, const T* r, const T* w,
                                              const int32_t* labels, T* out);
template <class T> void elided_radius_backward(int64_t n, int64_t in, int64_t k, const T* r, const T* w,
                                               const int32_t* labels, const T* g, T* dr, T* dw);
// The fused ReLU's backward: pre [2, count] the pre-activation box, g [4, count] the gradient of
// the fused output; gpre [2, count] = g[0:2] + the ReLU's backward of g[2:4].
template <class T> void interval_relu_backward(int64_t count, const T* pre, const T* g, T* gpre);
// The symbolic-interval ReLU (kernels/cpu/symbolic.cpp): rows c, r [n, d + 3, m], the input box
// bc, br [n, d]; bounds [2, n, m] (l, u); the ReLU's rows out [2, n, d + 3, m].
template <class T> void symbolic_bounds_forward(int64_t n, int64_t d, int64_t m, const T* c, const T* r, const T* bc,
                                                const T* br, T* bounds);
template <class T> void symbolic_bounds_backward(int64_t n, int64_t d, int64_t m, const T* c, const T* r, const T* bc,
                                                 const T* br, const T* g, T* dc, T* dr);
template <class T> void symbolic_relu_forward(int64_t n, int64_t d, int64_t m, const T* c, const T* r, const T* bounds,
                                              T* out);
template <class T> void symbolic_relu_backward(int64_t n, int64_t d, int64_t m, const T* c, const T* r, const T* bounds,
                                               const T* g, T* dc, T* dr, T* dbounds);

// idx[p, q] = flat index (within the plane) of the max of window q; padding never wins.
template <class T> void max_pool2d_indices(const PoolShape& s, const T* x, int32_t* idx);
template <class T> void avg_pool2d_forward(const PoolShape& s, const T* x, T* y);
template <class T> void avg_pool2d_backward(const PoolShape& s, const T* g, T* dx);
template <class T> void adaptive_avg_pool2d_forward(int64_t planes, int64_t h, int64_t w, int64_t oh, int64_t ow, const T* x, T* y);
template <class T> void adaptive_avg_pool2d_backward(int64_t planes, int64_t h, int64_t w, int64_t oh, int64_t ow, const T* g, T* dx);

// Row-wise over [rows, cols].
template <class T> void log_softmax_rows(const T* z, T* y, int64_t rows, int64_t cols);
// Fused softmax cross-entropy: loss[r] = logsumexp(z[r]) - z[r, y[r]]; and, when `correct` is not
// null, correct[r] = 1 where argmax(z[r]) == y[r] (argmax's tie and NaN rules), else 0.
template <class T> void softmax_xent_rows(const T* z, const int32_t* labels, T* loss, int64_t rows, int64_t cols,
                                          T* correct = nullptr);
// Its backward in one pass: dz[r, j] = (exp(z[r, j] - logsumexp(z[r])) - [j == y[r]]) g_r with
// g_r = g[r * g_stride] * scale: per-row upstream gradients (g_stride 1, scale 1), or the mean's
// (g_stride 0: the one upstream value of the mean loss, scale 1/rows), so a mean cross-entropy's
// backward needs no expanded gradient. The same operations in the same order as
// (softmax(z) - one_hot(y)) * g_r, so bitwise equal to it.
template <class T>
void softmax_xent_backward_rows(const T* z, const int32_t* labels, const T* g, int64_t g_stride, T scale, T* dz,
                                int64_t rows, int64_t cols);

// Training-mode batch norm over x viewed as [n, c, inner] (kernels/cpu/batch_norm.cpp): per-channel
// batch mean, biased var and invstd = 1/sqrt(var + eps) out, y = (x - mean) * invstd * gamma + beta,
// and relu(y) with `relu` (the fused BN+ReLU).
template <class T> void batch_norm_forward_train(const T* x, const T* gamma, const T* beta, T* y, T* mean, T* invstd,
                                                 T* var, int64_t n, int64_t c, int64_t inner, double eps,
                                                 bool relu = false);
// Its backward given the saved mean and invstd; dx, dgamma, dbeta may each be null (not wanted).
// relu_out: the fused ReLU's output, whose mask (> 0) g passes through first; null without a ReLU.
template <class T> void batch_norm_backward_train(const T* x, const T* g, const T* gamma, const T* mean, const T* invstd,
                                                  T* dx, T* dgamma, T* dbeta, int64_t n, int64_t c, int64_t inner,
                                                  const T* relu_out = nullptr);

}  // namespace bulwark::cpu

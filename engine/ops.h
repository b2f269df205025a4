#pragma once
// The public op API. Every op is differentiable (where that makes sense) and records itself
// on the autograd tape; each backward formula is written with these same ops, so gradients
// of gradients work. Binary elementwise ops broadcast like NumPy.
#include <optional>
#include <vector>

#include "engine/autograd.h"
#include "engine/tensor.h"
#include "kernels/common/shapes.h"  // conv_output_size, checked_output_size: the one output-size formula

namespace bulwark {

// ---- elementwise ---------------------------------------------------------------------------
Tensor add(const Tensor& a, const Tensor& b);
Tensor sub(const Tensor& a, const Tensor& b);
Tensor mul(const Tensor& a, const Tensor& b);
Tensor div(const Tensor& a, const Tensor& b);
Tensor maximum(const Tensor& a, const Tensor& b);  // gradient goes to a where a >= b
Tensor minimum(const Tensor& a, const Tensor& b);  // gradient goes to a where a <= b
Tensor add(const Tensor& a, double s);
Tensor mul(const Tensor& a, double s);
Tensor affine(const Tensor& a, double scale, double shift);  // scale * a + shift
Tensor neg(const Tensor& a);
Tensor abs(const Tensor& a);
Tensor sign(const Tensor& a);  // zero gradient
Tensor exp(const Tensor& a);
Tensor log(const Tensor& a);
Tensor sqrt(const Tensor& a);
Tensor square(const Tensor& a);
Tensor relu(const Tensor& a);
Tensor softplus(const Tensor& a);
Tensor sigmoid(const Tensor& a);
Tensor clamp(const Tensor& a, double lo, double hi);  // gradient passes where lo <= a <= hi
Tensor clamp(const Tensor& a, const Tensor& lo, const Tensor& hi);  // = minimum(maximum(a, lo), hi)
Tensor where(const Tensor& cond, const Tensor& a, const Tensor& b);  // cond != 0 ? a : b

// Comparisons give 0/1 tensors of a's dtype and no gradient.
Tensor gt(const Tensor& a, const Tensor& b);
Tensor ge(const Tensor& a, const Tensor& b);
Tensor eq(const Tensor& a, const Tensor& b);
Tensor gt(const Tensor& a, double s);

inline Tensor operator+(const Tensor& a, const Tensor& b) { return add(a, b); }
inline Tensor operator-(const Tensor& a, const Tensor& b) { return sub(a, b); }
inline Tensor operator*(const Tensor& a, const Tensor& b) { return mul(a, b); }
inline Tensor operator/(const Tensor& a, const Tensor& b) { return div(a, b); }
inline Tensor operator-(const Tensor& a) { return neg(a); }
inline Tensor operator+(const Tensor& a, double s) { return add(a, s); }
inline Tensor operator-(const Tensor& a, double s) { return add(a, -s); }
inline Tensor operator*(const Tensor& a, double s) { return mul(a, s); }
inline Tensor operator*(double s, const Tensor& a) { return mul(a, s); }
inline Tensor operator/(const Tensor& a, double s) { return mul(a, 1.0 / s); }

// ---- reductions ------------------------------------------------------------------------------
Tensor sum(const Tensor& a);  // all elements -> scalar
Tensor sum(const Tensor& a, const std::vector<int64_t>& dims, bool keepdim = false);
Tensor mean(const Tensor& a);
Tensor mean(const Tensor& a, const std::vector<int64_t>& dims, bool keepdim = false);
Tensor max(const Tensor& a, int64_t dim, bool keepdim = false);  // values; gradient to the argmax
Tensor argmax(const Tensor& a, int64_t dim, bool keepdim = false);  // i32, first maximum
Tensor sum_to(const Tensor& a, const Shape& shape);  // reduces broadcast dims back to `shape`

// ---- indexing --------------------------------------------------------------------------------
// out[..., k, ...] = a[..., idx[..., k, ...], ...] along `dim` (torch.take_along_dim / gather).
Tensor gather(const Tensor& a, const Tensor& idx, int64_t dim);
// The adjoint of gather: zeros of `shape`, then out[..., idx[k], ...] += src[..., k, ...].
Tensor scatter_add(const Tensor& src, const Tensor& idx, int64_t dim, const Shape& shape);
Tensor one_hot(const Tensor& labels, int64_t num_classes, DType dtype = DType::f32);
Tensor concat(const std::vector<Tensor>& ts, int64_t dim);
// Zeros of `shape` with g written into [start, start + g.size(dim)) along dim (slice's adjoint).
Tensor slice_backward(const Tensor& g, const Shape& shape, int64_t dim, int64_t start);

// ---- linear algebra and convolution -----------------------------------------------------------
Tensor matmul(const Tensor& a, const Tensor& b);  // [M,K] x [K,N]
Tensor linear(const Tensor& x, const Tensor& w, const Tensor& b = Tensor());  // x w^T + b
// relu(linear(x, w, b)) in one kernel (the ReLU in the GEMM's epilogue), the same bits.
Tensor linear_relu(const Tensor& x, const Tensor& w, const Tensor& b = Tensor());
// (x - mean[c]) / stddev[c] over dim 1 of x [N, C, ...]: a model's input normalisation, one
// kernel and one node (the same bits as the broadcast sub and div). Gradient for x only: mean
// and stddev are constants (buffers); if either requires a gradient the composition runs.
Tensor normalize_channels(const Tensor& x, const Tensor& mean, const Tensor& stddev);

struct Conv2dParams {
  int64_t stride = 1, padding = 0;
};
// x [N,C,H,W], w [O,C,KH,KW], optional bias [O]; output [N,O,OH,OW].
Tensor conv2d(const Tensor& x, const Tensor& w, const Tensor& bias = Tensor(), Conv2dParams p = {});
// relu(conv2d(x, w, bias, p)) in one kernel: bias and ReLU in the convolution's epilogue; the same bits.
Tensor conv2d_relu(const Tensor& x, const Tensor& w, const Tensor& bias = Tensor(), Conv2dParams p = {});
// d conv2d / d x given the output gradient g: the transposed convolution of g with w.
Tensor conv2d_backward_input(const Tensor& g, const Tensor& w, const Shape& x_shape, Conv2dParams p);
// d conv2d / d w given input x and output gradient g.
Tensor conv2d_backward_weight(const Tensor& x, const Tensor& g, const Shape& w_shape, Conv2dParams p);

// ---- interval bound propagation (engine/interval_ops.cpp) ------------------------------------
// A box with center c and radius r >= 0 through an affine layer, in one fused kernel per pass:
// [W c + b; |W| r] stacked as [2, ...output shape] (center, radius). With `relu` the interval
// ReLU ([max(c - r, 0), max(c + r, 0)] as a box) is applied in the same pass and the result is
// [4, ...]: the pre-activation box, then the ReLU's box (CROWN needs the pre-activation bounds).
// Differentiable in c, r, w and bias; equal to the composition of conv2d/linear, abs and relu.
Tensor interval_conv2d(const Tensor& c, const Tensor& r, const Tensor& w, const Tensor& bias, Conv2dParams p,
                       bool relu);
Tensor interval_linear(const Tensor& c, const Tensor& r, const Tensor& w, const Tensor& bias, bool relu);
// The radius of the margins z_j - z_y of a last linear layer W [K, in] merged with the
// specification (IBP's elision): out[n, j] = sum_i |W_j,i - W_{y_n},i| r[n, i] for r [N, in] and
// i32 labels [N], without the [N, K, in] difference tensor. Differentiable in r and w.
Tensor elided_margin_radius(const Tensor& r, const Tensor& w, const Tensor& labels);
// Symbolic intervals (models/symbolic.h; kernels/common/symbolic.h has the math). c, r [N, d + 3,
// M]: the rows of N samples' linear functions of the input in center/radius form (d coefficient
// rows, the constants, the "zero" row carrying the biases, the IBP box); the input box bc, br
// [N, d]. symbolic_bounds: each neuron's bounds [l; u] over the box, stacked [2, N, M], each
// intersected with the IBP row's box. symbolic_relu: the rows after the ReLU with those bounds,
// [c'; r'] stacked [2, N, d + 3, M]. One fused kernel per pass on either backend; differentiable
// (twice: with create_graph the backward is their engine-op composition's).
Tensor symbolic_bounds(const Tensor& c, const Tensor& r, const Tensor& bc, const Tensor& br);
Tensor symbolic_relu(const Tensor& c, const Tensor& r, const Tensor& bounds);

// ---- pooling ---------------------------------------------------------------------------------
Tensor max_pool2d(const Tensor& x, int64_t kernel, int64_t stride, int64_t padding = 0);
Tensor avg_pool2d(const Tensor& x, int64_t kernel, int64_t stride, int64_t padding = 0);  // counts padding
Tensor adaptive_avg_pool2d(const Tensor& x, int64_t out_h, int64_t out_w);

// ---- normalisation ---------------------------------------------------------------------------
// Training mode uses batch statistics and updates running_mean/var in place (momentum as in
// PyTorch, unbiased running variance); eval mode uses the running statistics.
Tensor batch_norm(const Tensor& x, const Tensor& gamma, const Tensor& beta, Tensor& running_mean,
                  Tensor& running_var, bool training, double momentum = 0.1, double eps = 1e-5);
// relu(batch_norm(...)), the same bits; in training mode one kernel each way (the ReLU in the
// forward's writing pass, its mask read with the gradient in the backward).
Tensor batch_norm_relu(const Tensor& x, const Tensor& gamma, const Tensor& beta, Tensor& running_mean,
                       Tensor& running_var, bool training, double momentum = 0.1, double eps = 1e-5);

// ---- softmax and losses -------------------------------------------------------------------------
Tensor log_softmax(const Tensor& z, int64_t dim = -1);
Tensor softmax(const Tensor& z, int64_t dim = -1);
// Mean (or per-sample when reduce=false) cross-entropy of logits z [N,K] with i32 labels [N].
Tensor cross_entropy(const Tensor& z, const Tensor& labels, bool reduce = true);
// The mean cross_entropy(z, labels) and, from the same kernel, how many rows of z are classified
// correctly (argmax == label, argmax's tie and NaN rules) as an f32 scalar: a training step's loss
// and accuracy in 4 launches on CUDA where the two apart take 8. The count has no gradient.
struct LossAndCorrect {
  Tensor loss, correct;
};
LossAndCorrect cross_entropy_and_correct(const Tensor& z, const Tensor& labels);
// Carlini-Wagner margin max_{j != y} z_j - z_y per sample (positive = misclassified).
Tensor cw_margin(const Tensor& z, const Tensor& labels);

// ---- helpers ---------------------------------------------------------------------------------
Tensor zeros_like(const Tensor& a);
Tensor ones_like(const Tensor& a);
bool allclose(const Tensor& a, const Tensor& b, double rtol = 1e-5, double atol = 1e-8);
double max_abs_diff(const Tensor& a, const Tensor& b);

}  // namespace bulwark

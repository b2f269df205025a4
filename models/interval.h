#pragma once
// Intervals for bound propagation (IBP: Gowal et al. 2018, "On the effectiveness of interval
// bound propagation for training verifiably robust models"). A box is kept as its center c and
// radius r >= 0, [c - r, c + r] elementwise, so an affine layer moves it with one product for the
// center and one with |W| for the radius:
//
//   affine   x -> W x + b       c' = W c + b,          r' = |W| r
//   monotone x -> g(x)          l' = g(c - r), u' = g(c + r)   (ReLU, max pooling)
//   positive linear (avg pool)  c' = A c,              r' = A r
//   sum of two boxes            c' = c1 + c2,          r' = r1 + r2
//
// CROWN (Zhang, Weng, Chen, Hsieh, Daniel 2018; the backward pass of CROWN-IBP, Zhang et al.
// 2020) bounds a linear function of the output instead: the upper bound <A, h_out> + bias is
// carried back through each layer to an upper bound in terms of the layer's input, and at the
// input box it is maximised in closed form. Affine layers move A exactly (A W, bias + A b). A ReLU
// with pre-activation bounds [l, u] (from the forward interval pass) is relaxed: stable ones pass
// or vanish; an unstable one is bounded above by the line through (l, 0) and (u, u),
// u (x - l) / (u - l), and below by alpha x with alpha = 1 when u > -l, else 0 (the adaptive
// lower slope). Positive entries of A take the upper line, negative ones the lower.
//
// Each of these is exact for one layer on its own (the box it returns is the smallest one
// holding every output); through several layers the boxes grow looser, never unsound. Every
// operation is written with engine ops, so the bounds are differentiable (IBP training
// backpropagates through them) and run on any device.
#include <functional>

#include "engine/ops.h"

namespace bulwark {

struct Interval {
  Tensor center, radius;  // same shape; radius >= 0
  Tensor lower() const { return center - radius; }
  Tensor upper() const { return center + radius; }
};

// Box k of a stack of boxes [2K, ...] (center, radius, center, radius, ...), as the fused
// interval ops return them (engine/ops.h, interval_conv2d): views, differentiable.
Interval stacked_box(const Tensor& stack, int64_t k);
// The box [lower, upper] (lower <= upper elementwise).
Interval interval_from_bounds(const Tensor& lower, const Tensor& upper);
// A monotone non-decreasing elementwise g, e.g. ReLU: [g(l), g(u)].
Interval interval_relu(const Interval& in);
// The sum of two boxes (a residual connection).
Interval interval_add(const Interval& a, const Interval& b);
// An op that is linear with non-negative coefficients (average pooling, reshape): applied to the
// center and the radius alike.
template <class Op>
Interval interval_positive_linear(const Interval& in, Op op) {
  return {op(in.center), op(in.radius)};
}
// An upper bound <A, h> + bias of S linear functions of a layer's values h, per sample: A is
// [N, S, h's shape without N], bias [N, S].
struct LinearBound {
  Tensor A, bias;
};

struct CrownOptions {
  bool adaptive_lower = true;  // an unstable ReLU's lower slope: 1 when u > -l, else 0 (false: always 0)
};

// The ReLU's backward step of CROWN for pre-activation bounds `pre` (see above). With
// adaptive_lower false the lower slope of an unstable neuron is 0.
LinearBound relu_crown_backward(const LinearBound& upper, const Interval& pre, bool adaptive_lower = true);
// An elementwise affine map h_out = h_in * scale + shift (scale and shift broadcast against h_in,
// e.g. [1, C, 1, 1]): A_in = A * scale, bias + <A, shift>.
LinearBound affine_crown_backward(const LinearBound& upper, const Tensor& scale, const Tensor& shift);
// The CROWN step of a pooling op that is linear in its input near `at` ([N, C, H, W], one value per
// sample; e.g. max pooling once each window's maximum is chosen): A_in = op^T A, the op's
// vector-Jacobian product, computed by the engine's autograd on S copies of `at`; differentiable
// in A. Average pooling is linear everywhere and has no offset: its exact CROWN step.
LinearBound pooling_crown_backward(const LinearBound& upper, const Tensor& at,
                                   const std::function<Tensor(const Tensor&)>& op);
// Max pooling over a box `pre` (window k, stride s, padding p): each output y = max of its window
// is bounded above by the constant max_i u_i and below by x_j, j the window's input with the
// largest lower bound (any input is below the maximum). Sound; exact where one input dominates.
LinearBound max_pool_crown_backward(const LinearBound& upper, const Interval& pre, int64_t kernel, int64_t stride,
                                    int64_t padding);
// The maximum of <A, x> + bias over the box: <A, c> + <|A|, r> + bias, [N, S].
Tensor maximize_over_box(const LinearBound& bound, const Interval& box);

// The box of the margins z_j - z_y (j = 0..K-1, exactly 0 at j = y) from a box of the logits z
// [N, K] and i32 labels [N]: c_j - c_y and r_j + r_y (r_y also where j = y is left out).
Interval interval_margin_of_logits(const Interval& logits, const Tensor& labels);

}  // namespace bulwark

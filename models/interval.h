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
// Each of these is exact for one layer on its own (the box it returns is the smallest one
// holding every output); through several layers the boxes grow looser, never unsound. Every
// operation is written with engine ops, so the bounds are differentiable (IBP training
// backpropagates through them) and run on any device.
#include "engine/ops.h"

namespace bulwark {

struct Interval {
  Tensor center, radius;  // same shape; radius >= 0
  Tensor lower() const { return center - radius; }
  Tensor upper() const { return center + radius; }
};

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
// The box of the margins z_j - z_y (j = 0..K-1, exactly 0 at j = y) from a box of the logits z
// [N, K] and i32 labels [N]: c_j - c_y and r_j + r_y (r_y also where j = y is left out).
Interval interval_margin_of_logits(const Interval& logits, const Tensor& labels);

}  // namespace bulwark

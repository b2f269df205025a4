#include "models/interval.h"

#include "engine/autograd.h"

#include <algorithm>
#include <limits>

namespace bulwark {

Interval interval_from_bounds(const Tensor& lower, const Tensor& upper) {
  return {(upper + lower) * 0.5, (upper - lower) * 0.5};
}

Interval stacked_box(const Tensor& stack, int64_t k) {
  const Shape box(stack.shape().begin() + 1, stack.shape().end());
  return {stack.slice(0, 2 * k, 2 * k + 1).reshape(box), stack.slice(0, 2 * k + 1, 2 * k + 2).reshape(box)};
}

Interval interval_relu(const Interval& in) { return interval_from_bounds(relu(in.lower()), relu(in.upper())); }

Interval interval_add(const Interval& a, const Interval& b) { return {a.center + b.center, a.radius + b.radius}; }

namespace {

// t [N, ...] as [N, 1, ...], to broadcast against A [N, S, ...].
Tensor per_sample(const Tensor& t) {
  Shape s = t.shape();
  s.insert(s.begin() + 1, 1);
  return t.reshape(s);
}

// <A, v> summed over the value dims: [N, S].
Tensor contract(const Tensor& A, const Tensor& v) {
  const int64_t n = A.size(0), s = A.size(1);
  return sum((A * v).reshape({n, s, A.numel() / std::max<int64_t>(n * s, 1)}), {2});
}

}  // namespace

LinearBound relu_crown_backward(const LinearBound& upper, const Interval& pre, bool adaptive_lower) {
  const Tensor l = pre.lower(), u = pre.upper();
  const Tensor active = affine(gt(neg(l), 0.0), -1, 1);  // l >= 0
  const Tensor unstable = gt(u, 0.0) * affine(active, -1, 1);
  // Upper line of an unstable neuron: u / (u - l) (x - l); stable active: x; inactive: 0.
  const Tensor width = clamp(u - l, 1e-12, std::numeric_limits<double>::max());
  const Tensor up_slope = active + unstable * (u / width);
  const Tensor up_intercept = unstable * (-(u * l) / width);
  const Tensor low_slope = active + (adaptive_lower ? unstable * gt(u, -l) : zeros_like(l));
  const Tensor A_pos = clamp(upper.A, 0.0, std::numeric_limits<double>::max()), A_neg = upper.A - A_pos;
  return {A_pos * per_sample(up_slope) + A_neg * per_sample(low_slope),
          upper.bias + contract(A_pos, per_sample(up_intercept))};
}

LinearBound affine_crown_backward(const LinearBound& upper, const Tensor& scale, const Tensor& shift) {
  Shape s = scale.shape();
  s.insert(s.begin() + 1, 1);
  Shape t = shift.shape();
  t.insert(t.begin() + 1, 1);
  return {upper.A * scale.reshape(s), upper.bias + contract(upper.A, shift.reshape(t))};
}

LinearBound pooling_crown_backward(const LinearBound& upper, const Tensor& at,
                                   const std::function<Tensor(const Tensor&)>& op) {
  const int64_t n = upper.A.size(0), s = upper.A.size(1);
  Shape rows = at.shape(), per_sample_rows = at.shape();
  rows[0] = n * s;
  per_sample_rows.insert(per_sample_rows.begin() + 1, s);
  per_sample_rows[0] = n;
  // S copies of each sample's point, as a leaf: the op's Jacobian there, transposed, applied to A.
  Tensor probe = per_sample(at.detach()).expand(per_sample_rows).contiguous().reshape(rows);
  probe.set_requires_grad(true);
  const bool keep_graph = grad_enabled();  // training: A_in stays differentiable in A
  GradModeGuard record_probe(true);
  const Tensor out = op(probe);
  const Tensor A_in = grad({out}, {probe}, {upper.A.reshape(out.shape())}, keep_graph)[0];
  return {A_in.reshape(per_sample_rows), upper.bias};
}

LinearBound max_pool_crown_backward(const LinearBound& upper, const Interval& pre, int64_t kernel, int64_t stride,
                                    int64_t padding) {
  const auto pool = [&](const Tensor& t) { return max_pool2d(t, kernel, stride, padding); };
  const Tensor A_pos = clamp(upper.A, 0.0, std::numeric_limits<double>::max()), A_neg = upper.A - A_pos;
  // Negative coefficients take the lower bound x_j (j: the largest lower bound of the window),
  // the VJP of max pooling at the lower bounds; positive ones the constant max_i u_i.
  const LinearBound lower_part = pooling_crown_backward({A_neg, upper.bias}, pre.lower(), pool);
  return {lower_part.A, upper.bias + contract(A_pos, per_sample(pool(pre.upper())))};
}

Tensor maximize_over_box(const LinearBound& bound, const Interval& box) {
  return bound.bias + contract(bound.A, per_sample(box.center)) + contract(abs(bound.A), per_sample(box.radius));
}

Interval interval_margin_of_logits(const Interval& z, const Tensor& labels) {
  const Tensor is_label = one_hot(labels, z.center.size(1), z.center.dtype());
  const Tensor not_label = affine(is_label, -1, 1);
  const Tensor center_y = sum(z.center * is_label, {1}, true), radius_y = sum(z.radius * is_label, {1}, true);
  return {(z.center - center_y) * not_label, (z.radius + radius_y) * not_label};
}

}  // namespace bulwark

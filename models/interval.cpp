#include "models/interval.h"

namespace bulwark {

Interval interval_from_bounds(const Tensor& lower, const Tensor& upper) {
  return {(upper + lower) * 0.5, (upper - lower) * 0.5};
}

Interval interval_relu(const Interval& in) { return interval_from_bounds(relu(in.lower()), relu(in.upper())); }

Interval interval_add(const Interval& a, const Interval& b) { return {a.center + b.center, a.radius + b.radius}; }

Interval interval_margin_of_logits(const Interval& z, const Tensor& labels) {
  const Tensor is_label = one_hot(labels, z.center.size(1), z.center.dtype());
  const Tensor not_label = affine(is_label, -1, 1);
  const Tensor center_y = sum(z.center * is_label, {1}, true), radius_y = sum(z.radius * is_label, {1}, true);
  return {(z.center - center_y) * not_label, (z.radius + radius_y) * not_label};
}

}  // namespace bulwark

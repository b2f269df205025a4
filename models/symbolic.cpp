#include "models/symbolic.h"

#include <fmt/format.h>

#include <stdexcept>

#include "engine/ops.h"

namespace bulwark {

namespace {
thread_local SymbolicPass* symbolic_in_scope = nullptr;

// [N, k, ...] -> [N, k, M]: the rows of each sample with their values flattened.
Tensor by_sample(const Tensor& rows, int64_t n, int64_t k) { return rows.reshape({n, k, rows.numel() / (n * k)}); }
}  // namespace

SymbolicPass::SymbolicPass(const Interval& input_box) : box_(input_box), previous_(symbolic_in_scope) {
  const Tensor& c = input_box.center;
  if (c.dim() < 2) throw std::invalid_argument(fmt::format("symbolic bound: the input box {} has no values per sample", c.str()));
  n_ = c.size(0);
  d_ = c.numel() / n_;
  Shape sample(c.shape().begin() + 1, c.shape().end());
  const auto rows_of = [&](int64_t k) {  // [N, k, sample...]
    Shape s{n_, k};
    s.insert(s.end(), sample.begin(), sample.end());
    return s;
  };
  std::vector<int32_t> all(static_cast<size_t>(d_));
  for (int64_t i = 0; i < d_; ++i) all[i] = static_cast<int32_t>(i);
  // U = L = x at the input: coefficient row i is the one-hot image e_i, with no radius.
  Shape eye_shape = rows_of(d_);
  eye_shape[0] = 1;
  const Tensor eye = one_hot(Tensor::from_vector(all, {d_}).to(c.device()), d_, c.dtype()).reshape(eye_shape);
  const Tensor coef_c = eye * Tensor::ones(rows_of(d_), c.dtype(), c.device());
  const Tensor zero_rows = Tensor::zeros(rows_of(2), c.dtype(), c.device());  // the constant and "zero" rows
  Shape flat = sample;
  flat.insert(flat.begin(), n_ * (d_ + 3));
  const Tensor center = concat({coef_c, zero_rows, c.reshape(rows_of(1))}, 1).reshape(flat);
  const Tensor radius = concat({zeros_like(coef_c), zero_rows, input_box.radius.reshape(rows_of(1))}, 1).reshape(flat);
  expanded_ = {center, radius};
  symbolic_in_scope = this;
}

SymbolicPass::~SymbolicPass() { symbolic_in_scope = previous_; }

SymbolicPass* SymbolicPass::active() { return symbolic_in_scope; }

Tensor SymbolicPass::repeat_labels(const Tensor& labels) const {
  // On the labels' device: a CUDA batch is not read back.
  return labels.reshape({n_, 1}).expand({n_, d_ + 3}).contiguous().reshape({n_ * (d_ + 3)});
}

Tensor SymbolicPass::ibp_rows(const Tensor& rows) const {
  Shape sample(rows.shape().begin() + 1, rows.shape().end());
  sample.insert(sample.begin(), n_);
  return by_sample(rows, n_, d_ + 3).slice(1, d_ + 2, d_ + 3).reshape(sample);
}

Tensor SymbolicPass::lower_upper(const Interval& rows) const {
  if (rows.center.size(0) != n_ * (d_ + 3))
    throw std::logic_error(fmt::format("symbolic bound: {} rows, expected {} samples x {}", rows.center.size(0), n_, d_ + 3));
  return symbolic_bounds(by_sample(rows.center, n_, d_ + 3), by_sample(rows.radius, n_, d_ + 3),
                         box_.center.reshape({n_, d_}), box_.radius.reshape({n_, d_}));
}

// [2, N, M] -> the box of the values, in the rows' per-sample shape.
Interval SymbolicPass::as_box(const Tensor& lu, const Tensor& rows) const {
  Shape sample(rows.shape().begin() + 1, rows.shape().end());
  sample.insert(sample.begin(), n_);
  return interval_from_bounds(lu.slice(0, 0, 1).reshape(sample), lu.slice(0, 1, 2).reshape(sample));
}

Interval SymbolicPass::relu(const Interval& pre) {
  const int64_t row_bytes = 2 * pre.center.numel() * static_cast<int64_t>(dtype_size(pre.center.dtype()));
  peak_row_bytes_ = std::max(peak_row_bytes_, row_bytes);
  total_row_bytes_ += row_bytes;
  const Tensor lu = lower_upper(pre);
  boxes_.push_back(as_box(lu.detach(), pre.center));
  const Tensor out = symbolic_relu(by_sample(pre.center, n_, d_ + 3), by_sample(pre.radius, n_, d_ + 3), lu);
  return {out.slice(0, 0, 1).reshape(pre.center.shape()), out.slice(0, 1, 2).reshape(pre.center.shape())};
}

Interval SymbolicPass::constant_rows(const Interval& box) const {
  const Shape sample(box.center.shape().begin() + 1, box.center.shape().end());
  const auto with_rows = [&](int64_t k) {
    Shape s{n_, k};
    s.insert(s.end(), sample.begin(), sample.end());
    return s;
  };
  Shape flat = sample;
  flat.insert(flat.begin(), n_ * (d_ + 3));
  const Tensor none = Tensor::zeros(with_rows(d_), box.center.dtype(), box.center.device());  // no coefficients
  const auto rows_of = [&](const Tensor& v) {
    const Tensor per = v.reshape(with_rows(1));
    return concat({none, per, zeros_like(per), per}, 1).reshape(flat);  // constants, "zero", IBP
  };
  return {rows_of(box.center), rows_of(box.radius)};
}

Tensor SymbolicPass::upper_coefficients(const Interval& rows) const {
  const Tensor c = by_sample(rows.center, n_, d_ + 3), r = by_sample(rows.radius, n_, d_ + 3);
  return c.slice(1, 0, d_) - c.slice(1, d_ + 1, d_ + 2) + r.slice(1, 0, d_);  // U = C + R, C's bias taken off
}

Interval SymbolicPass::bounds(const Interval& rows) const { return as_box(lower_upper(rows), rows.center); }

}  // namespace bulwark

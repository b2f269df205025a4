// The fused symbolic-interval ops (engine/ops.h: symbolic_bounds, symbolic_relu; kernels in
// kernels/cpu/symbolic.cpp and kernels/cuda/symbolic.cu).
//
// Their engine-op composition below is the same math written as some twenty elementwise ops and
// a reduction, each with a full [N, d, M] temporary that the autograd graph keeps: it is what a
// recorded backward (create_graph) differentiates, and what the gradient of the input box (data
// in training, so rarely asked for) comes from. The fused kernels keep nothing but their inputs.
#include <fmt/format.h>

#include <limits>

#include "engine/autograd.h"
#include "engine/dispatch.h"
#include "engine/ops.h"
#include "kernels/common/symbolic.h"

namespace bulwark {

using Grads = std::vector<Tensor>;
using Needs = std::vector<bool>;

namespace {

struct RowShape {
  int64_t n, d, m;
};

RowShape row_shape(const Tensor& c, const Tensor& r, const char* op) {
  require_float(c, op);
  require_float(r, op);
  require_same_device(c, r, op);
  if (c.dim() != 3 || c.shape() != r.shape() || c.size(1) < 3 || c.dtype() != r.dtype())
    throw std::invalid_argument(fmt::format("{}: rows {} and {} should be [N, d + 3, M] of one dtype", op, c.str(), r.str()));
  return {c.size(0), c.size(1) - 3, c.size(2)};
}

Tensor composite_bounds(const Tensor& c, const Tensor& r, const Tensor& bc, const Tensor& br) {
  const int64_t n = c.size(0), d = c.size(1) - 3, m = c.size(2);
  const Tensor coef_c = c.slice(1, 0, d) - c.slice(1, d + 1, d + 2), coef_r = r.slice(1, 0, d);
  const Tensor up = coef_c + coef_r, lo = coef_c - coef_r;
  const Tensor b_c = bc.reshape({n, d, 1}), b_r = br.reshape({n, d, 1});
  const Tensor c0 = c.slice(1, d, d + 1), r0 = r.slice(1, d, d + 1);
  const Tensor ic = c.slice(1, d + 2, d + 3), ir = r.slice(1, d + 2, d + 3);
  const Tensor upper = sum(up * b_c + abs(up) * b_r, {1}, true) + (c0 + r0);
  const Tensor lower = sum(lo * b_c - abs(lo) * b_r, {1}, true) + (c0 - r0);
  return concat({maximum(lower, ic - ir).reshape({1, n, m}), minimum(upper, ic + ir).reshape({1, n, m})}, 0);
}

Tensor composite_relu(const Tensor& c, const Tensor& r, const Tensor& bounds) {
  const int64_t n = c.size(0), d = c.size(1) - 3, m = c.size(2);
  const Tensor l = bounds.slice(0, 0, 1).reshape({n, 1, m}), u = bounds.slice(0, 1, 2).reshape({n, 1, m});
  const Tensor up = relu(u), low = neg(relu(neg(l)));
  const Tensor lambda = up / clamp(up - low, symbolic::kTiny, std::numeric_limits<double>::max());
  const Tensor half_offset = lambda * low * -0.5, lp = relu(l), zero = zeros_like(l);
  const Tensor coef_c = c.slice(1, 0, d) - c.slice(1, d + 1, d + 2);
  const Tensor out_c = concat({coef_c * lambda, c.slice(1, d, d + 1) * lambda + half_offset, zero, (up + lp) * 0.5}, 1);
  const Tensor out_r =
      concat({r.slice(1, 0, d) * lambda, r.slice(1, d, d + 1) * lambda + half_offset, zero, (up - lp) * 0.5}, 1);
  return concat({out_c.reshape({1, n, d + 3, m}), out_r.reshape({1, n, d + 3, m})}, 0);
}

// The gradients of the needed inputs by differentiating the composition (recorded when the
// caller's backward is).
Grads composite_grads(const Node& node, const Tensor& g, const Needs& need,
                      Tensor (*composite)(const std::vector<Tensor>&)) {
  const bool create_graph = grad_enabled();
  GradModeGuard record(true);
  std::vector<Tensor> args, leaves;
  std::vector<size_t> which;
  for (size_t i = 0; i < node.inputs.size(); ++i) {
    // Inputs not needed enter as constants; needed ones as they are when the backward is recorded,
    // else as fresh leaves, so that the recomputation's graph ends at them.
    Tensor a = node.inputs[i];
    if (!need[i] || !create_graph) a = a.detach();
    if (need[i]) {
      if (!create_graph) a.set_requires_grad(true);
      leaves.push_back(a);
      which.push_back(i);
    }
    args.push_back(a);
  }
  const Tensor out = composite(args);
  const std::vector<Tensor> got = grad({out}, leaves, {g}, create_graph, true);
  Grads grads(node.inputs.size());
  for (size_t k = 0; k < which.size(); ++k) grads[which[k]] = got[k];
  return grads;
}

}  // namespace

Tensor symbolic_bounds(const Tensor& c_in, const Tensor& r_in, const Tensor& bc_in, const Tensor& br_in) {
  const RowShape s = row_shape(c_in, r_in, "symbolic_bounds");
  require_same_device(c_in, bc_in, "symbolic_bounds");
  require_same_device(c_in, br_in, "symbolic_bounds");
  if (bc_in.numel() != s.n * s.d || br_in.numel() != s.n * s.d || bc_in.dtype() != c_in.dtype() ||
      br_in.dtype() != c_in.dtype() || bc_in.size(0) != s.n)
    throw std::invalid_argument(fmt::format("symbolic_bounds: box {} and {} should hold {} samples of {} values like the "
                                            "rows {}", bc_in.str(), br_in.str(), s.n, s.d, c_in.str()));
  const Tensor c = c_in.contiguous(), r = r_in.contiguous(), bc = bc_in.contiguous(), br = br_in.contiguous();
  Tensor out = Tensor::empty({2, s.n, s.m}, c.dtype(), c.device());
  BW_KERNEL(c.device(), c.dtype(), "symbolic_bounds", symbolic_bounds_forward, s.n, s.d, s.m, c.data<T>(), r.data<T>(),
            bc.data<T>(), br.data<T>(), out.data<T>());
  return record(out, "symbolic_bounds", {c_in, r_in, bc_in, br_in}, [s](const Node& node, const Tensor& g, const Needs& need) {
    const auto composite = [](const std::vector<Tensor>& a) {
      const Shape box{a[0].size(0), a[0].size(1) - 3};
      return composite_bounds(a[0], a[1], a[2].reshape(box), a[3].reshape(box));
    };
    if (grad_enabled()) return composite_grads(node, g, need, composite);
    Grads out(4);
    if (need[0] || need[1]) {
      const Tensor c = node.inputs[0].contiguous(), r = node.inputs[1].contiguous(), bc = node.inputs[2].contiguous(),
                   br = node.inputs[3].contiguous(), gg = g.contiguous();
      Tensor dc = Tensor::empty(c.shape(), c.dtype(), c.device()), dr = Tensor::empty(c.shape(), c.dtype(), c.device());
      BW_KERNEL(c.device(), c.dtype(), "symbolic_bounds backward", symbolic_bounds_backward, s.n, s.d, s.m, c.data<T>(),
                r.data<T>(), bc.data<T>(), br.data<T>(), gg.data<T>(), dc.data<T>(), dr.data<T>());
      if (need[0]) out[0] = dc;
      if (need[1]) out[1] = dr;
    }
    if (need[2] || need[3]) {  // the box's gradient (data in training): from the composition
      const Grads box = composite_grads(node, g, {false, false, need[2], need[3]}, composite);
      out[2] = box[2];
      out[3] = box[3];
    }
    return out;
  });
}

Tensor symbolic_relu(const Tensor& c_in, const Tensor& r_in, const Tensor& bounds_in) {
  const RowShape s = row_shape(c_in, r_in, "symbolic_relu");
  require_same_device(c_in, bounds_in, "symbolic_relu");
  if (bounds_in.shape() != Shape{2, s.n, s.m} || bounds_in.dtype() != c_in.dtype())
    throw std::invalid_argument(fmt::format("symbolic_relu: bounds {} should be [2, {}, {}] like the rows {}",
                                            bounds_in.str(), s.n, s.m, c_in.str()));
  const Tensor c = c_in.contiguous(), r = r_in.contiguous(), bounds = bounds_in.contiguous();
  Tensor out = Tensor::empty({2, s.n, s.d + 3, s.m}, c.dtype(), c.device());
  BW_KERNEL(c.device(), c.dtype(), "symbolic_relu", symbolic_relu_forward, s.n, s.d, s.m, c.data<T>(), r.data<T>(),
            bounds.data<T>(), out.data<T>());
  return record(out, "symbolic_relu", {c_in, r_in, bounds_in}, [s](const Node& node, const Tensor& g, const Needs& need) {
    if (grad_enabled())
      return composite_grads(node, g, need, [](const std::vector<Tensor>& a) { return composite_relu(a[0], a[1], a[2]); });
    const Tensor c = node.inputs[0].contiguous(), r = node.inputs[1].contiguous(), bounds = node.inputs[2].contiguous(),
                 gg = g.contiguous();
    Tensor dc = Tensor::empty(c.shape(), c.dtype(), c.device()), dr = Tensor::empty(c.shape(), c.dtype(), c.device()),
           db = Tensor::empty(bounds.shape(), c.dtype(), c.device());
    BW_KERNEL(c.device(), c.dtype(), "symbolic_relu backward", symbolic_relu_backward, s.n, s.d, s.m, c.data<T>(),
              r.data<T>(), bounds.data<T>(), gg.data<T>(), dc.data<T>(), dr.data<T>(), db.data<T>());
    Grads out(3);
    if (need[0]) out[0] = dc;
    if (need[1]) out[1] = dr;
    if (need[2]) out[2] = db;
    return out;
  });
}

}  // namespace bulwark

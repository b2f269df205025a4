// The fused interval ops: a box (center c, radius r) through a conv or linear layer and,
// optionally, the interval ReLU after it, as one kernel per pass on either backend
// (kernels/cpu/interval.cpp, kernels/cuda/interval.cu).
//
// Backward, for the gradient g of the stacked output: with the ReLU, its part (g[2:4]) is first
// carried to the pre-activation box and added to g[0:2]; then gc = g[0], gr = g[1] and
//   dc = W^T gc,  dr = |W|^T gr,  dW = sum gc c^T + sign(W) sum gr r^T,  db = sum gc.
// When the backward is itself recorded (create_graph), the same formulas are written with
// differentiable engine ops instead of the fused kernels, so the ops have a second derivative.
#include <fmt/format.h>

#include "engine/autograd.h"
#include "engine/dispatch.h"
#include "engine/ops.h"

namespace bulwark {

using Grads = std::vector<Tensor>;
using Needs = std::vector<bool>;

namespace {

struct BoxInputs {
  Tensor c, r, w, bias;  // contiguous
};

BoxInputs box_inputs(const Tensor& c, const Tensor& r, const Tensor& w, const Tensor& bias, const char* op) {
  require_float(c, op);
  require_float(r, op);
  require_float(w, op);
  require_same_device(c, r, op);
  require_same_device(c, w, op);
  if (c.shape() != r.shape())
    throw std::invalid_argument(fmt::format("{}: center {} and radius {} differ in shape", op, c.str(), r.str()));
  if (c.dtype() != r.dtype() || c.dtype() != w.dtype())
    throw std::invalid_argument(fmt::format("{}: center, radius and weight must share a dtype", op));
  BoxInputs in{c.contiguous(), r.contiguous(), w.contiguous(), Tensor()};
  if (bias.defined()) {
    require_same_device(c, bias, op);
    if (bias.shape() != Shape{w.size(0)})
      throw std::invalid_argument(fmt::format("{}: bias {} for {} outputs", op, bias.str(), w.size(0)));
    in.bias = bias.contiguous();
  }
  return in;
}

Shape stacked(int64_t k, const Shape& s) {
  Shape out{k};
  out.insert(out.end(), s.begin(), s.end());
  return out;
}

// The gradient of the pre-activation box [2, ...] from that of the output [2 or 4, ...].
Tensor pre_activation_gradient(const Node& n, const Tensor& g) {
  const int64_t k = g.size(0);
  if (k == 2) return g;
  const Tensor pre = n.output().detach().slice(0, 0, 2).contiguous();
  if (grad_enabled()) {  // differentiable in g: the masks are constants
    const Tensor c = pre.slice(0, 0, 1), r = pre.slice(0, 1, 2);
    const Tensor up = gt(c + r, 0.0), lo = gt(c - r, 0.0);
    const Tensor gc = g.slice(0, 2, 3), gr = g.slice(0, 3, 4);
    const Tensor gu = up * (gc + gr) * 0.5, gl = lo * (gc - gr) * 0.5;
    return concat({g.slice(0, 0, 1) + gu + gl, g.slice(0, 1, 2) + gu - gl}, 0);
  }
  const Tensor gg = g.contiguous();
  Tensor out = Tensor::empty(pre.shape(), g.dtype(), g.device());
  const int64_t count = pre.numel() / 2;
  BW_KERNEL(g.device(), g.dtype(), "interval_relu_backward", interval_relu_backward, count, pre.data<T>(),
            gg.data<T>(), out.data<T>());
  return out;
}

Shape squeeze0(const Tensor& t) { return Shape(t.shape().begin() + 1, t.shape().end()); }

}  // namespace

Tensor interval_conv2d(const Tensor& c_in, const Tensor& r_in, const Tensor& w_in, const Tensor& bias, Conv2dParams p,
                       bool relu) {
  const BoxInputs in = box_inputs(c_in, r_in, w_in, bias, "interval_conv2d");
  if (in.c.dim() != 4 || in.w.dim() != 4 || in.c.size(1) != in.w.size(1))
    throw std::invalid_argument(fmt::format("interval_conv2d: input {} and weight {} do not match (want [N,C,H,W] and "
                                            "[O,C,KH,KW])", in.c.str(), in.w.str()));
  const ConvShape s = make_conv_shape(in.c.size(0), in.c.size(1), in.c.size(2), in.c.size(3), in.w.size(0),
                                      in.w.size(2), in.w.size(3), p.stride, p.padding,
                                      fmt::format("interval_conv2d of {} by {}", in.c.str(), in.w.str()));
  Tensor out = Tensor::empty(stacked(relu ? 4 : 2, {s.n, s.o, s.oh, s.ow}), in.c.dtype(), in.c.device());
  BW_KERNEL(in.c.device(), in.c.dtype(), "interval_conv2d", interval_conv2d_forward, s, in.c.data<T>(), in.r.data<T>(),
            in.w.data<T>(), in.bias.defined() ? in.bias.data<T>() : nullptr, relu, out.data<T>());
  std::vector<Tensor> inputs{c_in, r_in, w_in};
  if (bias.defined()) inputs.push_back(bias);
  return record(out, "interval_conv2d", inputs, [p, s](const Node& n, const Tensor& g_out, const Needs& need) {
    const Tensor g = pre_activation_gradient(n, g_out);
    const Tensor &c = n.inputs[0], &r = n.inputs[1], &w = n.inputs[2];
    Grads out(n.inputs.size());
    const Tensor gc = g.slice(0, 0, 1).reshape(squeeze0(g)), gr = g.slice(0, 1, 2).reshape(squeeze0(g));
    if (grad_enabled()) {
      if (need[0]) out[0] = conv2d_backward_input(gc, w, c.shape(), p);
      if (need[1]) out[1] = conv2d_backward_input(gr, abs(w), r.shape(), p);
      if (need[2]) out[2] = conv2d_backward_weight(c, gc, w.shape(), p) + sign(w) * conv2d_backward_weight(r, gr, w.shape(), p);
    } else {
      const Tensor wc = w.contiguous(), gcc = gc.contiguous(), grc = gr.contiguous();
      if (need[0] || need[1]) {
        Tensor dc = Tensor::empty(c.shape(), g.dtype(), g.device()), dr = Tensor::empty(r.shape(), g.dtype(), g.device());
        BW_KERNEL(g.device(), g.dtype(), "interval_conv2d backward", interval_conv2d_backward_input, s, gcc.data<T>(),
                  grc.data<T>(), wc.data<T>(), dc.data<T>(), dr.data<T>());
        if (need[0]) out[0] = dc;
        if (need[1]) out[1] = dr;
      }
      if (need[2]) {
        const Tensor cc = c.contiguous(), rc = r.contiguous();
        Tensor dw = Tensor::empty(w.shape(), g.dtype(), g.device());
        BW_KERNEL(g.device(), g.dtype(), "interval_conv2d backward", interval_conv2d_backward_weight, s, cc.data<T>(),
                  rc.data<T>(), gcc.data<T>(), grc.data<T>(), wc.data<T>(), dw.data<T>());
        out[2] = dw;
      }
    }
    if (n.inputs.size() > 3 && need[3]) out[3] = sum(gc, {0, 2, 3});
    return out;
  });
}

Tensor interval_linear(const Tensor& c_in, const Tensor& r_in, const Tensor& w_in, const Tensor& bias, bool relu) {
  const BoxInputs in = box_inputs(c_in, r_in, w_in, bias, "interval_linear");
  if (in.c.dim() != 2 || in.w.dim() != 2 || in.c.size(1) != in.w.size(1))
    throw std::invalid_argument(fmt::format("interval_linear: input {} and weight {} do not match (want [N, in] and "
                                            "[out, in])", in.c.str(), in.w.str()));
  const int64_t n = in.c.size(0), fi = in.c.size(1), fo = in.w.size(0);
  Tensor out = Tensor::empty(stacked(relu ? 4 : 2, {n, fo}), in.c.dtype(), in.c.device());
  BW_KERNEL(in.c.device(), in.c.dtype(), "interval_linear", interval_linear_forward, n, fi, fo, in.c.data<T>(),
            in.r.data<T>(), in.w.data<T>(), in.bias.defined() ? in.bias.data<T>() : nullptr, relu, out.data<T>());
  std::vector<Tensor> inputs{c_in, r_in, w_in};
  if (bias.defined()) inputs.push_back(bias);
  return record(out, "interval_linear", inputs, [n, fi, fo](const Node& node, const Tensor& g_out, const Needs& need) {
    const Tensor g = pre_activation_gradient(node, g_out);
    const Tensor &c = node.inputs[0], &r = node.inputs[1], &w = node.inputs[2];
    Grads out(node.inputs.size());
    const Tensor gc = g.slice(0, 0, 1).reshape({n, fo}), gr = g.slice(0, 1, 2).reshape({n, fo});
    if (grad_enabled()) {
      if (need[0]) out[0] = matmul(gc, w);
      if (need[1]) out[1] = matmul(gr, abs(w));
      if (need[2]) out[2] = matmul(gc.t(), c) + sign(w) * matmul(gr.t(), r);
    } else {
      const Tensor wc = w.contiguous(), gcc = gc.contiguous(), grc = gr.contiguous();
      if (need[0] || need[1]) {
        Tensor dc = Tensor::empty({n, fi}, g.dtype(), g.device()), dr = Tensor::empty({n, fi}, g.dtype(), g.device());
        BW_KERNEL(g.device(), g.dtype(), "interval_linear backward", interval_linear_backward_input, n, fi, fo,
                  gcc.data<T>(), grc.data<T>(), wc.data<T>(), dc.data<T>(), dr.data<T>());
        if (need[0]) out[0] = dc;
        if (need[1]) out[1] = dr;
      }
      if (need[2]) {
        const Tensor cc = c.contiguous(), rc = r.contiguous();
        Tensor dw = Tensor::empty({fo, fi}, g.dtype(), g.device());
        BW_KERNEL(g.device(), g.dtype(), "interval_linear backward", interval_linear_backward_weight, n, fi, fo,
                  cc.data<T>(), rc.data<T>(), gcc.data<T>(), grc.data<T>(), wc.data<T>(), dw.data<T>());
        out[2] = dw;
      }
    }
    if (node.inputs.size() > 3 && need[3]) out[3] = sum(gc, {0});
    return out;
  });
}

Tensor elided_margin_radius(const Tensor& r_in, const Tensor& w_in, const Tensor& labels_in) {
  require_float(r_in, "elided_margin_radius");
  require_same_device(r_in, w_in, "elided_margin_radius");
  require_same_device(r_in, labels_in, "elided_margin_radius");
  if (r_in.dim() != 2 || w_in.dim() != 2 || r_in.size(1) != w_in.size(1) || r_in.dtype() != w_in.dtype() ||
      labels_in.dtype() != DType::i32 || labels_in.shape() != Shape{r_in.size(0)})
    throw std::invalid_argument(fmt::format("elided_margin_radius: radius {}, weight {} and labels {} do not match (want "
                                            "[N, in], [K, in] of one dtype and i32 [N])",
                                            r_in.str(), w_in.str(), labels_in.str()));
  const int64_t n = r_in.size(0), in = r_in.size(1), k = w_in.size(0);
  const Tensor r = r_in.contiguous(), w = w_in.contiguous(), labels = labels_in.contiguous();
  check_index_range(labels, k, "elided_margin_radius", cuda::IndexRole::label);
  Tensor out = Tensor::empty({n, k}, r.dtype(), r.device());
  BW_KERNEL(r.device(), r.dtype(), "elided_margin_radius", elided_radius_forward, n, in, k, r.data<T>(), w.data<T>(),
            labels.data<int32_t>(), out.data<T>());
  return record(out, "elided_margin_radius", {r_in, w_in, labels_in}, [n, in, k](const Node& node, const Tensor& g,
                                                                                   const Needs& need) {
    const Tensor &r = node.inputs[0], &w = node.inputs[1], &labels = node.inputs[2];
    Grads out(3);
    if (grad_enabled()) {  // differentiable: the difference rows per sample, as the unfused form has them
      const Tensor picks = one_hot(labels, k, w.dtype());
      const Tensor d = w.reshape({1, k, in}) - matmul(picks, w).reshape({n, 1, in});
      if (need[0]) out[0] = sum(abs(d) * g.reshape({n, k, 1}), {1});
      if (need[1]) {
        const Tensor t = sign(d) * g.reshape({n, k, 1}) * r.reshape({n, 1, in});
        out[1] = sum(t, {0}) - matmul(picks.t(), sum(t, {1}));
      }
      return out;
    }
    const Tensor gc = g.contiguous(), rc = r.contiguous(), wc = w.contiguous(), lc = labels.contiguous();
    Tensor dr = need[0] ? Tensor::empty({n, in}, g.dtype(), g.device()) : Tensor();
    Tensor dw = need[1] ? Tensor::empty({k, in}, g.dtype(), g.device()) : Tensor();
    BW_KERNEL(g.device(), g.dtype(), "elided_margin_radius backward", elided_radius_backward, n, in, k, rc.data<T>(),
              wc.data<T>(), lc.data<int32_t>(), gc.data<T>(), need[0] ? dr.data<T>() : nullptr,
              need[1] ? dw.data<T>() : nullptr);
    out[0] = dr;
    out[1] = dw;
    return out;
  });
}

}  // namespace bulwark

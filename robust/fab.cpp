#include "robust/fab.h"

#include <fmt/format.h>

#include <algorithm>
#include <limits>
#include <numeric>
#include <stdexcept>

#include "engine/autograd.h"
#include "engine/ops.h"
#include "robust/norm_ball.h"

namespace bulwark {

Tensor linf_box_projection(const Tensor& w, const Tensor& c, const Tensor& lo, const Tensor& hi, int iterations) {
  NoGradGuard no_grad;
  const int64_t n = w.size(0);
  const Tensor cc = c.reshape({n, 1});
  const Tensor direction = mul(sign(w), sign(cc));  // each coordinate moves w . d towards c
  const Tensor target = abs(cc);
  const Tensor towards_c = sign(cc);
  const auto reach = [&](const Tensor& t) {  // how far w . d(t) has gone towards c, [n, 1]
    return mul(sum(mul(w, clamp(mul(direction, t), lo, hi)), {1}, true), towards_c);
  };
  Tensor t_lo = Tensor::zeros({n, 1}, w.dtype(), w.device());
  Tensor t_hi = Tensor::ones({n, 1}, w.dtype(), w.device());
  for (int i = 0; i < iterations; ++i) {
    const Tensor t_mid = mul(add(t_lo, t_hi), 0.5);
    const Tensor reached = ge(reach(t_mid), target);  // 1 where t_mid suffices
    t_hi = add(mul(reached, t_mid), mul(affine(reached, -1, 1), t_hi));
    t_lo = add(mul(reached, t_lo), mul(affine(reached, -1, 1), t_mid));
  }
  return clamp(mul(direction, t_hi), lo, hi);
}

Tensor l2_box_projection(const Tensor& w, const Tensor& c, const Tensor& lo, const Tensor& hi, int iterations) {
  NoGradGuard no_grad;
  const int64_t n = w.size(0);
  const Tensor cc = c.reshape({n, 1});
  const Tensor direction = mul(w, sign(cc));  // d(lambda) = clip(lambda * direction, lo, hi)
  const Tensor target = abs(cc);
  const auto reach = [&](const Tensor& lambda) { return sum(mul(direction, clamp(mul(direction, lambda), lo, hi)), {1}, true); };
  // Without the box lambda* = |c| / ||w||^2 is the answer; the box only slows the reach, so the
  // answer is lambda* 2^u for some u >= 0: bisect on u in [0, kOctaves].
  constexpr double kOctaves = 40;
  const Tensor lambda_star = div(target, add(sum(square(w), {1}, true), 1e-30));
  const auto lambda_at = [&](const Tensor& u) { return mul(lambda_star, exp(mul(u, std::log(2.0)))); };
  Tensor u_lo = Tensor::zeros({n, 1}, w.dtype(), w.device());
  Tensor u_hi = Tensor::full({n, 1}, kOctaves, w.dtype(), w.device());
  for (int i = 0; i < iterations; ++i) {
    const Tensor u_mid = mul(add(u_lo, u_hi), 0.5);
    const Tensor reached = ge(reach(lambda_at(u_mid)), mul(target, 1 - 1e-6));
    u_hi = add(mul(reached, u_mid), mul(affine(reached, -1, 1), u_hi));
    u_lo = add(mul(reached, u_lo), mul(affine(reached, -1, 1), u_mid));
  }
  // u = 0 reaches c exactly when the box does not bind: return lambda* itself then.
  const Tensor free = ge(reach(lambda_star), mul(target, 1 - 1e-6));
  const Tensor u = mul(affine(free, -1, 1), u_hi);
  return clamp(mul(direction, lambda_at(u)), lo, hi);
}

Tensor box_projection(const Tensor& w, const Tensor& c, const Tensor& lo, const Tensor& hi, Norm norm) {
  return norm == Norm::linf ? linf_box_projection(w, c, lo, hi) : l2_box_projection(w, c, lo, hi);
}

namespace {

// Rows of `mask` ([n, 1], 0/1) take `update`, the others keep `current`.
Tensor blend_rows(const Tensor& mask, const Tensor& update, const Tensor& current) {
  return add(current, mul(mask, sub(update, current)));
}

}  // namespace

FabResult fab_targeted(Module& model, const Tensor& x_in, const Tensor& y, const FabOptions& o, AttackStats* stats) {
  if (!(o.eps >= 0) || o.steps < 1 || o.targets < 1 || !(o.alpha_max > 0 && o.alpha_max <= 1) || !(o.eta >= 1) ||
      !(o.beta > 0 && o.beta < 1))
    throw std::invalid_argument(fmt::format("fab_targeted: eps >= 0, steps >= 1, targets >= 1, alpha_max in (0, 1], "
                                            "eta >= 1 and beta in (0, 1) are needed; got {}, {}, {}, {}, {}, {}",
                                            o.eps, o.steps, o.targets, o.alpha_max, o.eta, o.beta));
  AttackStats local;
  AttackStats& st = stats ? *stats : local;
  st.cost = model.pass_cost();
  const Tensor x0 = x_in.detach().contiguous();
  const int64_t n = x0.size(0), d = x0.numel() / std::max<int64_t>(n, 1);
  const Tensor xf0 = x0.reshape({n, d});
  const Tensor lo0 = neg(xf0), hi0 = affine(xf0, -1, 1);
  const std::vector<int32_t> labels = y.to_vector_i32();

  // The clean logits rank the targets; misclassified samples are adversarial at distance 0.
  std::vector<float> clean_logits;
  int64_t classes = 0;
  {
    NoGradGuard no_grad;
    const Tensor z = model.forward(x0);
    st.count_forward(n);
    classes = z.size(1);
    clean_logits = z.to_vector();
  }
  // Per sample: the non-true classes by clean logit, highest first (the targets, in turn), and
  // the distance of the closest misclassified point so far (0 for a sample misclassified clean).
  std::vector<int32_t> ranked;  // [n, classes - 1]
  std::vector<float> start_norm(static_cast<size_t>(n), std::numeric_limits<float>::infinity());
  for (int64_t i = 0; i < n; ++i) {
    const float* zi = clean_logits.data() + i * classes;
    if (std::max_element(zi, zi + classes) - zi != labels[i]) start_norm[i] = 0;
    std::vector<int32_t> order(static_cast<size_t>(classes));
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return zi[a] > zi[b]; });
    order.erase(std::remove(order.begin(), order.end(), labels[i]), order.end());
    ranked.insert(ranked.end(), order.begin(), order.end());
  }
  // The bookkeeping stays on x's device: the loop reads nothing back to the host.
  Tensor norm = Tensor::from_vector(start_norm, {n, 1}).to(x0.device());
  Tensor best = xf0;
  const Tensor y_f = y.to(DType::f32);
  const int targets = static_cast<int>(std::min<int64_t>(o.targets, classes - 1));

  for (int rank = 0; rank < targets; ++rank) {
    std::vector<int32_t> target(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) target[i] = ranked[i * (classes - 1) + rank];
    const Tensor t = Tensor::from_vector(target, {n}).to(x0.device());
    const Tensor margin_weights = sub(one_hot(y, classes), one_hot(t, classes));  // g = f_y - f_t
    Tensor xk = xf0;
    for (int step = 0; step < o.steps; ++step) {
      Tensor xi = xk.reshape(x0.shape()).detach();
      xi.set_requires_grad(true);
      const Tensor g = sum(mul(model.forward(xi), margin_weights), {1});
      st.count_forward(n);
      const Tensor w = grad({sum(g)}, {xi})[0].reshape({n, d});
      st.count_backward(n);
      NoGradGuard no_grad;
      const Tensor c_k = neg(g.detach());
      const Tensor d_k = box_projection(w, c_k, neg(xk), affine(xk, -1, 1), o.norm);
      const Tensor c_0 = sub(c_k, sum(mul(w, sub(xf0, xk)), {1}));
      const Tensor d_0 = box_projection(w, c_0, lo0, hi0, o.norm);
      const Tensor a = sample_norm(d_k, o.norm), b = sample_norm(d_0, o.norm);
      const Tensor alpha = minimum(div(a, add(add(a, b), 1e-12)), Tensor::full({n, 1}, o.alpha_max, w.dtype(), w.device()));
      const Tensor x_next = clamp(add(mul(affine(alpha, -1, 1), add(xk, mul(d_k, o.eta))),
                                      mul(alpha, add(xf0, mul(d_0, o.eta)))),
                                  0.0, 1.0);
      const Tensor z = model.forward(x_next.reshape(x0.shape()));
      st.count_forward(n);
      const Tensor fooled = affine(eq(argmax(z, 1).to(DType::f32), y_f), -1, 1).reshape({n, 1});
      const Tensor dist = sample_norm(sub(x_next, xf0), o.norm);
      const Tensor closer = mul(fooled, gt(norm, dist));
      norm = where(closer, dist, norm);
      best = blend_rows(closer, x_next, best);
      xk = blend_rows(fooled, add(mul(xf0, 1 - o.beta), mul(x_next, o.beta)), x_next);
    }
  }
  FabResult r;
  const std::vector<float> found = norm.to_vector();
  r.norm.assign(found.begin(), found.end());
  const Tensor within = affine(gt(norm, o.eps), -1, 1);
  r.x_adv = blend_rows(within, best, xf0).reshape(x0.shape());
  return r;
}

}  // namespace bulwark

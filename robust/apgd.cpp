// APGD-CE, APGD-DLR and APGD-T: the math and the constants are in robust/apgd.h.
//
// The per-sample state (step size, loss counters, best point, first misclassified point) lives in
// [N] tensors on x's device and is updated with where(): a sample's decisions never need the host.
#include "robust/apgd.h"

#include <fmt/format.h>

#include <algorithm>
#include <functional>
#include <limits>
#include <numeric>
#include <stdexcept>

#include "engine/autograd.h"
#include "engine/ops.h"
#include "robust/attack_rows.h"
#include "robust/norm_ball.h"

namespace bulwark {

namespace {

constexpr double kMomentum = 0.75;  // alpha: weight of the new step against the previous move
constexpr double kRho = 0.75;       // condition 1: the loss must rise in at least rho of the steps
constexpr double kInitialStep = 2;  // eta_0 = 2 eps
constexpr double kDlrTiny = 1e-12;

// The `count` largest logits per sample, z_pi1 >= z_pi2 >= ..., each [N] and differentiable (max
// sends the gradient to its argmax; the entries taken are masked to the lowest float).
std::vector<Tensor> largest_logits(const Tensor& z, int count) {
  const Tensor floor = Tensor::full({1, 1}, std::numeric_limits<float>::lowest(), z.dtype(), z.device());
  std::vector<Tensor> values;
  Tensor rest = z;
  for (int i = 0; i < count; ++i) {
    values.push_back(max(rest, 1));
    if (i + 1 < count) rest = where(one_hot(argmax(rest, 1), z.size(1), z.dtype()), floor, rest);
  }
  return values;
}

void require_classes(const Tensor& logits, int64_t least, const char* loss) {
  if (logits.dim() != 2 || logits.size(1) < least)
    throw std::invalid_argument(
        fmt::format("{} needs logits [N, K] with K >= {} classes, got {}", loss, least, logits.str()));
}

using SampleLoss = std::function<Tensor(const Tensor& logits)>;  // logits -> per-sample loss [N]

// The model at one point: per-sample loss, misclassified (0/1), and the input gradient when asked.
struct Point {
  Tensor loss, wrong, grad;
};

Point evaluate(Module& model, const Tensor& x_point, const Tensor& y_real, const SampleLoss& loss_of, bool need_grad,
               int eot, AttackStats& stats) {
  Point p;
  Tensor logits;
  for (int draw = 0; draw < eot; ++draw) {
    Tensor leaf = x_point.detach();
    if (need_grad) leaf.set_requires_grad(true);
    Tensor loss, total;
    {
      GradModeGuard record_graph(need_grad);
      logits = model.forward(leaf);
      loss = loss_of(logits);
      total = sum(loss);  // the samples are independent: its gradient is each sample's own
    }
    stats.count_forward(x_point.size(0));
    NoGradGuard no_grad;
    const Tensor g = need_grad ? grad({total}, {leaf})[0] : Tensor();
    if (need_grad) stats.count_backward(x_point.size(0));
    // Expectation over Transformation: the mean over the draws of a randomised model (one draw
    // of a deterministic one).
    p.loss = draw == 0 ? loss.detach() : p.loss + loss.detach();
    if (need_grad) p.grad = draw == 0 ? g : p.grad + g;
  }
  NoGradGuard no_grad;
  if (eot > 1) {
    p.loss = p.loss * (1.0 / eot);
    if (need_grad) p.grad = p.grad * (1.0 / eot);
  }
  // Judged by the last draw, as the model would answer once.
  p.wrong = affine(eq(argmax(logits, 1).to(logits.dtype()), y_real), -1, 1);
  return p;
}

struct RunResult {
  Tensor x_adv;   // first misclassified point, else the best-loss point
  Tensor fooled;  // [N] 0/1
};

// One APGD run of o.steps steps from x_start on the loss `loss_of`.
RunResult apgd_run(Module& model, const Tensor& x, const Tensor& y, const Tensor& x_start, const SampleLoss& loss_of,
                   const AttackOptions& o, AttackStats& stats) {
  const int64_t n = x.size(0);
  Shape per_sample(static_cast<size_t>(x.dim()), 1);
  per_sample[0] = n;
  const auto rows = [&](const Tensor& t) { return t.reshape(per_sample); };
  const Tensor y_real = y.to(x.dtype());
  const BallProjection project(x, o.eps, o.norm);
  const std::vector<int> checkpoints = apgd_checkpoints(o.steps);

  Point start = evaluate(model, x_start, y_real, loss_of, o.steps > 0, o.eot, stats);
  NoGradGuard no_grad;
  Tensor x_cur = x_start, x_prev = x_start, g_cur = start.grad, loss_cur = start.loss;
  Tensor x_best = x_cur, g_best = g_cur, loss_best = loss_cur;
  Tensor fooled = start.wrong, x_first_wrong = x_cur;
  Tensor eta = Tensor::full({n}, kInitialStep * o.eps, x.dtype(), x.device());
  Tensor increases = Tensor::zeros({n}, x.dtype(), x.device());
  Tensor reduced_last = Tensor::zeros({n}, x.dtype(), x.device());
  Tensor best_at_checkpoint = loss_best;
  size_t next_checkpoint = 1;

  for (int k = 0; k < o.steps; ++k) {
    const bool last = k + 1 == o.steps;
    if (last) stats.last_grad_l1 = sum(abs(g_cur));
    const Tensor z = project(x_cur + steepest_direction(g_cur, o.norm) * rows(eta));
    const Tensor x_new = k == 0 ? z : project(x_cur + kMomentum * (z - x_cur) + (1 - kMomentum) * (x_cur - x_prev));
    const Point p = evaluate(model, x_new, y_real, loss_of, !last, o.eot, stats);

    increases = increases + gt(p.loss, loss_cur);
    const Tensor improved = gt(p.loss, loss_best);
    x_best = where(rows(improved), x_new, x_best);
    if (!last) g_best = where(rows(improved), p.grad, g_best);
    loss_best = where(improved, p.loss, loss_best);
    x_first_wrong = where(rows(p.wrong * affine(fooled, -1, 1)), x_new, x_first_wrong);
    fooled = maximum(fooled, p.wrong);
    x_prev = x_cur;
    x_cur = x_new;
    g_cur = p.grad;
    loss_cur = p.loss;

    if (last || next_checkpoint >= checkpoints.size() || k + 1 != checkpoints[next_checkpoint]) continue;
    const double since = checkpoints[next_checkpoint] - checkpoints[next_checkpoint - 1];
    ++next_checkpoint;
    const Tensor stalled = gt(affine(increases, -1, kRho * since), 0.0);  // increases < rho * since
    const Tensor no_progress = affine(reduced_last, -1, 1) * affine(gt(loss_best, best_at_checkpoint), -1, 1);
    const Tensor reduce = maximum(stalled, no_progress);
    const Tensor reduce_rows = rows(reduce);
    eta = where(reduce, eta * 0.5, eta);
    x_cur = where(reduce_rows, x_best, x_cur);
    x_prev = where(reduce_rows, x_best, x_prev);
    g_cur = where(reduce_rows, g_best, g_cur);
    loss_cur = where(reduce, loss_best, loss_cur);
    reduced_last = reduce;
    best_at_checkpoint = loss_best;
    increases = zeros_like(increases);
  }
  return {where(rows(fooled), x_first_wrong, x_best), fooled};
}

// Per sample, the non-true classes by descending clean logit (ties: lower class first).
std::vector<std::vector<int32_t>> classes_by_logit(const std::vector<float>& logits, const std::vector<int32_t>& labels,
                                                   int64_t classes) {
  std::vector<std::vector<int32_t>> order(labels.size());
  for (size_t i = 0; i < labels.size(); ++i) {
    const float* z = logits.data() + i * classes;
    for (int32_t c = 0; c < classes; ++c)
      if (c != labels[i]) order[i].push_back(c);
    std::stable_sort(order[i].begin(), order[i].end(), [z](int32_t a, int32_t b) { return z[a] > z[b]; });
  }
  return order;
}

// APGD-T: a run per target class, each on the samples no earlier run misclassified.
Tensor apgd_targeted(Module& model, const Tensor& x, const Tensor& y, const Tensor& x_start, const AttackOptions& o,
                     AttackStats& stats) {
  Tensor clean_logits;
  {
    NoGradGuard no_grad;
    clean_logits = model.forward(x);
    stats.count_forward(x.size(0));
  }
  require_classes(clean_logits, 4, "APGD-T");
  const int64_t classes = clean_logits.size(1);
  const std::vector<int32_t> labels = y.to_vector_i32();
  const auto order = classes_by_logit(clean_logits.cpu().to_vector(), labels, classes);
  const int targets = static_cast<int>(std::min<int64_t>(o.targets, classes - 1));

  Tensor result;
  std::vector<uint8_t> fooled(labels.size(), 0);
  for (int t = 0; t < targets; ++t) {
    std::vector<int64_t> standing;
    for (size_t i = 0; i < fooled.size(); ++i)
      if (!fooled[i]) standing.push_back(static_cast<int64_t>(i));
    if (standing.empty()) break;
    std::vector<int32_t> target, standing_labels;
    for (int64_t i : standing) {
      target.push_back(order[i][t]);
      standing_labels.push_back(labels[i]);
    }
    const auto size = static_cast<int64_t>(standing.size());
    const Tensor sy = Tensor::from_vector(standing_labels, {size}).to(y.device());
    const Tensor st = Tensor::from_vector(target, {size}).to(y.device());
    const SampleLoss loss_of = [&sy, &st](const Tensor& z) { return targeted_dlr_loss(z, sy, st); };
    const RunResult run = apgd_run(model, take_rows(x, standing), sy, take_rows(x_start, standing).contiguous(), loss_of,
                                   o, stats);
    const std::vector<float> run_fooled = run.fooled.cpu().to_vector();
    if (t == 0) {
      result = run.x_adv;  // every sample: a still-robust one keeps its first target's best point
      for (size_t k = 0; k < run_fooled.size(); ++k) fooled[standing[k]] = run_fooled[k] != 0;
      continue;
    }
    std::vector<RowSource> merged;
    for (int64_t i = 0; i < x.size(0); ++i) merged.push_back({&result, i});
    for (size_t k = 0; k < run_fooled.size(); ++k)
      if (run_fooled[k] != 0) {
        merged[standing[k]] = {&run.x_adv, static_cast<int64_t>(k)};
        fooled[standing[k]] = 1;
      }
    result = assemble_rows(merged);
  }
  return result;
}

}  // namespace

Tensor dlr_loss(const Tensor& logits, const Tensor& labels) {
  require_classes(logits, 3, "the DLR loss");
  const std::vector<Tensor> top = largest_logits(logits, 3);
  return cw_margin(logits, labels) / (top[0] - top[2] + kDlrTiny);
}

Tensor targeted_dlr_loss(const Tensor& logits, const Tensor& labels, const Tensor& targets) {
  require_classes(logits, 4, "the targeted DLR loss");
  const int64_t classes = logits.size(1);
  const std::vector<Tensor> top = largest_logits(logits, 4);
  const Tensor toward = one_hot(targets, classes, logits.dtype()) - one_hot(labels, classes, logits.dtype());
  return sum(logits * toward, {1}) / (top[0] - (top[2] + top[3]) * 0.5 + kDlrTiny);
}

std::vector<int> apgd_checkpoints(int steps) {
  // p in hundredths, so ceil(p_j N) is exact integer arithmetic (0.22 * 100 is 22.000000000000004
  // in doubles, whose ceil would be 23).
  std::vector<int> w{0};
  int64_t p_before = 0, p = 22;
  while (steps > 0) {
    const auto point = static_cast<int>((p * steps + 99) / 100);
    if (point > steps) break;
    if (point > w.back()) w.push_back(point);
    const int64_t next = p + std::max<int64_t>(p - p_before - 3, 6);
    p_before = p;
    p = next;
  }
  return w;
}

Tensor apgd_ascend(Module& model, const Tensor& x, const Tensor& y, const Tensor& x_start, const AttackOptions& o,
                   AttackStats& stats) {
  switch (o.kind) {
    case AttackKind::apgd_ce:
      return apgd_run(model, x, y, x_start, [&y](const Tensor& z) { return cross_entropy(z, y, false); }, o, stats).x_adv;
    case AttackKind::apgd_dlr:
      return apgd_run(model, x, y, x_start, [&y](const Tensor& z) { return dlr_loss(z, y); }, o, stats).x_adv;
    case AttackKind::apgd_t:
      return apgd_targeted(model, x, y, x_start, o, stats);
    default:
      throw std::invalid_argument(fmt::format("apgd_ascend: {} is not an APGD attack", attack_name(o)));
  }
}

}  // namespace bulwark

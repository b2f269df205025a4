#include "robust/interval_attack.h"

#include <algorithm>

#include "engine/attack_ops.h"
#include "engine/autograd.h"
#include "engine/ops.h"
#include "models/symbolic.h"
#include "robust/attack_rows.h"
#include "robust/bounds.h"

namespace bulwark {

namespace {

constexpr double kUnit = 0.01;   // the box's and the guided step's unit (the paper's)
constexpr double kMaxWiden = 15;  // the most units a box is widened to

struct Guided {
  std::vector<int64_t> rows;  // samples (of the standing ones) that got a guided step
  Tensor step;                // their steps, [rows, ...]
};

// The symbolic bound's rows of one ReLU (center and radius) for one pass over this many bytes
// are bounded per chunk of samples: its peak memory is a small multiple of that, and a whole
// evaluation batch at once (500 MNIST samples: 394k rows) would not fit in memory.
constexpr double kChunkRowBytes = 256.0 * 1024 * 1024;

// What the symbolic bound of the boxes around `xa` (labels `ya`, radius per sample) says: the
// most violated margin's class per sample, and the input coefficients of every margin's upper
// function, [a, d, K]; `row_bytes` gets the pass's largest ReLU rows, in bytes.
struct BoxVerdict {
  std::vector<int32_t> worst;
  Tensor coefficients;
  int64_t row_bytes = 0;
};
BoxVerdict bound_boxes(Module& model, const Tensor& xa, const Tensor& ya, const std::vector<double>& radius,
                       AttackStats& stats) {
  const int64_t a = xa.size(0), d = xa.numel() / std::max<int64_t>(a, 1);
  Shape per_sample(static_cast<size_t>(xa.dim()), 1);
  per_sample[0] = a;
  const Tensor r = Tensor::from_vector(radius, per_sample).to(xa.dtype()).to(xa.device());
  const Interval box = interval_from_bounds(clamp(xa - r, 0.0, 1.0), clamp(xa + r, 0.0, 1.0));
  SymbolicPass pass(box);
  const Interval rows = model.interval_margin(pass.expanded(), pass.repeat_labels(ya));
  stats.count_forward(a * (d + 3));
  const Tensor upper = pass.bounds(rows).upper();  // [a, K]
  return {argmax(upper, 1).cpu().to_vector_i32(), pass.upper_coefficients(rows), pass.peak_row_bytes()};
}

// The guided step of each standing sample (x_adv [n, ...], labels y, on the host too): widen the box around its point until the
// symbolic bound finds a margin it cannot prove negative, then step along the sign of that margin's
// upper function's input coefficients. The boxes are bounded in chunks of samples whose rows fit
// kChunkRowBytes (the first chunk, one sample, measures a sample's rows).
Guided guided_steps(Module& model, const Tensor& x_adv, const Tensor& y, const std::vector<int32_t>& labels, double eps,
                    AttackStats& stats) {
  NoGradGuard no_grad;
  const int64_t n = x_adv.size(0), d = x_adv.numel() / n;
  const double limit = std::max(1.0, eps / (2 * kUnit));
  std::vector<double> ed(static_cast<size_t>(n), 1.0);
  std::vector<int64_t> active(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) active[i] = i;
  int64_t chunk = 1;
  Guided out;
  std::vector<Tensor> steps;
  while (!active.empty()) {
    std::vector<int64_t> next;
    for (size_t first = 0, end = 0; first < active.size(); first = end) {
      end = std::min(active.size(), first + static_cast<size_t>(chunk));
      const std::vector<int64_t> part(active.begin() + static_cast<std::ptrdiff_t>(first),
                                      active.begin() + static_cast<std::ptrdiff_t>(end));
      std::vector<double> radius;
      for (int64_t i : part) radius.push_back(kUnit * ed[i]);
      const Tensor xa = take_rows(x_adv, part);
      const BoxVerdict v = bound_boxes(model, xa, take_rows(y, part), radius, stats);
      const int64_t k = v.coefficients.size(2);
      for (size_t a = 0; a < part.size(); ++a) {
        const int64_t i = part[a];
        if (v.worst[a] == labels[i]) {  // every margin proved negative in this box: widen it, or give up
          if (ed[i] < limit) {
            ed[i] = std::min({3 * ed[i], kMaxWiden, limit});
            next.push_back(i);
          }
          continue;
        }
        const Tensor g = v.coefficients.slice(0, static_cast<int64_t>(a), static_cast<int64_t>(a) + 1)
                             .reshape({d, k})
                             .slice(1, v.worst[a], v.worst[a] + 1)
                             .reshape(xa.slice(0, 0, 1).shape());
        out.rows.push_back(i);
        steps.push_back(sign(g) * (kUnit * ed[i]));
      }
      const double per_sample = static_cast<double>(v.row_bytes) / static_cast<double>(part.size());
      chunk = std::max<int64_t>(1, static_cast<int64_t>(kChunkRowBytes / std::max(per_sample, 1.0)));
    }
    active = std::move(next);
  }
  if (!steps.empty()) out.step = concat(steps, 0);
  return out;
}

}  // namespace

Tensor interval_attack(Module& model, const Tensor& x, const Tensor& y, const AttackOptions& o, AttackStats& stats) {
  const std::vector<int32_t> labels = y.cpu().to_vector_i32();
  AttackOptions base = o;
  base.kind = AttackKind::pgd;
  base.restarts = 1;
  Tensor best = x.clone();
  std::vector<uint8_t> broken(labels.size(), 0);
  // Whether each of `candidate`'s samples (the batch's rows `rows`) is misclassified.
  const auto fooled_at = [&](const Tensor& candidate, const std::vector<int64_t>& rows) {
    NoGradGuard no_grad;
    const std::vector<int32_t> predicted = argmax(model.forward(candidate), 1).cpu().to_vector_i32();
    stats.count_forward(candidate.size(0));
    std::vector<uint8_t> fooled(rows.size());
    for (size_t k = 0; k < rows.size(); ++k) fooled[k] = predicted[k] != labels[rows[k]];
    return fooled;
  };
  // The base PGD from `start`, its work added to the attack's.
  const auto base_attack = [&](const Tensor& x0, const Tensor& y0, const Tensor& start) {
    AttackStats s;
    Tensor out = attack_from(model, x0, y0, start, base, &s);
    stats.forward_passes += s.forward_passes, stats.backward_passes += s.backward_passes;
    stats.forward_images += s.forward_images, stats.backward_images += s.backward_images;
    return out;
  };
  const uint64_t per_start = start_counters(Norm::linf, x.shape());
  for (int restart = 0; restart < o.restarts; ++restart) {
    std::vector<int64_t> rows;
    for (size_t i = 0; i < broken.size(); ++i)
      if (!broken[i]) rows.push_back(static_cast<int64_t>(i));
    if (rows.empty()) break;
    const Tensor xs = take_rows(x, rows), ys = take_rows(y, rows);
    // The base attack: from x on the first restart, from the restart's own uniform start after.
    // Each sample starts from its own row of the whole batch's start, whoever else is left.
    const Tensor start =
        restart == 0 ? xs : take_rows(random_start(x, o.eps, o.seed, o.offset + static_cast<uint64_t>(restart) * per_start), rows);
    Tensor x_adv = base_attack(xs, ys, start);
    std::vector<uint8_t> fooled = fooled_at(x_adv, rows);
    // The samples the base attack left: a guided step each where the bound finds a direction,
    // then the base attack again from there.
    std::vector<int64_t> left;
    std::vector<int32_t> left_labels;
    for (size_t k = 0; k < rows.size(); ++k)
      if (!fooled[k]) {
        left.push_back(static_cast<int64_t>(k));
        left_labels.push_back(labels[rows[k]]);
      }
    if (!left.empty()) {
      const Guided g = guided_steps(model, take_rows(x_adv, left), take_rows(ys, left), left_labels, o.eps, stats);
      if (!g.rows.empty()) {
        std::vector<int64_t> moved, moved_rows;  // among rows, and in the whole batch
        for (int64_t r : g.rows) {
          moved.push_back(left[r]);
          moved_rows.push_back(rows[left[r]]);
        }
        const Tensor x0 = take_rows(xs, moved), y0 = take_rows(ys, moved);
        const Tensor start = clamp(clamp(take_rows(x_adv, moved) + g.step, x0 - o.eps, x0 + o.eps), 0.0, 1.0);
        const Tensor finished = base_attack(x0, y0, start);
        const std::vector<uint8_t> now = fooled_at(finished, moved_rows);
        std::vector<RowSource> merged;
        for (int64_t k = 0; k < x_adv.size(0); ++k) merged.push_back({&x_adv, k});
        for (size_t m = 0; m < moved.size(); ++m)
          if (now[m]) {
            merged[moved[m]] = {&finished, static_cast<int64_t>(m)};
            fooled[moved[m]] = 1;
          }
        x_adv = assemble_rows(merged);
      }
    }
    // A sample broken now keeps this example; the others keep the first restart's.
    std::vector<RowSource> merged;
    for (int64_t i = 0; i < x.size(0); ++i) merged.push_back({&best, i});
    for (size_t k = 0; k < rows.size(); ++k)
      if (fooled[k] || restart == 0) {
        merged[rows[k]] = {&x_adv, static_cast<int64_t>(k)};
        if (fooled[k]) broken[rows[k]] = 1;
      }
    best = assemble_rows(merged);
  }
  return best;
}

}  // namespace bulwark

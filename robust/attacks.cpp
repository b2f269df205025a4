// The attacks of robust/attacks.h. The fused L-inf step and the random start are engine ops
// (engine/attack_ops.h) and run on the tensor's device; the L2 step is written with engine ops
// (a handful of elementwise passes and two per-sample reductions).
#include "robust/attacks.h"

#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <stdexcept>

#include "engine/attack_ops.h"
#include "engine/autograd.h"
#include "engine/ops.h"
#include "engine/rng.h"
#include "models/layers.h"
#include "robust/apgd.h"
#include "robust/attack_rows.h"
#include "robust/fab.h"
#include "robust/interval_attack.h"
#include "robust/norm_ball.h"
#include "robust/square.h"

namespace bulwark {

namespace {

// Keeps divisions by a per-sample norm finite when the norm is 0 (a zero gradient, or a sample
// still at its clean point): the quotient is then 0 or clamped, and the sample does not move.
constexpr double kTinyNorm = 1e-12;

void require_batch(const Tensor& x, const Tensor& y) {
  require_float(x, "attack");
  if (x.dim() < 2 || x.size(0) == 0)
    throw std::invalid_argument(fmt::format("attack: x must be a non-empty batch [N, ...], got {}", x.str()));
  if (!y.defined() || y.dtype() != DType::i32 || y.dim() != 1 || y.size(0) != x.size(0))
    throw std::invalid_argument(fmt::format("attack: labels must be i32 [{}], got {}", x.size(0),
                                            y.defined() ? y.str() : std::string("undefined")));
  require_same_device(x, y, "attack");
}

bool is_apgd(AttackKind kind) {
  return kind == AttackKind::apgd_ce || kind == AttackKind::apgd_dlr || kind == AttackKind::apgd_t;
}

bool has_random_start(AttackKind kind) {
  return kind == AttackKind::fgsm_rs || kind == AttackKind::pgd || kind == AttackKind::cw || is_apgd(kind);
}

// The dims of one sample: 1 .. dim-1.
std::vector<int64_t> sample_dims(const Tensor& t) {
  std::vector<int64_t> dims;
  for (int64_t d = 1; d < t.dim(); ++d) dims.push_back(d);
  return dims;
}

// x_adv + alpha * g / ||g||_2 per sample, projected.
Tensor l2_step(const Tensor& x_adv, const Tensor& x, const Tensor& g, double eps, double alpha) {
  return BallProjection(x, eps, Norm::l2)(x_adv + alpha * steepest_direction(g, Norm::l2));
}

// Uniform in the L2 ball of radius eps around each sample, clipped to [0,1]: a Gaussian
// direction (rotation invariant) scaled to radius eps * u^(1/d), whose law is uniform in the
// ball (P(radius <= r) = (r / eps)^d). Drawn on the host from the Generator's stream (the
// normals first, then one uniform per sample) and moved to x's device.
Tensor l2_random_start(const Tensor& x, double eps, uint64_t seed, uint64_t offset) {
  Generator gen(seed);
  gen.set_offset(offset);
  const Tensor direction = rand_normal(x.shape(), 0.0, 1.0, gen, x.dtype());
  const int64_t n = x.size(0), d = x.numel() / std::max<int64_t>(n, 1);
  const std::vector<double> u = rand_uniform({n}, 0.0, 1.0, gen, DType::f64).to_vector_f64();
  std::vector<double> radius(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) radius[i] = eps * std::pow(u[i], 1.0 / static_cast<double>(d));
  Shape per_sample(static_cast<size_t>(x.dim()), 1);
  per_sample[0] = n;
  const Tensor r = Tensor::from_vector(radius, per_sample).to(x.dtype());
  const Tensor delta = direction / sample_l2_norm(direction) * r;
  return clamp(x.cpu() + delta, 0.0, 1.0).to(x.device());
}

// Where restart r begins: x itself for the first restart when no random start was asked for
// (and always for fgsm and none), else the norm's random start from the restart's own offset.
Tensor restart_start(const Tensor& x, const AttackOptions& o, int restart) {
  if (!has_random_start(o.kind) || (restart == 0 && !o.random_start)) return x.clone();
  const uint64_t offset = o.offset + static_cast<uint64_t>(restart) * start_counters(o.norm, x.shape());
  return o.norm == Norm::linf ? random_start(x, o.eps, o.seed, offset) : l2_random_start(x, o.eps, o.seed, offset);
}

// The attack's objective per sample: cross-entropy, the CW margin max_{j != y} z_j - z_y, or
// the DLR loss (APGD-DLR, and APGD-T across its targets, whose own losses are not comparable).
Tensor objective(AttackKind kind, const Tensor& logits, const Tensor& y) {
  if (kind == AttackKind::cw) return cw_margin(logits, y);
  if (kind == AttackKind::apgd_dlr || kind == AttackKind::apgd_t) return dlr_loss(logits, y);
  return cross_entropy(logits, y, false);
}

bool objective_is_cross_entropy(AttackKind kind) {
  return kind != AttackKind::cw && kind != AttackKind::apgd_dlr && kind != AttackKind::apgd_t;
}

// o.steps ascent steps from `x_adv` (contiguous, detached; updated in place on L-inf).
Tensor ascend(Module& model, const Tensor& x, const Tensor& y, Tensor x_adv, const AttackOptions& o, AttackStats& stats) {
  if (is_apgd(o.kind)) return apgd_ascend(model, x, y, x_adv, o, stats);
  if (o.fused && o.norm == Norm::linf && objective_is_cross_entropy(o.kind) && o.steps > 0) {
    if (const auto layers = fused_layers(model)) {
      const Tensor l1 = Tensor::empty({1}, DType::f64, x_adv.device());
      fused_pgd_(x_adv, x, y, *layers, o.eps, o.alpha, o.steps, l1);
      for (int step = 0; step < o.steps; ++step) {
        stats.count_forward(x_adv.size(0));
        stats.count_backward(x_adv.size(0));
      }
      stats.last_grad_l1 = l1;
      return x_adv;
    }
  }
  for (int step = 0; step < o.steps; ++step) {
    // A fresh leaf over x_adv's storage each step: the graph of the previous step is gone, and
    // the in-place update below happens after this step's graph has been used.
    Tensor leaf = x_adv.detach();
    leaf.set_requires_grad(true);
    Tensor loss;
    {
      GradModeGuard record_graph(true);
      const Tensor logits = model.forward(leaf);
      // The mean cross-entropy as one fused node (its gradient bitwise that of the composition).
      loss = objective_is_cross_entropy(o.kind) ? cross_entropy(logits, y) : mean(objective(o.kind, logits, y));
    }
    const Tensor g = grad({loss}, {leaf})[0];
    stats.count_forward(x_adv.size(0));
    stats.count_backward(x_adv.size(0));
    // Only the last step's L1 is kept: the earlier steps skip its reduction.
    const bool last = step + 1 == o.steps;
    if (o.norm == Norm::linf) {
      const Tensor l1 = last ? Tensor::empty({1}, DType::f64, x_adv.device()) : Tensor();
      pgd_step_(x_adv, x, g, o.eps, o.alpha, l1);
      if (last) stats.last_grad_l1 = l1;
    } else {
      NoGradGuard no_grad;
      x_adv = l2_step(x_adv, x, g, o.eps, o.alpha);
      if (last) stats.last_grad_l1 = sum(abs(g));
    }
  }
  return x_adv;
}

// How the model does at x_adv, per sample (one forward, no graph).
struct Judgement {
  std::vector<uint8_t> correct;
  std::vector<double> cross_entropy, objective;
};

Judgement judge(Module& model, const Tensor& x_adv, const Tensor& y, const std::vector<int32_t>& labels, AttackKind kind,
                AttackStats& stats) {
  NoGradGuard no_grad;
  const Tensor logits = model.forward(x_adv);
  stats.count_forward(x_adv.size(0));
  const std::vector<int32_t> predicted = argmax(logits, 1).to_vector_i32();
  Judgement j;
  j.correct.resize(labels.size());
  for (size_t i = 0; i < labels.size(); ++i) j.correct[i] = predicted[i] == labels[i];
  j.cross_entropy = cross_entropy(logits, y, false).to_vector_f64();
  j.objective = objective_is_cross_entropy(kind) ? j.cross_entropy : objective(kind, logits, y).to_vector_f64();
  return j;
}

}  // namespace

std::optional<std::vector<FusedLayer>> fused_layers(Module& model) {
  auto* chain = dynamic_cast<Sequential*>(&model);
  if (chain == nullptr) return std::nullopt;
  std::vector<FusedLayer> layers;
  // After a Flatten only Linear layers follow; a Linear after a Conv2d needs a Flatten between
  // (on a 4-d input a Linear maps the last dim alone).
  bool flat = false, spatial = false;
  for (const auto& [name, layer] : chain->layers()) {
    Module* m = layer.get();
    FusedLayer f;
    if (auto* n = dynamic_cast<Normalize*>(m); n && !flat) {
      f.kind = FusedLayer::Kind::normalize;
      f.weight = n->mean, f.bias = n->std;
    } else if (auto* c = dynamic_cast<Conv2d*>(m); c && !flat) {
      spatial = true;
      f.kind = FusedLayer::Kind::conv;
      f.weight = c->weight, f.bias = c->bias, f.stride = c->stride, f.padding = c->padding;
    } else if (auto* lin = dynamic_cast<Linear*>(m); lin && (flat || !spatial)) {
      f.kind = FusedLayer::Kind::linear;
      f.weight = lin->weight, f.bias = lin->bias;
    } else if (dynamic_cast<ReLU*>(m) && !layers.empty() && !layers.back().relu) {
      layers.back().relu = true;
      continue;
    } else if (dynamic_cast<Flatten*>(m)) {
      flat = true;
      continue;
    } else {
      return std::nullopt;
    }
    layers.push_back(f);
  }
  if (layers.empty() || layers.size() > static_cast<size_t>(kFusedMaxLayers) || layers.back().relu ||
      layers.back().kind != FusedLayer::Kind::linear)
    return std::nullopt;
  return layers;
}

Tensor sample_l2_norm(const Tensor& t) { return sqrt(sum(square(t), sample_dims(t), true)); }

Tensor sample_norm(const Tensor& t, Norm norm) {
  if (norm == Norm::l2) return sample_l2_norm(t);
  Shape per_sample(static_cast<size_t>(t.dim()), 1);
  per_sample[0] = t.size(0);
  return max(abs(t.reshape({t.size(0), t.numel() / std::max<int64_t>(t.size(0), 1)})), 1, true).reshape(per_sample);
}

Tensor steepest_direction(const Tensor& g, Norm norm) {
  return norm == Norm::linf ? sign(g) : g / (sample_l2_norm(g) + kTinyNorm);
}

BallProjection::BallProjection(const Tensor& x, double eps, Norm norm) : x_(x), eps_(eps), norm_(norm) {
  if (norm == Norm::linf) {
    lo_ = clamp(x - eps, 0.0, 1.0);
    hi_ = clamp(x + eps, 0.0, 1.0);
  }
}

Tensor BallProjection::operator()(const Tensor& v) const {
  if (norm_ == Norm::linf) return clamp(v, lo_, hi_);
  const Tensor delta = v - x_;
  const Tensor norm_l2 = sample_l2_norm(delta);
  const Tensor scale = clamp(
      div(Tensor::full(norm_l2.shape(), eps_, norm_l2.dtype(), norm_l2.device()), norm_l2 + kTinyNorm), 0.0, 1.0);
  return clamp(x_ + delta * scale, 0.0, 1.0);
}

Tensor assemble_rows(const std::vector<RowSource>& rows) {
  NoGradGuard no_grad;
  std::vector<Tensor> runs;
  for (size_t k = 0; k < rows.size();) {
    size_t end = k + 1;
    while (end < rows.size() && rows[end].source == rows[k].source && rows[end].row == rows[end - 1].row + 1) ++end;
    runs.push_back(rows[k].source->slice(0, rows[k].row, rows[k].row + static_cast<int64_t>(end - k)));
    k = end;
  }
  if (runs.size() == 1 && runs[0].size(0) == rows[0].source->size(0)) return *rows[0].source;
  return concat(runs, 0);
}

Tensor take_rows(const Tensor& t, const std::vector<int64_t>& indices) {
  std::vector<RowSource> rows;
  for (int64_t i : indices) rows.push_back({&t, i});
  return assemble_rows(rows);
}


AttackOptions resolve_attack(const AttackOptions& options) {
  AttackOptions o = options;
  check_attack_budget(o.eps, o.alpha);
  if (o.steps < 0) throw std::invalid_argument(fmt::format("attack: steps must be >= 0, got {}", o.steps));
  if (o.restarts < 1) throw std::invalid_argument(fmt::format("attack: restarts must be >= 1, got {}", o.restarts));
  if (o.eot < 1) throw std::invalid_argument(fmt::format("attack: eot must be >= 1, got {}", o.eot));
  if (o.eot > 1 && !is_apgd(o.kind))
    throw std::invalid_argument("attack: EOT (eot > 1) is implemented for the APGD attacks only");
  if (o.kind == AttackKind::apgd_t && o.targets < 1)
    throw std::invalid_argument(fmt::format("attack: APGD-T targets must be >= 1, got {}", o.targets));
  switch (o.kind) {
    case AttackKind::none:
      o.steps = 0;
      o.restarts = 1;
      o.random_start = false;
      o.alpha = 0;
      break;
    case AttackKind::fgsm:
      o.steps = 1;
      o.restarts = 1;
      o.random_start = false;
      o.alpha = o.eps;
      break;
    case AttackKind::fgsm_rs:
      o.steps = 1;
      o.random_start = true;
      if (o.alpha == 0) o.alpha = 1.25 * o.eps;
      break;
    case AttackKind::pgd:
    case AttackKind::cw:
      if (o.alpha == 0 && o.steps > 0) o.alpha = 2.5 * o.eps / o.steps;
      break;
    case AttackKind::square:
      if (o.queries < 1) throw std::invalid_argument(fmt::format("attack: Square queries must be >= 1, got {}", o.queries));
      if (!(o.p_init > 0 && o.p_init <= 1))
        throw std::invalid_argument(fmt::format("attack: Square p_init must be in (0, 1], got {}", o.p_init));
      if (o.norm != Norm::linf) throw std::invalid_argument("attack: Square is implemented for the L-inf norm only");
      o.steps = o.queries;  // what tables and the eval JSON show as its length
      o.alpha = 0;
      o.random_start = true;
      break;
    case AttackKind::interval:
      if (o.steps < 1) throw std::invalid_argument(fmt::format("attack: the interval attack needs steps >= 1, got {}", o.steps));
      if (o.norm != Norm::linf) throw std::invalid_argument("attack: the interval attack is implemented for the L-inf norm only");
      if (o.alpha == 0) o.alpha = 0.01;  // the paper's base PGD step
      break;
    case AttackKind::fab_t:
      if (o.steps < 1 || o.targets < 1)
        throw std::invalid_argument(fmt::format("attack: FAB-T needs steps >= 1 and targets >= 1, got {} and {}", o.steps,
                                                o.targets));
      o.alpha = 0;  // it steps onto the linearised boundary, not by a fixed size
      o.restarts = 1;
      o.random_start = false;
      break;
    case AttackKind::apgd_ce:
    case AttackKind::apgd_dlr:
    case AttackKind::apgd_t:
      o.alpha = 2 * o.eps;  // APGD's initial step size; it adapts from there
      break;
  }
  return o;
}

std::string attack_name(const AttackOptions& options) {
  const AttackOptions o = resolve_attack(options);
  const std::string norm = o.norm == Norm::l2 ? "L2 " : "";
  const std::string restarts = o.restarts > 1 ? fmt::format("x{}", o.restarts) : "";
  const std::string eot = o.eot > 1 ? fmt::format(" EOT-{}", o.eot) : "";
  switch (o.kind) {
    case AttackKind::none: return "clean";
    case AttackKind::fgsm: return norm + "FGSM";
    case AttackKind::fgsm_rs: return norm + "FGSM-RS" + restarts;
    case AttackKind::pgd: return fmt::format("{}PGD-{}{}", norm, o.steps, restarts);
    case AttackKind::cw: return fmt::format("{}CW-{}{}", norm, o.steps, restarts);
    case AttackKind::square: return fmt::format("Square-{}{}", o.queries, restarts);
    case AttackKind::fab_t: return fmt::format("{}FAB-T-{}x{}", norm, o.steps, o.targets);
    case AttackKind::interval: return fmt::format("Interval-PGD-{}{}", o.steps, restarts);
    case AttackKind::apgd_ce: return fmt::format("{}APGD-CE-{}{}{}", norm, o.steps, restarts, eot);
    case AttackKind::apgd_dlr: return fmt::format("{}APGD-DLR-{}{}{}", norm, o.steps, restarts, eot);
    case AttackKind::apgd_t: return fmt::format("{}APGD-T-{}x{}{}{}", norm, o.steps, o.targets, restarts, eot);
  }
  return "?";
}

uint64_t start_counters(Norm norm, const Shape& shape) {
  const int64_t numel = shape_numel(shape);
  if (norm == Norm::linf) return random_start_counters(numel);
  // rand_normal's counters for the direction, then one uniform per sample.
  const int64_t samples = shape.empty() ? 1 : shape[0];
  return normal_counters(numel) + uniform_counters(samples);
}

uint64_t attack_counters(const AttackOptions& options, const Shape& shape) {
  const AttackOptions o = resolve_attack(options);
  if (o.kind == AttackKind::square) return static_cast<uint64_t>(o.restarts) * square_counters(o, shape);
  if (o.kind == AttackKind::interval) return static_cast<uint64_t>(o.restarts) * start_counters(o.norm, shape);
  return has_random_start(o.kind) ? static_cast<uint64_t>(o.restarts) * start_counters(o.norm, shape) : 0;
}

namespace {

// Attacks that are not "start, ascend, keep the worst restart": they run their own search.
bool self_contained(AttackKind kind) {
  return kind == AttackKind::square || kind == AttackKind::fab_t || kind == AttackKind::interval;
}

Tensor run_self_contained(Module& model, const Tensor& x, const Tensor& y, const AttackOptions& o, AttackStats& stats) {
  if (o.kind == AttackKind::square) return square_attack(model, x, y, o, stats);
  if (o.kind == AttackKind::interval) return interval_attack(model, x, y, o, stats);
  FabOptions f;
  f.norm = o.norm;
  f.eps = o.eps;
  f.steps = o.steps;
  f.targets = o.targets;
  return fab_targeted(model, x, y, f, &stats).x_adv;
}

}  // namespace

Tensor attack(Module& model, const Tensor& x_in, const Tensor& y, const AttackOptions& options, AttackStats* stats) {
  const AttackOptions o = resolve_attack(options);
  if (o.restarts > 1 && !self_contained(o.kind)) return attack_outcome(model, x_in, y, o, stats).x_adv;
  require_batch(x_in, y);
  const Tensor x = x_in.detach().contiguous();
  AttackStats local;
  local.cost = model.pass_cost();
  Tensor x_adv = self_contained(o.kind) ? run_self_contained(model, x, y, o, local)
                                        : ascend(model, x, y, restart_start(x, o, 0), o, local);
  if (stats) *stats = local;
  return x_adv;
}

Tensor attack_from(Module& model, const Tensor& x_in, const Tensor& y, const Tensor& start, const AttackOptions& options,
                   AttackStats* stats) {
  const AttackOptions o = resolve_attack(options);
  if (self_contained(o.kind) || o.kind == AttackKind::none)
    throw std::invalid_argument(fmt::format("attack_from: {} is not an iterative gradient attack", attack_name(o)));
  require_batch(x_in, y);
  if (start.shape() != x_in.shape())
    throw std::invalid_argument(fmt::format("attack_from: start {} for the batch {}", start.str(), x_in.str()));
  AttackStats local;
  local.cost = model.pass_cost();
  Tensor x_adv = ascend(model, x_in.detach().contiguous(), y, start.detach().contiguous().clone(), o, local);
  if (stats) *stats = local;
  return x_adv;
}

AttackOutcome attack_outcome(Module& model, const Tensor& x_in, const Tensor& y, const AttackOptions& options,
                             AttackStats* stats) {
  const AttackOptions o = resolve_attack(options);
  require_batch(x_in, y);
  const Tensor x = x_in.detach().contiguous();
  const std::vector<int32_t> labels = y.to_vector_i32();

  AttackStats local;
  local.cost = model.pass_cost();
  // Square runs its restarts itself (each on the samples its margin has not broken yet); FAB-T has none.
  const Tensor x_first = self_contained(o.kind) ? run_self_contained(model, x, y, o, local)
                                                : ascend(model, x, y, restart_start(x, o, 0), o, local);
  Judgement first = judge(model, x_first, y, labels, o.kind, local);
  AttackOutcome best{x_first, std::move(first.correct), std::move(first.cross_entropy)};
  std::vector<double> best_objective = std::move(first.objective);

  for (int restart = 1; restart < o.restarts && !self_contained(o.kind); ++restart) {
    // Later restarts attack only the samples no restart has broken yet: a broken sample keeps
    // its first breaking example whatever follows. Each sample starts from its own row of the
    // whole batch's start, so who else is left does not change its noise.
    std::vector<int64_t> standing;
    for (size_t i = 0; i < best.correct.size(); ++i)
      if (best.correct[i]) standing.push_back(static_cast<int64_t>(i));
    if (standing.empty()) break;
    std::vector<int32_t> standing_labels;
    for (int64_t i : standing) standing_labels.push_back(labels[i]);
    const Tensor sy = Tensor::from_vector(standing_labels, {static_cast<int64_t>(standing.size())}).to(y.device());
    const Tensor sx = take_rows(x, standing);
    const Tensor x_restart = ascend(model, sx, sy, take_rows(restart_start(x, o, restart), standing).contiguous(), o, local);
    const Judgement j = judge(model, x_restart, sy, standing_labels, o.kind, local);

    std::vector<RowSource> merged;
    for (int64_t i = 0; i < x.size(0); ++i) merged.push_back({&best.x_adv, i});
    bool changed = false;
    for (size_t k = 0; k < standing.size(); ++k) {
      if (j.correct[k] && j.objective[k] <= best_objective[standing[k]]) continue;
      const int64_t i = standing[k];
      merged[i] = {&x_restart, static_cast<int64_t>(k)};
      best.correct[i] = j.correct[k];
      best.loss[i] = j.cross_entropy[k];
      best_objective[i] = j.objective[k];
      changed = true;
    }
    if (changed) best.x_adv = assemble_rows(merged);
  }
  if (stats) *stats = local;
  return best;
}

AttackOutcome transfer_outcome(Module& model, Module& source, const Tensor& x, const Tensor& y,
                               const AttackOptions& options, AttackStats* stats) {
  const AttackOptions o = resolve_attack(options);
  AttackStats local;
  local.cost = model.pass_cost();
  const Tensor x_adv = attack(source, x, y, o, &local);
  local.cost = model.pass_cost();  // the judging forward is the target's
  Judgement j = judge(model, x_adv, y, y.to_vector_i32(), o.kind, local);
  if (stats) *stats = local;
  return {x_adv, std::move(j.correct), std::move(j.cross_entropy)};
}

void require_logits(const Tensor& outputs) {
  if (outputs.dim() != 2 || outputs.size(1) < 2)
    throw std::invalid_argument(fmt::format("the model's outputs are {}, not logits [N, K] over K >= 2 classes: the "
                                            "attacks need one score per class",
                                            outputs.str()));
  NoGradGuard no_grad;
  const std::vector<double> z = outputs.to(DType::f64).cpu().to_vector_f64();
  const int64_t n = outputs.size(0), k = outputs.size(1);
  for (int64_t i = 0; i < n; ++i) {
    double total = 0;
    for (int64_t j = 0; j < k; ++j) {
      if (!(z[i * k + j] >= 0)) return;
      total += z[i * k + j];
    }
    if (std::abs(total - 1) > 1e-4) return;
  }
  throw std::invalid_argument(
      "the model's outputs look like probabilities (every row is non-negative and sums to 1): the attacks' "
      "cross-entropy, margin and DLR losses need logits, the scores before the softmax; evaluate the model without "
      "its final softmax");
}

double robust_accuracy(Module& model, const Tensor& x, const Tensor& y, const AttackOptions& options, AttackStats* stats) {
  const AttackOutcome outcome = attack_outcome(model, x, y, options, stats);
  if (outcome.correct.empty()) return 0.0;
  int64_t correct = 0;
  for (uint8_t c : outcome.correct) correct += c;
  return static_cast<double>(correct) / static_cast<double>(outcome.correct.size());
}


Tensor pgd_attack(Module& model, const Tensor& x, const Tensor& y, const PgdOptions& p, AttackStats* stats) {
  AttackOptions o;
  o.kind = AttackKind::pgd;
  o.norm = Norm::linf;
  o.eps = p.eps;
  o.alpha = p.alpha;
  o.steps = p.steps;
  o.restarts = 1;
  o.random_start = p.random_start;
  o.seed = p.seed;
  o.offset = p.offset;
  return attack(model, x, y, o, stats);
}

}  // namespace bulwark

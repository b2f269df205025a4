#include "training/evaluate.h"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <optional>
#include <stdexcept>

#include "engine/autograd.h"
#include "engine/ops.h"

namespace bulwark::training {

namespace {

void require_model_on(const Module& model, Device device) {
  for (const Tensor& p : model.parameters())
    if (p.device() != device)
      throw std::invalid_argument(fmt::format("evaluation on {} but the model's parameters are on {} (move it with "
                                              "Module::to first)",
                                              device_name(device), device_name(p.device())));
}

}  // namespace

Tensor images_tensor(const data::Dataset& d, int64_t first, int64_t n) {
  Tensor t = Tensor::empty({n, d.c, d.h, d.w});
  std::memcpy(t.data<float>(), d.image(first), sizeof(float) * n * d.sample_size());
  return t;
}

Tensor labels_tensor(const data::Dataset& d, int64_t first, int64_t n) {
  Tensor t = Tensor::empty({n}, DType::i32);
  std::memcpy(t.data<int32_t>(), d.labels.data() + first, sizeof(int32_t) * n);
  return t;
}

namespace {

// Per batch: the samples' correctness (under whatever is measured), their summed loss, and the
// work, which it adds to the result.
struct BatchScore {
  std::vector<uint8_t> correct;
  double loss_sum = 0;
};

// Samples [first, first + n) of `d` in batches of batch_size moved to `device`, each scored by
// `score(x, y, result)`; the result's accuracy, mean loss, per-sample correctness and seconds.
template <class Score>
EvalResult evaluate_batches(const data::Dataset& d, int64_t first, int64_t n, int64_t batch_size, Device device,
                            const EvalProgress& progress, Score score) {
  if (first < 0 || n < 0 || first + n > d.n)
    throw std::out_of_range(fmt::format("evaluation of samples [{}, {}) of {}, which has {}", first, first + n, d.name, d.n));
  if (batch_size < 1) throw std::invalid_argument(fmt::format("evaluation batch size must be >= 1, got {}", batch_size));
  const auto start = std::chrono::steady_clock::now();
  EvalResult r;
  r.count = n;
  r.correct.reserve(static_cast<size_t>(n));
  double loss_sum = 0;
  int64_t correct = 0;
  const int64_t batches = (n + batch_size - 1) / batch_size;
  for (int64_t b = 0; b < batches; ++b) {
    const int64_t begin = first + b * batch_size, m = std::min(batch_size, first + n - begin);
    const Tensor x = images_tensor(d, begin, m).to(device), y = labels_tensor(d, begin, m).to(device);
    const BatchScore scored = score(x, y, r);
    loss_sum += scored.loss_sum;
    for (uint8_t c : scored.correct) correct += c;
    r.correct.insert(r.correct.end(), scored.correct.begin(), scored.correct.end());
    if (progress) progress(b + 1, batches, static_cast<double>(correct) / static_cast<double>(begin + m - first));
  }
  const double count = static_cast<double>(std::max<int64_t>(n, 1));
  r.loss = loss_sum / count;
  r.accuracy = static_cast<double>(correct) / count;
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return r;
}

}  // namespace

EvalResult evaluate_attack(Module& model, const data::Dataset& d, int64_t first, int64_t n, const AttackOptions& attack,
                           int64_t batch_size, Device device, const EvalProgress& progress, Module* source) {
  require_model_on(model, device);
  if (source) require_model_on(*source, device);
  AttackOptions o = resolve_attack(attack);
  EvalModeGuard eval_mode(model);
  std::optional<EvalModeGuard> source_eval_mode;
  if (source) source_eval_mode.emplace(*source);
  return evaluate_batches(d, first, n, batch_size, device, progress, [&](const Tensor& x, const Tensor& y, EvalResult& r) {
    AttackStats stats;
    const AttackOutcome outcome = source ? transfer_outcome(model, *source, x, y, o, &stats)
                                         : attack_outcome(model, x, y, o, &stats);
    o.offset += attack_counters(o, x.shape());
    r.forward_passes += stats.forward_passes;
    r.backward_passes += stats.backward_passes;
    r.forward_images += stats.forward_images;
    r.backward_images += stats.backward_images;
    BatchScore scored{outcome.correct, 0};
    for (double l : outcome.loss) scored.loss_sum += l;
    return scored;
  });
}

Tensor images_at(const data::Dataset& d, const std::vector<int64_t>& indices) {
  const auto k = static_cast<int64_t>(indices.size());
  Tensor t = Tensor::empty({k, d.c, d.h, d.w});
  float* out = t.data<float>();
  for (int64_t i = 0; i < k; ++i)
    std::memcpy(out + i * d.sample_size(), d.image(indices[i]), sizeof(float) * d.sample_size());
  return t;
}

Tensor labels_at(const data::Dataset& d, const std::vector<int64_t>& indices) {
  std::vector<int32_t> y;
  y.reserve(indices.size());
  for (int64_t i : indices) y.push_back(d.labels[i]);
  return Tensor::from_vector(y, {static_cast<int64_t>(y.size())});
}

SequenceResult evaluate_sequence(Module& model, const data::Dataset& d, int64_t first, int64_t n,
                                 const std::vector<AttackOptions>& attacks, int64_t batch_size, Device device,
                                 bool compact,
                                 const std::function<void(size_t attack, int64_t done, int64_t batches)>& progress) {
  SequenceResult out;
  EvalModeGuard eval_mode(model);
  if (n > 0) {
    NoGradGuard no_grad;
    const Tensor x = images_tensor(d, first, std::min(n, batch_size)).to(device);
    const Tensor z = model.forward(x), again = model.forward(x);
    require_logits(z);
    out.randomised = sum(abs(z - again)).item() > 0;
  }
  AttackOptions clean;
  clean.kind = AttackKind::none;
  out.clean = evaluate_attack(model, d, first, n, clean, batch_size, device);
  if (n > 0) {
    const Module::PassCost cost = model.pass_cost();
    out.clean.forward_passes += 2 * cost.forward;
    out.clean.backward_passes += 2 * cost.forward_backward;
    out.clean.forward_images += 2 * cost.forward * std::min(n, batch_size);
    out.clean.backward_images += 2 * cost.forward_backward * std::min(n, batch_size);
  }
  std::vector<uint8_t> robust = out.clean.correct;
  out.robust = out.clean;
  for (size_t a = 0; a < attacks.size(); ++a) {
    const auto start = std::chrono::steady_clock::now();
    AttackOptions o = resolve_attack(attacks[a]);
    EvalResult r;
    // The samples this attack runs on: the survivors (compact) or all of them, in batches.
    std::vector<int64_t> attacked;
    for (int64_t i = 0; i < n; ++i)
      if (!compact || robust[static_cast<size_t>(i)]) attacked.push_back(i);
    const auto total = static_cast<int64_t>(attacked.size());
    r.count = total;  // the samples attacked (the accuracy is over all n)
    const int64_t batches = (total + batch_size - 1) / batch_size;
    for (int64_t b = 0; b < batches; ++b) {
      const std::vector<int64_t> rows(attacked.begin() + b * batch_size,
                                      attacked.begin() + std::min(total, (b + 1) * batch_size));
      std::vector<int64_t> samples(rows.size());
      for (size_t k = 0; k < rows.size(); ++k) samples[k] = first + rows[k];
      const Tensor x = images_at(d, samples).to(device), y = labels_at(d, samples).to(device);
      AttackStats stats;
      const AttackOutcome outcome = attack_outcome(model, x, y, o, &stats);
      o.offset += attack_counters(o, x.shape());
      r.forward_passes += stats.forward_passes;
      r.backward_passes += stats.backward_passes;
      r.forward_images += stats.forward_images;
      r.backward_images += stats.backward_images;
      for (size_t k = 0; k < rows.size(); ++k) robust[static_cast<size_t>(rows[k])] &= outcome.correct[k];
      if (progress) progress(a, b + 1, batches);
    }
    int64_t correct = 0;
    for (uint8_t c : robust) correct += c;
    r.accuracy = static_cast<double>(correct) / static_cast<double>(std::max<int64_t>(n, 1));
    r.correct = robust;
    r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    out.robust.forward_passes += r.forward_passes;
    out.robust.backward_passes += r.backward_passes;
    out.robust.forward_images += r.forward_images;
    out.robust.backward_images += r.backward_images;
    out.robust.seconds += r.seconds;
    out.attacks.push_back(std::move(r));
  }
  int64_t correct = 0;
  for (uint8_t c : robust) correct += c;
  out.robust.accuracy = static_cast<double>(correct) / static_cast<double>(std::max<int64_t>(n, 1));
  out.robust.correct = robust;
  return out;
}

EvalResult evaluate_verified(Module& model, const data::Dataset& d, int64_t first, int64_t n, double eps,
                             robust::BoundKind bound, int64_t batch_size, Device device, const EvalProgress& progress) {
  require_model_on(model, device);
  EvalModeGuard eval_mode(model);
  NoGradGuard no_grad;
  return evaluate_batches(d, first, n, batch_size, device, progress, [&](const Tensor& x, const Tensor& y, EvalResult& r) {
    const Tensor worst = robust::worst_case_logits(model, x, y, eps, bound);
    ++r.forward_passes;
    r.forward_images += x.size(0);
    return BatchScore{robust::verified_samples(worst, y),
                      cross_entropy(worst, y).item() * static_cast<double>(x.size(0))};
  });
}

Tensor evaluate_logits(Module& model, const data::Dataset& d, int64_t first, int64_t n, int64_t batch_size,
                       Device device) {
  require_model_on(model, device);
  EvalModeGuard eval_mode(model);
  NoGradGuard no_grad;
  std::vector<Tensor> parts;
  for (int64_t begin = first; begin < first + n; begin += batch_size) {
    const int64_t m = std::min(batch_size, first + n - begin);
    parts.push_back(model.forward(images_tensor(d, begin, m).to(device)).to(DType::f32).cpu());
  }
  if (parts.empty()) throw std::invalid_argument("evaluate_logits: no samples");
  return parts.size() == 1 ? parts[0] : concat(parts, 0);
}

EvalResult evaluate_clean(Module& model, const data::Dataset& d, int64_t batch_size, Device device) {
  AttackOptions clean;
  clean.kind = AttackKind::none;
  return evaluate_attack(model, d, 0, d.n, clean, batch_size, device);
}

}  // namespace bulwark::training

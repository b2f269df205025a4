#include "training/evaluate.h"

#include <fmt/format.h>

#include "engine/autograd.h"
#include "engine/ops.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <optional>
#include <stdexcept>

namespace bulwark::training {

namespace {

void require_model_on(const Module& model, Device device) {
  for (const Tensor& p : model.parameters())
    if (p.device() != device)
      throw std::invalid_argument(fmt::format("evaluation on {} but the model's parameters are on {} (move it with "
                                              "Module::to first)",
                                              device_name(device), device_name(p.device())));
}

// The examples `source` finds for (x, y), judged by one forward of `model`.
AttackOutcome transfer_outcome(Module& model, Module& source, const Tensor& x, const Tensor& y, const AttackOptions& o,
                               AttackStats& stats) {
  AttackOutcome out;
  out.x_adv = attack(source, x, y, o, &stats);
  NoGradGuard no_grad;
  const Tensor logits = model.forward(out.x_adv);
  ++stats.forward_passes;
  const std::vector<int32_t> predicted = argmax(logits, 1).to_vector_i32(), labels = y.to_vector_i32();
  for (size_t i = 0; i < labels.size(); ++i) out.correct.push_back(predicted[i] == labels[i]);
  out.loss = cross_entropy(logits, y, false).to_vector_f64();
  return out;
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

EvalResult evaluate_attack(Module& model, const data::Dataset& d, int64_t first, int64_t n, const AttackOptions& attack,
                           int64_t batch_size, Device device, const EvalProgress& progress, Module* source) {
  if (first < 0 || n < 0 || first + n > d.n)
    throw std::out_of_range(fmt::format("evaluation of samples [{}, {}) of {}, which has {}", first, first + n, d.name, d.n));
  if (batch_size < 1) throw std::invalid_argument(fmt::format("evaluation batch size must be >= 1, got {}", batch_size));
  require_model_on(model, device);
  if (source) require_model_on(*source, device);
  AttackOptions o = resolve_attack(attack);
  const auto start = std::chrono::steady_clock::now();
  EvalModeGuard eval_mode(model);
  std::optional<EvalModeGuard> source_eval_mode;
  if (source) source_eval_mode.emplace(*source);

  EvalResult r;
  r.count = n;
  r.correct.reserve(static_cast<size_t>(n));
  double loss_sum = 0;
  int64_t correct = 0;
  const int64_t batches = (n + batch_size - 1) / batch_size;
  for (int64_t b = 0; b < batches; ++b) {
    const int64_t begin = first + b * batch_size, m = std::min(batch_size, first + n - begin);
    const Tensor x = images_tensor(d, begin, m).to(device), y = labels_tensor(d, begin, m).to(device);
    AttackStats stats;
    const AttackOutcome outcome = source ? transfer_outcome(model, *source, x, y, o, stats)
                                         : attack_outcome(model, x, y, o, &stats);
    o.offset += attack_counters(o, x.shape());
    r.forward_passes += stats.forward_passes;
    r.backward_passes += stats.backward_passes;
    for (int64_t i = 0; i < m; ++i) {
      loss_sum += outcome.loss[i];
      correct += outcome.correct[i];
    }
    r.correct.insert(r.correct.end(), outcome.correct.begin(), outcome.correct.end());
    if (progress) progress(b + 1, batches, static_cast<double>(correct) / static_cast<double>(begin + m - first));
  }
  const double count = static_cast<double>(std::max<int64_t>(n, 1));
  r.loss = loss_sum / count;
  r.accuracy = static_cast<double>(correct) / count;
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return r;
}

EvalResult evaluate_clean(Module& model, const data::Dataset& d, int64_t batch_size, Device device) {
  AttackOptions clean;
  clean.kind = AttackKind::none;
  return evaluate_attack(model, d, 0, d.n, clean, batch_size, device);
}

}  // namespace bulwark::training

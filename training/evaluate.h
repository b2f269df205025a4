#pragma once
// Evaluation of a model on a dataset, clean or under an attack of robust/attacks.h: eval mode
// (BatchNorm uses its running statistics; the caller's mode is restored), fixed batches in
// dataset order. The trainer's per-epoch validation (clean, and PGD-10 on a validation subset)
// and `bulwark eval` (clean, PGD-50x10, CW-20, FGSM on the test split) both run through here.
#include <cstdint>
#include <functional>
#include <vector>

#include "data/dataset.h"
#include "models/module.h"
#include "robust/attacks.h"
#include "robust/bounds.h"
#include "robust/method.h"

namespace bulwark::training {

struct EvalResult {
  double loss = 0;      // mean cross-entropy (at the adversarial examples under an attack)
  double accuracy = 0;  // fraction in [0, 1]
  int64_t count = 0;
  double seconds = 0;   // wall time of the evaluation, attack included
  int64_t forward_passes = 0, backward_passes = 0;  // through the whole model, summed over batches
  int64_t forward_images = 0, backward_images = 0;  // the same per image (AttackStats)
  std::vector<uint8_t> correct;  // per sample: 1 where the model got it right (under the attack)
};

// After each batch: batches done, batches in all, and the accuracy over the samples so far.
using EvalProgress = std::function<void(int64_t done, int64_t batches, double accuracy)>;

// Accuracy of `model` on samples [first, first + n) of `d` under `attack` (AttackKind::none:
// clean), in batches of batch_size moved to `device`, where the model must already live. Batch
// b draws its random starts from offset attack.offset + (the attack_counters of the batches
// before it), so an evaluation is a function of (seed, offset, batch_size). With `source` (a
// transfer attack) the examples are crafted on `source` and judged on `model`: the passes counted
// are the source's attack plus one forward of `model` per batch.
EvalResult evaluate_attack(Module& model, const data::Dataset& d, int64_t first, int64_t n,
                           const AttackOptions& attack, int64_t batch_size, Device device,
                           const EvalProgress& progress = {}, Module* source = nullptr);

// AutoAttack's protocol: the attacks in order, each on the samples that the clean pass and every
// earlier attack left correct; a sample is robust when every attack fails on it. With `compact`
// each attack gathers the survivors into full batches (work follows the samples still robust);
// without, it runs on every batch and only the survivors' outcomes count (the reference, and the
// way to measure what compaction saves). The random starts differ between the two (a batch holds
// other samples), so their accuracies may differ by the attacks' own randomness. Before the clean
// pass, two forwards of the first batch check that the model's outputs are logits
// (robust::require_logits, which throws) and whether the model is randomised (counted in the
// clean pass's forwards).
struct SequenceResult {
  EvalResult clean;                 // the clean pass
  std::vector<EvalResult> attacks;  // per attack: accuracy after it (robust so far, over all n), the samples
                                    // it attacked (count) and its own work; loss is not measured
  EvalResult robust;                // after the last attack: accuracy, per-sample correct, all passes
  bool randomised = false;          // two forwards of the same batch gave different outputs
};
SequenceResult evaluate_sequence(Module& model, const data::Dataset& d, int64_t first, int64_t n,
                                 const std::vector<AttackOptions>& attacks, int64_t batch_size, Device device,
                                 bool compact, const std::function<void(size_t attack, int64_t done, int64_t batches)>&
                                                   progress = {});

// Verified accuracy at eps under `bound` (robust/bounds.h) of samples [first, first + n) of `d`,
// in eval mode, without a graph: `correct` marks the verified samples, `loss` is the mean verified
// loss CE(worst-case logits, y). A bound pass is counted as one forward pass.
EvalResult evaluate_verified(Module& model, const data::Dataset& d, int64_t first, int64_t n, double eps,
                             robust::BoundKind bound, int64_t batch_size, Device device,
                             const EvalProgress& progress = {});

// The model's outputs on samples [first, first + n) of `d`, in eval mode, without a graph, in
// batches on `device`: a host f32 tensor [n, K].
Tensor evaluate_logits(Module& model, const data::Dataset& d, int64_t first, int64_t n, int64_t batch_size,
                       Device device);

// evaluate_attack of the whole of `d` with AttackKind::none.
EvalResult evaluate_clean(Module& model, const data::Dataset& d, int64_t batch_size, Device device = Device::cpu);

using robust::count_correct;

// The samples `indices` of `d` (in that order) as an f32 [k, c, h, w] tensor and i32 labels.
Tensor images_at(const data::Dataset& d, const std::vector<int64_t>& indices);
Tensor labels_at(const data::Dataset& d, const std::vector<int64_t>& indices);

// Samples [first, first + n) of `d` as an f32 [n, c, h, w] tensor (a copy).
Tensor images_tensor(const data::Dataset& d, int64_t first, int64_t n);
// Their labels as i32 [n].
Tensor labels_tensor(const data::Dataset& d, int64_t first, int64_t n);

}  // namespace bulwark::training

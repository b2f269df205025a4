#pragma once
// Clean evaluation of a model on a dataset: eval mode (BatchNorm uses its running statistics),
// no autograd, fixed batches in dataset order.
#include <cstdint>

#include "data/dataset.h"
#include "models/module.h"

namespace bulwark::training {

struct EvalResult {
  double loss = 0;      // mean cross-entropy
  double accuracy = 0;  // fraction in [0, 1]
  int64_t count = 0;
};

// Restores the model's train/eval mode afterwards.
EvalResult evaluate_clean(Module& model, const data::Dataset& d, int64_t batch_size);

// Number of rows of logits [n, k] whose argmax is the label (first maximum wins, like argmax).
int64_t count_correct(const Tensor& logits, const Tensor& labels);

// Samples [first, first + n) of `d` as an f32 [n, c, h, w] tensor (a copy).
Tensor images_tensor(const data::Dataset& d, int64_t first, int64_t n);
// Their labels as i32 [n].
Tensor labels_tensor(const data::Dataset& d, int64_t first, int64_t n);

}  // namespace bulwark::training

#include "training/evaluate.h"

#include <algorithm>
#include <cstring>

namespace bulwark::training {

int64_t count_correct(const Tensor& logits, const Tensor& labels) {
  const Tensor pred = argmax(logits.detach(), 1);
  const int32_t* p = pred.data<int32_t>();
  const Tensor labels_c = labels.contiguous();
  const int32_t* y = labels_c.data<int32_t>();
  int64_t correct = 0;
  for (int64_t i = 0; i < pred.numel(); ++i) correct += p[i] == y[i];
  return correct;
}

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

EvalResult evaluate_clean(Module& model, const data::Dataset& d, int64_t batch_size) {
  const bool was_training = model.is_training();
  model.eval();
  NoGradGuard no_grad;
  double loss_sum = 0;
  int64_t correct = 0;
  for (int64_t first = 0; first < d.n; first += batch_size) {
    const int64_t n = std::min(batch_size, d.n - first);
    const Tensor y = labels_tensor(d, first, n);
    const Tensor logits = model(images_tensor(d, first, n));
    loss_sum += cross_entropy(logits, y).item() * static_cast<double>(n);
    correct += count_correct(logits, y);
  }
  model.train(was_training);
  const double count = static_cast<double>(std::max<int64_t>(d.n, 1));
  return {loss_sum / count, static_cast<double>(correct) / count, d.n};
}

}  // namespace bulwark::training

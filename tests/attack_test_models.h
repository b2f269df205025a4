#pragma once
// The small models and batches the attack tests share: synthetic 1x12x12 images, an untrained
// MLP, one trained for a few Adam epochs (built once per process), their options and scoring
// (tests/test_attacks.cpp, test_apgd.cpp, test_square.cpp).
#include <algorithm>
#include <cmath>
#include <memory>
#include <vector>

#include "data/synthetic.h"
#include "engine/autograd.h"
#include "engine/ops.h"
#include "models/zoo.h"
#include "robust/attacks.h"
#include "training/evaluate.h"
#include "training/optim.h"

namespace bulwark::testing {

inline constexpr int kSide = 12;
inline constexpr uint64_t kDataSeed = 5;

inline data::Dataset synthetic(int64_t n, bool train) { return data::make_synthetic_split(n, kDataSeed, train, 1, kSide, kSide, 10); }

struct Batch {
  Tensor x, y;
};

inline Batch test_batch(int64_t n) {
  const data::Dataset d = synthetic(n, false);
  return {training::images_tensor(d, 0, n), training::labels_tensor(d, 0, n)};
}

inline std::shared_ptr<Module> small_mlp(uint64_t seed) {
  ModelConfig cfg;
  cfg.in_channels = 1;
  cfg.height = cfg.width = kSide;
  cfg.seed = seed;
  return make_model("mlp", cfg);
}

// An MLP trained for a few Adam epochs: accurate enough that attacks have something to break.
inline std::shared_ptr<Module> trained_mlp() {
  static const std::shared_ptr<Module> model = [] {
    auto m = small_mlp(3);
    const data::Dataset d = synthetic(1000, true);
    training::OptimizerConfig oc;
    oc.name = "adam";
    oc.lr = 2e-3;
    oc.weight_decay = 0;
    training::Adam opt(m->named_parameters(), oc);
    for (int epoch = 0; epoch < 8; ++epoch)
      for (int64_t first = 0; first < d.n; first += 100) {
        opt.zero_grad();
        backward(cross_entropy(m->forward(training::images_tensor(d, first, 100)), training::labels_tensor(d, first, 100)));
        opt.step();
      }
    m->eval();
    return m;
  }();
  return model;
}

// Largest per-sample norm of x_adv - x (L-inf or L2), and the range of x_adv, on the host.
struct Perturbation {
  double largest = 0, mean = 0;
  float lo = 1, hi = 0;
};

inline Perturbation perturbation(const Tensor& x_adv, const Tensor& x, Norm norm) {
  const std::vector<float> a = x_adv.cpu().to_vector(), b = x.cpu().to_vector();
  const int64_t n = x.size(0), d = x.numel() / n;
  Perturbation p;
  for (int64_t i = 0; i < n; ++i) {
    double size = 0;
    for (int64_t k = i * d; k < (i + 1) * d; ++k) {
      const double diff = std::abs(static_cast<double>(a[k]) - b[k]);
      size = norm == Norm::linf ? std::max(size, diff) : size + diff * diff;
      p.lo = std::min(p.lo, a[k]);
      p.hi = std::max(p.hi, a[k]);
    }
    if (norm == Norm::l2) size = std::sqrt(size);
    p.largest = std::max(p.largest, size);
    p.mean += size / static_cast<double>(n);
  }
  return p;
}

// Fraction of 1s in a per-sample correctness vector.
inline double accuracy(const std::vector<uint8_t>& correct) {
  double c = 0;
  for (uint8_t v : correct) c += v;
  return c / static_cast<double>(correct.size());
}

// The attack tests' options: seed 11, offset 3.
inline AttackOptions options(AttackKind kind, Norm norm, double eps, int steps = 10, int restarts = 1) {
  AttackOptions o;
  o.kind = kind;
  o.norm = norm;
  o.eps = eps;
  o.steps = steps;
  o.restarts = restarts;
  o.seed = 11;
  o.offset = 3;
  return o;
}

}  // namespace bulwark::testing

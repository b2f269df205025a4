#pragma once
// The models and data the attack tests share (tests/test_attacks.cpp, tests/test_square.cpp):
// synthetic 1x12x12 images and a small MLP (models/zoo.h), untrained or trained for a few Adam
// epochs (once per test process).
#include <memory>

#include "data/synthetic.h"
#include "engine/autograd.h"
#include "models/zoo.h"
#include "training/evaluate.h"
#include "training/optim.h"

namespace bulwark::testing {

inline constexpr int kSide = 12;
inline constexpr uint64_t kDataSeed = 5;

inline data::Dataset synthetic(int64_t n, bool train) {
  return data::make_synthetic_split(n, kDataSeed, train, 1, kSide, kSide, 10);
}

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

}  // namespace bulwark::testing

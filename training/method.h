#pragma once
// The training method: what the trainer does with one batch.
//
// The trainer owns the loop (data, schedule, validation, checkpoints, metrics); a Method owns
// the step. That is where the methods of METHODS.md differ: the inner maximisation (none,
// FGSM-RS, PGD-k, Free-style replay, DEAT's growing replay count, interval bounds), the loss
// mix (clean, adversarial, verified, MixTrain's dynamic mix), and how many optimizer steps a
// batch gets (Free-AT and DEAT update the weights on every replay). A method:
//   - runs its forward and backward passes on the batch and steps the optimizer (at the learning
//     rate the trainer set), counting every pass through the whole model in ctx.passes;
//   - reports the loss and correctness of what it trained on;
//   - may adapt after each epoch (DEAT's replay count) and add values to the epoch's metrics;
//   - saves whatever it adapts in state(), so a resumed run continues it bit for bit.
// Randomness (random starts, sample choice) comes from ctx.gen, whose position the trainer
// saves in every checkpoint.
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "engine/rng.h"
#include "models/module.h"
#include "training/metrics.h"
#include "training/optim.h"

namespace bulwark::training {

struct StepContext {
  Module& model;
  Optimizer& optimizer;
  Generator& gen;
  PassCounter& passes;
  int64_t epoch = 0, batch = 0;  // position, for methods with per-epoch rules and for messages
};

// Sums over the samples the method trained on in this batch (replays count once per replay).
struct BatchResult {
  double loss_sum = 0;  // sum of per-sample losses
  int64_t correct = 0;
  int64_t count = 0;
};

class Method {
 public:
  virtual ~Method() = default;
  virtual std::string name() const = 0;
  // x: f32 [n, c, h, w] in [0, 1]; y: i32 [n]. The model is in training mode.
  virtual BatchResult train_batch(StepContext& ctx, const Tensor& x, const Tensor& y) = 0;
  // After the epoch's validation, before the schedule's hook; may add entries to metrics.extra.
  virtual void on_epoch_end(EpochMetrics& metrics) {}
  virtual nlohmann::json state() const { return nlohmann::json::object(); }
  virtual void load_state(const nlohmann::json& state) {}
};

// Standard training (no inner maximisation): one forward, mean cross-entropy, one backward, one
// optimizer step per batch.
class StandardTraining final : public Method {
 public:
  std::string name() const override { return "standard"; }
  BatchResult train_batch(StepContext& ctx, const Tensor& x, const Tensor& y) override;
};

std::vector<std::string> method_names();
// Throws std::invalid_argument listing the methods for an unknown name.
std::unique_ptr<Method> make_method(const std::string& name);

}  // namespace bulwark::training

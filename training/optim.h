#pragma once
// Optimizers: SGD (momentum, Nesterov, weight decay) and Adam, with PyTorch's update rules.
//
// An optimizer holds the model's named parameters and one state tensor per parameter and kind
// (allocated once, zero), and step() runs the fused in-place update of engine/optim_ops.h on
// each parameter that has a gradient. Its state exports as named tensors, so a checkpoint can
// carry it next to the model's state dict:
//   optimizer.step                           f64 scalar, steps taken
//   optimizer.<param>.momentum_buffer        SGD
//   optimizer.<param>.exp_avg / .exp_avg_sq  Adam
// Adam keeps one step count for all parameters (PyTorch keeps one per parameter; the two differ
// only when a parameter gets no gradient at some step).
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "models/module.h"
#include "robust/method.h"

namespace bulwark::training {

struct OptimizerConfig {
  std::string name = "sgd";  // sgd | adam
  double lr = 0.05;
  double weight_decay = 5e-4;  // L2, added to the gradient (both optimizers, as in PyTorch)
  double momentum = 0.9;       // sgd
  bool nesterov = false;       // sgd
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8;  // adam
};

// Throws std::invalid_argument naming the bad field (negative lr, momentum outside [0, 1), ...).
void validate(const OptimizerConfig& cfg);

class Optimizer : public robust::ParameterUpdate {
 public:
  // state_names: the per-parameter state tensors this optimizer keeps (allocated here, zero).
  Optimizer(NamedTensors params, std::vector<std::string> state_names);
  ~Optimizer() override = default;
  Optimizer(const Optimizer&) = delete;
  Optimizer& operator=(const Optimizer&) = delete;

  // One update of every parameter that has a gradient, at the current learning rate.
  void step() override;
  void zero_grad() override;

  double lr() const { return lr_; }
  void set_lr(double lr) { lr_ = lr; }
  // Before each step, scale the gradients by min(1, max_norm / ||g||_2), ||g|| over all of them
  // together (torch.nn.utils.clip_grad_norm_), on their device: no host wait. 0 = off.
  void set_grad_clip(double max_norm);
  int64_t steps() const { return steps_; }
  // The step count, for a caller that ran steps elsewhere (a replayed CUDA graph's step) or
  // undoes one that only recorded (its capture).
  void set_steps(int64_t steps) { steps_ = steps; }

  // State as named tensors (the names above; values are copies) and back. load_state
  // requires every name with the right shape and ignores names that are not "optimizer.*".
  NamedTensors state() const;
  void load_state(const std::map<std::string, Tensor>& tensors);

 protected:
  struct Slot {
    std::string name;
    Tensor param;
    std::vector<Tensor> state;  // one per state name, same shape as param
  };
  // One update of the slots that have a gradient (each with it), in one call: on CUDA one launch.
  virtual void update(const std::vector<std::pair<Slot*, Tensor>>& slots) = 0;

  std::vector<std::string> state_names_;
  double grad_clip_ = 0;
  std::vector<Slot> slots_;
  double lr_ = 0;
  int64_t steps_ = 0;  // completed steps; update() sees the count including the current one
};

class Sgd final : public Optimizer {
 public:
  Sgd(NamedTensors params, const OptimizerConfig& cfg);

 private:
  void update(const std::vector<std::pair<Slot*, Tensor>>& slots) override;
  OptimizerConfig cfg_;
};

class Adam final : public Optimizer {
 public:
  Adam(NamedTensors params, const OptimizerConfig& cfg);

 private:
  void update(const std::vector<std::pair<Slot*, Tensor>>& slots) override;
  OptimizerConfig cfg_;
};

// Sgd or Adam by cfg.name; validates cfg.
std::unique_ptr<Optimizer> make_optimizer(const OptimizerConfig& cfg, NamedTensors params);

}  // namespace bulwark::training

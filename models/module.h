#pragma once
// Module: the base of every layer and model, like torch.nn.Module.
//
// A module owns named parameters (leaf tensors that require grad), named buffers (state that
// is saved but not trained, e.g. BatchNorm running statistics) and named child modules. Names
// compose with dots, so a parameter is addressed as "layer1.0.conv1.weight", the same name
// PyTorch gives it: checkpoints and fixtures line up with PyTorch models one to one.
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "engine/ops.h"
#include "models/interval.h"

namespace bulwark {

using NamedTensors = std::vector<std::pair<std::string, Tensor>>;

class Module {
 public:
  virtual ~Module() = default;
  virtual Tensor forward(const Tensor& x) = 0;
  Tensor operator()(const Tensor& x) { return forward(x); }

  // Bound propagation (models/interval.h; robust/bounds.h drives it). Each layer type states how
  // a box of its inputs maps to a box holding all its outputs, and a model composes its layers'
  // boxes the way its forward composes the layers, so any model made of such layers is bounded
  // without the bound knowing its class. The default throws, naming the module: a layer the
  // bound cannot pass.
  virtual Interval interval_forward(const Interval& in);
  // The box of the margins z_j - z_y of this module's logits z (0 at j = y) for inputs in `in`:
  // by default interval_margin_of_logits(interval_forward(in)); a model ending in a Linear
  // merges the difference into that layer's weights (elision: |W_j - W_y| r, never looser).
  virtual Interval interval_margin(const Interval& in, const Tensor& labels);
  // CROWN's backward step (models/interval.h): from the upper bound <A, out> + bias of this
  // module's output to one in terms of its input. It uses what the module's last
  // interval_forward recorded (ReLU pre-activation bounds, input shapes, BatchNorm's affine map),
  // so an interval pass over the same box comes first. The default throws, naming the module.
  virtual LinearBound crown_backward(const LinearBound& upper, const CrownOptions& options);
  // An affine layer's interval pass fused with the ReLU after it (one kernel: the engine's
  // interval_conv2d / interval_linear with relu): the ReLU's box, with the pre-activation box in
  // *pre for the ReLU to record; nullopt for a layer that cannot fuse (the default). Sequential
  // fuses each affine layer followed by a ReLU; the boxes are those of the two passes in turn.
  virtual std::optional<Interval> interval_forward_relu(const Interval& in, Interval* pre);
  // The module's type, for messages ("Conv2d", "PreActBlock").
  std::string type_name() const;

  // Train/eval mode, applied to the whole tree (BatchNorm reads it).
  void train(bool on = true);
  void eval() { train(false); }
  bool is_training() const { return training_; }

  NamedTensors named_parameters(const std::string& prefix = "") const;
  NamedTensors named_buffers(const std::string& prefix = "") const;
  std::vector<Tensor> parameters() const;
  // Parameters and buffers, in registration order.
  NamedTensors state_dict() const;
  // Copies values into the existing tensors; every name must be present with the same shape
  // (and no unexpected names when strict). Errors name the offending tensor.
  void load_state_dict(const std::map<std::string, Tensor>& state, bool strict = true);
  int64_t num_parameters() const;
  void zero_grad();
  // Moves every parameter and buffer to `dev` in place (like PyTorch's module.to): each tensor
  // keeps its identity (layers and optimizers holding it see the move), its storage is replaced
  // by a copy on `dev`, and its gradient is dropped. Call before building an optimizer.
  void to(Device dev);

 protected:
  // For crown_backward: throws, naming the module, when `recorded` is false (no interval_forward
  // has recorded what the relaxation needs).
  void require_interval_pass(bool recorded) const;

  Tensor register_parameter(const std::string& name, Tensor t);
  Tensor register_buffer(const std::string& name, Tensor t);
  template <class M>
  std::shared_ptr<M> register_module(const std::string& name, std::shared_ptr<M> m) {
    children_.emplace_back(name, m);
    return m;
  }

 private:
  bool training_ = true;
  NamedTensors params_, buffers_;
  std::vector<std::pair<std::string, std::shared_ptr<Module>>> children_;
};

// Puts a model in eval mode for a scope (evaluation, attacks on a probe batch) and restores the
// mode it had when the scope ends, also by an exception.
class EvalModeGuard {
 public:
  explicit EvalModeGuard(Module& model) : model_(model), was_training_(model.is_training()) { model.eval(); }
  ~EvalModeGuard() { model_.train(was_training_); }
  EvalModeGuard(const EvalModeGuard&) = delete;
  EvalModeGuard& operator=(const EvalModeGuard&) = delete;

 private:
  Module& model_;
  bool was_training_;
};

}  // namespace bulwark

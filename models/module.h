#pragma once
// Module: the base of every layer and model, like torch.nn.Module.
//
// A module owns named parameters (leaf tensors that require grad), named buffers (state that
// is saved but not trained, e.g. BatchNorm running statistics) and named child modules. Names
// compose with dots, so a parameter is addressed as "layer1.0.conv1.weight", the same name
// PyTorch gives it: checkpoints and fixtures line up with PyTorch models one to one.
#include <algorithm>
#include <functional>
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
  // The same for the forward pass: relu(forward(x)) in one kernel, where the layer has a ReLU
  // epilogue (Conv2d, Linear, BatchNorm: the engine's conv2d_relu, linear_relu, batch_norm_relu),
  // with the same values and gradients; nullopt for a layer that cannot fuse (the default).
  // Sequential fuses each such layer with the ReLU module after it; blocks call relu_after.
  virtual std::optional<Tensor> forward_relu(const Tensor& x);
  // The module's type, for messages ("Conv2d", "PreActBlock").
  std::string type_name() const;

  // What one call of this module costs in passes through the whole network (the trainers and
  // attacks count work in passes, robust/method.h): `forward` forwards and `forward_backward`
  // backwards for the call itself, and `backward` backwards for one backward through its result.
  // A plain network is 1, 0, 1; a self-gradient network (models/sgn.h) runs a probe forward and
  // backward inside its forward, and a backward through the probe's backward counts twice.
  struct PassCost {
    int64_t forward = 1, forward_backward = 0, backward = 1;
  };
  virtual PassCost pass_cost() const { return {}; }

  // Train/eval mode, applied to the whole tree (BatchNorm reads it).
  void train(bool on = true);
  void eval() { train(false); }
  bool is_training() const { return training_; }

  NamedTensors named_parameters(const std::string& prefix = "") const;
  // Every module of the tree below this one (not itself), parents before their children, with
  // its dotted name ("layer1.0", "layer1.0.conv1"), like torch's named_modules.
  std::vector<std::pair<std::string, Module*>> named_modules(const std::string& prefix = "") const;
  bool has_children() const { return !children_.empty(); }
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

// ---- Full CROWN: each ReLU's pre-activation box tightened during the interval pass ---------------
//
// The `crown` bound (robust/bounds.h) bounds every ReLU's pre-activation by CROWN too, not only the
// margins at the end. While a CrownTightening is in scope (one per thread), an interval pass keeps,
// beside the box of the values it has reached, `to_input`: CROWN's backward map from a linear
// bound on those values to one on the input, the composition of the crown_backward of every step
// passed. Before a ReLU, its pre-activation box is intersected with CROWN's box of it (the identity
// over its neurons carried back by to_input, maximised over the input box, upper and lower), and
// the ReLU records the tighter box, which its own crown_backward then uses.
//
// A composite module passes its children with interval_step and an inline ReLU with relu_step,
// which keep to_input at the step's output; where the graph branches (a residual block's shortcut)
// it saves to_input and restores it for the other branch. At a composite's end interval_step sets
// to_input from the composite's own crown_backward, so a join needs no bookkeeping of its own.
// Without a CrownTightening in scope both are the plain interval pass.
class CrownTightening {
 public:
  using Backward = std::function<LinearBound(const LinearBound&)>;
  // The pass over `input_box` that follows is tightened; to_input starts as the identity. With
  // `tighten` false the boxes are only recorded (boxes()), as IBP gives them.
  explicit CrownTightening(const Interval& input_box, bool tighten = true);
  ~CrownTightening();
  CrownTightening(const CrownTightening&) = delete;
  CrownTightening& operator=(const CrownTightening&) = delete;
  // The tightening in scope on this thread, or nullptr.
  static CrownTightening* active();

  const Backward& to_input() const { return to_input_; }
  void set_to_input(Backward b) { to_input_ = std::move(b); }
  // One more step passed, whose CROWN backward is `step`: to_input = to_input o step.
  void passed(Backward step);
  // Values of `per_sample` numbers per sample were reached (sizes the chunks of tighten).
  void reached(int64_t per_sample) { widest_ = std::max(widest_, per_sample); }
  // `pre`, the pre-activation box of the next ReLU, intersected with CROWN's box of it. Up to the
  // first ReLU the box is returned as it is: there the zoo's models have passed per-channel maps
  // and one convolution or linear layer, through which IBP's box is already exact per neuron.
  Interval tighten(const Interval& pre);
  // Every ReLU's pre-activation box as tighten returned it, in the order of the pass.
  const std::vector<Interval>& boxes() const { return boxes_; }

 private:
  Interval crown_box(const Tensor& h);  // CROWN's box of the values h (their shape)

  Interval box_;
  bool tighten_;
  std::vector<Interval> boxes_;
  Backward to_input_;
  int64_t widest_;
  int64_t relus_ = 0;
  CrownTightening* previous_;
};

// A child's interval pass as a composite makes it: m.interval_forward(in), and under a
// CrownTightening to_input moves to the child's output.
Interval interval_step(Module& m, const Interval& in);
// An inline ReLU of a composite (one that is not a ReLU module): interval_relu(pre), with `pre`
// first tightened in place under a CrownTightening (the caller records it for its crown_backward);
// under a SymbolicPass (models/symbolic.h) the pass's ReLU step on its rows.
Interval relu_step(Interval& pre);

// relu(layer(x)), in one kernel where the layer fuses its ReLU (Module::forward_relu).
Tensor relu_after(Module& layer, const Tensor& x);

// ---- Activation taps: a scope that reads, and may replace, chosen layers' outputs --------------
//
// A self-gradient network (models/sgn.h) reads some activations of its base network in one pass
// and replaces them in the next. Sequential passes each of its layers' outputs through tapped(),
// so any layer of any Sequential of a model (a sequential model's ReLUs, a residual stage's
// blocks) can be tapped: while an ActivationTaps is in scope on the thread, the output of the
// k-th listed layer goes through hook(k, output), and its result continues the forward pass.
class ActivationTaps {
 public:
  using Hook = std::function<Tensor(size_t tap, const Tensor& output)>;
  ActivationTaps(std::vector<const Module*> layers, Hook hook);
  ~ActivationTaps();
  ActivationTaps(const ActivationTaps&) = delete;
  ActivationTaps& operator=(const ActivationTaps&) = delete;
  // `output` of `layer`, or what the hook of the taps in scope makes of it.
  static Tensor tapped(const Module& layer, const Tensor& output);
  // Whether taps are in scope on this thread (Sequential then runs each layer on its own, so a
  // tapped layer's output is the layer's, not a fused layer-and-ReLU's).
  static bool active();

 private:
  std::vector<const Module*> layers_;
  Hook hook_;
  ActivationTaps* previous_;
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

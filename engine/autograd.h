#pragma once
// Reverse-mode autograd on a dynamic tape, in the spirit of micrograd.
//
// Every op that sees an input requiring grad records a Node: its inputs and a backward closure.
// The closure is written with engine ops, so when `create_graph` is on the gradients are
// themselves recorded and can be differentiated again (double backward, needed to attack
// self-gradient networks through their full graph).
//
// grad(outputs, inputs) walks only the part of the graph from which `inputs` can be reached,
// and tells each closure which of its inputs need a gradient: an attack asking for d loss / d x
// never computes a weight gradient.
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "engine/tensor.h"

namespace bulwark {

struct Node {
  // g: gradient w.r.t. the node's output; needs[i]: whether inputs[i] needs a gradient.
  // Returns one tensor per input (undefined where not needed).
  using Backward = std::function<std::vector<Tensor>(const Node& node, const Tensor& g,
                                                     const std::vector<bool>& needs)>;
  std::string op;
  std::vector<Tensor> inputs;
  std::weak_ptr<TensorImpl> out;  // weak: the output owns the node, not the reverse
  Backward backward;
  // Optional, for a one-input view op (a slice that is one block of its base): adds g into
  // `acc`, the input's gradient so far (undefined: none yet; otherwise contiguous and owned by
  // the backward pass alone, so it may be written in place). Used instead of `backward` when the
  // backward is not recorded: several slices of one tensor (the stacked boxes of the fused
  // interval ops) then share one gradient buffer instead of a zero-padded copy each plus the adds.
  using AccumulateInto = std::function<void(Tensor& acc, const Tensor& g)>;
  AccumulateInto accumulate_into;
  // False for an op whose backward is not itself recorded (record_once_differentiable): a
  // create_graph pass that reaches it throws, naming the op, instead of returning a gradient
  // whose own gradient would be silently wrong.
  bool twice_differentiable = true;

  Tensor output() const;  // the op's output (alive whenever its gradient is being computed)
  ~Node();                // frees long chains of nodes without recursion
};

// Grad mode: when off, ops record nothing (thread-local, like torch.no_grad).
bool grad_enabled();
class NoGradGuard {
 public:
  NoGradGuard();
  ~NoGradGuard();
  NoGradGuard(const NoGradGuard&) = delete;
  NoGradGuard& operator=(const NoGradGuard&) = delete;
 private:
  bool prev_;
};
class GradModeGuard {  // sets grad mode to `on` for a scope
 public:
  explicit GradModeGuard(bool on);
  ~GradModeGuard();
  GradModeGuard(const GradModeGuard&) = delete;
  GradModeGuard& operator=(const GradModeGuard&) = delete;
 private:
  bool prev_;
};

// Attaches a node to `out` when grad mode is on and some input requires grad. Returns `out`.
Tensor record(Tensor out, const char* op, std::vector<Tensor> inputs, Node::Backward backward);

// record() for an op whose backward is computed outside the tape (a fused kernel with no
// engine-op composition): first-order gradients work; create_graph through it is an error.
Tensor record_once_differentiable(Tensor out, const char* op, std::vector<Tensor> inputs, Node::Backward backward);

// d outputs / d inputs, seeded with grad_outputs (default: ones, outputs must be scalars).
// Computes only the gradients that reach `inputs`. An input the outputs do not depend on
// gets a zero tensor when allow_unused, else an error.
std::vector<Tensor> grad(const std::vector<Tensor>& outputs, const std::vector<Tensor>& inputs,
                         const std::vector<Tensor>& grad_outputs = {}, bool create_graph = false,
                         bool allow_unused = false);

// Accumulates d loss / d leaf into leaf.grad() for every leaf that requires grad.
//
// `on_ready(leaf)`, when given, is called once for each leaf whose gradient this pass wrote,
// as soon as it is final: when the last node that consumes the leaf has run, which for the
// parameters of a network's last layers is long before the walk ends (the order is that of
// the walk, so the same on every run of one graph). A data-parallel update starts summing
// those gradients over ranks while the backward still runs (training/data_parallel.h).
using GradientReady = std::function<void(const Tensor& leaf)>;
void backward(const Tensor& loss, const Tensor& grad_output = Tensor(), bool create_graph = false,
              const GradientReady& on_ready = {});

// Counts Node::backward invocations on this thread since start (tests use it to prove
// selectivity). nodes_run and inputs_skipped are two integer increments and always counted.
struct BackwardStats {
  int64_t nodes_run = 0;
  int64_t inputs_skipped = 0;  // gradients a closure was told not to compute
  // Gradients closures actually returned, by "op[input index]": "conv2d[1]" counts weight
  // gradients of conv2d (each one a conv2d_backward_weight call). A string-keyed map is not
  // free, so it is filled only while a RecordGradsByOpGuard lives on this thread; otherwise a
  // backward pass pays one flag test for it.
  std::map<std::string, int64_t> grads_computed;
};
BackwardStats& backward_stats();

// Fills backward_stats().grads_computed on this thread while alive (they nest).
class RecordGradsByOpGuard {
 public:
  RecordGradsByOpGuard();
  ~RecordGradsByOpGuard();
  RecordGradsByOpGuard(const RecordGradsByOpGuard&) = delete;
  RecordGradsByOpGuard& operator=(const RecordGradsByOpGuard&) = delete;

 private:
  bool prev_;
};

}  // namespace bulwark

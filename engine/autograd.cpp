// The tape walker: topological order, the "needed" set that makes grad() selective, and
// gradient accumulation. About as small as it can be and still do double backward.
#include "engine/autograd.h"

#include "engine/profiler.h"

#include <fmt/format.h>

#include <stdexcept>
#include <unordered_map>
#include <unordered_set>

#include "engine/ops.h"

namespace bulwark {

namespace {
thread_local bool g_grad_enabled = true;
thread_local BackwardStats g_stats;
thread_local bool g_record_grads_by_op = false;

// Post-order of the nodes reachable from `roots` (inputs before the ops that consume them).
std::vector<Node*> topo_order(const std::vector<Tensor>& roots) {
  std::vector<Node*> order;
  std::unordered_set<Node*> seen;
  std::vector<std::pair<Node*, size_t>> stack;  // iterative DFS: ResNets make deep graphs
  for (const Tensor& r : roots) {
    Node* root = r.impl()->grad_fn.get();
    if (!root || !seen.insert(root).second) continue;
    stack.emplace_back(root, 0);
    while (!stack.empty()) {
      auto& [node, next] = stack.back();
      if (next < node->inputs.size()) {
        Node* child = node->inputs[next++].impl()->grad_fn.get();
        if (child && seen.insert(child).second) stack.emplace_back(child, 0);
      } else {
        order.push_back(node);
        stack.pop_back();
      }
    }
  }
  return order;
}

using GradMap = std::unordered_map<TensorImpl*, Tensor>;

void accumulate(GradMap& grads, TensorImpl* key, const Tensor& g) {
  auto it = grads.find(key);
  if (it == grads.end() || !it->second.defined())
    grads[key] = g;
  else
    it->second = add(it->second, g);
}

// Called with a target and its gradient (moved out of the map) once no node left to run adds
// to it; targets whose gradient is complete only at the end stay in the returned map.
using TargetDone = std::function<void(const Tensor& target, Tensor grad)>;

// Runs the backward pass from `outputs` and returns the gradient map restricted to what
// reaches a target. `is_target(impl)` selects the tensors whose gradients are wanted.
template <class IsTarget>
GradMap run_backward(const std::vector<Tensor>& outputs, const std::vector<Tensor>& grad_outputs,
                     bool create_graph, IsTarget is_target, const TargetDone& on_done = {}) {
  const std::vector<Node*> order = topo_order(outputs);

  // needed[node]: some target is reachable from the node's inputs. consumers[target]: the
  // needed nodes' edges into a leaf target still to run (only counted for on_done).
  std::unordered_map<Node*, bool> node_needed;
  std::unordered_map<TensorImpl*, int> consumers;
  auto input_needed = [&](const Tensor& t) {
    if (is_target(t.impl())) return true;
    Node* fn = t.impl()->grad_fn.get();
    return fn != nullptr && node_needed[fn];
  };
  for (Node* n : order) {
    bool any = false;
    for (const Tensor& in : n->inputs) any = any || input_needed(in);
    node_needed[n] = any;
    if (on_done && any)
      for (const Tensor& in : n->inputs)
        if (in.defined() && !in.impl()->grad_fn && is_target(in.impl())) ++consumers[in.impl()];
  }

  GradMap grads;
  for (size_t i = 0; i < outputs.size(); ++i) {
    const bool given = i < grad_outputs.size() && grad_outputs[i].defined();
    if (!given && outputs[i].numel() != 1)
      throw std::invalid_argument(fmt::format(
          "grad: output {} is not a scalar; reduce it (sum, mean) or pass its grad_output", outputs[i].str()));
    Tensor seed = given ? grad_outputs[i] : ones_like(outputs[i]);
    if (seed.shape() != outputs[i].shape() || seed.dtype() != outputs[i].dtype())
      throw std::invalid_argument(fmt::format("grad: grad_output {} does not match output {}", seed.str(), outputs[i].str()));
    accumulate(grads, outputs[i].impl(), seed);
  }

  GradModeGuard mode(create_graph);
  const profiler::BackwardScope gradient_sums;  // kernels between nodes: the gradients' sums
  const bool by_op = g_record_grads_by_op;
  // After a node ran (or had nothing to pass on): the leaf targets it was the last consumer of.
  auto release_inputs = [&](const Node* node) {
    for (const Tensor& in : node->inputs) {
      auto c = in.defined() ? consumers.find(in.impl()) : consumers.end();
      if (c == consumers.end() || --c->second > 0) continue;
      consumers.erase(c);
      auto git = grads.find(in.impl());
      if (git == grads.end()) continue;
      Tensor g = std::move(git->second);
      grads.erase(git);
      if (g.defined()) on_done(in, std::move(g));
    }
  };
  auto run_node = [&](Node* node) {
    const Tensor out = node->output();
    if (!out.defined()) return;
    auto git = grads.find(out.impl());
    if (git == grads.end() || !git->second.defined()) return;
    const Tensor g = git->second;
    if (!is_target(out.impl())) grads.erase(git);  // no longer needed: free it early

    std::vector<bool> needs(node->inputs.size());
    for (size_t i = 0; i < needs.size(); ++i) {
      needs[i] = input_needed(node->inputs[i]);
      if (!needs[i]) ++g_stats.inputs_skipped;
    }
    if (create_graph && !node->twice_differentiable)
      throw std::invalid_argument(fmt::format(
          "'{}' has no double backward (its backward is a fused kernel outside the tape): a gradient that is "
          "differentiated again (create_graph) cannot pass it",
          node->op));
    ++g_stats.nodes_run;
    const profiler::BackwardScope node_backward(node->op);
    if (!create_graph && node->accumulate_into && needs.size() == 1 && needs[0]) {
      Tensor& acc = grads[node->inputs[0].impl()];
      // In place only into memory no one else holds (a gradient is often one tensor for
      // several inputs, or the caller's seed).
      if (acc.defined() && (acc.impl_ptr().use_count() > 1 || acc.impl()->storage.use_count() > 1 || !acc.is_contiguous()))
        acc = acc.detach().clone();
      node->accumulate_into(acc, g);
      if (by_op) ++g_stats.grads_computed[node->op + "[0]"];
      return;
    }
    std::vector<Tensor> in_grads = node->backward(*node, g, needs);
    const profiler::BackwardScope sums;
    if (by_op)
      for (size_t i = 0; i < in_grads.size(); ++i)
        if (in_grads[i].defined()) ++g_stats.grads_computed[node->op + "[" + std::to_string(i) + "]"];
    for (size_t i = 0; i < node->inputs.size() && i < in_grads.size(); ++i) {
      if (!needs[i] || !in_grads[i].defined()) continue;
      const Tensor& in = node->inputs[i];
      if (in_grads[i].shape() != in.shape())
        throw std::logic_error(fmt::format("backward of '{}' returned gradient {} for input {}", node->op,
                                           in_grads[i].str(), in.str()));
      accumulate(grads, in.impl(), in_grads[i]);
    }
  };
  for (auto it = order.rbegin(); it != order.rend(); ++it) {
    Node* node = *it;
    if (!node_needed[node]) continue;
    run_node(node);
    if (on_done) release_inputs(node);
  }
  return grads;
}
// A gradient handed to the caller must be its own memory: backward passes often produce one
// tensor for several inputs (add gives g to both sides) or pass the caller's seed through,
// and an in-place update of one .grad (clipping, zeroing) must not change another.
Tensor owned_gradient(const Tensor& g, bool create_graph) {
  const bool shared = g.impl_ptr().use_count() > 1 || g.impl()->storage.use_count() > 1;
  if (create_graph) return shared ? g.clone() : g;
  return shared || !g.is_contiguous() ? g.detach().clone() : g.detach();
}
}  // namespace

Tensor Node::output() const { return Tensor(out.lock()); }

// A long chain (x -> node -> input -> node -> ...) would otherwise be freed recursively, one
// stack frame group per node, and overflow the stack at a few hundred thousand nodes. Instead,
// whenever this node holds the last reference to an input whose node would die with it, that
// node's inputs are taken over first, so every node dies with no inputs left to recurse into.
Node::~Node() {
  std::vector<Tensor> pending = std::move(inputs);
  while (!pending.empty()) {
    Tensor t = std::move(pending.back());
    pending.pop_back();
    if (!t.defined() || t.impl_ptr().use_count() != 1) continue;
    std::shared_ptr<Node>& fn = t.impl()->grad_fn;
    if (fn && fn.use_count() == 1) {
      for (Tensor& in : fn->inputs) pending.push_back(std::move(in));
      fn->inputs.clear();
    }
  }  // t is released at the end of each iteration, its node (if any) with no inputs
}

bool grad_enabled() { return g_grad_enabled; }
NoGradGuard::NoGradGuard() : prev_(g_grad_enabled) { g_grad_enabled = false; }
NoGradGuard::~NoGradGuard() { g_grad_enabled = prev_; }
GradModeGuard::GradModeGuard(bool on) : prev_(g_grad_enabled) { g_grad_enabled = on; }
GradModeGuard::~GradModeGuard() { g_grad_enabled = prev_; }

BackwardStats& backward_stats() { return g_stats; }
RecordGradsByOpGuard::RecordGradsByOpGuard() : prev_(g_record_grads_by_op) { g_record_grads_by_op = true; }
RecordGradsByOpGuard::~RecordGradsByOpGuard() { g_record_grads_by_op = prev_; }

Tensor record(Tensor out, const char* op, std::vector<Tensor> inputs, Node::Backward backward) {
  if (!g_grad_enabled) return out;
  bool any = false;
  for (const Tensor& in : inputs) any = any || (in.defined() && in.requires_grad());
  if (!any) return out;
  auto node = std::make_shared<Node>();
  node->op = op;
  node->inputs = std::move(inputs);
  node->out = out.impl_ptr();
  node->backward = std::move(backward);
  out.impl()->grad_fn = std::move(node);
  out.impl()->requires_grad = true;
  return out;
}

Tensor record_once_differentiable(Tensor out, const char* op, std::vector<Tensor> inputs, Node::Backward backward) {
  out = record(std::move(out), op, std::move(inputs), std::move(backward));
  if (out.impl()->grad_fn) out.impl()->grad_fn->twice_differentiable = false;
  return out;
}

std::vector<Tensor> grad(const std::vector<Tensor>& outputs, const std::vector<Tensor>& inputs,
                         const std::vector<Tensor>& grad_outputs, bool create_graph, bool allow_unused) {
  std::unordered_set<TensorImpl*> targets;
  for (const Tensor& in : inputs) {
    if (!in.requires_grad())
      throw std::invalid_argument(fmt::format("grad: input {} does not require grad", in.str()));
    targets.insert(in.impl());
  }
  GradMap grads = run_backward(outputs, grad_outputs, create_graph,
                               [&](TensorImpl* t) { return targets.count(t) > 0; });
  GradModeGuard mode(create_graph);
  std::vector<Tensor> result;
  for (const Tensor& in : inputs) {
    auto it = grads.find(in.impl());
    if (it != grads.end() && it->second.defined()) {
      result.push_back(owned_gradient(it->second, create_graph));
    } else if (allow_unused) {
      result.push_back(zeros_like(in));
    } else {
      throw std::invalid_argument(fmt::format("grad: the outputs do not depend on input {}", in.str()));
    }
  }
  return result;
}

void backward(const Tensor& loss, const Tensor& grad_output, bool create_graph, const GradientReady& on_ready) {
  if (!loss.requires_grad()) throw std::invalid_argument("backward: the loss does not require grad");
  auto is_leaf_param = [](TensorImpl* t) { return t->requires_grad && t->grad_fn == nullptr; };
  auto write = [&](TensorImpl* impl, const Tensor& g) {
    GradModeGuard mode(create_graph);
    const Tensor gg = owned_gradient(g, create_graph);
    if (impl->grad)
      impl->grad = add(Tensor(impl->grad), gg).impl_ptr();
    else
      impl->grad = gg.impl_ptr();
  };
  TargetDone on_done;
  if (on_ready)
    on_done = [&](const Tensor& leaf, Tensor g) {
      write(leaf.impl(), g);
      g = Tensor();  // owned_gradient may have kept it as the .grad: only that holds it now
      on_ready(leaf);
    };
  GradMap grads = run_backward({loss}, {grad_output}, create_graph, is_leaf_param, on_done);
  // Leaves given their gradient only at the end (or every leaf, without on_ready). The loss
  // itself may be a leaf: no tensor holds it here, so it is written but not announced.
  for (auto& [impl, g] : grads)
    if (is_leaf_param(impl) && g.defined()) write(impl, g);
}

}  // namespace bulwark

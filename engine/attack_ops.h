#pragma once
// The fused L-inf attack step and the random start, outside autograd: the kernels of
// kernels/common/attack_step.h behind shape, dtype and device checks, like the optimizer updates
// of engine/optim_ops.h. robust/ builds every attack (and the methods that drive their own loop)
// on these two; they dispatch on the tensor's device (CPU loops, or the CUDA kernels in f32).
#include <cstdint>
#include <vector>

#include "engine/tensor.h"

namespace bulwark {

// Throws std::invalid_argument unless the attack budget eps and step alpha are finite and >= 0.
void check_attack_budget(double eps, double alpha);

// x_adv <- clip_[0,1](clip_[x-eps, x+eps](x_adv + alpha * sign(g))) in place. x_adv must be
// contiguous; x and g must have x_adv's shape and dtype (any strides). With `l1` (a contiguous
// one-element f64 tensor on x_adv's device, such as a DeviceSeries slot), sum |g| from the same
// pass is written there; nothing is read back, so on CUDA the step never makes the host wait.
// Without it the L1 is not computed.
void pgd_step_(Tensor& x_adv, const Tensor& x, const Tensor& g, double eps, double alpha, const Tensor& l1 = Tensor());

// clip_[0,1](x + U(-eps, eps)): element i draws Philox word i of the stream (seed, offset), so
// the start is a function of (seed, offset) alone. Consumes random_start_counters(x.numel())
// counters: a caller drawing several starts from one seed advances offset by that much.
Tensor random_start(const Tensor& x, double eps, uint64_t seed, uint64_t offset);
uint64_t random_start_counters(int64_t numel);

// The longest chain fused_pgd_ takes.
constexpr int kFusedMaxLayers = 16;

// One layer of a network that fused_pgd_ attacks (kernels/common/fused_attack.h): a chain of
// these, each per-sample, with a ReLU optionally fused on its output.
struct FusedLayer {
  enum class Kind { normalize, conv, linear };
  Kind kind = Kind::linear;
  Tensor weight, bias;  // conv [out, in, k, k] / linear [out, in], bias [out] or undefined;
                        // normalize: weight = mean [C], bias = std [C]
  int64_t stride = 1, padding = 0;  // conv
  bool relu = false;
};

// `steps` PGD steps on the mean cross-entropy of the chain `layers` in one pass over the batch,
// x_adv (contiguous [N, ...], x's shape and dtype) updated in place: the same steps as `steps`
// rounds of forward, grad, pgd_step_ on the layers' ops, in one kernel (one launch on CUDA)
// whose per-element sums have their own fixed order. y: i32 labels [N] in [0, classes) (checked;
// on CUDA without a host wait, like cross_entropy's). l1 as pgd_step_'s, of the last step.
// Throws std::invalid_argument naming the layer whose shape does not follow from the one
// before, a chain of more than kFusedMaxLayers layers, or a final layer with a ReLU.
void fused_pgd_(Tensor& x_adv, const Tensor& x, const Tensor& y, const std::vector<FusedLayer>& layers, double eps,
                double alpha, int steps, const Tensor& l1 = Tensor());

// Multiply-adds of one forward of the chain on one sample of shape `sample` ([C, H, W] or [D]),
// checked as fused_pgd_ checks it: what one block does per attack step, twice (forward and
// input gradient).
int64_t fused_forward_macs(const std::vector<FusedLayer>& layers, const Shape& sample);

}  // namespace bulwark

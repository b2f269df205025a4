#pragma once
// The layers the model zoo is built from, with PyTorch's names, defaults and initialisation, so
// a bulwark model and its torch.nn twin have the same state_dict and compute the same function.
//
// Initialisation (PyTorch's default for nn.Linear and nn.Conv2d): kaiming_uniform_ with
// a = sqrt(5) gives weights U(-b, b) with b = gain * sqrt(3 / fan_in), gain = sqrt(2 / (1 + a^2)),
// which simplifies to b = 1 / sqrt(fan_in); the bias uses the same bound. fan_in is in_features
// for Linear and in_channels * kh * kw for Conv2d. Draws come from a seeded Philox Generator, in
// construction order (weight, then bias), so a seed fixes every weight of a model.
//
// Layer fields (weight, bias, stride, ...) are public like in PyTorch: the bound-propagation code
// in robust/ walks a Sequential and reads them.
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "engine/comm.h"
#include "engine/rng.h"
#include "models/module.h"

namespace bulwark {

struct LinearOptions {
  bool bias = true;
  DType dtype = DType::f32;
};

// y = x W^T + b, x [N, in_features], W [out_features, in_features].
class Linear : public Module {
 public:
  Linear(int64_t in_features, int64_t out_features, Generator& gen, LinearOptions opts = {});
  Tensor forward(const Tensor& x) override;
  std::optional<Tensor> forward_relu(const Tensor& x) override;
  Interval interval_forward(const Interval& in) override;
  std::optional<Interval> interval_forward_relu(const Interval& in, Interval* pre) override;
  // Elision: the margins' box with (W_j - W_y) merged per sample, |W_j - W_y| r.
  Interval interval_margin(const Interval& in, const Tensor& labels) override;
  LinearBound crown_backward(const LinearBound& upper, const CrownOptions& options) override;

  const int64_t in_features, out_features;
  Tensor weight, bias;  // bias is undefined when opts.bias is false

 private:
  const Tensor& checked(const Tensor& x) const;  // x, or a shape error naming the layer
};

struct Conv2dOptions {
  int64_t stride = 1, padding = 0;
  bool bias = true;
  DType dtype = DType::f32;
};

// Square kernels, zero padding; x [N, in_channels, H, W], W [out_channels, in_channels, k, k].
class Conv2d : public Module {
 public:
  Conv2d(int64_t in_channels, int64_t out_channels, int64_t kernel_size, Generator& gen, Conv2dOptions opts = {});
  Tensor forward(const Tensor& x) override;
  std::optional<Tensor> forward_relu(const Tensor& x) override;
  Interval interval_forward(const Interval& in) override;
  std::optional<Interval> interval_forward_relu(const Interval& in, Interval* pre) override;
  LinearBound crown_backward(const LinearBound& upper, const CrownOptions& options) override;
  // Spatial size of the output for an input of size `in` (throws when the kernel does not fit).
  int64_t output_size(int64_t in) const;

  const int64_t in_channels, out_channels, kernel_size, stride, padding;
  Tensor weight, bias;

 private:
  const Tensor& checked(const Tensor& x) const;  // x, or a shape error naming the layer
  Shape input_shape_;  // of the last interval_forward, for CROWN
};

// Batch normalisation over the channel dim 1, PyTorch's BatchNorm: in training mode the batch
// statistics normalise and the running statistics move by `momentum` (running_var with the
// unbiased batch variance); in eval mode the running statistics normalise. Buffers have
// PyTorch's names; num_batches_tracked is an i32 scalar (PyTorch: int64) counting train steps.
// Sync BatchNorm (--sync-bn; docs/distributed.md): while a communicator of several ranks is set,
// every BatchNorm in training mode normalises with the mean and variance of all ranks' batches
// together (two-pass, through the differentiable comm::all_reduce_sum, so the gradient flows to
// every rank's samples) and updates its running statistics with them; eval mode is unchanged.
// Composed of engine ops: slower than the fused kernel it replaces.
void set_batch_norm_sync(comm::Communicator* ranks);
comm::Communicator* batch_norm_sync();

class BatchNorm : public Module {
 public:
  Tensor forward(const Tensor& x) override;
  std::optional<Tensor> forward_relu(const Tensor& x) override;
  // Eval mode: the affine map of the running statistics. Training mode: the batch statistics of
  // the box centers (the running statistics are left alone), as IBP training uses them.
  Interval interval_forward(const Interval& in) override;
  LinearBound crown_backward(const LinearBound& upper, const CrownOptions& options) override;

  const int64_t num_features;
  const double eps, momentum;
  Tensor weight, bias, running_mean, running_var, num_batches_tracked;

 protected:
  BatchNorm(int64_t num_features, int64_t input_dims, DType dtype, double eps, double momentum);

 private:
  const Tensor& checked(const Tensor& x) const;  // x, or a shape error naming the layer
  Tensor normalized(const Tensor& x, bool relu);  // forward, and relu(forward) fused
  Tensor normalized_over_ranks(const Tensor& x, bool relu, comm::Communicator& ranks);  // sync BatchNorm
  int64_t input_dims_;    // 2 for BatchNorm1d ([N, C]), 4 for BatchNorm2d ([N, C, H, W])
  Tensor scale_, shift_;  // the affine map of the last interval_forward, per channel, for CROWN
};

class BatchNorm1d : public BatchNorm {
 public:
  explicit BatchNorm1d(int64_t num_features, DType dtype = DType::f32, double eps = 1e-5, double momentum = 0.1)
      : BatchNorm(num_features, 2, dtype, eps, momentum) {}
};

class BatchNorm2d : public BatchNorm {
 public:
  explicit BatchNorm2d(int64_t num_features, DType dtype = DType::f32, double eps = 1e-5, double momentum = 0.1)
      : BatchNorm(num_features, 4, dtype, eps, momentum) {}
};

class ReLU : public Module {
 public:
  Tensor forward(const Tensor& x) override { return relu(x); }
  Interval interval_forward(const Interval& in) override {
    pre_ = in;
    return relu_step(pre_);  // tightens pre_ first under full CROWN
  }
  // The pre-activation box of a pass the layer before fused with this one (Sequential).
  void record_interval(const Interval& pre) { pre_ = pre; }
  LinearBound crown_backward(const LinearBound& upper, const CrownOptions& options) override {
    require_interval_pass(pre_.center.defined());
    return relu_crown_backward(upper, pre_, options.adaptive_lower);
  }

 private:
  Interval pre_;  // the pre-activation box of the last interval_forward
};

// [N, d1, d2, ...] -> [N, d1 * d2 * ...].
class Flatten : public Module {
 public:
  Tensor forward(const Tensor& x) override;
  Interval interval_forward(const Interval& in) override;
  LinearBound crown_backward(const LinearBound& upper, const CrownOptions& options) override;
 private:
  Shape input_shape_;
};

class MaxPool2d : public Module {
 public:
  // stride 0 means stride = kernel_size, PyTorch's default.
  explicit MaxPool2d(int64_t kernel_size, int64_t stride = 0, int64_t padding = 0);
  Tensor forward(const Tensor& x) override { return max_pool2d(x, kernel_size, stride, padding); }
  Interval interval_forward(const Interval& in) override;
  LinearBound crown_backward(const LinearBound& upper, const CrownOptions& options) override;
  const int64_t kernel_size, stride, padding;

 private:
  Interval pre_;  // the input box of the last interval_forward
};

// Padding counts towards the window average (PyTorch's count_include_pad=True).
class AvgPool2d : public Module {
 public:
  explicit AvgPool2d(int64_t kernel_size, int64_t stride = 0, int64_t padding = 0);
  Tensor forward(const Tensor& x) override { return avg_pool2d(x, kernel_size, stride, padding); }
  Interval interval_forward(const Interval& in) override;
  LinearBound crown_backward(const LinearBound& upper, const CrownOptions& options) override;
  const int64_t kernel_size, stride, padding;

 private:
  Tensor input_;  // the input box's center of the last interval_forward (its shape, for CROWN)
};

class AdaptiveAvgPool2d : public Module {
 public:
  AdaptiveAvgPool2d(int64_t out_h, int64_t out_w) : out_h(out_h), out_w(out_w) {}
  Tensor forward(const Tensor& x) override { return adaptive_avg_pool2d(x, out_h, out_w); }
  Interval interval_forward(const Interval& in) override;
  LinearBound crown_backward(const LinearBound& upper, const CrownOptions& options) override;
  const int64_t out_h, out_w;

 private:
  Tensor input_;  // the input box's center of the last interval_forward (its shape, for CROWN)
};

// (x - mean) / std per channel, the first layer of every zoo model: inputs stay in [0, 1] pixel
// space, which is where attacks clip and where eps is measured. mean and std are buffers (saved
// with the model, never trained), shape [C].
class Normalize : public Module {
 public:
  Normalize(const std::vector<double>& mean, const std::vector<double>& stddev, DType dtype = DType::f32);
  Tensor forward(const Tensor& x) override;
  Interval interval_forward(const Interval& in) override;
  LinearBound crown_backward(const LinearBound& upper, const CrownOptions& options) override;
  Tensor mean, std;
};

// Runs its children in order (an empty Sequential is the identity). Children added without a
// name are named by their position among the unnamed ones ("0", "1", ...), like nn.Sequential;
// a named child (a zoo model's leading "normalize") does not take a number, so the layers after
// it keep the numbering of the unnormalised PyTorch model.
class Sequential : public Module {
 public:
  Sequential() = default;
  explicit Sequential(const std::vector<std::shared_ptr<Module>>& layers);
  Sequential& add(std::shared_ptr<Module> layer);
  Sequential& add(const std::string& name, std::shared_ptr<Module> layer);
  Tensor forward(const Tensor& x) override;
  Interval interval_forward(const Interval& in) override;
  // Every layer but the last forwards the box; the last gives the margins (so a final Linear elides).
  Interval interval_margin(const Interval& in, const Tensor& labels) override;
  LinearBound crown_backward(const LinearBound& upper, const CrownOptions& options) override;

  const std::vector<std::pair<std::string, std::shared_ptr<Module>>>& layers() const { return layers_; }

 private:
  // The interval pass over layers [0, end), each affine layer followed by a ReLU fused with it.
  Interval interval_through(const Interval& in, size_t end);

  std::vector<std::pair<std::string, std::shared_ptr<Module>>> layers_;
  int64_t unnamed_ = 0;
};

}  // namespace bulwark

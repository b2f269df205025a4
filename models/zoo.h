#pragma once
// The model zoo: the networks of the four papers bulwark reproduces, with the parameter names of
// the authors' PyTorch code, so checkpoints and fixtures line up with torch.nn one to one.
//
//   mlp              784-100-100-10 (input size from the config)            Wong & Kolter baselines
//   wong_small       conv16 4x4/2, conv32 4x4/2, FC100, FC          MixTrain / Wong et al. small
//   wong_large       conv32 3x3, conv32 4x4/2, conv64 3x3, conv64 4x4/2, FC512, FC512, FC
//   ibp_small        conv16 4x4/2, conv32 4x4/1 (no padding), FC100, FC      Gowal et al. small
//   ibp_large        conv64, conv64, conv128/2, conv128, conv128 (3x3), FC512, FC   DM-large
//   cnn7             as ibp_large with BatchNorm after every conv and FC512   Shi et al. CNN-7
//   preact_resnet18  PreAct ResNet-18 of Wong et al.'s fast_adversarial (Fast-AT, DEAT)
//   wide_resnet      WideResNet-depth-k (Zagoruyko & Komodakis; the TRADES/Rice et al. code)
//   sgn:<model>      any of the above as a self-gradient network (models/sgn.h)
//
// Every model starts with a Normalize layer named "normalize" ((x - mean) / std per channel), so
// it takes [N, C, H, W] images in [0, 1] and attacks work in pixel space. The sequential models
// are a Sequential whose layers after "normalize" are numbered "0", "1", ... exactly as the
// authors' nn.Sequential numbers them (the first conv of wong_small is "0.weight").
// docs/models.md lists parameter counts and FLOPs.
#include <memory>
#include <string>
#include <vector>

#include "models/layers.h"
#include "models/sgn.h"

namespace bulwark {

struct ModelConfig {
  int64_t in_channels = 3, height = 32, width = 32;  // the input images
  int64_t num_classes = 10;
  std::vector<double> mean, std;  // per channel; empty means 0 and 1 (no normalisation)
  uint64_t seed = 0;              // Philox seed of the initial weights
  int64_t depth = 16;             // wide_resnet: 6n + 4 layers
  int64_t widen_factor = 4;       // wide_resnet: channel multiplier (WRN-16-4 stays CPU-friendly)
  DType dtype = DType::f32;       // f64 for gradient checks and the PyTorch cross-check
  SgnConfig sgn;                  // "sgn:<base>": the self-gradient network's taps, gradient mode, gates
};

// Builds the named model, randomly initialised from cfg.seed. "sgn:<name>" is the zoo model <name>
// wrapped in a self-gradient network (models/sgn.h) with cfg.sgn. Unknown names, bad shapes and bad
// options are errors that say what is valid.
std::shared_ptr<Module> make_model(const std::string& name, const ModelConfig& cfg);
std::vector<std::string> model_names();    // the zoo
std::vector<std::string> model_choices();  // the zoo and "sgn:" + each of it: what --model takes

// PreAct ResNet basic block (He et al. 2016, "Identity mappings"): out = conv2(relu(bn2(conv1(a))))
// + shortcut, a = relu(bn1(x)); the shortcut is x, or a 1x1 strided conv of a ("shortcut.0")
// when the shape changes.
class PreActBlock : public Module {
 public:
  PreActBlock(int64_t in_planes, int64_t planes, int64_t stride, Generator& gen, DType dtype);
  Tensor forward(const Tensor& x) override;
  Interval interval_forward(const Interval& in) override;
  LinearBound crown_backward(const LinearBound& upper, const CrownOptions& options) override;

  std::shared_ptr<BatchNorm2d> bn1, bn2;
  std::shared_ptr<Conv2d> conv1, conv2;
  std::shared_ptr<Sequential> shortcut;  // null for the identity shortcut

 private:
  Interval pre1_, pre2_;  // the two ReLUs' pre-activation boxes of the last interval_forward
};

// normalize, conv1 3x3 64, layer1..layer4 (2 PreActBlocks each, 64/128/256/512 channels, stride
// 1/2/2/2), relu(bn), global average pool, linear. fast_adversarial pools with avg_pool2d(4),
// which is the global average for 32x32 inputs; the global pool keeps other input sizes working.
class PreActResNet18 : public Module {
 public:
  explicit PreActResNet18(const ModelConfig& cfg);
  Tensor forward(const Tensor& x) override;
  Interval interval_forward(const Interval& in) override;
  Interval interval_margin(const Interval& in, const Tensor& labels) override;
  LinearBound crown_backward(const LinearBound& upper, const CrownOptions& options) override;
  Interval head_pre;  // the head ReLU's pre-activation box of the last interval pass

  std::shared_ptr<Normalize> normalize;
  std::shared_ptr<Conv2d> conv1;
  std::shared_ptr<Sequential> layer1, layer2, layer3, layer4;
  std::shared_ptr<BatchNorm2d> bn;
  std::shared_ptr<Linear> linear;
};

// Wide-ResNet basic block: a = relu(bn1(x)); out = conv2(relu(bn2(conv1(a)))) + shortcut, where
// the shortcut is x when in and out channels agree, else convShortcut(a) (a 1x1 strided conv; the
// camelCase name is the original code's, kept so its checkpoints load).
class WideBasicBlock : public Module {
 public:
  WideBasicBlock(int64_t in_planes, int64_t out_planes, int64_t stride, Generator& gen, DType dtype);
  Tensor forward(const Tensor& x) override;
  Interval interval_forward(const Interval& in) override;
  LinearBound crown_backward(const LinearBound& upper, const CrownOptions& options) override;

  std::shared_ptr<BatchNorm2d> bn1, bn2;
  std::shared_ptr<Conv2d> conv1, conv2;
  std::shared_ptr<Conv2d> convShortcut;  // null when in_planes == out_planes

 private:
  Interval pre1_, pre2_;  // the two ReLUs' pre-activation boxes of the last interval_forward
};

// A stage of a WideResNet: n blocks in a Sequential named "layer" (the original NetworkBlock).
class WideNetworkBlock : public Module {
 public:
  WideNetworkBlock(int64_t num_blocks, int64_t in_planes, int64_t out_planes, int64_t stride, Generator& gen, DType dtype);
  Tensor forward(const Tensor& x) override { return layer->forward(x); }
  Interval interval_forward(const Interval& in) override { return interval_step(*layer, in); }
  LinearBound crown_backward(const LinearBound& upper, const CrownOptions& options) override {
    return layer->crown_backward(upper, options);
  }

  std::shared_ptr<Sequential> layer;
};

// normalize, conv1 3x3 16, block1..block3 (each a "layer" Sequential of n = (depth - 4) / 6
// WideBasicBlocks with 16k/32k/64k channels, stride 1/2/2), relu(bn1), global average pool, fc.
class WideResNet : public Module {
 public:
  explicit WideResNet(const ModelConfig& cfg);
  Tensor forward(const Tensor& x) override;
  Interval interval_forward(const Interval& in) override;
  Interval interval_margin(const Interval& in, const Tensor& labels) override;
  LinearBound crown_backward(const LinearBound& upper, const CrownOptions& options) override;
  Interval head_pre;  // the head ReLU's pre-activation box of the last interval pass

  std::shared_ptr<Normalize> normalize;
  std::shared_ptr<Conv2d> conv1;
  std::shared_ptr<WideNetworkBlock> block1, block2, block3;
  std::shared_ptr<BatchNorm2d> bn1;
  std::shared_ptr<Linear> fc;
};

}  // namespace bulwark

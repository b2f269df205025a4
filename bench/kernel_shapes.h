#pragma once
// The problems both kernel benchmarks run (bench/kernels.cpp on the CPU, bench/cuda_kernels.cpp
// on the GPU): the layers of the zoo models at batch 128, and the FLOP and byte counts each
// row's rate is computed from (docs/bench.md has the table).
//
//   GEMM                 C[M,N] = op(A) op(B): 2 M N K FLOPs
//   conv2d, each pass    2 n O (C KH KW) (OH OW) FLOPs (the GEMM of the im2col formulation;
//                        forward, backward-input and backward-weight do the same multiply-adds)
//   batch norm (train)   forward 12 B/element (x read twice, y written), backward 20 B/element
//                        (x and g read twice, dx written)
//   pgd_step             16 B/element (x, x_adv, g read; x_adv written)
//   random_start         8 B/element (x read, x_adv written)
//   softmax_xent_rows    4 B/logit + 8 B/row (logits and label read, loss written)
//   SGD step             20 B/parameter (p, g, momentum read; p, momentum written)
// Byte counts are the ideal traffic (each array once, or as many times as the kernel must pass
// over it); FLOP counts leave out the epilogues (bias, alpha/beta), which are O(output).
#include <cstdint>
#include <string>
#include <vector>

#include "kernels/cpu/cpu_kernels.h"
#include "models/zoo.h"

namespace bulwark::bench {

struct GemmCase {
  const char* name;
  bool ta, tb;
  int64_t m, n, k;
  int64_t lda() const { return ta ? m : k; }
  int64_t ldb() const { return tb ? k : n; }
  double flops() const { return 2.0 * double(m) * double(n) * double(k); }
};

inline const std::vector<GemmCase>& zoo_gemms() {
  static const std::vector<GemmCase> cases = {
      // cnn7's FC 32768 -> 512 at batch 128: forward x W^T, backward-input g W, backward-weight g^T x.
      {"cnn7_fc1_forward", false, true, 128, 512, 32768},
      {"cnn7_fc1_backward_input", false, false, 128, 32768, 512},
      {"cnn7_fc1_backward_weight", true, false, 512, 32768, 128},
      // wong_small's FC 1568 -> 100.
      {"wong_small_fc1_forward", false, true, 128, 100, 1568},
      // A square reference point for the BLAS itself.
      {"square_1024", false, false, 1024, 1024, 1024},
  };
  return cases;
}

inline ConvShape conv_shape(int64_t n, int64_t c, int64_t hw, int64_t o, int64_t k, int64_t stride, int64_t pad) {
  return make_conv_shape(n, c, hw, hw, o, k, k, stride, pad);
}

struct ConvLayer {
  const char* name;
  ConvShape shape;
  bool bias;  // the sequential models' convs have one; the ResNets' (BatchNorm follows) do not
};

// Every distinct conv shape of wong_small (MNIST), cnn7 and preact_resnet18 (CIFAR) at batch 128.
// A shape two models share is listed once, under its first model.
inline const std::vector<ConvLayer>& zoo_conv_layers() {
  constexpr int64_t n = 128;
  static const std::vector<ConvLayer> layers = {
      // wong_small: conv 1->16 4x4/2 at 28x28, 16->32 4x4/2 at 14x14 (pad 1).
      {"wong_small_conv1_1x28x28_to_16", conv_shape(n, 1, 28, 16, 4, 2, 1), true},
      {"wong_small_conv2_16x14x14_to_32", conv_shape(n, 16, 14, 32, 4, 2, 1), true},
      // cnn7 (3x3, pad 1); conv1 is also preact_resnet18's stem, conv2 its layer1 convs, conv3
      // its layer2.0.conv1, conv4 (= conv5) the rest of layer2.
      {"cnn7_conv1_3x32x32_to_64", conv_shape(n, 3, 32, 64, 3, 1, 1), true},
      {"cnn7_conv2_64x32x32_to_64", conv_shape(n, 64, 32, 64, 3, 1, 1), true},
      {"cnn7_conv3_64x32x32_to_128_s2", conv_shape(n, 64, 32, 128, 3, 2, 1), true},
      {"cnn7_conv4_128x16x16_to_128", conv_shape(n, 128, 16, 128, 3, 1, 1), true},
      // preact_resnet18's other shapes: the 1x1 stride-2 shortcuts and layers 3 and 4.
      {"resnet18_layer2_shortcut_64x32x32_to_128_1x1_s2", conv_shape(n, 64, 32, 128, 1, 2, 0), false},
      {"resnet18_layer3_0_conv1_128x16x16_to_256_s2", conv_shape(n, 128, 16, 256, 3, 2, 1), false},
      {"resnet18_layer3_conv_256x8x8_to_256", conv_shape(n, 256, 8, 256, 3, 1, 1), false},
      {"resnet18_layer3_shortcut_128x16x16_to_256_1x1_s2", conv_shape(n, 128, 16, 256, 1, 2, 0), false},
      {"resnet18_layer4_0_conv1_256x8x8_to_512_s2", conv_shape(n, 256, 8, 512, 3, 2, 1), false},
      {"resnet18_layer4_conv_512x4x4_to_512", conv_shape(n, 512, 4, 512, 3, 1, 1), false},
      {"resnet18_layer4_shortcut_256x8x8_to_512_1x1_s2", conv_shape(n, 256, 8, 512, 1, 2, 0), false},
  };
  return layers;
}

// Training-mode BatchNorm over x viewed as [128, c, inner].
struct BatchNormCase {
  const char* name;
  int64_t c, inner;
  int64_t count() const { return 128 * c * inner; }
};

inline const std::vector<BatchNormCase>& zoo_batch_norms() {
  static const std::vector<BatchNormCase> cases = {
      {"cnn7_bn2_64x32x32", 64, 32 * 32},
      {"cnn7_bn4_128x16x16", 128, 16 * 16},
      {"resnet18_layer4_bn_512x4x4", 512, 4 * 4},
  };
  return cases;
}

// The attack step over one input batch.
struct AttackCase {
  const char* name;
  int64_t n;
};

inline const std::vector<AttackCase>& attack_batches() {
  static const std::vector<AttackCase> cases = {{"cifar_128x3x32x32", 128 * 3 * 32 * 32},
                                                {"mnist_128x1x28x28", 128 * 28 * 28}};
  return cases;
}

// Softmax cross-entropy over [rows, cols] logits.
struct SoftmaxCase {
  const char* name;
  int64_t rows, cols;
  double bytes() const { return 4.0 * double(rows * cols) + 8.0 * double(rows); }
};

inline const std::vector<SoftmaxCase>& softmax_cases() {
  static const std::vector<SoftmaxCase> cases = {
      {"cifar10_logits_128x10", 128, 10},
      {"cifar100_logits_128x100", 128, 100},
      // Not a zoo shape: large enough to show the kernel's bandwidth rather than its latency.
      {"imagenet_head_4096x1000", 4096, 1000},
  };
  return cases;
}

// The models whose whole parameter set the SGD-step rows update.
inline const std::vector<std::string>& sgd_models() {
  static const std::vector<std::string> models = {"wong_small", "cnn7", "preact_resnet18"};
  return models;
}

// The element count of each parameter tensor of a zoo model (wong_small on MNIST, the others on
// CIFAR), in registration order. Builds the model on the CPU, so call it inside a benchmark.
inline std::vector<int64_t> parameter_sizes(const std::string& model) {
  ModelConfig cfg;
  if (model == "wong_small") cfg.in_channels = 1, cfg.height = 28, cfg.width = 28;
  std::vector<int64_t> sizes;
  for (const Tensor& p : make_model(model, cfg)->parameters()) sizes.push_back(p.numel());
  return sizes;
}

// The conv layers of the certified-training models at batch 128, for the interval rows
// (bench/interval_kernels.cpp, bench/cuda_kernels.cpp): ibp_large on MNIST (3x3, pad 1) and the
// IBP models' 4x4 stride-2 layers (wong_small's).
inline const std::vector<ConvLayer>& interval_conv_layers() {
  constexpr int64_t n = 128;
  static const std::vector<ConvLayer> layers = {
      {"wong_small_conv1_1x28x28_to_16", conv_shape(n, 1, 28, 16, 4, 2, 1), true},
      {"wong_small_conv2_16x14x14_to_32", conv_shape(n, 16, 14, 32, 4, 2, 1), true},
      {"ibp_large_conv2_64x28x28_to_64", conv_shape(n, 64, 28, 64, 3, 1, 1), true},
      {"ibp_large_conv3_64x28x28_to_128_s2", conv_shape(n, 64, 28, 128, 3, 2, 1), true},
  };
  return layers;
}

}  // namespace bulwark::bench

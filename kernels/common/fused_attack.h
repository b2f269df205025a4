#pragma once
// The whole PGD attack on a small feed-forward network as one kernel: the network's description
// and the per-element bodies that the CPU reference (kernels/cpu/attack.cpp) and the CUDA kernel
// (kernels/cuda/attack.cu) both run, in the same order, so the two give the same bits.
//
// A network here is a chain of layers, each of which reads one sample's input and writes one
// sample's output, with an optional ReLU fused on its output:
//
//   normalize  out[c, p] = (in[c, p] - mean[c]) / std[c]
//   conv       out[co, oy, ox] = b[co] + sum_{ci, ky, kx} W[co, ci, ky, kx] in[ci, oy s - p + ky, ox s - p + kx]
//              (square kernel k, stride s, zero padding p)
//   linear     out[j] = b[j] + sum_i W[j, i] in[i]      (a Flatten before it is free: the layout is the same)
//
// Every layer is per-sample, so one sample's attack needs no other sample: a block can carry a
// sample through every step of PGD (forward, the loss's gradient, backward to the input, the
// projected signed step) without leaving the kernel. Per step and sample, with the loss the mean
// cross-entropy over the batch (scale 1 / N):
//
//   forward      a_0 = x_adv, a_l = relu_l(layer_l(a_{l-1}))       each output element one sum
//   loss         g_L = (softmax(a_L) - onehot(y)) / N
//   backward     g_{l-1}[i] = [a_{l-1}[i] > 0 if relu_{l-1}] sum_o d layer_l[o] / d in[i] g_l[o]
//   step         x_adv <- clip_[0,1](clip_[x-eps, x+eps](x_adv + alpha sign(g_0)))  (attack_step.h)
//
// Each output element is one thread's sequential sum in a fixed order (below), so the result does
// not depend on how elements are spread over threads.
#include <cmath>
#include <cstdint>

#include "kernels/common/elementwise.h"
#include "kernels/common/hd.h"

namespace bulwark::fused {

constexpr int kMaxLayers = 16;

enum LayerKind : int { kNormalize = 0, kConv = 1, kLinear = 2 };

// One layer, with its per-sample input [in_c, in_h, in_w] and output [out_c, out_h, out_w]
// (a linear layer: [features, 1, 1]).
template <class T>
struct Layer {
  int kind = kLinear;
  int in_c = 0, in_h = 1, in_w = 1, out_c = 0, out_h = 1, out_w = 1;
  int kernel = 1, stride = 1, pad = 0;  // conv
  int relu = 0;                         // a ReLU on the output
  const T* weight = nullptr;            // conv [out_c, in_c, k, k], linear [out_c, in_c]; normalize: mean [in_c]
  const T* bias = nullptr;              // optional; normalize: std [in_c]
  int out_offset = 0;                   // where the output starts in a sample's activations

  BW_HD int in_size() const { return in_c * in_h * in_w; }
  BW_HD int out_size() const { return out_c * out_h * out_w; }
};

// The chain, and the workspace one sample needs: every layer's output (the activations the
// backward reads) and two gradient buffers as wide as the widest layer input or the logits.
template <class T>
struct Net {
  int layers = 0;
  Layer<T> layer[kMaxLayers];
  int act_size = 0;   // sum of the layers' outputs
  int grad_size = 0;  // max(widest layer input, classes)

  BW_HD int in_size() const { return layer[0].in_size(); }
  BW_HD int classes() const { return layer[layers - 1].out_size(); }
  BW_HD int workspace() const { return act_size + 2 * grad_size; }
};

// Output element o of layer L (after its ReLU) from the sample's input `in`. Summation order:
// the bias first, then ci, ky, kx (conv) or i (linear) ascending.
template <class T>
BW_HD inline T forward_at(const Layer<T>& L, const T* in, int o) {
  if (L.kind == kNormalize) {
    const int c = o / (L.in_h * L.in_w);
    return ew::relu_if((in[o] - L.weight[c]) / L.bias[c], L.relu);
  }
  if (L.kind == kLinear) {
    const T* w = L.weight + static_cast<int64_t>(o) * L.in_c;
    T acc = L.bias ? L.bias[o] : T(0);
    for (int i = 0; i < L.in_c; ++i) acc += w[i] * in[i];
    return ew::relu_if(acc, L.relu);
  }
  const int ox = o % L.out_w, oy = (o / L.out_w) % L.out_h, co = o / (L.out_w * L.out_h);
  const int k = L.kernel;
  T acc = L.bias ? L.bias[co] : T(0);
  for (int ci = 0; ci < L.in_c; ++ci) {
    const T* w = L.weight + (static_cast<int64_t>(co) * L.in_c + ci) * k * k;
    const T* plane = in + ci * L.in_h * L.in_w;
    for (int ky = 0; ky < k; ++ky) {
      const int iy = oy * L.stride - L.pad + ky;
      if (iy < 0 || iy >= L.in_h) continue;
      for (int kx = 0; kx < k; ++kx) {
        const int ix = ox * L.stride - L.pad + kx;
        if (ix >= 0 && ix < L.in_w) acc += w[ky * k + kx] * plane[iy * L.in_w + ix];
      }
    }
  }
  return ew::relu_if(acc, L.relu);
}

// d loss / d in[i] of layer L, given g = d loss / d (L's output before its ReLU). Summation
// order: o ascending (linear), co, ky, kx ascending (conv). The caller applies the ReLU of the
// layer before (whose output `in` is).
template <class T>
BW_HD inline T backward_at(const Layer<T>& L, const T* g, int i) {
  if (L.kind == kNormalize) return g[i] / L.bias[i / (L.in_h * L.in_w)];
  if (L.kind == kLinear) {
    T acc = T(0);
    for (int o = 0; o < L.out_c; ++o) acc += L.weight[static_cast<int64_t>(o) * L.in_c + i] * g[o];
    return acc;
  }
  const int ix = i % L.in_w, iy = (i / L.in_w) % L.in_h, ci = i / (L.in_w * L.in_h);
  const int k = L.kernel, s = L.stride;
  T acc = T(0);
  for (int co = 0; co < L.out_c; ++co) {
    const T* w = L.weight + (static_cast<int64_t>(co) * L.in_c + ci) * k * k;
    const T* plane = g + co * L.out_h * L.out_w;
    for (int ky = 0; ky < k; ++ky) {
      const int ty = iy + L.pad - ky;  // = oy * s
      if (ty < 0 || ty % s != 0 || ty / s >= L.out_h) continue;
      for (int kx = 0; kx < k; ++kx) {
        const int tx = ix + L.pad - kx;
        if (tx >= 0 && tx % s == 0 && tx / s < L.out_w) acc += w[ky * k + kx] * plane[(ty / s) * L.out_w + tx / s];
      }
    }
  }
  return acc;
}

// The gradient of the sample's mean-reduced cross-entropy at logits z[0..K): (softmax(z) -
// onehot(y)) * scale, written to g. A label outside [0, K) contributes no one-hot (the caller's
// index check reports it). One thread.
template <class T>
BW_HD inline void cross_entropy_grad(const T* z, int K, int y, T scale, T* g) {
  T m = z[0];
  for (int j = 1; j < K; ++j) m = z[j] > m ? z[j] : m;
  T total = T(0);
  for (int j = 0; j < K; ++j) total += std::exp(z[j] - m);
  for (int j = 0; j < K; ++j) g[j] = (std::exp(z[j] - m) / total - T(j == y ? 1 : 0)) * scale;
}

// FLOPs of one layer's forward and of its input gradient, per sample (the cost model's counts).
template <class T>
BW_HD inline double forward_flops(const Layer<T>& L) {
  if (L.kind == kNormalize) return 2.0 * L.out_size();
  const double macs = L.kind == kLinear ? double(L.in_c) * L.out_c
                                        : double(L.out_size()) * L.in_c * L.kernel * L.kernel;
  return 2.0 * macs + (L.relu ? L.out_size() : 0);
}

}  // namespace bulwark::fused

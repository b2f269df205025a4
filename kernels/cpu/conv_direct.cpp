// Direct convolution on the CPU (f32): the implicit GEMM of kernels/cuda/conv.cu, CPU-shaped.
//
//   y[co, oy, ox] = sum_{ci, ki, kj} W[co, ci, ki, kj] * xpad[ci, oy*S + ki, ox*S + kj]
//
// FLOPs 2 * Cout * (Cin KH KW) * (OH OW) per sample, as the im2col + GEMM path (conv.cpp).
//
// Why: for small images the im2col path spends as long building its column matrix as the
// GEMM spends on it. wong_small's conv2 (16x14x14 -> 32, 4x4 stride 2) has a K = 256 column
// per output pixel: the gather costs ~1 cycle per column entry, the GEMM ~1 cycle per entry
// too, and OpenBLAS's kernel for a 32-row C runs at half its peak. Reading the padded input in
// place removes the gather and the packing: each tap's input value is broadcast from memory
// into a fused multiply-add against a vector of 16 output channels' weights.
//
// The micro-kernel keeps a tile of R output rows x TW output columns x NV vectors of 16
// output channels in registers (NV * TW * R <= 28 of AVX-512's 32 vector registers; two hold
// the weights): per tap, NV weight loads and R * TW broadcasts feed NV * R * TW FMAs. The tile
// lands in a [pixel][channel] buffer that the epilogue (bias, ReLU) transposes into NCHW; with
// K = Cin KH KW taps per output that transposition is one store per K FMAs.
//
// Backward-input is a correlation too: of the output gradient with the flipped, transposed
// weights. For stride 1 that is the same kernel with Cin and Cout exchanged and the padding
// KH - 1 - pad. For stride 2 the input pixels fall into 2 x 2 parity classes; the pixels of
// one class receive only the taps ki = ki0 (mod 2), kj = kj0 (mod 2), so each class is a
// stride-1 correlation of g with a ceil(KH/2) x ceil(KW/2) sub-kernel, written to every second
// pixel of dx. (The im2col path computes W^T g into a column buffer and scatters it back.)
//
// Backward-weight turns the tile around: its pixels are the taps of one input channel, its
// vectors output channels, and it reduces over the output pixels of a group of samples
// (backward_weight_as).
//
// Measured on the 2-core development VM (2 threads, batch 128), wong_small conv2 forward:
// im2col + OpenBLAS 84 GFLOP/s, this kernel 151 GFLOP/s (docs/bench.md has every shape).
//
// The micro-kernel, its FP32 and BF16 arithmetic and its dispatch table are in tile_kernel.h.
#include "kernels/cpu/conv_direct.h"

#include <omp.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <vector>

#include "kernels/common/elementwise.h"
#include "kernels/cpu/cpu_kernels.h"
#include "kernels/cpu/tile_kernel.h"

namespace bulwark::cpu::direct {

namespace {
using namespace tile;
constexpr double kParallelFlops = 2e6;  // as conv.cpp: smaller convolutions run on one thread

// One correlation of the padded sample with packed weights: the forward pass, or one parity
// class of a backward-input pass.
template <class A>
struct Plan {
  int64_t taps = 0;               // K = words of input channels * kh * kw
  int64_t kh = 0, kw = 0;
  int64_t oh = 0, ow = 0;         // this correlation's outputs
  int64_t origin = 0;             // offset in the padded sample of this correlation's (0, 0)
  int64_t ystep = 1, y0 = 0;      // output (oy, ox) goes to destination pixel
  int64_t xstep = 1, x0 = 0;      //   (oy * ystep + y0, ox * xstep + x0)
  std::vector<typename A::Word> wt;  // [K][cout_pad]
  std::vector<int32_t> koff;         // [K] offsets of the taps in the padded sample
};

// The padded sample: [cin / kChannels, hp, wp] words, the input at rows [top, top + h),
// columns [left, left + w).
struct Padding {
  int64_t cin, h, w, hp, wp, top, left;
  bool operator==(const Padding&) const = default;
};

template <class A>
struct Job {
  Padding pad;
  int64_t cout, cout_pad, stride;
  int64_t dst_h, dst_w;  // the destination planes
  const Plan<A>* plans;
  int nplans;
};

// Words in a padded sample: [cin / kChannels, hp, wp].
template <class A>
int64_t padded_words(const Padding& p) {
  return (p.cin + A::kChannels - 1) / A::kChannels * p.hp * p.wp;
}

// Sample `src` into `out`, its padded copy: [cin / kChannels, hp, wp] words. Bf16 pairs
// channels 2c and 2c + 1 in one word (an odd last channel pairs with a zero). The border is
// written only when `border` is set: the interior is all that differs between samples.
template <class A>
void pad_sample(const Padding& p, const float* src, typename A::Word* out, bool border) {
  const int64_t planes = (p.cin + A::kChannels - 1) / A::kChannels;
  if (border) std::fill(out, out + padded_words<A>(p), typename A::Word{});
  const int64_t rows = std::min(p.h, p.hp - p.top), cols = std::min(p.w, p.wp - p.left);
  for (int64_t c = 0; c < planes; ++c)
    for (int64_t i = 0; i < rows; ++i) {
      typename A::Word* row = out + (c * p.hp + p.top + i) * p.wp + p.left;
      if constexpr (A::kChannels == 1) {
        std::memcpy(row, src + (c * p.h + i) * p.w, sizeof(float) * cols);
      } else {
        const float* a = src + (2 * c * p.h + i) * p.w;
        const float* b = 2 * c + 1 < p.cin ? a + p.h * p.w : nullptr;
        for (int64_t j = 0; j < cols; ++j) {
          const float pair[2] = {a[j], b ? b[j] : 0.0f};
          row[j] = A::pack(pair);
        }
      }
    }
}

// The padded copy of sample `src`, in a buffer of the calling thread, whose border is zeroed
// only when the geometry changes.
template <class A>
const typename A::Word* padded_sample(const Padding& p, const float* src) {
  thread_local std::vector<typename A::Word> buf;
  thread_local Padding last{};
  const size_t size = static_cast<size_t>(padded_words<A>(p));
  if (buf.size() < size) buf.resize(size);
  pad_sample<A>(p, src, buf.data(), !(last == p));
  last = p;
  return buf.data();
}

float* tile_buffer(size_t n) {
  thread_local std::vector<float> buf;
  if (buf.size() < n) buf.resize(n);
  return buf.data();
}

// Covers a rows x cols grid with tiles for nv channel vectors: columns in balanced chunks of at
// most kMaxTileWidth, rows in groups that keep nv * width * rows <= kMaxAccumulators; calls
// tile(row0, col0, rows, width) for each.
template <class F>
void for_each_tile(int64_t rows, int64_t cols, int nv, F tile) {
  const int64_t chunks = (cols + kMaxTileWidth - 1) / kMaxTileWidth;
  const int64_t base = cols / chunks, extra = cols % chunks;
  for (int64_t ch = 0, c0 = 0; ch < chunks; ++ch) {
    const int tw = static_cast<int>(base + (ch < extra ? 1 : 0));
    const int rmax = std::min(kMaxTileRows, kMaxAccumulators / (nv * tw));
    for (int64_t r0 = 0; r0 < rows; r0 += rmax) tile(r0, c0, static_cast<int>(std::min<int64_t>(rmax, rows - r0)), tw);
    c0 += tw;
  }
}

// Output block [b0, b0 + nb) of one sample through every plan of the job, into dst (the
// sample's [cout, dst_h, dst_w]); bias and ReLU in the transposing store.
template <class A>
void run_block(const Job<A>& job, const typename A::Word* xp, int64_t b0, float* dst, const float* bias, bool relu) {
  const int64_t nb = std::min<int64_t>(kBlock, job.cout - b0);
  const int nv = nb > kLanes ? 2 : 1;
  const int st = static_cast<int>(job.stride);
  const int64_t wp = job.pad.wp;
  for (int pi = 0; pi < job.nplans; ++pi) {
    const Plan<A>& plan = job.plans[pi];
    const int64_t plane = job.dst_h * job.dst_w;
    if (plan.taps == 0) {  // a parity class no tap reaches: its pixels get no gradient
      for (int64_t c = 0; c < nb; ++c)
        for (int64_t oy = 0; oy < plan.oh; ++oy)
          for (int64_t ox = 0; ox < plan.ow; ++ox)
            dst[(b0 + c) * plane + (oy * plan.ystep + plan.y0) * job.dst_w + ox * plan.xstep + plan.x0] = 0.0f;
      continue;
    }
    float* tile = tile_buffer(static_cast<size_t>(plan.oh * plan.ow * kBlock));
    const int64_t row_step = job.stride * wp;
    for_each_tile(plan.oh, plan.ow, nv, [&](int64_t oy, int64_t ox0, int r, int tw) {
      tiles<A>[nv - 1][st - 1][tw - 1][r - 1](xp + plan.origin + oy * row_step + ox0 * job.stride, row_step,
                                              plan.koff.data(), plan.taps, plan.wt.data() + b0, job.cout_pad,
                                              tile + (oy * plan.ow + ox0) * kBlock, plan.ow);
    });
    for (int64_t c = 0; c < nb; ++c) {
      const float b = bias ? bias[b0 + c] : 0.0f;
      float* out = dst + (b0 + c) * plane;
      for (int64_t oy = 0; oy < plan.oh; ++oy) {
        float* row = out + (oy * plan.ystep + plan.y0) * job.dst_w + plan.x0;
        const float* in = tile + oy * plan.ow * kBlock + c;
        for (int64_t ox = 0; ox < plan.ow; ++ox) {
          const float v = in[ox * kBlock];
          row[ox * plan.xstep] = ew::relu_if(bias ? v + b : v, relu);
        }
      }
    }
  }
}

// Every (sample, channel block) item through run_block, in one of two orders. Sample-major:
// each thread pads a sample and runs its blocks, so a sample's padded input X stays in L2 and
// the packed weights W are read once per sample, from L2 while they fit in half of it, from
// memory above that. Block-major: the batch is padded once into a shared buffer and a
// thread's run of items shares one block's weights (W / blocks) across the samples, while the
// input is read once per block. So block-major reads blocks x X a sample where sample-major
// reads W; it is taken where W is past half of L2 and more than twice blocks x X (the factor
// pays for writing the padded batch out): ResNet-18's layer 3 and 4 convolutions (BF16 layer
// 4: W 4.7 MB, blocks x X 590 KB; forward 51 -> 46 ms, backward-input 44 -> 31 ms), not
// layer3.0's conv1 (590 KB each way, even).
constexpr int64_t kL2WeightBytes = 512 * 1024;

template <class A>
void run(const Job<A>& job, int64_t n, const float* src, int64_t src_size, float* dst, const float* bias, bool relu,
         double flops) {
  const int64_t blocks = (job.cout + kBlock - 1) / kBlock, items = n * blocks;
  const int64_t dst_size = job.cout * job.dst_h * job.dst_w;
  const bool parallel = items > 1 && flops >= kParallelFlops;
  const int64_t sample_words = padded_words<A>(job.pad);
  const int64_t word = sizeof(typename A::Word);
  int64_t weight_bytes = 0;
  for (int pi = 0; pi < job.nplans; ++pi) weight_bytes += job.plans[pi].taps * job.cout_pad * word;
  if (weight_bytes <= kL2WeightBytes || weight_bytes <= 2 * blocks * sample_words * word) {
#pragma omp parallel for schedule(static) if (parallel)
    for (int64_t it = 0; it < items; ++it) {
      const int64_t s = it / blocks, b = it % blocks;
      const typename A::Word* xp = padded_sample<A>(job.pad, src + s * src_size);
      run_block(job, xp, b * kBlock, dst + s * dst_size, bias, relu);
    }
    return;
  }
  thread_local std::vector<typename A::Word> batch;
  batch.resize(static_cast<size_t>(n * sample_words));
  typename A::Word* xb = batch.data();
#pragma omp parallel if (parallel)
  {
#pragma omp for schedule(static)
    for (int64_t s = 0; s < n; ++s) pad_sample<A>(job.pad, src + s * src_size, xb + s * sample_words, true);
#pragma omp for schedule(static)
    for (int64_t it = 0; it < items; ++it) {
      const int64_t b = it / n, s = it % n;
      run_block(job, xb + s * sample_words, b * kBlock, dst + s * dst_size, bias, relu);
    }
  }
}

int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

// Sizes the plan for `cin` input channels and a kh x kw window: the tap offsets (taps ordered
// (channel word, ki, kj)).
template <class A>
void shape_plan(Plan<A>& plan, const Padding& p, int64_t kh, int64_t kw) {
  const int64_t words = (p.cin + A::kChannels - 1) / A::kChannels;
  plan.kh = kh, plan.kw = kw;
  plan.taps = words * kh * kw;
  plan.koff.resize(static_cast<size_t>(plan.taps));
  for (int64_t c = 0; c < words; ++c)
    for (int64_t i = 0; i < kh; ++i)
      for (int64_t j = 0; j < kw; ++j)
        plan.koff[static_cast<size_t>((c * kh + i) * kw + j)] = static_cast<int32_t>((c * p.hp + i) * p.wp + j);
}
// The packed weights wt[tap][co]: each word holds weight(ci, i, j, co) of its tap's kChannels
// input channels ci (0 past cin or cout). Written tap by tap, over the threads: ResNet-18's
// layer 4 packs 2.4 M weights a call, 10 ms on one thread as a scatter through a staging copy.
template <class A, class F>
void pack_plan(Plan<A>& plan, int64_t cin, int64_t cout, int64_t cout_pad, F weight) {
  plan.wt.resize(static_cast<size_t>(plan.taps * cout_pad));
  const int64_t kk = plan.kh * plan.kw;
  typename A::Word* wt = plan.wt.data();
#pragma omp parallel for schedule(static) if (plan.taps * cout_pad >= (int64_t{1} << 16))
  for (int64_t t = 0; t < plan.taps; ++t) {
    const int64_t word = t / kk, i = t % kk / plan.kw, j = t % plan.kw;
    for (int64_t co = 0; co < cout_pad; ++co) {
      float v[A::kChannels];
      for (int64_t k = 0; k < A::kChannels; ++k) {
        const int64_t ci = word * A::kChannels + k;
        v[k] = ci < cin && co < cout ? weight(ci, i, j, co) : 0.0f;
      }
      wt[t * cout_pad + co] = A::pack(v);
    }
  }
}

// A stride-2 backward-input's parity class along one axis: output pixels i = 2 a + parity
// receive taps k = k0 + 2 m (m < taps); a runs over [0, count); the tap with m reads g at
// a + shift - m, so the flipped sub-kernel (m' = taps - 1 - m) reads g at a + m' - pad with
// pad = taps - 1 - shift.
struct ClassAxis {
  int64_t k0, taps, count, pad;
};
ClassAxis class_axis(int64_t parity, int64_t pad, int64_t kernel, int64_t size, int64_t stride) {
  const int64_t k0 = (parity + pad) % stride;
  const int64_t taps = k0 < kernel ? (kernel - k0 + stride - 1) / stride : 0;
  const int64_t shift = (parity + pad - k0) / stride;
  const int64_t count = size > parity ? (size - parity + stride - 1) / stride : 0;
  return {k0, taps, count, taps - 1 - shift};
}

bool supported_stride(const ConvShape& s) { return s.stride == 1 || s.stride == 2; }

// Where the automatic choice takes the direct kernels. Measured per zoo shape (docs/bench.md,
// `bulwark-bench kernels`, rows .../im2col, .../direct and .../direct_bf16): they win where every
// output has many taps and each sample many outputs: wong_small conv2 (K = 256, 7x7 outputs)
// 1.6x forward, cnn7 conv2-4 and ResNet-18 layer 3 1.1-1.6x. They lose where K is small (cnn7's
// conv1, K = 27; the 1x1 shortcuts): the transposing store, one per K FMAs, then costs as much
// as the FMAs; and, in FP32, on 4x4 outputs (ResNet-18 layer 4), where a tile of 8 pixels
// streams a 590 KB weight block from L2 for 8 x 32 outputs. In BF16 the block is half the size
// and the im2col path pays for rounding copies, so the direct kernel wins there too.
// Backward-weight reduces over a group of samples, so the map's size does not matter to it:
// it takes every shape with many taps (ResNet-18 layer 4 in FP32: 96 -> 190 GFLOP/s).
constexpr int64_t kMinTaps = 144;    // C KH KW
constexpr int64_t kMinOutputs = 36;  // OH OW per sample, in FP32
bool many_taps(const ConvShape& s) { return s.kh * s.kw > 1 && s.c * s.kh * s.kw >= kMinTaps; }
bool wins(const ConvShape& s) {
  if (conv_algorithm() == ConvAlgorithm::direct) return true;
  const bool fp32 = math_precision() == MathPrecision::fp32;
  return many_taps(s) && (!fp32 || s.oh * s.ow >= kMinOutputs);
}

// The precisions the kernels compute: fp32 always, bf16 where the compiler targets AVX512-BF16
// (-march=native on such a CPU); elsewhere, and for tf32, the im2col path rounds the GEMM's
// operands instead.
bool has_arithmetic(MathPrecision p) {
#if defined(__AVX512BF16__)
  if (p == MathPrecision::bf16) return true;
#endif
  return p == MathPrecision::fp32;
}

template <class A>
void forward_as(const ConvShape& s, const float* x, const float* w, const float* bias, float* y, bool relu) {
  thread_local Plan<A> plan;
  Job<A> job{};
  job.pad = {s.c, s.h, s.w, std::max(s.h + s.pad, (s.oh - 1) * s.stride + s.kh),
             std::max(s.w + s.pad, (s.ow - 1) * s.stride + s.kw), s.pad, s.pad};
  job.cout = s.o;
  job.cout_pad = round_up(s.o, kLanes);
  job.stride = s.stride;
  job.dst_h = s.oh;
  job.dst_w = s.ow;
  plan.oh = s.oh;
  plan.ow = s.ow;
  plan.origin = 0;
  plan.ystep = plan.xstep = 1;
  plan.y0 = plan.x0 = 0;
  shape_plan(plan, job.pad, s.kh, s.kw);
  pack_plan(plan, s.c, s.o, job.cout_pad,
            [&](int64_t c, int64_t i, int64_t j, int64_t o) { return w[((o * s.c + c) * s.kh + i) * s.kw + j]; });
  job.plans = &plan;
  job.nplans = 1;
  run(job, s.n, x, s.c * s.h * s.w, y, bias, relu, conv_flops(s));
}

// dx = the correlation of g [O, OH, OW] with W flipped and transposed, class by class: for
// stride 1 one class, the whole of dx; for stride 2 four, each a quarter of dx's pixels.
template <class A>
void backward_input_as(const ConvShape& s, const float* g, const float* w, float* dx) {
  thread_local std::array<Plan<A>, 4> plans;
  const int64_t cout_pad = round_up(s.c, kLanes);
  ClassAxis ys[2], xs[2];
  int64_t top = 0, left = 0;
  for (int64_t parity = 0; parity < s.stride; ++parity) {
    ys[parity] = class_axis(parity, s.pad, s.kh, s.h, s.stride);
    xs[parity] = class_axis(parity, s.pad, s.kw, s.w, s.stride);
    top = std::max(top, ys[parity].pad);
    left = std::max(left, xs[parity].pad);
  }
  // The padded g holds every class's window: class (py, px) reads rows [top - pad_y, top -
  // pad_y + count_y + taps_y - 1) of it.
  int64_t hp = top + s.oh, wp = left + s.ow;
  for (int64_t p = 0; p < s.stride; ++p) {
    hp = std::max(hp, top - ys[p].pad + ys[p].count + ys[p].taps - 1);
    wp = std::max(wp, left - xs[p].pad + xs[p].count + xs[p].taps - 1);
  }
  Job<A> job{};
  job.pad = {s.o, s.oh, s.ow, hp, wp, top, left};
  job.cout = s.c;
  job.cout_pad = cout_pad;
  job.stride = 1;
  job.dst_h = s.h;
  job.dst_w = s.w;
  int np = 0;
  for (int64_t py = 0; py < s.stride; ++py)
    for (int64_t px = 0; px < s.stride; ++px) {
      const ClassAxis& ay = ys[py];
      const ClassAxis& ax = xs[px];
      Plan<A>& plan = plans[static_cast<size_t>(np++)];
      plan.oh = ay.count;
      plan.ow = ax.count;
      plan.ystep = plan.xstep = s.stride;
      plan.y0 = py;
      plan.x0 = px;
      if (ay.taps == 0 || ax.taps == 0) {
        plan.taps = 0;
        continue;
      }
      plan.origin = (top - ay.pad) * wp + (left - ax.pad);
      shape_plan(plan, job.pad, ay.taps, ax.taps);
      // tap (o, m', n') of the class: W[o, c, k0y + stride (taps_y - 1 - m'), k0x + stride (taps_x - 1 - n')]
      pack_plan(plan, s.o, s.c, cout_pad, [&](int64_t o, int64_t m, int64_t n, int64_t c) {
        const int64_t ki = ay.k0 + s.stride * (ay.taps - 1 - m), kj = ax.k0 + s.stride * (ax.taps - 1 - n);
        return w[((o * s.c + c) * s.kh + ki) * s.kw + kj];
      });
    }
  job.plans = plans.data();
  job.nplans = np;
  run(job, s.n, g, s.o * s.oh * s.ow, dx, nullptr, false, conv_flops(s));
}

// dW[o, c, ki, kj] = sum_n sum_p g[n, o, p] xpad[n, c, oy(p) S + ki, ox(p) S + kj].
//
// The same tile with the roles turned: the tile's pixels are the taps (ki rows x kj columns of
// one input channel), its vectors 16 output channels, and its reduction runs over the output
// pixels p of a group of samples: per pixel, NV vectors of g (g transposed to [p][o]) and one
// broadcast per tap, read from the pixel's padded sample at its window (koff[p]).
//
// The group is what makes small maps pay: a 4x4 map (ResNet-18's layer 4) has 16 pixels a
// sample, so a tile reduced over one sample did 16 steps and then an add per accumulator (the
// first version: 43-59 GFLOP/s). A group holds samples up to kGroupPixels reduction steps, so
// every tile runs thousands of steps; its g block (kGroupPixels x 32 channels, 512 KB) stays in
// L2 while the tile walks the input channels. Each work item, (channel block, input channel),
// owns its dW entries and adds the groups' tiles in group order, so the bits do not depend on
// the thread count; the groups are cut by the shape alone.
//
// In BF16 a word pairs two output pixels of a row, (ox, ox + 1), the reduction's unit: g's
// words hold g at both (the second 0 past an odd row's end), and the input's words the
// padded sample at x and x + S, the two pixels' reads of one tap (each value paired with its
// S-th right neighbour).
constexpr int64_t kGroupPixels = 4096;  // reduction steps (words of g) per group of samples

// Samples per group for `units` reduction steps a sample, within int32 tap offsets.
int64_t samples_per_group(int64_t units, int64_t sample_words, int64_t n) {
  const int64_t by_offsets = std::max<int64_t>(1, (int64_t{1} << 30) / std::max<int64_t>(sample_words, 1));
  return std::clamp<int64_t>(kGroupPixels / std::max<int64_t>(units, 1), 1, std::max<int64_t>(std::min(n, by_offsets), 1));
}

template <class A>
void backward_weight_as(const ConvShape& s, const float* x, const float* g, float* dw) {
  using Word = typename A::Word;
  constexpr int64_t kPixels = A::kChannels;  // output pixels per word
  const int64_t L = s.oh * s.ow, K = s.c * s.kh * s.kw;  // s.n > 0 (takes_backward_weight)
  const int64_t pairs_per_row = (s.ow + kPixels - 1) / kPixels, units = s.oh * pairs_per_row;
  const int64_t opad = round_up(s.o, kLanes), blocks = (s.o + kBlock - 1) / kBlock;
  const Padding pad{s.c, s.h, s.w, std::max(s.h + s.pad, (s.oh - 1) * s.stride + s.kh),
                    std::max(s.w + s.pad, (s.ow - 1) * s.stride + s.kw), s.pad, s.pad};
  const int64_t plane = pad.hp * pad.wp, sample_words = s.c * plane;
  const int64_t group = samples_per_group(units, sample_words, s.n);
  thread_local std::vector<int32_t> koff;
  thread_local std::vector<Word> xg, gt;  // the group's padded samples; its g as [unit][opad]
  koff.resize(static_cast<size_t>(group * units));
  for (int64_t i = 0; i < group; ++i)
    for (int64_t oy = 0; oy < s.oh; ++oy)
      for (int64_t u = 0; u < pairs_per_row; ++u)
        koff[static_cast<size_t>((i * s.oh + oy) * pairs_per_row + u)] =
            static_cast<int32_t>(i * sample_words + oy * s.stride * pad.wp + u * kPixels * s.stride);
  xg.resize(static_cast<size_t>(group * sample_words));
  gt.resize(static_cast<size_t>(group * units * opad));
  const int32_t* offsets = koff.data();
  Word* xw = xg.data();
  Word* gw = gt.data();
  const int64_t items = blocks * s.c;
#pragma omp parallel if (items > 1 && conv_flops(s) >= kParallelFlops)
  for (int64_t n0 = 0; n0 < s.n; n0 += group) {
    const int64_t gs = std::min(group, s.n - n0);
    // The group's padded input planes (sample, channel); in BF16 each value paired with the
    // one S columns to its right, built from a zero-padded row.
#pragma omp for schedule(static) nowait
    for (int64_t i = 0; i < gs * s.c; ++i) {
      const float* src = x + n0 * s.c * s.h * s.w + i * s.h * s.w;
      Word* out = xw + i * plane;
      thread_local std::vector<float> padded_row;
      padded_row.assign(static_cast<size_t>(pad.wp + s.stride), 0.0f);
      float* row = padded_row.data();
      for (int64_t r = 0; r < pad.hp; ++r, out += pad.wp) {
        const int64_t y = r - pad.top;
        if (y < 0 || y >= s.h) {
          std::fill(out, out + pad.wp, Word{});
          continue;
        }
        std::copy(src + y * s.w, src + (y + 1) * s.w, row + pad.left);
        for (int64_t j = 0; j < pad.wp; ++j) {
          const float v[2] = {row[j], row[j + s.stride]};
          out[j] = A::pack(v);
        }
      }
    }
    // g transposed to [unit][opad], a unit's kPixels pixels of a row packed in one word; read
    // plane by plane (16 channels of a sample per item, contiguous in g), written across the
    // rows of the transposition.
#pragma omp for schedule(static)
    for (int64_t i = 0; i < gs * (opad / kLanes); ++i) {
      const int64_t sample = i / (opad / kLanes), o0 = i % (opad / kLanes) * kLanes;
      const float* gn = g + (n0 + sample) * s.o * L;
      Word* rows = gw + sample * units * opad;
      for (int64_t o = o0; o < o0 + kLanes; ++o)
        for (int64_t oy = 0; oy < s.oh; ++oy)
          for (int64_t u = 0; u < pairs_per_row; ++u) {
            float v[kPixels];
            for (int64_t k = 0; k < kPixels; ++k) {
              const int64_t ox = u * kPixels + k;
              v[k] = o < s.o && ox < s.ow ? gn[o * L + oy * s.ow + ox] : 0.0f;
            }
            rows[(oy * pairs_per_row + u) * opad + o] = A::pack(v);
          }
    }
    // Each item's tiles, reduced over the group's units and added into its own dW entries.
#pragma omp for schedule(static)
    for (int64_t it = 0; it < items; ++it) {
      const int64_t b0 = it / s.c * kBlock, c = it % s.c, nb = std::min<int64_t>(kBlock, s.o - b0);
      const int nv = nb > kLanes ? 2 : 1;
      float* tile = tile_buffer(static_cast<size_t>(kMaxAccumulators * kBlock));
      for_each_tile(s.kh, s.kw, nv, [&](int64_t ki0, int64_t kj0, int r, int tw) {
        tiles<A>[nv - 1][0][tw - 1][r - 1](xw + (c * pad.hp + ki0) * pad.wp + kj0, pad.wp, offsets, gs * units,
                                           gw + b0, opad, tile, tw);
        for (int64_t o = 0; o < nb; ++o)
          for (int64_t i = 0; i < r; ++i)
            for (int64_t j = 0; j < tw; ++j) {
              float& d = dw[(b0 + o) * K + (c * s.kh + ki0 + i) * s.kw + kj0 + j];
              const float v = tile[(i * tw + j) * kBlock + o];
              d = n0 == 0 ? v : d + v;
            }
      });
    }
  }
}

// The conditions every pass shares: a precision the kernels compute, a stride they handle,
// at least one vector of output channels.
bool applies(const ConvShape& s) {
  return conv_algorithm() != ConvAlgorithm::im2col && has_arithmetic(math_precision()) && supported_stride(s) &&
         s.o >= kLanes && s.n > 0 && s.oh > 0 && s.ow > 0;
}
}  // namespace

bool takes_forward(const ConvShape& s) { return applies(s) && wins(s); }

bool takes_backward_input(const ConvShape& s) {
  if (conv_algorithm() == ConvAlgorithm::im2col || !has_arithmetic(math_precision()) || !wins(s)) return false;
  if (!supported_stride(s) || s.c < kLanes || s.n == 0) return false;
  for (int64_t parity = 0; parity < s.stride; ++parity) {  // every class's padding must be >= 0
    const ClassAxis y = class_axis(parity, s.pad, s.kh, s.h, s.stride), x = class_axis(parity, s.pad, s.kw, s.w, s.stride);
    if ((y.taps > 0 && y.pad < 0) || (x.taps > 0 && x.pad < 0)) return false;
  }
  return true;
}

void forward(const ConvShape& s, const float* x, const float* w, const float* bias, float* y, bool relu) {
#if defined(__AVX512BF16__)
  if (math_precision() == MathPrecision::bf16) return forward_as<Bf16>(s, x, w, bias, y, relu);
#endif
  forward_as<Fp32>(s, x, w, bias, y, relu);
}

bool takes_backward_weight(const ConvShape& s) {
  return applies(s) && (conv_algorithm() == ConvAlgorithm::direct || many_taps(s));
}

void backward_weight(const ConvShape& s, const float* x, const float* g, float* dw) {
#if defined(__AVX512BF16__)
  if (math_precision() == MathPrecision::bf16) return backward_weight_as<Bf16>(s, x, g, dw);
#endif
  backward_weight_as<Fp32>(s, x, g, dw);
}

void backward_input(const ConvShape& s, const float* g, const float* w, float* dx) {
#if defined(__AVX512BF16__)
  if (math_precision() == MathPrecision::bf16) return backward_input_as<Bf16>(s, g, w, dx);
#endif
  backward_input_as<Fp32>(s, g, w, dx);
}

}  // namespace bulwark::cpu::direct

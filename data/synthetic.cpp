#include "data/synthetic.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <thread>
#include <vector>

#include <fmt/format.h>

#include "data/rng_streams.h"
#include "kernels/common/philox.h"

namespace bulwark::data {

namespace {

constexpr double kPi = 3.14159265358979323846;

// The knobs that set the difficulty (measured in docs/data.md). Amplitudes are in pixel units
// before the per-sample contrast:
// a sample is background + contrast * tint * (grating + blobs + distractor) + noise.
constexpr double kGratingAmplitude = 0.5;
constexpr double kBlobAmplitude = 0.8;
constexpr int kBlobsPerClass = 3;
constexpr double kDistractorAmplitude = 0.7;
constexpr float kContrastLo = 0.15f, kContrastHi = 0.35f;
constexpr float kBackgroundLo = 0.4f, kBackgroundHi = 0.6f;
constexpr float kTintLo = 0.5f, kTintHi = 1.0f;
constexpr float kNoise = 0.25f;  // uniform in [-kNoise, kNoise], std 0.144

// A class's pattern, precomputed so a sample costs a few multiply-adds per pixel: the grating
// cos(t) and sin(t) (a random phase phi mixes them into cos(t + phi)), and the blob field on a
// canvas `shift` pixels larger on each side, so a shifted sample reads a window of it.
struct Prototype {
  std::vector<float> grating_cos, grating_sin;  // h*w
  std::vector<float> blobs;                     // (h + 2 shift) * (w + 2 shift)
};

Prototype make_prototype(uint64_t seed, int k, int num_classes, int h, int w, int shift) {
  const uint64_t base = streams::counter(streams::kSyntheticPrototype, static_cast<uint64_t>(k), 0);
  uint64_t next = 0;
  auto u = [&] { return static_cast<double>(philox::uniform(seed, base, next++)); };
  // Orientations are spread evenly over [0, pi) with jitter so classes differ in angle by at
  // least ~0.7 of the spacing; frequencies are 1.5 to 4 cycles across the image.
  const double theta = kPi * (k + 0.3 * (u() - 0.5)) / num_classes;
  const double cycles = 1.5 + 2.5 * u();
  const double scale = std::min(h, w) / 32.0;
  Prototype p;
  p.grating_cos.resize(static_cast<size_t>(h) * w);
  p.grating_sin.resize(p.grating_cos.size());
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x) {
      const double t = 2 * kPi * cycles * ((x - 0.5 * w) * std::cos(theta) + (y - 0.5 * h) * std::sin(theta)) / w;
      p.grating_cos[y * w + x] = static_cast<float>(kGratingAmplitude * std::cos(t));
      p.grating_sin[y * w + x] = static_cast<float>(kGratingAmplitude * std::sin(t));
    }
  const int ch = h + 2 * shift, cw = w + 2 * shift;
  p.blobs.assign(static_cast<size_t>(ch) * cw, 0.0f);
  for (int b = 0; b < kBlobsPerClass; ++b) {
    const double cy = h * (0.2 + 0.6 * u()) + shift, cx = w * (0.2 + 0.6 * u()) + shift;
    const double sigma = scale * (2.5 + 2.5 * u());
    const double sign = u() < 0.5 ? -1.0 : 1.0;
    for (int y = 0; y < ch; ++y)
      for (int x = 0; x < cw; ++x) {
        const double r2 = (y - cy) * (y - cy) + (x - cx) * (x - cx);
        p.blobs[y * cw + x] += static_cast<float>(sign * kBlobAmplitude * std::exp(-r2 / (2 * sigma * sigma)));
      }
  }
  return p;
}

// Sample i: words 0..13 of its stream are the per-sample parameters, words 16.. its noise
// (word 16 + k for pixel k of the NCHW image).
void render_sample(const Prototype& p, uint64_t seed, uint64_t base, int c, int h, int w, int shift, float* out) {
  auto u = [&](uint64_t j) { return philox::uniform(seed, base, j); };
  // `out` first receives the noise, then the pattern is added in place. The noise takes whole
  // Philox blocks (4 words each): it is the bulk of the generation cost.
  const int64_t size = int64_t{c} * h * w;
  for (int64_t b = 0; b < (size + 3) / 4; ++b) {
    const philox::Block block = philox::philox4x32_10(base + 4 + static_cast<uint64_t>(b), seed);
    for (int64_t j = 0; j < 4 && 4 * b + j < size; ++j)
      out[4 * b + j] = kNoise * (2.0f * philox::to_unit_float(block.v[j]) - 1.0f);
  }
  const int window = 2 * shift + 1;
  const int dy = std::min(static_cast<int>(u(0) * window), window - 1);
  const int dx = std::min(static_cast<int>(u(1) * window), window - 1);
  const double phase = 2 * kPi * u(2);
  const float cos_phi = static_cast<float>(std::cos(phase)), sin_phi = static_cast<float>(std::sin(phase));
  const float contrast = kContrastLo + (kContrastHi - kContrastLo) * u(3);
  const int cw = w + 2 * shift;
  const int64_t plane = int64_t{h} * w;
  // One distractor blob anywhere, of either sign, shared by no class: it breaks "one bright spot
  // at a fixed place" shortcuts and makes the blob detectors work for their accuracy. A
  // Gaussian is separable, so it costs h + w exponentials.
  const double ry = h * u(10), rx = w * u(11), rs = std::min(h, w) / 32.0 * (2.5 + 2.5 * u(12));
  const double ra = (u(13) < 0.5f ? -1.0 : 1.0) * kDistractorAmplitude;
  std::vector<float> along_y(h), along_x(w);
  for (int y = 0; y < h; ++y) along_y[y] = static_cast<float>(ra * std::exp(-(y - ry) * (y - ry) / (2 * rs * rs)));
  for (int x = 0; x < w; ++x) along_x[x] = static_cast<float>(std::exp(-(x - rx) * (x - rx) / (2 * rs * rs)));
  for (int ch = 0; ch < c; ++ch) {
    const float background = kBackgroundLo + (kBackgroundHi - kBackgroundLo) * u(4 + ch % 3);
    const float gain = contrast * (kTintLo + (kTintHi - kTintLo) * u(7 + ch % 3));
    float* dst = out + ch * plane;
    for (int y = 0; y < h; ++y) {
      const float* blob_row = p.blobs.data() + static_cast<int64_t>(y + dy) * cw + dx;
      for (int x = 0; x < w; ++x) {
        const int64_t k = int64_t{y} * w + x;
        const float pattern =
            cos_phi * p.grating_cos[k] - sin_phi * p.grating_sin[k] + blob_row[x] + along_y[y] * along_x[x];
        dst[k] = std::clamp(background + gain * pattern + dst[k], 0.0f, 1.0f);
      }
    }
  }
}

}  // namespace

Dataset make_synthetic_split(int64_t n, uint64_t seed, bool train, int c, int h, int w, int num_classes) {
  if (n < 0 || static_cast<uint64_t>(n) >= streams::kMaxEpoch || c < 1 || h < 4 || w < 4 || num_classes < 2)
    throw std::invalid_argument(fmt::format(
        "synthetic dataset: need 0 <= n < 2^24, c >= 1, h, w >= 4 and >= 2 classes; got n={} c={} h={} w={} "
        "classes={}", n, c, h, w, num_classes));
  const int shift = std::max(1, std::min(h, w) / 8);
  std::vector<Prototype> prototypes;
  prototypes.reserve(num_classes);
  for (int k = 0; k < num_classes; ++k) prototypes.push_back(make_prototype(seed, k, num_classes, h, w, shift));

  Dataset d;
  d.name = train ? "synthetic/train" : "synthetic/test";
  d.n = n;
  d.c = c;
  d.h = h;
  d.w = w;
  d.num_classes = num_classes;
  d.images.resize(static_cast<size_t>(n * d.sample_size()));
  d.labels.resize(static_cast<size_t>(n));
  const auto purpose = train ? streams::kSyntheticTrain : streams::kSyntheticTest;
  for (int64_t i = 0; i < n; ++i) d.labels[i] = static_cast<int32_t>(i % num_classes);
  // Sample i owns the sub-stream (purpose, i, *): its draws never depend on n or on other
  // samples, so the threads below can split the work any way and produce the same bits.
  auto render_range = [&](int64_t first, int64_t last) {
    for (int64_t i = first; i < last; ++i)
      render_sample(prototypes[d.labels[i]], seed, streams::counter(purpose, static_cast<uint64_t>(i), 0), c, h, w,
                    shift, d.images.data() + i * d.sample_size());
  };
  const int64_t threads = std::clamp<int64_t>(n / 512, 1, std::max(1u, std::thread::hardware_concurrency()));
  {
    std::vector<std::jthread> pool;  // joined at scope exit, also if starting one fails
    for (int64_t t = 1; t < threads; ++t) pool.emplace_back(render_range, n * t / threads, n * (t + 1) / threads);
    render_range(0, n / threads);
  }
  compute_channel_stats(d, d.mean, d.stdev);
  return d;
}

Dataset make_synthetic(int64_t n, uint64_t seed, int c, int h, int w, int num_classes) {
  return make_synthetic_split(n, seed, true, c, h, w, num_classes);
}

}  // namespace bulwark::data

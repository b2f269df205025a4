#include "data/augment.h"

#include <algorithm>

#include "data/rng_streams.h"
#include "kernels/common/philox.h"

namespace bulwark::data {

AugmentDraw augment_draw(const AugmentOptions& opt, uint64_t seed, int64_t epoch, int64_t index) {
  const philox::Block b = philox::philox4x32_10(streams::counter(streams::kAugment, epoch, index), seed);
  // Lemire's multiply-shift maps a 32-bit word onto [0, window) with bias < window / 2^32.
  const int pad = std::max(opt.crop_pad, 0);
  const uint64_t window = 2 * static_cast<uint64_t>(pad) + 1;
  AugmentDraw d;
  d.dy = static_cast<int>((uint64_t{b.v[0]} * window) >> 32) - pad;
  d.dx = static_cast<int>((uint64_t{b.v[1]} * window) >> 32) - pad;
  d.flip = opt.flip && (b.v[2] & 1u);
  return d;
}

void augment_image(const float* src, float* dst, int c, int h, int w, const AugmentDraw& draw) {
  // Crop then flip, the order of torchvision's RandomCrop + RandomHorizontalFlip. Rows are
  // copied as contiguous runs, so this costs about a memcpy per image.
  for (int ch = 0; ch < c; ++ch) {
    const float* plane = src + static_cast<int64_t>(ch) * h * w;
    float* out = dst + static_cast<int64_t>(ch) * h * w;
    for (int y = 0; y < h; ++y) {
      float* row = out + static_cast<int64_t>(y) * w;
      const int sy = y + draw.dy;
      if (sy < 0 || sy >= h) {
        std::fill(row, row + w, 0.0f);
        continue;
      }
      const float* in = plane + static_cast<int64_t>(sy) * w;
      // Crop: row[x] = in[x + dx] for x + dx in [0, w).
      const int lo = std::clamp(-draw.dx, 0, w), hi = std::clamp(w - draw.dx, 0, w);
      std::fill(row, row + lo, 0.0f);
      std::copy(in + lo + draw.dx, in + hi + draw.dx, row + lo);
      std::fill(row + hi, row + w, 0.0f);
      if (draw.flip) std::reverse(row, row + w);
    }
  }
}

}  // namespace bulwark::data

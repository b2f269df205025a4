#pragma once
// The standard CIFAR augmentation: random crop with zero padding, then random horizontal flip.
//
// Each sample's randomness is one Philox block keyed by (seed, epoch, dataset index), so an
// augmented batch is the same whichever thread builds it, whatever the batch size or the shuffle
// order, and a resumed run re-creates it exactly.
#include <cstdint>

namespace bulwark::data {

struct AugmentOptions {
  int crop_pad = 0;   // pad each side with p zeros, then crop a random h x w window (CIFAR: 4)
  bool flip = false;  // mirror left-right with probability 1/2
  bool active() const { return crop_pad > 0 || flip; }
};

// The random choices for one sample: the crop window's shift against the original image, and
// the flip. Output pixel (y, x) is input (y + dy, x + dx) before the flip, zero outside.
struct AugmentDraw {
  int dy = 0, dx = 0;  // each in [-crop_pad, crop_pad]; (0, 0) is the identity crop
  bool flip = false;
};
AugmentDraw augment_draw(const AugmentOptions& opt, uint64_t seed, int64_t epoch, int64_t index);

// dst = augment(src) for one c x h x w image; src and dst must not overlap.
void augment_image(const float* src, float* dst, int c, int h, int w, const AugmentDraw& draw);

}  // namespace bulwark::data

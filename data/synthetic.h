#pragma once
// An embedded, generated image-classification dataset, so trainers and tests run anywhere.
//
// Each class is a spatial pattern drawn from the dataset seed: an oriented sinusoidal grating
// (class-specific angle and frequency) plus a few bright and dark Gaussian blobs at
// class-specific places. A sample shows its class pattern with a random grating phase, a random
// blob shift of up to +-4 pixels, a random contrast, a random background colour and pattern
// tint (neither carries the class), and uniform pixel noise. The class lives only in spatial
// structure, so a CNN must learn oriented and blob detectors: it learns to high accuracy
// in a short CPU run but, as on natural images, small L-inf perturbations fool a standard model,
// which is what adversarial training has to fix. See docs/data.md for the measured difficulty.
//
// Determinism: class prototypes come from Philox keyed by the seed; sample i of a split from its
// own Philox sub-stream (train and test use different ones), so the dataset is a pure function
// of (n, seed, split, shape) and the first m samples do not depend on n. Labels are i mod
// num_classes (exactly balanced); the loader shuffles.
#include <cstdint>

#include "data/dataset.h"

namespace bulwark::data {

// The training split of the dataset defined by `seed`. Stats are computed from the images.
Dataset make_synthetic(int64_t n, uint64_t seed, int c = 3, int h = 32, int w = 32, int num_classes = 10);

// The train or test split of the dataset defined by `seed`: same class prototypes, disjoint
// sample streams. make_synthetic(n, seed) == make_synthetic_split(n, seed, true).
Dataset make_synthetic_split(int64_t n, uint64_t seed, bool train, int c = 3, int h = 32, int w = 32,
                             int num_classes = 10);

}  // namespace bulwark::data

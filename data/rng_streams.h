#pragma once
// The Philox streams of data/, in one place so none can overlap.
//
// A stream is philox(key = seed, counter). The counter's top byte names the purpose, the next
// 24 bits an epoch (or split), the low 32 bits the position inside it: datasets up to 2^32
// samples and 2^24 epochs, checked where the streams are used.
#include <cstdint>

namespace bulwark::data::streams {

enum Purpose : uint64_t {
  kShuffle = 1,            // Fisher-Yates words for an epoch's permutation
  kAugment = 2,            // one block per sample per epoch
  kSyntheticPrototype = 3, // class prototypes (split = class)
  kSyntheticTrain = 4,     // per-sample draws of the training split
  kSyntheticTest = 5,      // per-sample draws of the test split
};

constexpr uint64_t kMaxEpoch = uint64_t{1} << 24;
constexpr uint64_t kMaxIndex = uint64_t{1} << 32;

constexpr uint64_t counter(Purpose purpose, uint64_t epoch, uint64_t index) {
  return uint64_t{purpose} << 56 | (epoch & (kMaxEpoch - 1)) << 32 | (index & (kMaxIndex - 1));
}

}  // namespace bulwark::data::streams

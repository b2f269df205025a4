#pragma once
// Seeded random tensors on top of Philox4x32-10 (kernels/common/philox.h).
//
// A Generator is a Philox stream: a key (the seed) and a counter offset. Every draw reads the
// stream from the current offset and then advances the offset by the counters it consumed, so
// (seed, offset) fully determines the next draws. Trainers save the offset in their checkpoints
// and restore it with set_offset() to resume bit for bit.
//
// Because Philox is counter-based, element i of a draw depends only on (seed, offset, i): the
// CPU loop can be split across threads in any way, and a CUDA kernel given the same seed and
// offset produces the same bits.
#include <cstdint>
#include <vector>

#include "engine/tensor.h"

namespace bulwark {

class Generator {
 public:
  explicit Generator(uint64_t seed) : seed_(seed) {}
  uint64_t seed() const { return seed_; }
  uint64_t offset() const { return offset_; }
  void set_offset(uint64_t offset) { offset_ = offset; }
  // Hands out `counters` Philox counters: returns the offset they start at and moves past them.
  uint64_t reserve(uint64_t counters);

 private:
  uint64_t seed_;
  uint64_t offset_ = 0;
};

// Philox counters a draw of `numel` values consumes: one 32-bit word per uniform (four words a
// counter), two words per normal (Box-Muller). Callers that lay out several draws on one
// stream use these to find where each begins.
uint64_t uniform_counters(int64_t numel);  // ceil(numel / 4)
uint64_t normal_counters(int64_t numel);   // ceil(numel / 2)

// Element i = lo + (hi - lo) * u_i with u_i = philox::uniform(seed, offset, i) in [0, 1) (24-bit
// resolution), computed in double and rounded to `dtype`. Consumes uniform_counters(numel).
Tensor rand_uniform(const Shape& shape, double lo, double hi, Generator& gen, DType dtype = DType::f32);

// Element i = mean + stddev * philox::normal(seed, offset, i) (Box-Muller). Consumes
// normal_counters(numel).
Tensor rand_normal(const Shape& shape, double mean, double stddev, Generator& gen, DType dtype = DType::f32);

// A uniformly random permutation of 0..n-1 (Fisher-Yates, one 32-bit word per swap, scaled to
// the range by a 64-bit multiply: bias below n / 2^32). Consumes ceil((n - 1) / 4) counters.
std::vector<int64_t> randperm(int64_t n, Generator& gen);

}  // namespace bulwark

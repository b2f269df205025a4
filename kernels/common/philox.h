#pragma once
// Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC 2011).
//
// Counter-based: the random bits of element i depend only on (seed, offset, i), never on a
// sequential state, so the CPU, the CUDA kernels and the emulator produce the same bits for
// the same (seed, offset) no matter how the work is split across threads.
//
// Convention used everywhere in bulwark: a stream is (key = seed, base counter = offset).
// Element i of the stream is word (i % 4) of philox(key, counter = offset + i / 4), where the
// 64-bit counter fills the two low words and the two high words are zero.
#include <cmath>
#include <cstdint>
#include "kernels/common/hd.h"

namespace bulwark::philox {

struct Block { uint32_t v[4]; };

BW_HD inline uint32_t mulhilo(uint32_t a, uint32_t b, uint32_t* hi) {
  const uint64_t p = static_cast<uint64_t>(a) * b;
  *hi = static_cast<uint32_t>(p >> 32);
  return static_cast<uint32_t>(p);
}

// The full generator: a 128-bit counter (4 words) and a 64-bit key (2 words), 10 rounds.
// This is the form the Random123 known-answer tests are written in.
BW_HD inline Block philox4x32_10(Block ctr, uint32_t k0, uint32_t k1) {
  constexpr uint32_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u;
  constexpr uint32_t kW0 = 0x9E3779B9u, kW1 = 0xBB67AE85u;
  uint32_t c0 = ctr.v[0], c1 = ctr.v[1], c2 = ctr.v[2], c3 = ctr.v[3];
  for (int round = 0; round < 10; ++round) {
    uint32_t hi0, hi1;
    const uint32_t lo0 = mulhilo(kM0, c0, &hi0);
    const uint32_t lo1 = mulhilo(kM1, c2, &hi1);
    const uint32_t n0 = hi1 ^ c1 ^ k0, n1 = lo1, n2 = hi0 ^ c3 ^ k1, n3 = lo0;
    c0 = n0; c1 = n1; c2 = n2; c3 = n3;
    k0 += kW0; k1 += kW1;
  }
  return Block{{c0, c1, c2, c3}};
}

// bulwark's streams: the 64-bit counter fills words 0 and 1, words 2 and 3 are zero, and the
// 64-bit seed is the key (low word first).
BW_HD inline Block philox4x32_10(uint64_t counter, uint64_t seed) {
  return philox4x32_10(Block{{static_cast<uint32_t>(counter), static_cast<uint32_t>(counter >> 32), 0u, 0u}},
                       static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
}

// The i-th 32-bit word of the stream (seed, offset).
BW_HD inline uint32_t word(uint64_t seed, uint64_t offset, uint64_t i) {
  return philox4x32_10(offset + i / 4, seed).v[i % 4];
}

// 24 random bits -> float in [0, 1), exactly representable, identical on every backend.
BW_HD inline float to_unit_float(uint32_t w) { return static_cast<float>(w >> 8) * (1.0f / 16777216.0f); }

BW_HD inline float uniform(uint64_t seed, uint64_t offset, uint64_t i) {
  return to_unit_float(word(seed, offset, i));
}

// Standard normal via Box-Muller on words (2i, 2i+1) of the stream. Uses logf/cosf, so the
// last bit may differ between libm and CUDA's math library; uniform() is the bit-exact one.
BW_HD inline float normal(uint64_t seed, uint64_t offset, uint64_t i) {
  const Block b = philox4x32_10(offset + i / 2, seed);
  const uint32_t w0 = b.v[(i % 2) * 2], w1 = b.v[(i % 2) * 2 + 1];
  const float u1 = (static_cast<float>(w0 >> 8) + 1.0f) * (1.0f / 16777216.0f);  // (0, 1]
  const float u2 = to_unit_float(w1);
  const float r = sqrtf(-2.0f * logf(u1));
  return r * cosf(6.2831853071795864f * u2);
}

// Counter values consumed by n uniform() elements (normal() uses (n + 1) / 2).
BW_HD inline uint64_t counters_for(uint64_t n) { return (n + 3) / 4; }

}  // namespace bulwark::philox

#pragma once
// CPU loops of the fused attack step and the random start (scalar bodies in
// kernels/common/attack_step.h). Raw contiguous pointers; the robust layer does the tensors.
#include <cstdint>

namespace bulwark::cpu {

// The elements are reduced in fixed chunks of this many, each chunk summed in a fixed order,
// and the chunk sums added in chunk order: the L1 sum is the same for any thread count.
constexpr int64_t kAttackChunk = 8192;

// x_adv[i] <- clip_[0,1](clip_[x-eps, x+eps](x_adv[i] + alpha * sign(g[i]))) for i < n, in
// place. With l1 != nullptr, also *l1 = sum_i |g[i]| (accumulated in double) from the same pass
// (n = 0 writes 0); with nullptr the L1 is not computed.
template <class T>
void pgd_step(const T* x, T* x_adv, const T* g, int64_t n, T eps, T alpha, double* l1);

// x_adv[i] <- clip_[0,1](x[i] + eps * (2 u_i - 1)), u_i = philox::uniform(seed, offset, i).
// Consumes philox::counters_for(n) counters of the stream.
template <class T>
void random_start(const T* x, T* x_adv, int64_t n, T eps, uint64_t seed, uint64_t offset);

}  // namespace bulwark::cpu

#pragma once
// CPU loops of the fused attack step and the random start (scalar bodies in
// kernels/common/attack_step.h). Raw contiguous pointers; the robust layer does the tensors.
#include <cstdint>

#include "kernels/common/fused_attack.h"

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

// `steps` PGD steps on the mean cross-entropy of `net` (kernels/common/fused_attack.h), x_adv
// [n, net.in_size()] updated in place; labels y [n] (one outside [0, classes) gets no one-hot).
// With l1 != nullptr, *l1 = sum |g| of the last step's input gradient (per-sample sums in
// double, added in sample order). The reference of the CUDA fused attack: each output element
// is summed in the order of fused::forward_at / backward_at, as the kernel's threads do.
template <class T>
void fused_pgd(const fused::Net<T>& net, const T* x, T* x_adv, const int32_t* y, int64_t n, int steps, T eps, T alpha,
               double* l1);

}  // namespace bulwark::cpu

#pragma once
// Scalar bodies of the L-inf attack step and the random start, shared by the CPU loops
// (kernels/cpu/attack.cpp) and the CUDA kernels, so both backends take the same step.
//
// The projected signed-gradient step (PGD, FGSM, FGSM-RS, Free-AT, DEAT all take it):
//
//   x_adv' = clip_[0,1]( clip_[x-eps, x+eps]( x_adv + alpha * sign(g) ) )
//
// The clips are applied in the formula's order (eps-ball, then [0,1]), so the result is in
// [0,1] even if x_adv had left the ball, and in the ball intersected with [0,1] for x in [0,1].
//
// Per element: 1 sign, 1 FMA, 2 bound computations, 2 min/max pairs (~8 FLOPs) plus |g| for
// the L1 magnitude (DEAT's M+ signal) accumulated in the same pass. Bytes: read x, x_adv, g,
// write x_adv = 16 B/element in f32. The step is memory-bound on every machine we target.
//
// Random start: x_adv = clip_[0,1](x + eps * (2u - 1)), u ~ U[0,1) from Philox word i of the
// stream (seed, offset) (kernels/common/philox.h), so the start depends on (seed, offset,
// element index) only, never on how the elements are split over threads or blocks.
// Per element 2 FLOPs + 1/4 Philox block (10 rounds of 2 32x32 multiplies); bytes: read x,
// write x_adv = 8 B/element.
#include <cstdint>

#include "kernels/common/hd.h"
#include "kernels/common/philox.h"

namespace bulwark::attack {

template <class T>
BW_HD inline T clip(T v, T lo, T hi) {
  return v < lo ? lo : (v > hi ? hi : v);
}

// One projected signed-gradient step of one element (sign(0) = 0: no move).
template <class T>
BW_HD inline T pgd_step(T x, T x_adv, T g, T eps, T alpha) {
  const T direction = T((g > T(0)) - (g < T(0)));
  const T stepped = x_adv + alpha * direction;
  const T lo = x - eps, hi = x + eps;
  return clip(clip(stepped, lo, hi), T(0), T(1));
}

// |g|, the element's share of the L1 magnitude.
template <class T>
BW_HD inline T l1_term(T g) {
  return g < T(0) ? -g : g;
}

// The random start of one element given its uniform draw u = philox::uniform(seed, offset, i)
// in [0, 1). Loops that draw a whole Philox block for four consecutive elements read the same
// words (philox::to_unit_float of word i % 4 of block offset + i / 4), hence the same u.
template <class T>
BW_HD inline T random_start(T x, T u, T eps) {
  return clip(x + eps * (T(2) * u - T(1)), T(0), T(1));
}

}  // namespace bulwark::attack

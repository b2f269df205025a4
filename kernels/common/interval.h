#pragma once
// Scalar bodies of interval bound propagation shared by the CPU loops (kernels/cpu/interval.cpp)
// and the CUDA kernels (kernels/cuda/interval.cu): the interval ReLU applied in the epilogue of
// the fused interval conv/linear, and its backward.
//
// A box is kept as its center c and radius r >= 0. The interval ReLU works on the bounds:
//   l = c - r, u = c + r;  l' = max(l, 0), u' = max(u, 0);  c' = (u' + l') / 2, r' = (u' - l') / 2
// and its backward, for the gradients gc', gr' of the outputs (du'/du = [u > 0], dl'/dl = [l > 0]):
//   gu = [u > 0] (gc' + gr') / 2,  gl = [l > 0] (gc' - gr') / 2,  gc = gu + gl,  gr = gu - gl
// The masks come from the pre-activation bounds, computed exactly as the unfused
// relu(c + r), relu(c - r) composition computes them, so both give the same gradients.
// Per element: 8 FLOPs forward, ~10 backward.
#include "kernels/common/hd.h"

namespace bulwark::interval {

// Branch-free (the masks are data: a sign pattern a branch predictor cannot learn), so the CPU
// loops vectorise.
template <class T>
BW_HD inline void relu(T c, T r, T* c_out, T* r_out) {
  const T l = c - r, u = c + r;
  const T lp = l > T(0) ? l : T(0), up = u > T(0) ? u : T(0);
  *c_out = (up + lp) * T(0.5);
  *r_out = (up - lp) * T(0.5);
}

// c, r: the pre-activation box; gc_out, gr_out: the gradients of the ReLU's outputs (c', r').
template <class T>
BW_HD inline void relu_backward(T c, T r, T gc_out, T gr_out, T* gc, T* gr) {
  const T gu = T(c + r > T(0)) * (gc_out + gr_out) * T(0.5);
  const T gl = T(c - r > T(0)) * (gc_out - gr_out) * T(0.5);
  *gc = gu + gl;
  *gr = gu - gl;
}

// sign(w) as the derivative of |w| (0 at 0, as the engine's abs backward).
template <class T>
BW_HD inline T sign(T w) {
  return T((w > T(0)) - (w < T(0)));
}

}  // namespace bulwark::interval

#pragma once
// Scalar bodies of the symbolic-interval ReLU (models/symbolic.h) shared by the CPU loops
// (kernels/cpu/symbolic.cpp) and the CUDA kernels (kernels/cuda/symbolic.cu).
//
// A neuron's linear functions are kept in center/radius form, C = (U + L) / 2, R = (U - L) / 2.
// Its concrete bounds over the input box (center bc, radius br) are
//   u = sum_i (U_i bc_i + |U_i| br_i) + U_0,   l = sum_i (L_i bc_i - |L_i| br_i) + L_0
// each intersected with the IBP box [ic - ir, ic + ir] the rows also carry. The ReLU then scales
// both functions by lambda and adds 2 h to the upper one (h to C's and R's constants):
//   u+ = max(u, 0), l- = min(l, 0), lambda = u+ / max(u+ - l-, kTiny), h = -lambda l- / 2
// (1 when l >= 0, 0 when u <= 0, u / (u - l) when unstable), and the IBP box becomes the interval
// ReLU's [max(l, 0), u+]. The derivatives below are those of exactly these formulas, with the
// engine's conventions at the kinks (relu' = [x > 0], max picks its first argument on ties), so
// the fused ops and their engine-op composition (the create_graph path) agree.
#include "kernels/common/hd.h"

namespace bulwark::symbolic {

constexpr double kTiny = 1e-12;

template <class T>
struct Relaxation {
  T lambda, half_offset, ibp_c, ibp_r;
};

template <class T>
BW_HD inline Relaxation<T> relax(T l, T u) {
  const T up = u > T(0) ? u : T(0), lo = l < T(0) ? l : T(0), lp = l > T(0) ? l : T(0);
  const T width = up - lo;
  const T lambda = up / (width >= T(kTiny) ? width : T(kTiny));
  return {lambda, -lambda * lo * T(0.5), (up + lp) * T(0.5), (up - lp) * T(0.5)};
}

// From the gradients of lambda, of the half offset h and of the IBP box's center and radius to
// those of the bounds l and u.
template <class T>
BW_HD inline void relax_backward(T l, T u, T g_lambda, T g_half, T g_ibp_c, T g_ibp_r, T* gl, T* gu) {
  const T up = u > T(0) ? u : T(0), lo = l < T(0) ? l : T(0);
  const T width = up - lo;
  const bool wide = width >= T(kTiny);
  const T w = wide ? width : T(kTiny);
  const T lambda = up / w;
  const T gl_tot = g_lambda - g_half * lo * T(0.5);  // h = -lambda lo / 2
  T g_lo = -g_half * lambda * T(0.5);
  T g_up = wide ? gl_tot * (-lo) / (w * w) : gl_tot / w;
  if (wide) g_lo += gl_tot * up / (w * w);
  g_up += (g_ibp_c + g_ibp_r) * T(0.5);
  const T g_lp = (g_ibp_c - g_ibp_r) * T(0.5);
  *gu = u > T(0) ? g_up : T(0);
  *gl = (l < T(0) ? g_lo : T(0)) + (l > T(0) ? g_lp : T(0));
}

// sign(x) as the derivative of |x| (0 at 0).
template <class T>
BW_HD inline T sign(T x) {
  return T((x > T(0)) - (x < T(0)));
}

}  // namespace bulwark::symbolic

// The symbolic-interval ReLU on the CPU (models/symbolic.h, kernels/common/symbolic.h): the rows of
// N samples' linear functions, [N, d + 3, M] (d coefficient rows, the constants, the "zero" row
// that carries the biases, the IBP box), in center/radius form.
//
//   symbolic_bounds   l, u [2, N, M]: each neuron's functions maximised / minimised over the
//                     input box and intersected with the IBP row's box (a reduction over d)
//   symbolic_relu     the rows after the ReLU, [2, N, d + 3, M], from the rows and [l, u]
//
// and their backward (to the rows and, for the ReLU, to [l, u]). Loops run over a sample's rows
// with the M neurons innermost, so each row is read once, contiguously, and the per-neuron sums
// vectorise. The box's own gradient (an input that is data in training) is left to the engine.
//
// FLOPs per sample: bounds 8 d M forward, ~12 d M backward; relu 2 d M forward, 4 d M backward.
// Bytes: the rows once (2 (d + 3) M floats) per pass, plus the output rows for the ReLU.
#include <cmath>
#include <vector>

#include "kernels/common/symbolic.h"
#include "kernels/cpu/cpu_kernels.h"

namespace bulwark::cpu {

namespace {

// The symbolic bounds of sample s before the intersection: L[j], U[j].
template <class T>
void symbolic_sums(int64_t s, int64_t d, int64_t m, const T* c, const T* r, const T* bc, const T* br, T* L, T* U) {
  const int64_t rows = d + 3;
  const T* zc = c + (s * rows + d + 1) * m;
  for (int64_t j = 0; j < m; ++j) L[j] = U[j] = T(0);
  for (int64_t i = 0; i < d; ++i) {
    const T *ci = c + (s * rows + i) * m, *ri = r + (s * rows + i) * m;
    const T b_c = bc[s * d + i], b_r = br[s * d + i];
    for (int64_t j = 0; j < m; ++j) {
      const T cc = ci[j] - zc[j], up = cc + ri[j], lo = cc - ri[j];
      U[j] += up * b_c + std::abs(up) * b_r;
      L[j] += lo * b_c - std::abs(lo) * b_r;
    }
  }
  const T *c0 = c + (s * rows + d) * m, *r0 = r + (s * rows + d) * m;
  for (int64_t j = 0; j < m; ++j) {
    U[j] += c0[j] + r0[j];
    L[j] += c0[j] - r0[j];
  }
}

}  // namespace

template <class T>
void symbolic_bounds_forward(int64_t n, int64_t d, int64_t m, const T* c, const T* r, const T* bc, const T* br, T* out) {
  const int64_t rows = d + 3;
#pragma omp parallel for schedule(static)
  for (int64_t s = 0; s < n; ++s) {
    T *L = out + s * m, *U = out + (n + s) * m;
    symbolic_sums(s, d, m, c, r, bc, br, L, U);
    const T *ic = c + (s * rows + d + 2) * m, *ir = r + (s * rows + d + 2) * m;
    for (int64_t j = 0; j < m; ++j) {
      const T il = ic[j] - ir[j], iu = ic[j] + ir[j];
      L[j] = L[j] >= il ? L[j] : il;  // max: the symbolic bound on ties
      U[j] = U[j] <= iu ? U[j] : iu;  // min: likewise
    }
  }
}

template <class T>
void symbolic_bounds_backward(int64_t n, int64_t d, int64_t m, const T* c, const T* r, const T* bc, const T* br,
                              const T* g, T* dc, T* dr) {
  const int64_t rows = d + 3;
#pragma omp parallel
  {
    std::vector<T> L(static_cast<size_t>(m)), U(static_cast<size_t>(m)), gL(static_cast<size_t>(m)),
        gU(static_cast<size_t>(m)), zsum(static_cast<size_t>(m));
#pragma omp for schedule(static)
    for (int64_t s = 0; s < n; ++s) {
      symbolic_sums(s, d, m, c, r, bc, br, L.data(), U.data());
      const T *ic = c + (s * rows + d + 2) * m, *ir = r + (s * rows + d + 2) * m;
      const T *gl = g + s * m, *gu = g + (n + s) * m;
      T *dic = dc + (s * rows + d + 2) * m, *dir = dr + (s * rows + d + 2) * m;
      for (int64_t j = 0; j < m; ++j) {
        const bool sym_l = L[j] >= ic[j] - ir[j], sym_u = U[j] <= ic[j] + ir[j];
        gL[j] = sym_l ? gl[j] : T(0);
        gU[j] = sym_u ? gu[j] : T(0);
        const T il = sym_l ? T(0) : gl[j], iu = sym_u ? T(0) : gu[j];
        dic[j] = il + iu;
        dir[j] = iu - il;
        zsum[j] = T(0);
      }
      const T* zc = c + (s * rows + d + 1) * m;
      for (int64_t i = 0; i < d; ++i) {
        const T *ci = c + (s * rows + i) * m, *ri = r + (s * rows + i) * m;
        T *dci = dc + (s * rows + i) * m, *dri = dr + (s * rows + i) * m;
        const T b_c = bc[s * d + i], b_r = br[s * d + i];
        for (int64_t j = 0; j < m; ++j) {
          const T cc = ci[j] - zc[j], up = cc + ri[j], lo = cc - ri[j];
          const T g_up = gU[j] * (b_c + symbolic::sign(up) * b_r), g_lo = gL[j] * (b_c - symbolic::sign(lo) * b_r);
          dci[j] = g_up + g_lo;
          dri[j] = g_up - g_lo;
          zsum[j] += g_up + g_lo;
        }
      }
      T *dc0 = dc + (s * rows + d) * m, *dr0 = dr + (s * rows + d) * m;
      T *dcz = dc + (s * rows + d + 1) * m, *drz = dr + (s * rows + d + 1) * m;
      for (int64_t j = 0; j < m; ++j) {
        dc0[j] = gU[j] + gL[j];
        dr0[j] = gU[j] - gL[j];
        dcz[j] = -zsum[j];
        drz[j] = T(0);
      }
    }
  }
}

template <class T>
void symbolic_relu_forward(int64_t n, int64_t d, int64_t m, const T* c, const T* r, const T* bounds, T* out) {
  const int64_t rows = d + 3, half = n * rows * m;
#pragma omp parallel
  {
    std::vector<T> lambda(static_cast<size_t>(m));
#pragma omp for schedule(static)
    for (int64_t s = 0; s < n; ++s) {
      const T *l = bounds + s * m, *u = bounds + (n + s) * m, *zc = c + (s * rows + d + 1) * m;
      T *oc = out + s * rows * m, *orr = out + half + s * rows * m;
      for (int64_t j = 0; j < m; ++j) {
        const symbolic::Relaxation<T> x = symbolic::relax(l[j], u[j]);
        lambda[j] = x.lambda;
        const T c0 = c[(s * rows + d) * m + j], r0 = r[(s * rows + d) * m + j];
        oc[d * m + j] = x.lambda * c0 + x.half_offset;
        orr[d * m + j] = x.lambda * r0 + x.half_offset;
        oc[(d + 1) * m + j] = orr[(d + 1) * m + j] = T(0);
        oc[(d + 2) * m + j] = x.ibp_c;
        orr[(d + 2) * m + j] = x.ibp_r;
      }
      for (int64_t i = 0; i < d; ++i) {
        const T *ci = c + (s * rows + i) * m, *ri = r + (s * rows + i) * m;
        T *oci = oc + i * m, *ori = orr + i * m;
        for (int64_t j = 0; j < m; ++j) {
          oci[j] = lambda[j] * (ci[j] - zc[j]);
          ori[j] = lambda[j] * ri[j];
        }
      }
    }
  }
}

template <class T>
void symbolic_relu_backward(int64_t n, int64_t d, int64_t m, const T* c, const T* r, const T* bounds, const T* g,
                            T* dc, T* dr, T* dbounds) {
  const int64_t rows = d + 3, half = n * rows * m;
#pragma omp parallel
  {
    std::vector<T> lambda(static_cast<size_t>(m)), g_lambda(static_cast<size_t>(m)), gz(static_cast<size_t>(m));
#pragma omp for schedule(static)
    for (int64_t s = 0; s < n; ++s) {
      const T *l = bounds + s * m, *u = bounds + (n + s) * m, *zc = c + (s * rows + d + 1) * m;
      const T *gc = g + s * rows * m, *gr = g + half + s * rows * m;
      for (int64_t j = 0; j < m; ++j) {
        lambda[j] = symbolic::relax(l[j], u[j]).lambda;
        g_lambda[j] = gz[j] = T(0);
      }
      for (int64_t i = 0; i < d; ++i) {
        const T *ci = c + (s * rows + i) * m, *ri = r + (s * rows + i) * m, *gci = gc + i * m, *gri = gr + i * m;
        T *dci = dc + (s * rows + i) * m, *dri = dr + (s * rows + i) * m;
        for (int64_t j = 0; j < m; ++j) {
          g_lambda[j] += gci[j] * (ci[j] - zc[j]) + gri[j] * ri[j];
          dci[j] = lambda[j] * gci[j];
          dri[j] = lambda[j] * gri[j];
          gz[j] += gci[j];
        }
      }
      for (int64_t j = 0; j < m; ++j) {
        const int64_t k0 = (s * rows + d) * m + j;
        const T gc0 = gc[d * m + j], gr0 = gr[d * m + j];
        const T g_lam = g_lambda[j] + gc0 * c[k0] + gr0 * r[k0];
        dc[k0] = lambda[j] * gc0;
        dr[k0] = lambda[j] * gr0;
        dc[k0 + m] = -lambda[j] * gz[j];  // the "zero" row: coefficient = row - zero
        dr[k0 + m] = T(0);
        dc[k0 + 2 * m] = dr[k0 + 2 * m] = T(0);  // the IBP row's output depends on [l, u] only
        symbolic::relax_backward(l[j], u[j], g_lam, gc0 + gr0, gc[(d + 2) * m + j], gr[(d + 2) * m + j],
                                 dbounds + s * m + j, dbounds + (n + s) * m + j);
      }
    }
  }
}

#define BW_SYMBOLIC_INSTANTIATE(T)                                                                                     \
  template void symbolic_bounds_forward<T>(int64_t, int64_t, int64_t, const T*, const T*, const T*, const T*, T*);     \
  template void symbolic_bounds_backward<T>(int64_t, int64_t, int64_t, const T*, const T*, const T*, const T*,         \
                                            const T*, T*, T*);                                                         \
  template void symbolic_relu_forward<T>(int64_t, int64_t, int64_t, const T*, const T*, const T*, T*);                 \
  template void symbolic_relu_backward<T>(int64_t, int64_t, int64_t, const T*, const T*, const T*, const T*, T*, T*, T*);
BW_SYMBOLIC_INSTANTIATE(float)
BW_SYMBOLIC_INSTANTIATE(double)

}  // namespace bulwark::cpu

// 2-D convolution on the CPU as im2col + GEMM, OpenMP over groups of samples.
//
//   forward:          y_n[O, L]   = W[O, CKK] * col(x_n)[CKK, L]            (+ bias)
//   backward-input:   dx_n        = col2im( W^T[CKK, O] * g_n[O, L] )
//   backward-weight:  dW[O, CKK]  = sum_n g_n[O, L] * col(x_n)^T[L, CKK]
// with L = OH*OW, CKK = C*KH*KW. FLOPs: 2*N*O*CKK*L for each of the three.
//
// Late layers have tiny images (L = 49 for a 7x7 output), and a GEMM with one side 49 wide
// runs far below peak. So samples are processed in groups of `nb`: the columns of nb samples
// sit side by side in one [CKK, nb*L] matrix and one GEMM serves the group. nb depends only
// on the shape, never on the thread count, so every result is the same on 1 or 16 threads.
//
// A 1x1, stride-1, unpadded convolution with nb == 1 skips im2col (col(x_n) is x_n itself).
// backward-weight sums over groups in a fixed number of chunks, each into its own buffer,
// then adds the chunks in order.
//
// Small convolutions (the gradient checks, batch-1 attacks on tiny models) run on one thread:
// an OpenMP region costs microseconds, and on a busy machine a spinning worker costs far more.
// A batch-1 convolution that is big enough gets its threads from the GEMM's own row split.
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <climits>
#include <cstring>
#include <type_traits>
#include <vector>

#include "kernels/common/elementwise.h"
#include "kernels/cpu/conv_direct.h"
#include "kernels/cpu/cpu_kernels.h"

namespace bulwark::cpu {

namespace {
constexpr double kParallelFlops = 2e6;  // below this a convolution runs single-threaded
// Aim for at least this many GEMM columns per group. 256, not 512: a 16x16 output (cnn7's
// conv3-5) is then one sample per GEMM; grouping two measured no faster and added the copies
// into and out of the grouped layout (conv4 forward 161 -> 141 ms of CPU at batch 128).
constexpr int64_t kGroupColumns = 256;

bool is_pointwise(const ConvShape& s) { return s.kh == 1 && s.kw == 1 && s.stride == 1 && s.pad == 0; }

// Samples per group: enough columns for an efficient GEMM, and at least 8 groups when the
// batch allows it so the threads share the work.
int64_t group_size(const ConvShape& s) {
  const int64_t L = s.oh * s.ow;
  const int64_t want = (kGroupColumns + L - 1) / L;
  return std::clamp<int64_t>(want, 1, std::max<int64_t>(1, s.n / 8));
}

// The output columns ox whose input column ox*stride - pad + kj lies inside [0, w): [lo, hi).
struct ColumnRange {
  int64_t lo, hi;
};
ColumnRange valid_columns(const ConvShape& s, int64_t kj) {
  const int64_t first = s.pad - kj, last = s.w - 1 + s.pad - kj;  // ox*stride must be in [first, last]
  const int64_t lo = first <= 0 ? 0 : (first + s.stride - 1) / s.stride;
  const int64_t hi = last < 0 ? 0 : last / s.stride + 1;
  const int64_t lo_c = std::min(lo, s.ow);
  return {lo_c, std::clamp(hi, lo_c, s.ow)};
}

// col rows are (c, ki, kj), columns (oy, ox) of one sample; `ld` is the row stride of col.
// Bounds are worked out per row, so the inner loops are plain copies.
template <class T>
void im2col(const ConvShape& s, const T* x, T* col, int64_t ld) {
  for (int64_t c = 0; c < s.c; ++c)
    for (int64_t ki = 0; ki < s.kh; ++ki)
      for (int64_t kj = 0; kj < s.kw; ++kj) {
        const ColumnRange r = valid_columns(s, kj);
        T* row = col + ((c * s.kh + ki) * s.kw + kj) * ld;
        const T* plane = x + c * s.h * s.w;
        for (int64_t oy = 0; oy < s.oh; ++oy) {
          const int64_t iy = oy * s.stride - s.pad + ki;
          T* out = row + oy * s.ow;
          if (iy < 0 || iy >= s.h) {
            std::fill(out, out + s.ow, T(0));
            continue;
          }
          const T* in = plane + iy * s.w + (kj - s.pad);  // in[ox * stride] is input column ix
          std::fill(out, out + r.lo, T(0));
          if (s.stride == 1)
            std::copy(in + r.lo, in + r.hi, out + r.lo);
          else
            for (int64_t ox = r.lo; ox < r.hi; ++ox) out[ox] = in[ox * s.stride];
          std::fill(out + r.hi, out + s.ow, T(0));
        }
      }
}

// The adjoint of im2col: x (zeroed here) += the columns, scattered back.
template <class T>
void col2im(const ConvShape& s, const T* col, int64_t ld, T* x) {
  std::fill(x, x + s.c * s.h * s.w, T(0));
  for (int64_t c = 0; c < s.c; ++c)
    for (int64_t ki = 0; ki < s.kh; ++ki)
      for (int64_t kj = 0; kj < s.kw; ++kj) {
        const ColumnRange r = valid_columns(s, kj);
        const T* row = col + ((c * s.kh + ki) * s.kw + kj) * ld;
        T* plane = x + c * s.h * s.w;
        for (int64_t oy = 0; oy < s.oh; ++oy) {
          const int64_t iy = oy * s.stride - s.pad + ki;
          if (iy < 0 || iy >= s.h) continue;
          T* out = plane + iy * s.w + (kj - s.pad);
          const T* in = row + oy * s.ow;
          if (s.stride == 1) {
#pragma omp simd
            for (int64_t ox = r.lo; ox < r.hi; ++ox) out[ox] += in[ox];
          } else {
            for (int64_t ox = r.lo; ox < r.hi; ++ox) out[ox * s.stride] += in[ox];
          }
        }
      }
}

// Short output rows (wong_small's 14- and 7-wide outputs of 4x4 stride-2 kernels) make the
// row loops above mostly bookkeeping: 7 values per row, three fills or copies each. Profiling
// wong_small's PGD-10 step put 47% of the time in im2col and col2im and 22% in the GEMMs. For
// such shapes each sample is first copied into a zero-bordered [C, H + 2p, W + 2p] buffer, and
// an index map built once per shape gives, for every col entry (r, l), the offset in that
// buffer of the value it reads. im2col is then one branch-free gather pass over CKK * L entries
// and col2im one scatter-add pass (into a padded buffer, cropped afterwards). A first map
// version marked padding with -1 and tested it per entry; vectorised, that became AVX2
// gathers, which are slow on this Cascade Lake (microcode mitigations), and either way it ran
// at ~5 cycles per entry. Branch-free scalar is about 1.
constexpr int64_t kShortRow = 16;            // output rows narrower than this use the map...
constexpr int64_t kMaxMapEntries = 1 << 20;  // ...unless the map would exceed 4 MiB

int64_t padded_size(const ConvShape& s) { return s.c * (s.h + 2 * s.pad) * (s.w + 2 * s.pad); }

struct ColumnMap {
  int64_t c, h, w, kh, kw, stride, pad;
  std::vector<int32_t> src;
  bool matches(const ConvShape& s) const {
    return c == s.c && h == s.h && w == s.w && kh == s.kh && kw == s.kw && stride == s.stride && pad == s.pad;
  }
};

// The map of `s`, or null when the row loops are the better choice. Built on the calling thread
// (before any parallel region) and read by all threads of that call; the calling thread keeps
// the maps of its last few shapes.
const int32_t* column_map(const ConvShape& s) {
  const int64_t L = s.oh * s.ow, CKK = s.c * s.kh * s.kw;
  if (s.ow >= kShortRow || CKK * L > kMaxMapEntries || padded_size(s) > INT32_MAX || is_pointwise(s)) return nullptr;
  thread_local std::vector<ColumnMap> maps;
  for (const ColumnMap& m : maps)
    if (m.matches(s)) return m.src.data();
  if (maps.size() >= 16) maps.clear();
  ColumnMap m{s.c, s.h, s.w, s.kh, s.kw, s.stride, s.pad, std::vector<int32_t>(static_cast<size_t>(CKK * L))};
  const int64_t hp = s.h + 2 * s.pad, wp = s.w + 2 * s.pad;
  for (int64_t c = 0; c < s.c; ++c)
    for (int64_t ki = 0; ki < s.kh; ++ki)
      for (int64_t kj = 0; kj < s.kw; ++kj) {
        int32_t* row = m.src.data() + ((c * s.kh + ki) * s.kw + kj) * L;
        for (int64_t oy = 0; oy < s.oh; ++oy)
          for (int64_t ox = 0; ox < s.ow; ++ox)
            row[oy * s.ow + ox] = static_cast<int32_t>((c * hp + oy * s.stride + ki) * wp + ox * s.stride + kj);
      }
  maps.push_back(std::move(m));
  return maps.back().src.data();
}

// xp [C, H + 2p, W + 2p] <- x [C, H, W] with a zero border.
template <class T>
void pad_sample(const ConvShape& s, const T* x, T* xp) {
  const int64_t hp = s.h + 2 * s.pad, wp = s.w + 2 * s.pad;
  for (int64_t c = 0; c < s.c; ++c) {
    T* plane = xp + c * hp * wp;
    std::fill(plane, plane + s.pad * wp, T(0));
    for (int64_t iy = 0; iy < s.h; ++iy) {
      T* row = plane + (iy + s.pad) * wp;
      std::fill(row, row + s.pad, T(0));
      std::copy(x + (c * s.h + iy) * s.w, x + (c * s.h + iy + 1) * s.w, row + s.pad);
      std::fill(row + s.pad + s.w, row + wp, T(0));
    }
    std::fill(plane + (s.pad + s.h) * wp, plane + hp * wp, T(0));
  }
}

// `padded` is a scratch buffer of padded_size(s) elements.
template <class T>
void im2col_mapped(const ConvShape& s, const int32_t* map, const T* x, T* padded, T* col, int64_t ld) {
  const int64_t L = s.oh * s.ow, CKK = s.c * s.kh * s.kw;
  pad_sample(s, x, padded);
  for (int64_t r = 0; r < CKK; ++r) {
    const int32_t* m = map + r * L;
    T* out = col + r * ld;
    for (int64_t l = 0; l < L; ++l) out[l] = padded[m[l]];
  }
}

template <class T>
void col2im_mapped(const ConvShape& s, const int32_t* map, const T* col, int64_t ld, T* padded, T* x) {
  const int64_t L = s.oh * s.ow, CKK = s.c * s.kh * s.kw;
  const int64_t hp = s.h + 2 * s.pad, wp = s.w + 2 * s.pad;
  std::fill(padded, padded + padded_size(s), T(0));
  for (int64_t r = 0; r < CKK; ++r) {
    const int32_t* m = map + r * L;
    const T* in = col + r * ld;
    for (int64_t l = 0; l < L; ++l) padded[m[l]] += in[l];
  }
  for (int64_t c = 0; c < s.c; ++c)
    for (int64_t iy = 0; iy < s.h; ++iy) {
      const T* row = padded + (c * hp + iy + s.pad) * wp + s.pad;
      std::copy(row, row + s.w, x + (c * s.h + iy) * s.w);
    }
}

template <class T>
T* scratch(size_t n, int slot) {  // per-thread buffers, reused across calls
  thread_local std::vector<T> buf[3];
  if (buf[slot].size() < n) buf[slot].resize(n);
  return buf[slot].data();
}

// The columns of samples [n0, n0 + nb): [CKK, nb*L], sample j in columns [j*L, (j+1)*L).
template <class T>
const T* group_columns(const ConvShape& s, const int32_t* map, const T* x, int64_t n0, int64_t nb) {
  const int64_t L = s.oh * s.ow, CKK = s.c * s.kh * s.kw, xsize = s.c * s.h * s.w;
  if (nb == 1 && is_pointwise(s)) return x + n0 * xsize;
  T* col = scratch<T>(CKK * nb * L, 0);
  for (int64_t j = 0; j < nb; ++j) {
    if (map)
      im2col_mapped(s, map, x + (n0 + j) * xsize, scratch<T>(padded_size(s), 2), col + j * L, nb * L);
    else
      im2col(s, x + (n0 + j) * xsize, col + j * L, nb * L);
  }
  return col;
}

// [O, nb*L] (sample j in columns [j*L, (j+1)*L)) <-> nb samples of [O, L].
template <class T>
void ungroup(const T* grouped, int64_t o, int64_t L, int64_t nb, T* samples) {
  for (int64_t j = 0; j < nb; ++j)
    for (int64_t r = 0; r < o; ++r) std::memcpy(samples + (j * o + r) * L, grouped + r * nb * L + j * L, sizeof(T) * L);
}
template <class T>
void group(const T* samples, int64_t o, int64_t L, int64_t nb, T* grouped) {
  for (int64_t j = 0; j < nb; ++j)
    for (int64_t r = 0; r < o; ++r) std::memcpy(grouped + r * nb * L + j * L, samples + (j * o + r) * L, sizeof(T) * L);
}

bool run_parallel(const ConvShape& s, int64_t groups) {
  return groups > 1 && 2.0 * s.n * s.o * s.c * s.kh * s.kw * s.oh * s.ow >= kParallelFlops;
}
std::atomic<ConvAlgorithm> g_conv_algorithm{ConvAlgorithm::automatic};
}  // namespace

void set_conv_algorithm(ConvAlgorithm algorithm) { g_conv_algorithm.store(algorithm); }
ConvAlgorithm conv_algorithm() { return g_conv_algorithm.load(); }

template <class T>
void conv2d_forward(const ConvShape& s, const T* x, const T* w, const T* bias, T* y, bool relu) {
  if constexpr (std::is_same_v<T, float>)
    if (direct::takes_forward(s)) return direct::forward(s, x, w, bias, y, relu);
  const int64_t L = s.oh * s.ow, CKK = s.c * s.kh * s.kw;
  const int64_t nb = group_size(s), groups = (s.n + nb - 1) / nb;
  const int32_t* map = column_map(s);
#pragma omp parallel for schedule(static) if (run_parallel(s, groups))
  for (int64_t gi = 0; gi < groups; ++gi) {
    const int64_t n0 = gi * nb, cnt = std::min(nb, s.n - n0);
    const T* col = group_columns(s, map, x, n0, cnt);
    T* yn = y + n0 * s.o * L;
    if (cnt == 1) {
      gemm<T>(false, false, s.o, L, CKK, T(1), w, CKK, col, L, T(0), yn, L);
    } else {
      T* tmp = scratch<T>(s.o * cnt * L, 1);
      gemm<T>(false, false, s.o, cnt * L, CKK, T(1), w, CKK, col, cnt * L, T(0), tmp, cnt * L);
      ungroup(tmp, s.o, L, cnt, yn);
    }
    // The epilogue: bias and ReLU in one pass over the group's outputs while they are in cache.
    if (bias || relu)
      for (int64_t j = 0; j < cnt; ++j)
        for (int64_t o = 0; o < s.o; ++o) {
          T* row = yn + (j * s.o + o) * L;
          const T b = bias ? bias[o] : T(0);
#pragma omp simd
          for (int64_t l = 0; l < L; ++l) row[l] = ew::relu_if(bias ? row[l] + b : row[l], relu);
        }
  }
}

template <class T>
void conv2d_backward_input(const ConvShape& s, const T* g, const T* w, T* dx) {
  if constexpr (std::is_same_v<T, float>)
    if (direct::takes_backward_input(s)) return direct::backward_input(s, g, w, dx);
  const int64_t L = s.oh * s.ow, CKK = s.c * s.kh * s.kw, xsize = s.c * s.h * s.w;
  const int64_t nb = group_size(s), groups = (s.n + nb - 1) / nb;
  const int32_t* map = column_map(s);
#pragma omp parallel for schedule(static) if (run_parallel(s, groups))
  for (int64_t gi = 0; gi < groups; ++gi) {
    const int64_t n0 = gi * nb, cnt = std::min(nb, s.n - n0);
    const T* gn = g + n0 * s.o * L;
    if (cnt == 1 && is_pointwise(s)) {
      gemm<T>(true, false, CKK, L, s.o, T(1), w, CKK, gn, L, T(0), dx + n0 * xsize, L);
      continue;
    }
    if (cnt > 1) {
      T* grouped = scratch<T>(s.o * cnt * L, 1);
      group(gn, s.o, L, cnt, grouped);
      gn = grouped;
    }
    T* col = scratch<T>(CKK * cnt * L, 0);
    gemm<T>(true, false, CKK, cnt * L, s.o, T(1), w, CKK, gn, cnt * L, T(0), col, cnt * L);
    for (int64_t j = 0; j < cnt; ++j) {
      if (map)
        col2im_mapped(s, map, col + j * L, cnt * L, scratch<T>(padded_size(s), 2), dx + (n0 + j) * xsize);
      else
        col2im(s, col + j * L, cnt * L, dx + (n0 + j) * xsize);
    }
  }
}

template <class T>
void conv2d_backward_weight(const ConvShape& s, const T* x, const T* g, T* dw) {
  if constexpr (std::is_same_v<T, float>)
    if (direct::takes_backward_weight(s)) return direct::backward_weight(s, x, g, dw);
  const int64_t L = s.oh * s.ow, CKK = s.c * s.kh * s.kw, wsize = s.o * CKK;
  if (s.n == 0) {
    std::fill(dw, dw + wsize, T(0));
    return;
  }
  const int64_t nb = group_size(s), groups = (s.n + nb - 1) / nb;
  const int64_t chunks = std::min<int64_t>(groups, 8);
  const int64_t per = (groups + chunks - 1) / chunks;
  std::vector<T> partial(static_cast<size_t>((chunks - 1) * wsize));  // chunk 0 accumulates into dw
  const int32_t* map = column_map(s);
#pragma omp parallel for schedule(static) if (run_parallel(s, chunks))
  for (int64_t ch = 0; ch < chunks; ++ch) {
    T* acc = ch == 0 ? dw : partial.data() + (ch - 1) * wsize;
    T beta = T(0);
    for (int64_t gi = ch * per; gi < std::min(groups, (ch + 1) * per); ++gi) {
      const int64_t n0 = gi * nb, cnt = std::min(nb, s.n - n0);
      const T* col = group_columns(s, map, x, n0, cnt);
      const T* gn = g + n0 * s.o * L;
      if (cnt > 1) {
        T* grouped = scratch<T>(s.o * cnt * L, 1);
        group(gn, s.o, L, cnt, grouped);
        gn = grouped;
      }
      gemm<T>(false, true, s.o, CKK, cnt * L, T(1), gn, cnt * L, col, cnt * L, beta, acc, CKK);
      beta = T(1);
    }
    if (beta == T(0)) std::fill(acc, acc + wsize, T(0));  // a chunk with no groups
  }
  for (int64_t ch = 1; ch < chunks; ++ch) {
    const T* p = partial.data() + (ch - 1) * wsize;
#pragma omp simd
    for (int64_t i = 0; i < wsize; ++i) dw[i] += p[i];
  }
}

#define BW_INST(T)                                                                       \
  template void conv2d_forward<T>(const ConvShape&, const T*, const T*, const T*, T*, bool); \
  template void conv2d_backward_input<T>(const ConvShape&, const T*, const T*, T*);      \
  template void conv2d_backward_weight<T>(const ConvShape&, const T*, const T*, T*);
BW_INST(float)
BW_INST(double)
#undef BW_INST

}  // namespace bulwark::cpu

// The tensor-core path (kernels/cuda/tensor_core.cuh on the emulated warp matrix API,
// kernels/emu/wmma.h): the fragment API against the CPU on inputs rounded the same way, its
// refusal of what a GPU refuses, and the GEMM and the three convolution passes under
// --precision tf32 and bf16 at awkward sizes.
#include <catch2/catch.hpp>

#include "kernels/emu/emu.h"

#include <cmath>
#include <string>
#include <vector>

#include "kernels/common/precision.h"
#include "kernels/cpu/cpu_kernels.h"
#include "kernels/cuda/cuda_kernels.h"
#include "tests/cuda_test_util.h"
#include "tests/emu_kernels/emu_kernels.h"

namespace {

namespace emu = bulwark::emu;
namespace cpu = bulwark::cpu;
namespace cuda = bulwark::cuda;
using bulwark::MathPrecision;
using bulwark::testing::DeviceBuffer;
using bulwark::testing::launches_of;

std::vector<float> random_vector(size_t n, uint32_t seed) { return bulwark::testing::uniform_floats(n, seed, -1.0f, 1.0f); }

float round_to(MathPrecision p, float v) {
  return p == MathPrecision::tf32 ? bulwark::precision::round_tf32(v)
                                  : p == MathPrecision::bf16 ? bulwark::precision::round_bf16(v) : v;
}
std::vector<float> rounded(MathPrecision p, std::vector<float> v) {
  for (float& x : v) x = round_to(p, x);
  return v;
}

// |got - want| <= 1e-6 + 1e-5 * scale: `scale` is the sum of |terms| of that output (products of
// rounded inputs are exact in f32; only the order of the f32 sums differs).
void require_sums_close(const std::vector<float>& got, const std::vector<float>& want, const std::vector<float>& scale,
                        const std::string& what) {
  REQUIRE(got.size() == want.size());
  size_t bad = 0;
  for (size_t i = 0; i < want.size(); ++i)
    if (!(std::fabs(got[i] - want[i]) <= 1e-6 + 1e-5 * scale[i])) {
      if (bad++ < 5) UNSCOPED_INFO(what << "[" << i << "]: got " << got[i] << ", want " << want[i]);
    }
  INFO(what << ": " << bad << " of " << want.size() << " out of tolerance");
  REQUIRE(bad == 0);
}

struct PrecisionGuard {
  explicit PrecisionGuard(MathPrecision p) { cuda::set_math_precision(p); }
  ~PrecisionGuard() { cuda::set_math_precision(MathPrecision::fp32); }
};


}  // namespace

TEST_CASE("the emulated warp matrix API computes A B + C on TF32 and BF16 fragments", "[emu][tensor-core]") {
  for (const int k : {8, 16}) {
    const MathPrecision p = k == 8 ? MathPrecision::tf32 : MathPrecision::bf16;
    const auto a = random_vector(size_t(16 * k), 1), b = random_vector(size_t(16 * k), 2), c = random_vector(256, 3);
    const auto ra = rounded(p, a), rb = rounded(p, b);
    std::vector<float> want(256), scale(256);
    for (int r = 0; r < 16; ++r)
      for (int col = 0; col < 16; ++col) {
        double acc = c[size_t(r * 16 + col)], s = std::fabs(acc);
        for (int kk = 0; kk < k; ++kk) {
          const double t = double(ra[size_t(r * k + kk)]) * rb[size_t(kk * 16 + col)];
          acc += t;
          s += std::fabs(t);
        }
        want[size_t(r * 16 + col)] = float(acc);
        scale[size_t(r * 16 + col)] = float(s);
      }
    for (const bool b_col : {false, true})
      for (const bool d_col : {false, true}) {
        const std::string what = std::string(k == 8 ? "tf32" : "bf16") + (b_col ? " B col-major" : " B row-major") +
                                 (d_col ? " D col-major" : " D row-major");
        require_sums_close(emu_kernels::wmma_tile(a, b, c, k, b_col, d_col), want, scale, what);
      }
  }
}

TEST_CASE("fragment elements have no position: code that assumes a layout gets a wrong matrix", "[emu][tensor-core]") {
  std::vector<float> c(256);
  for (size_t i = 0; i < c.size(); ++i) c[i] = float(i);
  const std::vector<float> got = emu_kernels::wmma_positional(c);
  CHECK(got != c);
  // Still a permutation of C: every element is somewhere.
  std::vector<float> sorted = got;
  std::sort(sorted.begin(), sorted.end());
  CHECK(sorted == c);
}

TEST_CASE("the warp matrix API refuses a misaligned pointer and a half-warp call", "[emu][tensor-core]") {
  try {
    emu_kernels::wmma_misaligned_load();
    FAIL("a load 4 bytes off 32-byte alignment ran");
  } catch (const emu::Error& e) {
    CHECK(std::string(e.what()).find("256-bit") != std::string::npos);
  }
  try {
    emu_kernels::wmma_half_warp_load();
    FAIL("a load reached by 16 lanes ran");
  } catch (const emu::Error& e) {
    CHECK(e.fault() == emu::Fault::warp_divergence);
  }
}

namespace {

void check_gemm(MathPrecision p, bool ta, bool tb, int64_t M, int64_t N, int64_t K) {
  const int64_t rows_a = ta ? K : M, cols_a = ta ? M : K, rows_b = tb ? N : K, cols_b = tb ? K : N;
  const auto a = random_vector(size_t(rows_a * cols_a), 4), b = random_vector(size_t(rows_b * cols_b), 5);
  DeviceBuffer<float> da(a), db(b), dc(size_t(M * N));
  {
    PrecisionGuard guard(p);
    cuda::gemm(ta, tb, M, N, K, 1.0f, da.ptr, cols_a, db.ptr, cols_b, 0.0f, dc.ptr, N);
  }
  const auto ra = rounded(p, a), rb = rounded(p, b);
  std::vector<float> want(size_t(M * N)), scale(size_t(M * N));
  std::vector<float> abs_a(ra.size()), abs_b(rb.size());
  for (size_t i = 0; i < ra.size(); ++i) abs_a[i] = std::fabs(ra[i]);
  for (size_t i = 0; i < rb.size(); ++i) abs_b[i] = std::fabs(rb[i]);
  cpu::gemm<float>(ta, tb, M, N, K, 1.0f, ra.data(), cols_a, rb.data(), cols_b, 0.0f, want.data(), N);
  cpu::gemm<float>(ta, tb, M, N, K, 1.0f, abs_a.data(), cols_a, abs_b.data(), cols_b, 0.0f, scale.data(), N);
  require_sums_close(dc.host(), want, scale,
                     std::string(bulwark::math_precision_name(p)) + " gemm ta=" + std::to_string(ta) +
                         " tb=" + std::to_string(tb) + " " + std::to_string(M) + "x" + std::to_string(N) + "x" +
                         std::to_string(K));
}

}  // namespace

TEST_CASE("cuda gemm on tensor cores equals the CPU on inputs rounded to TF32 or BF16", "[cuda][tensor-core]") {
  for (const MathPrecision p : {MathPrecision::tf32, MathPrecision::bf16}) {
    const uint64_t before = launches_of("tc_gemm_tiles");
    check_gemm(p, false, false, 70, 33, 20);  // two tile rows, a partial 16-deep slice
    check_gemm(p, true, false, 1, 1, 1);
    check_gemm(p, false, true, 17, 65, 37);
    check_gemm(p, true, true, 64, 64, 16);  // exactly one tile and one slice
    CHECK(launches_of("tc_gemm_tiles") == before + 4);
  }
  // The rounding is real: on inputs with low mantissa bits, TF32 is farther from the f32 product
  // than f32 sums are from each other.
  const int64_t n = 32;
  std::vector<float> a(size_t(n * n), 1.0f + 1.0f / 4096), b(size_t(n * n), 1.0f);  // 1 + 2^-12: not a TF32 value
  DeviceBuffer<float> da(a), db(b), dc(size_t(n * n));
  PrecisionGuard guard(MathPrecision::tf32);
  cuda::gemm(false, false, n, n, n, 1.0f, da.ptr, n, db.ptr, n, 0.0f, dc.ptr, n);
  CHECK(dc.host()[0] == float(n));  // 1 + 2^-12 rounds to 1 in TF32 (10 mantissa bits)
}

TEST_CASE("cuda conv2d on tensor cores: the three passes equal the CPU on rounded inputs", "[cuda][tensor-core]") {
  struct Case {
    int64_t n, c, h, w, o, k, stride, pad;
  };
  for (const MathPrecision p : {MathPrecision::tf32, MathPrecision::bf16})
    for (const Case cc : {Case{2, 3, 7, 6, 5, 3, 1, 1}, Case{1, 5, 9, 9, 70, 4, 2, 1}}) {
      const cpu::ConvShape s = bulwark::make_conv_shape(cc.n, cc.c, cc.h, cc.w, cc.o, cc.k, cc.k, cc.stride, cc.pad);
      const size_t xs = size_t(s.n * s.c * s.h * s.w), ws = size_t(s.o * s.c * s.kh * s.kw),
                   ys = size_t(s.n * s.o * s.oh * s.ow);
      const auto x = random_vector(xs, 10), w = random_vector(ws, 11), bias = random_vector(size_t(s.o), 12),
                 g = random_vector(ys, 13);
      DeviceBuffer<float> dxin(x), dw(w), dbias(bias), dg(g), dy(ys), ddx(xs), ddw(ws);
      {
        PrecisionGuard guard(p);
        cuda::conv2d_forward(s, dxin.ptr, dw.ptr, dbias.ptr, dy.ptr);
        cuda::conv2d_backward_input(s, dg.ptr, dw.ptr, ddx.ptr);
        cuda::conv2d_backward_weight(s, dxin.ptr, dg.ptr, ddw.ptr);
      }
      const auto rx = rounded(p, x), rw = rounded(p, w), rg = rounded(p, g);
      const auto absv = [](std::vector<float> v) {
        for (float& e : v) e = std::fabs(e);
        return v;
      };
      const std::string what = std::string(bulwark::math_precision_name(p)) + " conv o" + std::to_string(s.o) + " k" +
                               std::to_string(s.kh) + " s" + std::to_string(s.stride);
      std::vector<float> want(ys), scale(ys);
      cpu::conv2d_forward<float>(s, rx.data(), rw.data(), bias.data(), want.data());
      cpu::conv2d_forward<float>(s, absv(rx).data(), absv(rw).data(), absv(bias).data(), scale.data());
      require_sums_close(dy.host(), want, scale, what + " forward");
      want.assign(xs, 0), scale.assign(xs, 0);
      cpu::conv2d_backward_input<float>(s, rg.data(), rw.data(), want.data());
      cpu::conv2d_backward_input<float>(s, absv(rg).data(), absv(rw).data(), scale.data());
      require_sums_close(ddx.host(), want, scale, what + " backward-input");
      want.assign(ws, 0), scale.assign(ws, 0);
      cpu::conv2d_backward_weight<float>(s, rx.data(), rg.data(), want.data());
      cpu::conv2d_backward_weight<float>(s, absv(rx).data(), absv(rg).data(), scale.data());
      require_sums_close(ddw.host(), want, scale, what + " backward-weight");
    }
}

// The compute-heavy CUDA launchers (kernels/cuda/gemm.cu, conv.cu, pool.cu, batch_norm.cu), run
// from their own source under the emulator (docs/emulator.md) and compared with the CPU kernels
// (kernels/cpu), for what the op harness cannot reach: the GEMM launcher's alpha, beta and leading
// dimensions, results under every emulated schedule, one tile-loop launch per convolution pass,
// max pooling's first-maximum rule on ties, and batch norm's saved statistics and null outputs.
// Every op's CUDA-vs-CPU check at awkward sizes (off the 64x64 tile, batch 1, odd channels,
// partial windows) is a row of tests/test_ops.cpp. Tolerance atol + rtol |ref|: the f32 sums run
// in a different order from OpenBLAS's.
// The kernels come from bulwark_cuda_emu (kernels/cuda/*.cu under the emulator, CMakeLists.txt).
#include <catch2/catch.hpp>

#include "kernels/emu/emu.h"

#include <cmath>
#include <string>
#include <utility>
#include <vector>

#include "kernels/cpu/cpu_kernels.h"
#include "kernels/cuda/cuda_kernels.h"
#include "tests/cuda_test_util.h"

namespace {

namespace emu = bulwark::emu;
namespace cpu = bulwark::cpu;
namespace cuda = bulwark::cuda;

std::vector<float> random_vector(size_t n, uint32_t seed, float lo = -1.0f, float hi = 1.0f) {
  return bulwark::testing::uniform_floats(n, seed, lo, hi);
}

using bulwark::testing::DeviceBuffer;
using bulwark::testing::launches_of;
using bulwark::testing::require_close;


// Requires, at the end of a test, that each named kernel was launched during it: the proof that
// the test executes the kernel and not, say, an early return of its launcher.
struct RequireLaunched {
  std::vector<std::pair<std::string, uint64_t>> before;
  explicit RequireLaunched(std::initializer_list<const char*> kernels) {
    for (const char* k : kernels) before.emplace_back(k, launches_of(k));
  }
  void check() const {
    for (const auto& [k, n] : before) {
      INFO("kernel " << k);
      REQUIRE(launches_of(k) > n);
    }
  }
};

struct ConfigGuard {
  emu::Config saved = emu::config();
  ~ConfigGuard() { emu::config() = saved; }
};

// ---- GEMM -----------------------------------------------------------------------------------------

void check_gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, float beta, int64_t pad) {
  // Leading dimensions `pad` wider than the stored rows, to catch ld mix-ups.
  const int64_t rows_a = ta ? K : M, cols_a = ta ? M : K, rows_b = tb ? N : K, cols_b = tb ? K : N;
  const int64_t lda = cols_a + pad, ldb = cols_b + pad, ldc = N + pad;
  const auto a = random_vector(size_t(rows_a * lda), 1), b = random_vector(size_t(rows_b * ldb), 2);
  auto c = random_vector(size_t(M * ldc), 3);
  // With beta == 0, C must not be read: the device copy starts as NaN.
  DeviceBuffer<float> da(a), db(b), dc(beta == 0.0f ? std::vector<float>(c.size(), std::nanf("")) : c);
  cuda::gemm(ta, tb, M, N, K, alpha, da.ptr, lda, db.ptr, ldb, beta, dc.ptr, ldc);
  cpu::gemm<float>(ta, tb, M, N, K, alpha, a.data(), lda, b.data(), ldb, beta, c.data(), ldc);
  auto got = dc.host();
  // Only the M x N window is defined when beta == 0 (the padding keeps the NaN start).
  for (int64_t i = 0; i < M; ++i)
    for (int64_t j = N; j < ldc; ++j) got[size_t(i * ldc + j)] = c[size_t(i * ldc + j)];
  const std::string what = "gemm ta=" + std::to_string(ta) + " tb=" + std::to_string(tb) + " " + std::to_string(M) +
                           "x" + std::to_string(N) + "x" + std::to_string(K);
  require_close(got, c, 1e-5f * float(K + 1), 1e-4f, what);
}

TEST_CASE("cuda gemm: alpha, beta, leading dimensions wider than the rows, K = 0", "[cuda]") {
  check_gemm(false, false, 33, 17, 21, 0.5f, 0.0f, 3);
  check_gemm(true, false, 33, 17, 21, -2.0f, 1.0f, 5);
  check_gemm(false, true, 9, 70, 13, 1.0f, 0.25f, 1);
  check_gemm(true, true, 5, 6, 0, 1.0f, 0.5f, 2);  // K = 0: C = beta C
}

TEST_CASE("cuda add_row_bias (gemm_bias's vendor epilogue) adds bias[j] to each row of a block of C", "[cuda]") {
  // M x N = 37 x 70 inside rows of ldc = 75: the 5 columns past N stay as they were.
  const int64_t M = 37, N = 70, ldc = 75;
  const auto c = random_vector(size_t(M * ldc), 8), bias = random_vector(size_t(N), 9);
  DeviceBuffer<float> dc(c), dbias(bias);
  const uint64_t before = launches_of("add_row_bias_kernel");
  cuda::add_row_bias(dc.ptr, ldc, M, N, dbias.ptr);
  CHECK(launches_of("add_row_bias_kernel") == before + 1);
  std::vector<float> want = c;
  for (int64_t i = 0; i < M; ++i)
    for (int64_t j = 0; j < N; ++j) want[size_t(i * ldc + j)] += bias[size_t(j)];
  CHECK(dc.host() == want);  // one f32 add each: exact
  cuda::add_row_bias(dc.ptr, ldc, 0, N, dbias.ptr);  // an empty block launches nothing
  CHECK(launches_of("add_row_bias_kernel") == before + 1);
}

TEST_CASE("cuda gemm: same result under every block and thread schedule", "[cuda]") {
  const int64_t M = 67, N = 70, K = 19;
  const auto a = random_vector(size_t(M * K), 4), b = random_vector(size_t(K * N), 5);
  DeviceBuffer<float> da(a), db(b), dc(size_t(M * N));
  std::vector<float> first;
  for (emu::Schedule schedule : {emu::Schedule::forward, emu::Schedule::reverse, emu::Schedule::shuffled}) {
    ConfigGuard guard;
    emu::config().schedule = schedule;
    emu::config().schedule_seed = 7;
    emu::config().check_shared = true;
    cuda::gemm(false, false, M, N, K, 1.0f, da.ptr, K, db.ptr, N, 0.0f, dc.ptr, N);
    const auto got = dc.host();
    if (first.empty())
      first = got;
    else
      REQUIRE(got == first);  // each output has one owner thread and a fixed K order: bitwise equal
  }
}

// ---- convolution ----------------------------------------------------------------------------------

struct ConvCase {
  int64_t n, c, h, w, o, k, stride, pad;
  cpu::ConvShape shape() const {
    return bulwark::make_conv_shape(n, c, h, w, o, k, k, stride, pad);
  }
};

void check_conv(const ConvCase& cc, bool with_bias) {
  const cpu::ConvShape s = cc.shape();
  const size_t xs = size_t(s.n * s.c * s.h * s.w), ws = size_t(s.o * s.c * s.kh * s.kw),
               ys = size_t(s.n * s.o * s.oh * s.ow);
  const auto x = random_vector(xs, 10), w = random_vector(ws, 11), bias = random_vector(size_t(s.o), 12),
             g = random_vector(ys, 13);
  DeviceBuffer<float> dxin(x), dw(w), dbias(bias), dg(g), dy(ys), ddx(xs), ddw(ws);
  const std::string what = "conv n" + std::to_string(s.n) + " c" + std::to_string(s.c) + " " + std::to_string(s.h) +
                           "x" + std::to_string(s.w) + " o" + std::to_string(s.o) + " k" + std::to_string(s.kh) +
                           " s" + std::to_string(s.stride) + " p" + std::to_string(s.pad);
  const float rtol = 1e-4f;

  std::vector<float> y(ys);
  cpu::conv2d_forward<float>(s, x.data(), w.data(), with_bias ? bias.data() : nullptr, y.data());
  cuda::conv2d_forward(s, dxin.ptr, dw.ptr, with_bias ? dbias.ptr : nullptr, dy.ptr);
  require_close(dy.host(), y, 1e-5f * float(s.c * s.kh * s.kw + 1), rtol, what + " forward");

  std::vector<float> dx(xs);
  cpu::conv2d_backward_input<float>(s, g.data(), w.data(), dx.data());
  cuda::conv2d_backward_input(s, dg.ptr, dw.ptr, ddx.ptr);
  require_close(ddx.host(), dx, 1e-5f * float(s.o * s.kh * s.kw + 1), rtol, what + " backward-input");

  std::vector<float> dwr(ws);
  cpu::conv2d_backward_weight<float>(s, x.data(), g.data(), dwr.data());
  cuda::conv2d_backward_weight(s, dxin.ptr, dg.ptr, ddw.ptr);
  require_close(ddw.host(), dwr, 1e-5f * float(s.n * s.oh * s.ow + 1), rtol, what + " backward-weight");
}

TEST_CASE("cuda conv2d: each pass is one tile-loop launch, with more than one 64-wide tile each way", "[cuda]") {
  // The CPU comparison at awkward sizes is in tests/test_ops.cpp ("conv2d at the CUDA kernels'
  // awkward sizes"); here, the launch configuration: no pass splits into several launches (no
  // im2col pass, no second reduction), whatever the tile count.
  const ConvCase cases[] = {
      {2, 3, 8, 8, 70, 3, 1, 1},  // O > 64: two tile rows forward and backward-weight
      {1, 67, 5, 5, 3, 3, 1, 1},  // C > 64: two tile rows in backward-input, CKK > 64 columns
  };
  for (const ConvCase& cc : cases) {
    const uint64_t before = launches_of("gemm_tiles");
    check_conv(cc, true);
    CHECK(launches_of("gemm_tiles") == before + 3);
  }
}

// ---- pooling --------------------------------------------------------------------------------------

cpu::PoolShape pool_shape(int64_t planes, int64_t h, int64_t w, int64_t k, int64_t stride, int64_t pad) {
  return bulwark::make_pool_shape(planes, h, w, k, stride, pad);
}

TEST_CASE("cuda pooling: max indices pick the first maximum on ties, like the CPU", "[cuda]") {
  // The op harness draws distinct values for max pooling (its gradient is ambiguous on ties), so
  // the first-maximum rule is checked here; average pooling's rows are in tests/test_ops.cpp.
  const cpu::PoolShape shapes[] = {pool_shape(6, 13, 11, 3, 2, 1), pool_shape(5, 9, 10, 2, 2, 0),
                                   pool_shape(3, 8, 7, 3, 1, 1), pool_shape(2, 12, 12, 4, 3, 2),
                                   pool_shape(1, 5, 5, 5, 1, 2)};
  const RequireLaunched launched{"max_pool2d_indices_kernel"};
  for (const cpu::PoolShape& s : shapes) {
    const std::string what = "pool " + std::to_string(s.h) + "x" + std::to_string(s.w) + " k" +
                             std::to_string(s.kernel) + " s" + std::to_string(s.stride) + " p" + std::to_string(s.pad);
    const size_t in = size_t(s.planes * s.h * s.w), out = size_t(s.planes * s.oh * s.ow);
    const auto x = random_vector(in, 20);
    // Ties: small integers, so the first-maximum rule is tested, not just the distinct-value case.
    std::vector<float> ties(in);
    for (size_t i = 0; i < in; ++i) ties[i] = float(int(x[i] * 1.5f));
    DeviceBuffer<float> dxin(x), dties(ties);
    DeviceBuffer<int32_t> didx(out);

    for (const std::vector<float>* data : {&x, static_cast<const std::vector<float>*>(&ties)}) {
      std::vector<int32_t> idx(out);
      cpu::max_pool2d_indices<float>(s, data->data(), idx.data());
      cuda::max_pool2d_indices(s, data == &x ? dxin.ptr : dties.ptr, didx.ptr);
      INFO(what << (data == &x ? " max" : " max with ties"));
      REQUIRE(didx.host() == idx);
    }
  }
  launched.check();
}

// ---- batch norm -----------------------------------------------------------------------------------

TEST_CASE("cuda batch norm: saved statistics, and backward with null outputs, match the CPU", "[cuda]") {
  // y and the gradients at awkward sizes are rows of tests/test_ops.cpp; the op does not expose
  // the saved mean, invstd and variance, nor call the backward with only some outputs.
  struct Case {
    int64_t n, c, inner;
    float offset;  // added to x: a mean far from 0 tests the shifted variance
  };
  const RequireLaunched launched{"batch_norm_forward_train_kernel", "batch_norm_backward_train_kernel"};
  for (const Case k : {Case{4, 3, 100, 50.0f}, Case{300, 2, 1, -20.0f}}) {
    const std::string what = "batch norm n" + std::to_string(k.n) + " c" + std::to_string(k.c) + " inner" +
                             std::to_string(k.inner);
    const size_t sz = size_t(k.n * k.c * k.inner), c = size_t(k.c);
    auto x = random_vector(sz, 40);
    for (float& v : x) v += k.offset;
    const auto gamma = random_vector(c, 41, 0.5f, 1.5f), beta = random_vector(c, 42), g = random_vector(sz, 43);
    const double eps = 1e-5;

    std::vector<float> y(sz), mean(c), invstd(c), var(c);
    cpu::batch_norm_forward_train<float>(x.data(), gamma.data(), beta.data(), y.data(), mean.data(), invstd.data(),
                                         var.data(), k.n, k.c, k.inner, eps);
    DeviceBuffer<float> dxin(x), dgamma_in(gamma), dbeta_in(beta), dg(g), dy(sz), dmean(c), dinvstd(c), dvar(c);
    cuda::batch_norm_forward_train(dxin.ptr, dgamma_in.ptr, dbeta_in.ptr, dy.ptr, dmean.ptr, dinvstd.ptr, dvar.ptr, k.n, k.c,
                                   k.inner, eps);
    require_close(dmean.host(), mean, 1e-5f, 1e-5f, what + " mean");
    require_close(dvar.host(), var, 1e-5f, 1e-4f, what + " var");
    require_close(dinvstd.host(), invstd, 1e-4f, 1e-4f, what + " invstd");
    require_close(dy.host(), y, 1e-4f, 1e-4f, what + " y");

    // Backward from the CPU's saved statistics, so only the backward's own error is measured.
    std::vector<float> dx(sz), dgamma(c), dbeta(c);
    cpu::batch_norm_backward_train<float>(x.data(), g.data(), gamma.data(), mean.data(), invstd.data(), dx.data(),
                                          dgamma.data(), dbeta.data(), k.n, k.c, k.inner);
    DeviceBuffer<float> cmean(mean), cinvstd(invstd), ddx(sz), ddgamma(c), ddbeta(c);
    cuda::batch_norm_backward_train(dxin.ptr, dg.ptr, dgamma_in.ptr, cmean.ptr, cinvstd.ptr, ddx.ptr, ddgamma.ptr, ddbeta.ptr, k.n,
                                    k.c, k.inner);
    const float sum_tol = 1e-5f * float(k.n * k.inner);
    require_close(ddbeta.host(), dbeta, sum_tol, 1e-4f, what + " dbeta");
    require_close(ddgamma.host(), dgamma, sum_tol, 1e-4f, what + " dgamma");
    require_close(ddx.host(), dx, 1e-4f, 1e-4f, what + " dx");

    // Only dx wanted (an attack's input gradient): the null outputs are skipped.
    DeviceBuffer<float> ddx_only(sz);
    cuda::batch_norm_backward_train(dxin.ptr, dg.ptr, dgamma_in.ptr, cmean.ptr, cinvstd.ptr, ddx_only.ptr, nullptr, nullptr, k.n,
                                    k.c, k.inner);
    require_close(ddx_only.host(), dx, 1e-4f, 1e-4f, what + " dx alone");
    // Only the parameter gradients.
    DeviceBuffer<float> dgamma_only(c), dbeta_only(c);
    cuda::batch_norm_backward_train(dxin.ptr, dg.ptr, dgamma_in.ptr, cmean.ptr, cinvstd.ptr, nullptr, dgamma_only.ptr,
                                    dbeta_only.ptr, k.n, k.c, k.inner);
    require_close(dgamma_only.host(), dgamma, sum_tol, 1e-4f, what + " dgamma alone");
  }
  launched.check();
}

}  // namespace

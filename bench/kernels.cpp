// Kernel throughput of the CPU backend at the shapes the benchmarked models use (batch 128),
// with Google Benchmark. Each benchmark reports FLOP/s (counter "FLOPS") or bytes/s ("BYTES")
// from the counts documented at the kernel:
//
//   gemm            C[M,N] = op(A) op(B):  2 M N K FLOPs
//   conv2d (all 3)  2 N O (C KH KW) (OH OW) FLOPs each for forward, backward-input and
//                   backward-weight (kernels/cpu/conv.cpp); im2col/col2im traffic not counted
//   batch_norm      training mode, fused: forward 12 B/element, backward 20 B/element
//   pgd_step        read x, x_adv, g, write x_adv: 16 B/element (f32)
//   random_start    read x, write x_adv: 8 B/element
//
// The names say which layer a shape comes from: cnn7 on CIFAR (3x32x32) and wong_small on
// MNIST (1x28x28). Run with `bulwark-bench kernels [--benchmark_filter=REGEX]`.
#include <benchmark/benchmark.h>

#include <random>
#include <vector>

#include "kernels/cpu/attack_kernels.h"
#include "kernels/cpu/cpu_kernels.h"

namespace bulwark::bench {

namespace {

std::vector<float> random_floats(size_t n, float lo = -1.f, float hi = 1.f) {
  std::mt19937 rng(1234);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (float& e : v) e = dist(rng);
  return v;
}

// The kernels run on several threads: time them by the wall clock (rates use it), and report
// the CPU time of the whole process, all threads, beside it.
void timed(benchmark::internal::Benchmark* b) { b->UseRealTime()->MeasureProcessCPUTime(); }

// ---- GEMM -------------------------------------------------------------------------------------

void gemm_bench(benchmark::State& state, bool ta, bool tb, int64_t M, int64_t N, int64_t K) {
  const std::vector<float> a = random_floats(static_cast<size_t>(M * K)), b = random_floats(static_cast<size_t>(K * N));
  std::vector<float> c(static_cast<size_t>(M * N));
  const int64_t lda = ta ? M : K, ldb = tb ? K : N;
  for (auto _ : state) {
    cpu::gemm<float>(ta, tb, M, N, K, 1.f, a.data(), lda, b.data(), ldb, 0.f, c.data(), N);
    benchmark::ClobberMemory();
  }
  state.counters["FLOPS"] = benchmark::Counter(2.0 * M * N * K, benchmark::Counter::kIsIterationInvariantRate);
}

// cnn7's FC 32768 -> 512 at batch 128: forward x W^T, backward-input g W, backward-weight g^T x.
BENCHMARK_CAPTURE(gemm_bench, cnn7_fc1_forward, false, true, 128, 512, 32768)->Apply(timed)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(gemm_bench, cnn7_fc1_backward_input, false, false, 128, 32768, 512)->Apply(timed)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(gemm_bench, cnn7_fc1_backward_weight, true, false, 512, 32768, 128)->Apply(timed)->Unit(benchmark::kMillisecond);
// wong_small's FC 1568 -> 100.
BENCHMARK_CAPTURE(gemm_bench, wong_small_fc1_forward, false, true, 128, 100, 1568)->Apply(timed)->Unit(benchmark::kMicrosecond);
// A square reference point for the BLAS itself.
BENCHMARK_CAPTURE(gemm_bench, square_1024, false, false, 1024, 1024, 1024)->Apply(timed)->Unit(benchmark::kMillisecond);

// ---- conv2d -----------------------------------------------------------------------------------

enum class ConvPass { forward, backward_input, backward_weight };

cpu::ConvShape conv_shape(int64_t n, int64_t c, int64_t hw, int64_t o, int64_t k, int64_t stride, int64_t pad) {
  cpu::ConvShape s{n, c, hw, hw, o, k, k, stride, pad, 0, 0};
  s.oh = (hw + 2 * pad - k) / stride + 1;
  s.ow = s.oh;
  return s;
}

void conv_bench(benchmark::State& state, ConvPass pass, cpu::ConvShape s) {
  const std::vector<float> x = random_floats(static_cast<size_t>(s.n * s.c * s.h * s.w));
  const std::vector<float> w = random_floats(static_cast<size_t>(s.o * s.c * s.kh * s.kw));
  const std::vector<float> bias = random_floats(static_cast<size_t>(s.o));
  const std::vector<float> g = random_floats(static_cast<size_t>(s.n * s.o * s.oh * s.ow));
  std::vector<float> y(g.size()), dx(x.size()), dw(w.size());
  for (auto _ : state) {
    switch (pass) {
      case ConvPass::forward: cpu::conv2d_forward<float>(s, x.data(), w.data(), bias.data(), y.data()); break;
      case ConvPass::backward_input: cpu::conv2d_backward_input<float>(s, g.data(), w.data(), dx.data()); break;
      case ConvPass::backward_weight: cpu::conv2d_backward_weight<float>(s, x.data(), g.data(), dw.data()); break;
    }
    benchmark::ClobberMemory();
  }
  const double flops = 2.0 * s.n * s.o * (s.c * s.kh * s.kw) * (s.oh * s.ow);
  state.counters["FLOPS"] = benchmark::Counter(flops, benchmark::Counter::kIsIterationInvariantRate);
}

#define BW_CONV_BENCH(name, shape)                                                                             \
  BENCHMARK_CAPTURE(conv_bench, name##_forward, ConvPass::forward, shape)->Apply(timed)->Unit(benchmark::kMillisecond);      \
  BENCHMARK_CAPTURE(conv_bench, name##_backward_input, ConvPass::backward_input, shape)                        \
      ->Apply(timed)->Unit(benchmark::kMillisecond);                                                                         \
  BENCHMARK_CAPTURE(conv_bench, name##_backward_weight, ConvPass::backward_weight, shape)                      \
      ->Apply(timed)->Unit(benchmark::kMillisecond);

// cnn7 on CIFAR: conv 3->64, 64->64 at 32x32; 64->128 stride 2; 128->128 at 16x16 (3x3, pad 1).
BW_CONV_BENCH(cnn7_conv1_3x32x32_to_64, conv_shape(128, 3, 32, 64, 3, 1, 1))
BW_CONV_BENCH(cnn7_conv2_64x32x32_to_64, conv_shape(128, 64, 32, 64, 3, 1, 1))
BW_CONV_BENCH(cnn7_conv3_64x32x32_to_128_s2, conv_shape(128, 64, 32, 128, 3, 2, 1))
BW_CONV_BENCH(cnn7_conv4_128x16x16_to_128, conv_shape(128, 128, 16, 128, 3, 1, 1))
// wong_small on MNIST: conv 1->16 4x4/2 at 28x28, 16->32 4x4/2 at 14x14 (pad 1).
BW_CONV_BENCH(wong_small_conv1_1x28x28_to_16, conv_shape(128, 1, 28, 16, 4, 2, 1))
BW_CONV_BENCH(wong_small_conv2_16x14x14_to_32, conv_shape(128, 16, 14, 32, 4, 2, 1))
#undef BW_CONV_BENCH

// ---- batch norm (training mode) ----------------------------------------------------------------

// x [128, C, HW]: forward reads x twice and writes y (12 B/element), backward reads x and g
// twice and writes dx (20 B/element); see kernels/cpu/batch_norm.cpp.
void batch_norm_bench(benchmark::State& state, bool backward, int64_t c, int64_t hw) {
  const int64_t n = 128, count = n * c * hw;
  const std::vector<float> x = random_floats(static_cast<size_t>(count)), g = random_floats(static_cast<size_t>(count));
  const std::vector<float> gamma(static_cast<size_t>(c), 1.f), beta(static_cast<size_t>(c), 0.f);
  std::vector<float> out(static_cast<size_t>(count)), mean(c), invstd(c), var(c), dgamma(c), dbeta(c);
  cpu::batch_norm_forward_train<float>(x.data(), gamma.data(), beta.data(), out.data(), mean.data(), invstd.data(),
                                       var.data(), n, c, hw, 1e-5);
  for (auto _ : state) {
    if (backward)
      cpu::batch_norm_backward_train<float>(x.data(), g.data(), gamma.data(), mean.data(), invstd.data(), out.data(),
                                            dgamma.data(), dbeta.data(), n, c, hw);
    else
      cpu::batch_norm_forward_train<float>(x.data(), gamma.data(), beta.data(), out.data(), mean.data(), invstd.data(),
                                           var.data(), n, c, hw, 1e-5);
    benchmark::ClobberMemory();
  }
  state.counters["BYTES"] =
      benchmark::Counter((backward ? 20.0 : 12.0) * count, benchmark::Counter::kIsIterationInvariantRate);
}
// cnn7's BatchNorm2d after conv2 (64 x 32x32) and conv4 (128 x 16x16).
BENCHMARK_CAPTURE(batch_norm_bench, cnn7_bn2_forward, false, 64, 32 * 32)->Apply(timed)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(batch_norm_bench, cnn7_bn2_backward, true, 64, 32 * 32)->Apply(timed)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(batch_norm_bench, cnn7_bn4_forward, false, 128, 16 * 16)->Apply(timed)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(batch_norm_bench, cnn7_bn4_backward, true, 128, 16 * 16)->Apply(timed)->Unit(benchmark::kMillisecond);

// ---- attack step --------------------------------------------------------------------------------

void pgd_step_bench(benchmark::State& state) {
  const int64_t n = state.range(0);
  const std::vector<float> x = random_floats(static_cast<size_t>(n), 0.f, 1.f), g = random_floats(static_cast<size_t>(n));
  std::vector<float> x_adv = x;
  double l1 = 0;
  for (auto _ : state) {
    l1 += cpu::pgd_step(x.data(), x_adv.data(), g.data(), n, 8.f / 255.f, 2.f / 255.f);
    benchmark::ClobberMemory();
  }
  benchmark::DoNotOptimize(l1);
  state.counters["BYTES"] = benchmark::Counter(16.0 * n, benchmark::Counter::kIsIterationInvariantRate);
}

void random_start_bench(benchmark::State& state) {
  const int64_t n = state.range(0);
  const std::vector<float> x = random_floats(static_cast<size_t>(n), 0.f, 1.f);
  std::vector<float> x_adv(x.size());
  uint64_t offset = 0;
  for (auto _ : state) {
    cpu::random_start(x.data(), x_adv.data(), n, 8.f / 255.f, 7, offset);
    offset += static_cast<uint64_t>((n + 3) / 4);
    benchmark::ClobberMemory();
  }
  state.counters["BYTES"] = benchmark::Counter(8.0 * n, benchmark::Counter::kIsIterationInvariantRate);
}

// A CIFAR batch (128 x 3 x 32 x 32) and an MNIST batch (128 x 1 x 28 x 28).
BENCHMARK(pgd_step_bench)->Arg(128 * 3 * 32 * 32)->Arg(128 * 28 * 28)->Apply(timed)->Unit(benchmark::kMicrosecond);
BENCHMARK(random_start_bench)->Arg(128 * 3 * 32 * 32)->Arg(128 * 28 * 28)->Apply(timed)->Unit(benchmark::kMicrosecond);

}  // namespace

int run_kernel_benchmarks(int argc, char** argv, int threads) {
  cpu::set_num_threads(threads);
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}

}  // namespace bulwark::bench

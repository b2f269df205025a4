// Kernel throughput of the CPU backend at the shapes the zoo models use (batch 128), with Google
// Benchmark. Every row reports a rate: "FLOPS" (FLOP/s, printed as e.g. 29.9G/s) or "BYTES"
// (bytes/s), from the counts in bench/kernel_shapes.h. Rows are named cpu_<kernel>/<shape>; the
// GPU build adds cuda_<kernel>/<shape>/{ours,v0_<vendor>} rows for the same shapes
// (bench/cuda_kernels.cpp). Run with `bulwark-bench kernels [--benchmark_filter=REGEX]`.
#include <benchmark/benchmark.h>

#include <random>
#include <string>
#include <vector>

#include "bench/kernel_shapes.h"
#include "kernels/cpu/attack_kernels.h"
#include "kernels/cpu/conv_direct.h"
#include "kernels/cpu/cpu_kernels.h"
#include "kernels/cpu/optim.h"

namespace bulwark::bench {

namespace {

std::vector<float> random_floats(size_t n, float lo = -1.f, float hi = 1.f) {
  std::mt19937 rng(1234);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (float& e : v) e = dist(rng);
  return v;
}

benchmark::Counter rate(double per_iteration) {
  return benchmark::Counter(per_iteration, benchmark::Counter::kIsIterationInvariantRate);
}

// The kernels run on several threads: time them by the wall clock (rates use it), and report
// the CPU time of the whole process, all threads, beside it.
template <class Fn>
void add(const std::string& name, benchmark::TimeUnit unit, Fn&& fn) {
  benchmark::RegisterBenchmark(name.c_str(), std::forward<Fn>(fn))->UseRealTime()->MeasureProcessCPUTime()->Unit(unit);
}

// A forward or backward-input row runs once per algorithm (im2col + GEMM, direct), and the
// direct kernel once more at BF16 where the CPU has AVX512-BF16 (`--precision bf16`); the GEMM
// rows once per precision. Both are process-wide settings, set for the row and put back after it.
struct CpuKernelScope {
  cpu::ConvAlgorithm algorithm = cpu::conv_algorithm();
  MathPrecision precision = cpu::math_precision();
  CpuKernelScope(cpu::ConvAlgorithm a, MathPrecision p) {
    cpu::set_conv_algorithm(a);
    cpu::set_math_precision(p);
  }
  ~CpuKernelScope() {
    cpu::set_conv_algorithm(algorithm);
    cpu::set_math_precision(precision);
  }
};

void gemm_bench(benchmark::State& state, const GemmCase& c, MathPrecision precision) {
  const CpuKernelScope scope(cpu::conv_algorithm(), precision);
  const std::vector<float> a = random_floats(size_t(c.m * c.k)), b = random_floats(size_t(c.k * c.n));
  std::vector<float> out(size_t(c.m * c.n));
  for (auto _ : state) {
    cpu::gemm<float>(c.ta, c.tb, c.m, c.n, c.k, 1.f, a.data(), c.lda(), b.data(), c.ldb(), 0.f, out.data(), c.n);
    benchmark::ClobberMemory();
  }
  state.counters["FLOPS"] = rate(c.flops());
}

enum class ConvPass { forward, backward_input, backward_weight };
constexpr ConvPass kConvPasses[] = {ConvPass::forward, ConvPass::backward_input, ConvPass::backward_weight};
const char* pass_name(ConvPass p) {
  return p == ConvPass::forward ? "forward" : p == ConvPass::backward_input ? "backward_input" : "backward_weight";
}

void conv_bench(benchmark::State& state, ConvPass pass, const ConvLayer& layer, cpu::ConvAlgorithm algorithm,
                MathPrecision precision) {
  const CpuKernelScope scope(algorithm, precision);
  const ConvShape& s = layer.shape;
  const std::vector<float> x = random_floats(size_t(s.n * s.c * s.h * s.w));
  const std::vector<float> w = random_floats(size_t(s.o * s.c * s.kh * s.kw));
  const std::vector<float> bias = random_floats(size_t(s.o));
  const std::vector<float> g = random_floats(size_t(s.n * s.o * s.oh * s.ow));
  std::vector<float> y(g.size()), dx(x.size()), dw(w.size());
  for (auto _ : state) {
    switch (pass) {
      case ConvPass::forward:
        cpu::conv2d_forward<float>(s, x.data(), w.data(), layer.bias ? bias.data() : nullptr, y.data());
        break;
      case ConvPass::backward_input: cpu::conv2d_backward_input<float>(s, g.data(), w.data(), dx.data()); break;
      case ConvPass::backward_weight: cpu::conv2d_backward_weight<float>(s, x.data(), g.data(), dw.data()); break;
    }
    benchmark::ClobberMemory();
  }
  state.counters["FLOPS"] = rate(conv_flops(s));
}

void batch_norm_bench(benchmark::State& state, bool backward, const BatchNormCase& c) {
  const int64_t n = 128, count = c.count();
  const std::vector<float> x = random_floats(size_t(count)), g = random_floats(size_t(count));
  const std::vector<float> gamma(size_t(c.c), 1.f), beta(size_t(c.c), 0.f);
  std::vector<float> out(static_cast<size_t>(count)), mean(c.c), invstd(c.c), var(c.c), dgamma(c.c), dbeta(c.c);
  cpu::batch_norm_forward_train<float>(x.data(), gamma.data(), beta.data(), out.data(), mean.data(), invstd.data(),
                                       var.data(), n, c.c, c.inner, 1e-5);
  for (auto _ : state) {
    if (backward)
      cpu::batch_norm_backward_train<float>(x.data(), g.data(), gamma.data(), mean.data(), invstd.data(), out.data(),
                                            dgamma.data(), dbeta.data(), n, c.c, c.inner);
    else
      cpu::batch_norm_forward_train<float>(x.data(), gamma.data(), beta.data(), out.data(), mean.data(), invstd.data(),
                                           var.data(), n, c.c, c.inner, 1e-5);
    benchmark::ClobberMemory();
  }
  state.counters["BYTES"] = rate((backward ? 20.0 : 12.0) * double(count));
}

// A BatchNorm followed by a ReLU, forward and backward, as the engine runs it: `fused` is
// batch_norm_relu (the ReLU in the forward's writing pass, its mask read with g in the backward),
// `composed` is batch_norm then relu forward, relu_grad then batch_norm's backward (a kernel more
// each way, each reading and writing the whole tensor). BYTES counts the fused version's ideal
// traffic (12 forward, 24 backward per element) for both, so the two rates compare time.
void batch_norm_relu_bench(benchmark::State& state, bool fused, const BatchNormCase& c) {
  const int64_t n = 128, count = c.count();
  const std::vector<float> x = random_floats(size_t(count)), g = random_floats(size_t(count));
  const std::vector<float> gamma(size_t(c.c), 1.f), beta(size_t(c.c), 0.f);
  std::vector<float> pre(static_cast<size_t>(count)), y(pre.size()), gm(pre.size()), dx(pre.size());
  std::vector<float> mean(c.c), invstd(c.c), var(c.c), dgamma(c.c), dbeta(c.c);
  cpu::Strided flat;
  flat.ndim = 1;
  flat.shape[0] = count;
  flat.stride[0] = 1;
  for (auto _ : state) {
    if (fused) {
      cpu::batch_norm_forward_train<float>(x.data(), gamma.data(), beta.data(), y.data(), mean.data(), invstd.data(),
                                           var.data(), n, c.c, c.inner, 1e-5, true);
      cpu::batch_norm_backward_train<float>(x.data(), g.data(), gamma.data(), mean.data(), invstd.data(), dx.data(),
                                            dgamma.data(), dbeta.data(), n, c.c, c.inner, y.data());
    } else {
      cpu::batch_norm_forward_train<float>(x.data(), gamma.data(), beta.data(), pre.data(), mean.data(), invstd.data(),
                                           var.data(), n, c.c, c.inner, 1e-5);
      cpu::unary<float>(ew::Unary::relu, pre.data(), y.data(), count, 0.f, 0.f);
      cpu::binary<float>(ew::Binary::relu_grad, g.data(), flat, pre.data(), flat, gm.data());
      cpu::batch_norm_backward_train<float>(x.data(), gm.data(), gamma.data(), mean.data(), invstd.data(), dx.data(),
                                            dgamma.data(), dbeta.data(), n, c.c, c.inner);
    }
    benchmark::ClobberMemory();
  }
  state.counters["BYTES"] = rate(36.0 * double(count));
}

void pgd_step_bench(benchmark::State& state, int64_t n) {
  const std::vector<float> x = random_floats(size_t(n), 0.f, 1.f), g = random_floats(size_t(n));
  std::vector<float> x_adv = x;
  double l1 = 0;
  for (auto _ : state) {
    cpu::pgd_step(x.data(), x_adv.data(), g.data(), n, 8.f / 255.f, 2.f / 255.f, &l1);
    benchmark::ClobberMemory();
  }
  benchmark::DoNotOptimize(l1);
  state.counters["BYTES"] = rate(16.0 * double(n));
}

void random_start_bench(benchmark::State& state, int64_t n) {
  const std::vector<float> x = random_floats(size_t(n), 0.f, 1.f);
  std::vector<float> x_adv(x.size());
  uint64_t offset = 0;
  for (auto _ : state) {
    cpu::random_start(x.data(), x_adv.data(), n, 8.f / 255.f, 7, offset);
    offset += uint64_t((n + 3) / 4);
    benchmark::ClobberMemory();
  }
  state.counters["BYTES"] = rate(8.0 * double(n));
}

void softmax_xent_bench(benchmark::State& state, const SoftmaxCase& c) {
  const std::vector<float> z = random_floats(size_t(c.rows * c.cols), -4.f, 4.f);
  std::vector<int32_t> labels(size_t(c.rows));
  for (int64_t r = 0; r < c.rows; ++r) labels[size_t(r)] = int32_t(r % c.cols);
  std::vector<float> loss(size_t(c.rows));
  for (auto _ : state) {
    cpu::softmax_xent_rows<float>(z.data(), labels.data(), loss.data(), c.rows, c.cols);
    benchmark::ClobberMemory();
  }
  state.counters["BYTES"] = rate(c.bytes());
}

// One SGD-momentum step over every parameter tensor of the model, a loop over the tensors as
// the CPU optimizer runs it.
void sgd_step_bench(benchmark::State& state, const std::string& model) {
  const std::vector<int64_t> sizes = parameter_sizes(model);
  std::vector<std::vector<float>> params, grads, bufs;
  int64_t total = 0;
  for (int64_t n : sizes) {
    params.push_back(random_floats(size_t(n)));
    grads.push_back(random_floats(size_t(n)));
    bufs.emplace_back(size_t(n), 0.f);
    total += n;
  }
  const optim::SgdHyper h{.lr = 0.1, .momentum = 0.9, .weight_decay = 5e-4};
  for (auto _ : state) {
    for (size_t i = 0; i < sizes.size(); ++i)
      cpu::sgd_step<float>(params[i].data(), grads[i].data(), bufs[i].data(), sizes[i], h);
    benchmark::ClobberMemory();
  }
  state.counters["BYTES"] = rate(20.0 * double(total));
}

bool register_cpu_benchmarks() {
  for (const GemmCase& c : zoo_gemms())
    add("cpu_gemm/" + std::string(c.name), benchmark::kMillisecond,
        [c](benchmark::State& st) { gemm_bench(st, c, MathPrecision::fp32); });
  // --precision bf16's GEMM: OpenBLAS's sgemm on copies of the operands rounded to BF16 (a
  // separate name, so `cpu_gemm/square_1024/` stays the FP32 peak of compare.sh).
  for (const GemmCase& c : zoo_gemms())
    add("cpu_gemm_bf16/" + std::string(c.name), benchmark::kMillisecond,
        [c](benchmark::State& st) { gemm_bench(st, c, MathPrecision::bf16); });
  for (const ConvLayer& layer : zoo_conv_layers())
    for (ConvPass pass : kConvPasses) {
      const std::string row = std::string("cpu_conv_") + pass_name(pass) + "/" + layer.name;
      auto takes = [&](MathPrecision p) {  // whether the direct kernel applies at all
        const CpuKernelScope forced(cpu::ConvAlgorithm::direct, p);
        return pass == ConvPass::forward          ? cpu::direct::takes_forward(layer.shape)
               : pass == ConvPass::backward_input ? cpu::direct::takes_backward_input(layer.shape)
                                                  : cpu::direct::takes_backward_weight(layer.shape);
      };
      auto row_for = [&](const std::string& suffix, cpu::ConvAlgorithm a, MathPrecision p) {
        add(row + suffix, benchmark::kMillisecond,
            [pass, layer, a, p](benchmark::State& st) { conv_bench(st, pass, layer, a, p); });
      };
      if (!takes(MathPrecision::fp32)) {
        row_for("", cpu::ConvAlgorithm::im2col, MathPrecision::fp32);
        continue;
      }
      row_for("/im2col", cpu::ConvAlgorithm::im2col, MathPrecision::fp32);
      row_for("/direct", cpu::ConvAlgorithm::direct, MathPrecision::fp32);
      if (takes(MathPrecision::bf16)) row_for("/direct_bf16", cpu::ConvAlgorithm::direct, MathPrecision::bf16);
    }
  for (const BatchNormCase& c : zoo_batch_norms())
    for (bool backward : {false, true})
      add(std::string(backward ? "cpu_batch_norm_backward/" : "cpu_batch_norm_forward/") + c.name,
          benchmark::kMillisecond, [backward, c](benchmark::State& st) { batch_norm_bench(st, backward, c); });
  for (const BatchNormCase& c : zoo_batch_norms())
    for (const bool fused : {false, true})
      add(std::string("cpu_batch_norm_relu_fwd_bwd/") + c.name + (fused ? "/fused" : "/composed"), benchmark::kMillisecond,
          [fused, c](benchmark::State& st) { batch_norm_relu_bench(st, fused, c); });
  for (const AttackCase& c : attack_batches()) {
    add(std::string("cpu_pgd_step/") + c.name, benchmark::kMicrosecond,
        [c](benchmark::State& st) { pgd_step_bench(st, c.n); });
    add(std::string("cpu_random_start/") + c.name, benchmark::kMicrosecond,
        [c](benchmark::State& st) { random_start_bench(st, c.n); });
  }
  for (const SoftmaxCase& c : softmax_cases())
    add(std::string("cpu_softmax_xent/") + c.name, benchmark::kMicrosecond,
        [c](benchmark::State& st) { softmax_xent_bench(st, c); });
  for (const std::string& model : sgd_models())
    add("cpu_sgd_step/" + model + "_all_params", benchmark::kMicrosecond,
        [model](benchmark::State& st) { sgd_step_bench(st, model); });
  return true;
}

[[maybe_unused]] const bool cpu_benchmarks_registered = register_cpu_benchmarks();

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

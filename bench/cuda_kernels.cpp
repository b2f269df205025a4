// Kernel throughput of the CUDA backend, ours next to the vendor's, at the shapes of the zoo
// models (batch 128, bench/kernel_shapes.h), with Google Benchmark. Compiled only in the real
// (nvcc) build (CMakeLists.txt); on a machine without a usable GPU every row is skipped with the
// reason, and the CPU rows (bench/kernels.cpp) still run.
//
// Rows, llm.c style ("version 0" is the vendor library):
//   cuda_gemm/<shape>/v0_cublas            cublasSgemm                       FLOPS: 2 M N K
//   cuda_gemm/<shape>/ours                 gemm_tile.cuh's 64x64 tile loop
//   cuda_gemm/<shape>/ours_tf32, ours_bf16 tensor_core.cuh's WMMA tile loop (--precision tf32 / bf16)
//   cuda_conv_<pass>/<layer>/v0_cudnn      cuDNN, FMA math, heuristic algo   FLOPS: 2 n O C KH KW OH OW
//   cuda_conv_<pass>/<layer>/ours          implicit GEMM (conv.cu)
//   cuda_conv_<pass>/<layer>/ours_tf32, ours_bf16   the same on the WMMA tile loop
//   cuda_batch_norm_{forward,backward}/... fused training-mode BN           BYTES: 12 / 20 per element
//   cuda_pgd_step/<batch>                  fused step + sum|g|               BYTES: 16 per element
//   cuda_random_start/<batch>              Philox start                      BYTES: 8 per element
//   cuda_softmax_xent/<shape>              fused lse - z[label]              BYTES: 4 per logit + 8 per row
//   cuda_sgd_step/<model>_all_params       one launch over every parameter   BYTES: 20 per parameter
//   cuda_interval_conv_forward/<layer>/v0_cudnn_twice   |W| (one elementwise launch), then cuDNN
//                                          for W c + b and for |W| r         FLOPS: 2 x 2 n O C KH KW OH OW
//   cuda_interval_conv_forward/<layer>/ours        interval.cu: both in one dual tile loop, W read once
//   cuda_interval_conv_forward/<layer>/ours_relu   the same with the interval ReLU in the epilogue
// The fused kernels have no vendor twin (cuBLAS/cuDNN have no such ops; PyTorch runs them as
// several elementwise kernels). Each row calls one implementation directly (vendor.h), whatever
// kernel_source() says.
//
// Timing: device time by cudaEvents (UseManualTime), kLaunchesPerIteration back-to-back launches
// per benchmark iteration, the time divided by that count (cuda::time_per_launch_ms). pgd_step
// and sgd_step_multi include what their launchers do on the host each call (pgd_step writes its
// sum to a device address, as the training methods' steps do; sgd_step_multi uploads its chunk
// table), since that is what a training step pays.
#include <benchmark/benchmark.h>

#include <cstdint>
#include <deque>
#include <exception>
#include <string>
#include <vector>

#include "bench/kernel_shapes.h"
#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/kernel_source.h"
#include "kernels/cuda/vendor.h"

namespace bulwark::bench {

namespace {

constexpr int kLaunchesPerIteration = 10;

// Runs the body of one GPU row, or skips the row with the reason: no usable device, or an error
// while setting up or launching (out of memory, a vendor failure). Never crashes the run.
template <class Body>
void gpu_row(benchmark::State& state, Body&& body) {
  std::string why;
  if (!cuda::device_available(&why)) {
    const std::string prefix = "no usable CUDA device";
    state.SkipWithError((why.rfind(prefix, 0) == 0 ? why : prefix + ": " + why).c_str());
    return;
  }
  try {
    body();
  } catch (const std::exception& e) {
    state.SkipWithError(e.what());
  }
}

// The iterations of one row: a first launch outside the timing (module load, cuBLAS/cuDNN handle
// and heuristics), then device time per launch.
template <class Launch>
void time_launches(benchmark::State& state, const Launch& launch) {
  launch();
  cuda::synchronize();
  for (auto _ : state) state.SetIterationTime(cuda::time_per_launch_ms(launch, 0, kLaunchesPerIteration) * 1e-3);
}

benchmark::Counter rate(double per_launch) {
  return benchmark::Counter(per_launch, benchmark::Counter::kIsIterationInvariantRate);
}

template <class T>
class DeviceArray {
 public:
  explicit DeviceArray(int64_t n) : p_(static_cast<T*>(cuda::device_malloc(size_t(n) * sizeof(T)))) {}
  ~DeviceArray() { cuda::device_free(p_); }
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;
  T* get() const { return p_; }

 private:
  T* p_;
};

// n device floats, uniform in [lo, hi) from the Philox kernel (no host round trip).
struct DeviceFloats : DeviceArray<float> {
  explicit DeviceFloats(int64_t n, float lo = -1.f, float hi = 1.f, uint64_t seed = 1) : DeviceArray<float>(n) {
    cuda::uniform(get(), n, lo, hi, seed, 0);
  }
};

template <class Fn>
void add(const std::string& name, Fn&& fn) {
  benchmark::RegisterBenchmark(name.c_str(), std::forward<Fn>(fn))->UseManualTime()->Unit(benchmark::kMicrosecond);
}

// ---- GEMM and convolution: ours and the vendor's ------------------------------------------------

// Runs a row at a math precision (ours only: the vendor rows are FP32) and restores fp32.
struct RowPrecision {
  explicit RowPrecision(MathPrecision p) { cuda::set_math_precision(p); }
  ~RowPrecision() { cuda::set_math_precision(MathPrecision::fp32); }
};

void gemm_row(benchmark::State& state, const GemmCase& c, bool vendor, MathPrecision precision = MathPrecision::fp32) {
  const RowPrecision row_precision(precision);
  gpu_row(state, [&] {
    DeviceFloats a(c.m * c.k), b(c.k * c.n), out(c.m * c.n);
    const auto gemm = vendor ? &cuda::gemm_vendor : &cuda::gemm_ours;
    time_launches(state, [&] {
      gemm(c.ta, c.tb, c.m, c.n, c.k, 1.f, a.get(), c.lda(), b.get(), c.ldb(), 0.f, out.get(), c.n);
    });
    state.counters["FLOPS"] = rate(c.flops());
  });
}

enum class ConvPass { forward, backward_input, backward_weight };
constexpr ConvPass kConvPasses[] = {ConvPass::forward, ConvPass::backward_input, ConvPass::backward_weight};
const char* pass_name(ConvPass p) {
  return p == ConvPass::forward ? "forward" : p == ConvPass::backward_input ? "backward_input" : "backward_weight";
}

void conv_row(benchmark::State& state, ConvPass pass, const ConvLayer& layer, bool vendor,
              MathPrecision precision = MathPrecision::fp32) {
  const RowPrecision row_precision(precision);
  gpu_row(state, [&] {
    const cpu::ConvShape& s = layer.shape;
    DeviceFloats x(s.n * s.c * s.h * s.w), w(s.o * s.c * s.kh * s.kw), bias(s.o), g(s.n * s.o * s.oh * s.ow);
    DeviceFloats y(s.n * s.o * s.oh * s.ow), dx(s.n * s.c * s.h * s.w), dw(s.o * s.c * s.kh * s.kw);
    const float* b = layer.bias ? bias.get() : nullptr;
    switch (pass) {
      case ConvPass::forward: {
        const auto conv = vendor ? &cuda::conv2d_forward_vendor : &cuda::conv2d_forward_ours;
        time_launches(state, [&] { conv(s, x.get(), w.get(), b, y.get(), false); });
        break;
      }
      case ConvPass::backward_input: {
        const auto conv = vendor ? &cuda::conv2d_backward_input_vendor : &cuda::conv2d_backward_input_ours;
        time_launches(state, [&] { conv(s, g.get(), w.get(), dx.get()); });
        break;
      }
      case ConvPass::backward_weight: {
        const auto conv = vendor ? &cuda::conv2d_backward_weight_vendor : &cuda::conv2d_backward_weight_ours;
        time_launches(state, [&] { conv(s, x.get(), g.get(), dw.get()); });
        break;
      }
    }
    state.counters["FLOPS"] = rate(conv_flops(s));
  });
}

// ---- the fused kernels (ours only) ----------------------------------------------------------------

void batch_norm_row(benchmark::State& state, bool backward, const BatchNormCase& c) {
  gpu_row(state, [&] {
    const int64_t n = 128, count = c.count();
    DeviceFloats x(count), g(count), out(count), gamma(c.c, 0.5f, 1.5f), beta(c.c);
    DeviceFloats mean(c.c), invstd(c.c), var(c.c), dgamma(c.c), dbeta(c.c);
    const auto forward = [&] {
      cuda::batch_norm_forward_train(x.get(), gamma.get(), beta.get(), out.get(), mean.get(), invstd.get(), var.get(),
                                     n, c.c, c.inner, 1e-5);
    };
    if (backward) {
      forward();  // the statistics the backward reads
      time_launches(state, [&] {
        cuda::batch_norm_backward_train(x.get(), g.get(), gamma.get(), mean.get(), invstd.get(), out.get(),
                                        dgamma.get(), dbeta.get(), n, c.c, c.inner);
      });
    } else {
      time_launches(state, forward);
    }
    state.counters["BYTES"] = rate((backward ? 20.0 : 12.0) * double(count));
  });
}

void pgd_step_row(benchmark::State& state, int64_t n) {
  gpu_row(state, [&] {
    DeviceFloats x(n, 0.f, 1.f), x_adv(n, 0.f, 1.f, 2), g(n);
    DeviceArray<double> l1(1);
    time_launches(state, [&] { cuda::pgd_step(x.get(), x_adv.get(), g.get(), n, 8.f / 255.f, 2.f / 255.f, l1.get()); });
    state.counters["BYTES"] = rate(16.0 * double(n));
  });
}

void random_start_row(benchmark::State& state, int64_t n) {
  gpu_row(state, [&] {
    DeviceFloats x(n, 0.f, 1.f), x_adv(n);
    uint64_t offset = 0;
    time_launches(state, [&] {
      cuda::random_start(x.get(), x_adv.get(), n, 8.f / 255.f, 7, offset);
      offset += uint64_t((n + 3) / 4);
    });
    state.counters["BYTES"] = rate(8.0 * double(n));
  });
}

void softmax_xent_row(benchmark::State& state, const SoftmaxCase& c) {
  gpu_row(state, [&] {
    DeviceFloats z(c.rows * c.cols, -4.f, 4.f), loss(c.rows);
    std::vector<int32_t> host_labels(size_t(c.rows));
    for (int64_t r = 0; r < c.rows; ++r) host_labels[size_t(r)] = int32_t(r % c.cols);
    DeviceArray<int32_t> labels(c.rows);
    cuda::copy_to_device(labels.get(), host_labels.data(), host_labels.size() * sizeof(int32_t));
    time_launches(state, [&] { cuda::softmax_xent_rows(z.get(), labels.get(), loss.get(), c.rows, c.cols); });
    state.counters["BYTES"] = rate(c.bytes());
  });
}

// One SGD-momentum step over every parameter tensor of the model, each in its own allocation as
// in training, in one launch (sgd_step_multi).
void sgd_step_row(benchmark::State& state, const std::string& model) {
  gpu_row(state, [&] {
    std::deque<DeviceFloats> buffers;  // a deque never moves its elements
    std::vector<cuda::SgdSegment> segments;
    int64_t total = 0;
    for (int64_t n : parameter_sizes(model)) {
      const DeviceFloats& p = buffers.emplace_back(n);
      const DeviceFloats& g = buffers.emplace_back(n);
      const DeviceFloats& m = buffers.emplace_back(n);
      segments.push_back({p.get(), g.get(), m.get(), n});
      total += n;
    }
    const optim::SgdHyper h{.lr = 0.1, .momentum = 0.9, .weight_decay = 5e-4};
    time_launches(state, [&] { cuda::sgd_step_multi(segments.data(), int(segments.size()), h); });
    state.counters["BYTES"] = rate(20.0 * double(total));
  });
}

// The box of an interval conv layer (interval.cu) beside cuDNN run twice, at the certified
// models' shapes.
enum class IntervalImpl { cudnn_twice, ours, ours_relu };
void interval_conv_row(benchmark::State& state, const ConvLayer& layer, IntervalImpl impl) {
  gpu_row(state, [&] {
    const cpu::ConvShape& s = layer.shape;
    const int64_t in = s.n * s.c * s.h * s.w, wn = s.o * s.c * s.kh * s.kw, out = s.n * s.o * s.oh * s.ow;
    DeviceFloats c(in), r(in, 0.f, 0.1f, 2), w(wn), bias(s.o), abs_w(wn), boxes(4 * out);
    time_launches(state, [&] {
      if (impl == IntervalImpl::cudnn_twice) {
        cuda::unary(ew::Unary::abs, w.get(), abs_w.get(), wn, 0.f, 0.f);
        cuda::conv2d_forward_vendor(s, c.get(), w.get(), bias.get(), boxes.get(), false);
        cuda::conv2d_forward_vendor(s, r.get(), abs_w.get(), nullptr, boxes.get() + out, false);
      } else {
        cuda::interval_conv2d_forward(s, c.get(), r.get(), w.get(), bias.get(), impl == IntervalImpl::ours_relu,
                                      boxes.get());
      }
    });
    state.counters["FLOPS"] = rate(2.0 * conv_flops(s));
  });
}

// ---- registration -----------------------------------------------------------------------------------

// A square problem large enough to reach each GEMM's peak, for the roofline comparison.
const GemmCase kSquare4096{"square_4096", false, false, 4096, 4096, 4096};

bool register_cuda_benchmarks() {
  std::vector<GemmCase> gemms = zoo_gemms();
  gemms.push_back(kSquare4096);
  constexpr MathPrecision kTensorCores[] = {MathPrecision::tf32, MathPrecision::bf16};
  for (const GemmCase& c : gemms) {
    for (bool vendor : {true, false})
      add("cuda_gemm/" + std::string(c.name) + (vendor ? "/v0_cublas" : "/ours"),
          [c, vendor](benchmark::State& st) { gemm_row(st, c, vendor); });
    for (MathPrecision p : kTensorCores)
      add("cuda_gemm/" + std::string(c.name) + "/ours_" + math_precision_name(p),
          [c, p](benchmark::State& st) { gemm_row(st, c, false, p); });
  }
  for (const ConvLayer& layer : zoo_conv_layers())
    for (ConvPass pass : kConvPasses) {
      for (bool vendor : {true, false})
        add(std::string("cuda_conv_") + pass_name(pass) + "/" + layer.name + (vendor ? "/v0_cudnn" : "/ours"),
            [pass, layer, vendor](benchmark::State& st) { conv_row(st, pass, layer, vendor); });
      for (MathPrecision p : kTensorCores)
        add(std::string("cuda_conv_") + pass_name(pass) + "/" + layer.name + "/ours_" + math_precision_name(p),
            [pass, layer, p](benchmark::State& st) { conv_row(st, pass, layer, false, p); });
    }
  for (const BatchNormCase& c : zoo_batch_norms())
    for (bool backward : {false, true})
      add(std::string(backward ? "cuda_batch_norm_backward/" : "cuda_batch_norm_forward/") + c.name,
          [backward, c](benchmark::State& st) { batch_norm_row(st, backward, c); });
  for (const AttackCase& c : attack_batches()) {
    add(std::string("cuda_pgd_step/") + c.name, [c](benchmark::State& st) { pgd_step_row(st, c.n); });
    add(std::string("cuda_random_start/") + c.name, [c](benchmark::State& st) { random_start_row(st, c.n); });
  }
  for (const SoftmaxCase& c : softmax_cases())
    add(std::string("cuda_softmax_xent/") + c.name, [c](benchmark::State& st) { softmax_xent_row(st, c); });
  for (const std::string& model : sgd_models())
    add("cuda_sgd_step/" + model + "_all_params", [model](benchmark::State& st) { sgd_step_row(st, model); });
  for (const ConvLayer& layer : interval_conv_layers())
    for (const auto& [impl, suffix] : {std::pair{IntervalImpl::cudnn_twice, "/v0_cudnn_twice"},
                                       std::pair{IntervalImpl::ours, "/ours"}, std::pair{IntervalImpl::ours_relu, "/ours_relu"}})
      add("cuda_interval_conv_forward/" + std::string(layer.name) + suffix,
          [layer, impl](benchmark::State& st) { interval_conv_row(st, layer, impl); });
  return true;
}

[[maybe_unused]] const bool cuda_benchmarks_registered = register_cuda_benchmarks();

}  // namespace

}  // namespace bulwark::bench

// The fused interval kernels on the CPU beside the unfused composition, at the certified models'
// conv shapes (batch 128; bench/kernel_shapes.h), with Google Benchmark, in `bulwark-bench kernels`:
//
//   cpu_interval_conv_relu_forward/<layer>/fused     interval_conv2d(c, r, W, b, relu): one op
//   cpu_interval_conv_relu_forward/<layer>/unfused   conv2d(c, W, b), conv2d(r, |W|), then the ReLU
//                                                    on the bounds: relu(c - r), relu(c + r),
//                                                    (u + l) / 2, (u - l) / 2 (what the layers ran
//                                                    before the fused op)
//   cpu_interval_conv_relu_train/<layer>/{fused,unfused}   the same forward with the backward of
//                                                    a loss on both outputs (c, r, W and b gradients)
// FLOPS counts the two products only (2 x 2 n O CKK L forward, 3x that with the backward), so
// the rates compare like for like. Both sides go through the engine (allocation, autograd), as
// IBP training does.
#include <benchmark/benchmark.h>

#include <string>

#include "bench/kernel_shapes.h"
#include "engine/autograd.h"
#include "engine/ops.h"
#include "engine/rng.h"

namespace bulwark::bench {

namespace {

// The post-ReLU box of the layer, fused or as the composition of primitive ops.
std::pair<Tensor, Tensor> interval_layer(const Tensor& c, const Tensor& r, const Tensor& w, const Tensor& b,
                                         const ConvShape& s, bool fused) {
  const Conv2dParams p{s.stride, s.pad};
  if (fused) {
    const Tensor out = interval_conv2d(c, r, w, b, p, true);
    return {out.slice(0, 2, 3), out.slice(0, 3, 4)};
  }
  const Tensor yc = conv2d(c, w, b, p), yr = conv2d(r, abs(w), Tensor(), p);
  const Tensor l = relu(yc - yr), u = relu(yc + yr);
  return {(u + l) * 0.5, (u - l) * 0.5};
}

void interval_row(benchmark::State& state, const ConvLayer& layer, bool fused, bool train) {
  const ConvShape& s = layer.shape;
  Generator gen(7);
  Tensor c = rand_uniform({s.n, s.c, s.h, s.w}, -1, 1, gen), r = rand_uniform({s.n, s.c, s.h, s.w}, 0, 0.1, gen);
  Tensor w = rand_uniform({s.o, s.c, s.kh, s.kw}, -0.2, 0.2, gen), b = rand_uniform({s.o}, -0.1, 0.1, gen);
  if (train)  // as in IBP training: the box comes from earlier layers, so it needs a gradient too
    for (Tensor* t : {&c, &r, &w, &b}) t->set_requires_grad(true);
  for (auto _ : state) {
    if (!train) {
      NoGradGuard no_grad;
      benchmark::DoNotOptimize(interval_layer(c, r, w, b, s, fused).first.data<float>());
      continue;
    }
    const auto [cc, rr] = interval_layer(c, r, w, b, s, fused);
    const auto g = grad({sum(cc) + sum(rr)}, {c, r, w, b});
    benchmark::DoNotOptimize(g[0].data<float>());
  }
  state.counters["FLOPS"] = benchmark::Counter(2.0 * conv_flops(s) * (train ? 3.0 : 1.0),
                                               benchmark::Counter::kIsIterationInvariantRate);
}

bool register_interval_benchmarks() {
  for (const ConvLayer& layer : interval_conv_layers())
    for (bool train : {false, true})
      for (bool fused : {true, false})
        benchmark::RegisterBenchmark(
            (std::string(train ? "cpu_interval_conv_relu_train/" : "cpu_interval_conv_relu_forward/") + layer.name +
             (fused ? "/fused" : "/unfused"))
                .c_str(),
            [layer, fused, train](benchmark::State& st) { interval_row(st, layer, fused, train); })
            ->UseRealTime()
            ->MeasureProcessCPUTime()
            ->Unit(benchmark::kMillisecond);
  return true;
}

[[maybe_unused]] const bool interval_benchmarks_registered = register_interval_benchmarks();

}  // namespace

}  // namespace bulwark::bench

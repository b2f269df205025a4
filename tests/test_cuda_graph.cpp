// CUDA Graphs: the emulator's stream capture (kernels/emu/graph.cpp), the backend's capture with
// its private memory pool and replay scalars (kernels/cuda/runtime.cu), and the trainer's
// --cuda-graphs, whose replayed steps must equal eager ones bit for bit.
//
// Like test_emu.cpp this file is CUDA source run by the emulator: it includes kernels/emu/emu.h
// and defines a small kernel next to the tests that capture it.
#include <catch2/catch.hpp>

#include "kernels/emu/emu.h"
#include "kernels/emu/launch.h"

#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "engine/ops.h"
#include "engine/rng.h"
#include "engine/runtime.h"
#include "engine/safetensors.h"
#include "kernels/cuda/cuda_kernels.h"
#include "models/layers.h"
#include "tests/cuda_test_util.h"
#include "tests/test_util.h"
#include "training/checkpoint.h"
#include "training/config.h"
#include "training/trainer.h"

namespace emu = bulwark::emu;
using bulwark::testing::DeviceBuffer;
using bulwark::testing::launches_of;
using Catch::Matchers::Contains;

namespace {

__global__ void add_scalar_kernel(float* x, int n, float v) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) x[i] += v;
}

void add_scalar(float* x, int n, float v, cudaStream_t stream) {
  BW_LAUNCH(add_scalar_kernel, (n + 63) / 64, 64, 0, stream, x, n, v);
}

// A stream for a capture, destroyed with the scope.
struct Stream {
  cudaStream_t s = nullptr;
  Stream() { REQUIRE(cudaStreamCreate(&s) == cudaSuccess); }
  ~Stream() { cudaStreamDestroy(s); }
};

}  // namespace

TEST_CASE("a captured stream records kernels, copies and memsets and runs them only when the graph launches",
          "[emu][cuda-graph]") {
  Stream stream;
  DeviceBuffer<float> x(std::vector<float>{1, 2, 3, 4, 5});
  DeviceBuffer<float> y(5);
  float* pinned = nullptr;
  REQUIRE(cudaMallocHost(&pinned, 5 * sizeof(float)) == cudaSuccess);
  for (int i = 0; i < 5; ++i) pinned[i] = 10.0f * i;

  const uint64_t before = launches_of("add_scalar_kernel");
  REQUIRE(cudaStreamBeginCapture(stream.s, cudaStreamCaptureModeGlobal) == cudaSuccess);
  cudaStreamCaptureStatus status{};
  REQUIRE(cudaStreamIsCapturing(stream.s, &status) == cudaSuccess);
  CHECK(status == cudaStreamCaptureStatusActive);
  add_scalar(x.ptr, 5, 1.0f, stream.s);
  REQUIRE(cudaMemsetAsync(y.ptr, 0, 5 * sizeof(float), stream.s) == cudaSuccess);
  REQUIRE(cudaMemcpyAsync(y.ptr, pinned, 3 * sizeof(float), cudaMemcpyHostToDevice, stream.s) == cudaSuccess);
  add_scalar(y.ptr, 5, 0.5f, stream.s);
  cudaGraph_t graph = nullptr;
  REQUIRE(cudaStreamEndCapture(stream.s, &graph) == cudaSuccess);
  // Nothing ran: x is untouched and no kernel was counted.
  CHECK(x.host() == std::vector<float>{1, 2, 3, 4, 5});
  CHECK(launches_of("add_scalar_kernel") == before);
  size_t nodes = 0;
  REQUIRE(cudaGraphGetNodes(graph, nullptr, &nodes) == cudaSuccess);
  CHECK(nodes == 4);

  cudaGraphExec_t exec = nullptr;
  REQUIRE(cudaGraphInstantiate(&exec, graph, 0) == cudaSuccess);
  REQUIRE(cudaGraphDestroy(graph) == cudaSuccess);  // the executable graph does not need it
  pinned[0] = -7;  // a copy node reads its pinned source when it runs, not when it was captured
  REQUIRE(cudaGraphLaunch(exec, stream.s) == cudaSuccess);
  CHECK(x.host() == std::vector<float>{2, 3, 4, 5, 6});
  CHECK(y.host() == std::vector<float>{-6.5f, 10.5f, 20.5f, 0.5f, 0.5f});
  REQUIRE(cudaGraphLaunch(exec, 0) == cudaSuccess);  // replays run the nodes again, on any stream
  CHECK(x.host() == std::vector<float>{3, 4, 5, 6, 7});
  CHECK(launches_of("add_scalar_kernel") == before + 4);  // a replay counts every node it runs
  REQUIRE(cudaGraphExecDestroy(exec) == cudaSuccess);
  CHECK(cudaGraphExecDestroy(exec) == cudaErrorInvalidValue);
  cudaFreeHost(pinned);
}

TEST_CASE("a capture fails as a GPU's does: host waits, pageable copies, the legacy stream, cudaMalloc",
          "[emu][cuda-graph]") {
  Stream stream;
  DeviceBuffer<float> x(std::vector<float>{1, 2, 3});
  std::vector<float> host(3);
  cudaGraph_t graph = nullptr;
  auto end_invalidated = [&] {
    CHECK(cudaStreamEndCapture(stream.s, &graph) == cudaErrorStreamCaptureInvalidated);
    CHECK(graph == nullptr);
    (void)cudaGetLastError();
  };

  SECTION("the default stream cannot capture") {
    CHECK(cudaStreamBeginCapture(0, cudaStreamCaptureModeGlobal) == cudaErrorStreamCaptureUnsupported);
    (void)cudaGetLastError();
  }
  SECTION("a synchronous copy to the host (what item() does)") {
    REQUIRE(cudaStreamBeginCapture(stream.s, cudaStreamCaptureModeGlobal) == cudaSuccess);
    add_scalar(x.ptr, 3, 1.0f, stream.s);
    const cudaError_t err = cudaMemcpy(host.data(), x.ptr, sizeof(float) * 3, cudaMemcpyDeviceToHost);
    CHECK(err == cudaErrorStreamCaptureUnsupported);
    CHECK_THAT(cudaGetErrorString(err), Contains("operation not permitted when stream is capturing"));
    cudaStreamCaptureStatus status{};
    REQUIRE(cudaStreamIsCapturing(stream.s, &status) == cudaSuccess);
    CHECK(status == cudaStreamCaptureStatusInvalidated);
    end_invalidated();
  }
  SECTION("waiting for the capturing stream") {
    REQUIRE(cudaStreamBeginCapture(stream.s, cudaStreamCaptureModeGlobal) == cudaSuccess);
    CHECK(cudaStreamSynchronize(stream.s) == cudaErrorStreamCaptureUnsupported);
    end_invalidated();
  }
  SECTION("an async copy with pageable host memory") {
    REQUIRE(cudaStreamBeginCapture(stream.s, cudaStreamCaptureModeGlobal) == cudaSuccess);
    CHECK(cudaMemcpyAsync(x.ptr, host.data(), sizeof(float) * 3, cudaMemcpyHostToDevice, stream.s) ==
          cudaErrorStreamCaptureUnsupported);
    end_invalidated();
  }
  SECTION("a launch on the legacy stream during a global capture") {
    REQUIRE(cudaStreamBeginCapture(stream.s, cudaStreamCaptureModeGlobal) == cudaSuccess);
    try {
      add_scalar(x.ptr, 3, 1.0f, 0);
      FAIL("expected bulwark::emu::Error");
    } catch (const emu::Error& e) {
      CHECK_THAT(e.what(), Contains("cudaErrorStreamCaptureImplicit"));
    }
    end_invalidated();
  }
  SECTION("an async copy on the legacy stream during a global capture") {
    DeviceBuffer<float> y(3);  // cudaMalloc: before the capture
    REQUIRE(cudaStreamBeginCapture(stream.s, cudaStreamCaptureModeGlobal) == cudaSuccess);
    CHECK(cudaMemcpyAsync(y.ptr, x.ptr, sizeof(float) * 3, cudaMemcpyDeviceToDevice, 0) == cudaErrorStreamCaptureImplicit);
    end_invalidated();
  }
  SECTION("cudaMalloc in global mode, allowed once the thread relaxes") {
    REQUIRE(cudaStreamBeginCapture(stream.s, cudaStreamCaptureModeGlobal) == cudaSuccess);
    void* p = nullptr;
    cudaStreamCaptureMode mode = cudaStreamCaptureModeRelaxed;
    REQUIRE(cudaThreadExchangeStreamCaptureMode(&mode) == cudaSuccess);
    CHECK(mode == cudaStreamCaptureModeGlobal);
    CHECK(cudaMalloc(&p, 64) == cudaSuccess);
    CHECK(cudaFree(p) == cudaSuccess);
    REQUIRE(cudaThreadExchangeStreamCaptureMode(&mode) == cudaSuccess);
    CHECK(cudaMalloc(&p, 64) == cudaErrorStreamCaptureUnsupported);
    end_invalidated();
  }
  // Whatever failed, the stream and device work eagerly again.
  add_scalar(x.ptr, 3, 1.0f, stream.s);
  CHECK(cudaStreamSynchronize(stream.s) == cudaSuccess);
  CHECK(x.host()[0] >= 2.0f);
}

TEST_CASE("the backend's capture: staged uploads, a private memory pool, and draws that move with each replay",
          "[cuda][cuda-graph]") {
  using namespace bulwark;
  const int64_t n = 37;
  auto* out = static_cast<float*>(cuda::device_malloc(sizeof(float) * n));
  std::vector<float> constants(n, 2.5f);
  auto* c = static_cast<float*>(cuda::device_malloc(sizeof(float) * n));

  cuda::begin_capture(/*philox_seed=*/7, /*philox_origin=*/100);
  cuda::uniform(out, n, -1.0f, 1.0f, 7, 100 + 3);  // 3 counters past the capture's origin
  cuda::copy_to_device(c, constants.data(), sizeof(float) * n);
  void* scratch = cuda::device_malloc(4096);
  cuda::device_free(scratch);
  std::shared_ptr<cuda::CapturedGraph> graph = cuda::end_capture();
  CHECK(cuda::graph_nodes(*graph) == 2);
  // The block the capture freed stays in the graph's pool: eager code never gets it.
  void* eager = cuda::device_malloc(4096);
  CHECK(eager != scratch);
  cuda::device_free(eager);

  constants.assign(n, -1.0f);  // the upload was staged at capture: replays send 2.5
  auto draws_at = [&](uint64_t offset) {
    std::vector<float> want(n);
    auto* ref = static_cast<float*>(cuda::device_malloc(sizeof(float) * n));
    cuda::uniform(ref, n, -1.0f, 1.0f, 7, offset);
    cuda::copy_to_host(want.data(), ref, sizeof(float) * n);
    cuda::device_free(ref);
    return want;
  };
  for (uint64_t base : {uint64_t(0), uint64_t(5000)}) {
    cuda::replay(*graph, base, 0.1, 1);
    std::vector<float> got(n), uploaded(n);
    cuda::copy_to_host(got.data(), out, sizeof(float) * n);
    cuda::copy_to_host(uploaded.data(), c, sizeof(float) * n);
    CHECK(got == draws_at(base + 3));
    CHECK(uploaded == std::vector<float>(n, 2.5f));
  }
  graph.reset();
  cuda::device_free(out);
  cuda::device_free(c);

  // A draw from another generator cannot move with the replays: refused at capture.
  cuda::begin_capture(7, 100);
  auto* tmp = static_cast<float*>(cuda::device_malloc(sizeof(float) * 4));
  CHECK_THROWS_WITH(cuda::uniform(tmp, 4, 0.0f, 1.0f, 8, 200), Contains("cannot be replayed by a CUDA graph"));
  cuda::device_free(tmp);
  cuda::abort_capture();
  CHECK_FALSE(cuda::capturing());
}

TEST_CASE("a step that reads a value back to the host cannot be captured, with CUDA's reason",
          "[cuda][cuda-graph]") {
  using namespace bulwark;
  Generator gen(3);
  const Tensor x = Tensor::ones({8}).to(Device::cuda);
  runtime::CudaGraph graph;
  CHECK_THROWS_WITH(graph.capture(gen, [&] { (void)sum(x * 2.0).item(); }),
                    Contains("cudaErrorStreamCaptureUnsupported") && Contains("operation not permitted when stream is capturing"));
  CHECK_FALSE(graph.captured());
  CHECK_FALSE(cuda::capturing());
  CHECK(sum(x * 2.0).item() == 16.0);  // eager again
}

namespace {

namespace fs = std::filesystem;

const void* raw(const bulwark::Tensor& t) {
  using bulwark::DType;
  if (t.dtype() == DType::f64) return t.data<double>();
  if (t.dtype() == DType::i32) return t.data<int32_t>();
  return t.data<float>();
}

bool same_bits(const bulwark::Tensor& a, const bulwark::Tensor& b) {
  if (a.shape() != b.shape() || a.dtype() != b.dtype()) return false;
  const bulwark::Tensor x = a.contiguous(), y = b.contiguous();
  return std::memcmp(raw(x), raw(y), static_cast<size_t>(x.numel()) * bulwark::dtype_size(x.dtype())) == 0;
}

std::vector<double> train_losses(const fs::path& metrics) {
  std::vector<double> v;
  std::ifstream in(metrics);
  for (std::string line; std::getline(in, line);) v.push_back(nlohmann::json::parse(line).at("train_loss").get<double>());
  return v;
}

// Counts the launches host code issues (a replayed graph's nodes are not among them).
struct HostLaunches : bulwark::LaunchObserver {
  uint64_t pgd_steps = 0, fused_attacks = 0, total = 0;
  void launched(const bulwark::LaunchEvent& e) override {
    ++total;
    pgd_steps += bulwark::kernel_family(e.name) == "pgd_step_kernel";
    fused_attacks += bulwark::kernel_family(e.name) == "fused_pgd_kernel";
  }
};

bulwark::training::TrainConfig graph_config(const std::string& out, const std::string& method,
                                            const std::string& optimizer, const std::string& graphs) {
  using namespace bulwark::training;
  TrainConfig c;
  c.model = "wong_small";
  c.data.dataset = "synthetic";
  c.data.train_size = 4 * 8 + 5;  // four full batches and a short one (eager: another shape)
  c.data.val_size = 8;
  c.data.test_size = 8;
  c.epochs = 2;
  c.batch_size = 8;  // the emulator runs every kernel on the CPU: the smallest batch that shows it
  c.eval_batch_size = 8;
  c.optimizer.name = optimizer;
  c.optimizer.lr = optimizer == "adam" ? 1e-3 : 0.05;
  c.method.name = method;
  c.schedule.name = "cyclic";  // the learning rate changes every batch
  c.robust_val_size = 0;
  c.final_attack_size = 0;
  c.threads = 1;
  c.out = out;
  if (method == "pgd") c.method.options.set("steps", 2);
  if (method == "fgsm-rs") c.method.options.set("guard", false);
  resolve_defaults(c);
  c.device = "cuda";  // after resolve_defaults, which refuses cuda without a real GPU
  c.cuda_graphs = graphs;
  return c;
}

}  // namespace

TEST_CASE("the trainer's --cuda-graphs replays the captured step bit for bit like eager steps (LR, Adam's step, random starts)",
          "[training][cuda][cuda-graph]") {
  using namespace bulwark;
  using namespace bulwark::training;
  bulwark::testing::TempDir dir("graphs");
  for (const auto& [method, optimizer] : {std::pair<std::string, std::string>{"pgd", "sgd"}, {"fgsm-rs", "adam"}}) {
    DYNAMIC_SECTION(method << " with " << optimizer) {
      auto run = [&](const std::string& graphs) {
        TrainConfig c = graph_config(dir / (method + "-" + graphs), method, optimizer, graphs);
        fs::create_directories(c.out);
        RunOptions quiet;
        quiet.quiet = true;
        Trainer trainer(c, load_run_data(c), quiet);
        const uint64_t pgd_before = launches_of("pgd_step_kernel");
        HostLaunches host;
        RunSummary s;
        {
          const bulwark::ObserveLaunches observe(host);
          s = trainer.run();
        }
        return std::make_tuple(s, launches_of("pgd_step_kernel") - pgd_before, host);
      };
      const auto [eager, eager_steps, eager_host] = run("off");
      const auto [graphs, graph_steps, graph_host] = run("on");
      // The same kernels ran (each replay runs every node of the step) ...
      CHECK(graph_steps == eager_steps);
      // ... but the host launched the attack steps of 2 of the 10 batches only: the eager warm-up
      // and the capture; the 7 other full batches replayed (the short batch of each epoch is eager).
      const uint64_t per_batch = method == "pgd" ? 2 : 1;
      CHECK(eager_host.pgd_steps == 10 * per_batch);
      CHECK(graph_host.pgd_steps == 4 * per_batch);
      CHECK(graph_host.total < eager_host.total);
      CHECK(graphs.fwd_passes == eager.fwd_passes);
      CHECK(graphs.bwd_passes == eager.bwd_passes);
      // ... with the same results, bit for bit: weights, optimizer state and generator position.
      const fs::path off = dir / (method + "-off"), on = dir / (method + "-on");
      const Checkpoint a = load_checkpoint((off / "last.safetensors").string());
      const Checkpoint b = load_checkpoint((on / "last.safetensors").string());
      REQUIRE(a.model.size() == b.model.size());
      for (const auto& [name, t] : a.model) {
        INFO(name);
        CHECK(same_bits(t, b.model.at(name)));
      }
      REQUIRE(a.optimizer.size() == b.optimizer.size());
      for (const auto& [name, t] : a.optimizer) {
        INFO(name);
        CHECK(same_bits(t, b.optimizer.at(name)));
      }
      CHECK(a.state.rng_offset == b.state.rng_offset);
      CHECK(train_losses(on / "metrics.jsonl") == train_losses(off / "metrics.jsonl"));
    }
  }
}

TEST_CASE("the trainer's --fused-attack runs each PGD attack as one launch, which a graph replays bit for bit",
          "[training][cuda][cuda-graph]") {
  using namespace bulwark;
  using namespace bulwark::training;
  bulwark::testing::TempDir dir("fused");
  auto run = [&](const std::string& fused, const std::string& graphs) {
    TrainConfig c = graph_config(dir / (fused + "-" + graphs), "pgd", "sgd", graphs);
    c.fused_attack = fused;
    c.epochs = 1;  // four full batches and a short one
    fs::create_directories(c.out);
    RunOptions quiet;
    quiet.quiet = true;
    Trainer trainer(c, load_run_data(c), quiet);
    const uint64_t fused_before = launches_of("fused_pgd_kernel");
    HostLaunches host;
    RunSummary s;
    {
      const bulwark::ObserveLaunches observe(host);
      s = trainer.run();
    }
    return std::make_tuple(s, launches_of("fused_pgd_kernel") - fused_before, host, fs::path(c.out));
  };
  const auto [eager, eager_runs, eager_host, eager_dir] = run("on", "off");
  const auto [graphs, graph_runs, graph_host, graph_dir] = run("on", "on");
  const auto [layered, layered_runs, layered_host, layered_dir] = run("off", "off");
  // One fused launch per batch and no layered step; with graphs the host launched 3 of the 5
  // (the eager warm-up, the capture, the short batch).
  CHECK(eager_runs == 5);
  CHECK(eager_host.fused_attacks == 5);
  CHECK(eager_host.pgd_steps == 0);
  CHECK(graph_runs == 5);
  CHECK(graph_host.fused_attacks == 3);
  CHECK(layered_runs == 0);
  CHECK(layered_host.pgd_steps == 10);
  CHECK(eager_host.total < layered_host.total);
  // The passes counted are the attack's, fused or not.
  CHECK(eager.fwd_passes == layered.fwd_passes);
  CHECK(eager.bwd_passes == layered.bwd_passes);
  const Checkpoint a = load_checkpoint((eager_dir / "last.safetensors").string());
  const Checkpoint b = load_checkpoint((graph_dir / "last.safetensors").string());
  for (const auto& [name, t] : a.model) {
    INFO(name);
    CHECK(same_bits(t, b.model.at(name)));
  }
  CHECK(train_losses(graph_dir / "metrics.jsonl") == train_losses(eager_dir / "metrics.jsonl"));
  // Fused and layered attacks sum in different orders, so a gradient sign near 0 may differ; the
  // training they drive stays close.
  const std::vector<double> fused_losses = train_losses(eager_dir / "metrics.jsonl"),
                            layered_losses = train_losses(layered_dir / "metrics.jsonl");
  REQUIRE(fused_losses.size() == layered_losses.size());
  for (size_t e = 0; e < fused_losses.size(); ++e) {
    INFO("epoch " << e << ": fused " << fused_losses[e] << ", layered " << layered_losses[e]);
    CHECK(std::abs(fused_losses[e] - layered_losses[e]) <= 0.01 * layered_losses[e]);
  }
}

TEST_CASE("the trainer's --fused-attack on refuses a model or precision it cannot fuse", "[training][cuda-graph]") {
  using namespace bulwark::training;
  bulwark::testing::TempDir dir("fused-bad");
  RunOptions quiet;
  quiet.quiet = true;
  TrainConfig cnn7 = graph_config(dir / "cnn7", "pgd", "sgd", "off");
  cnn7.model = "cnn7";
  cnn7.fused_attack = "on";
  fs::create_directories(cnn7.out);
  CHECK_THROWS_WITH(Trainer(cnn7, load_run_data(cnn7), quiet),
                    Contains("--fused-attack on: the cnn7 model is not a chain of Normalize, Conv2d"));
  TrainConfig bf16 = graph_config(dir / "bf16", "pgd", "sgd", "off");
  bf16.fused_attack = "on";
  bf16.precision = "bf16";
  fs::create_directories(bf16.out);
  CHECK_THROWS_WITH(Trainer(bf16, load_run_data(bf16), quiet), Contains("computes in fp32, not --precision bf16"));
}

TEST_CASE("the trainer's --cuda-graphs on refuses what it cannot replay", "[training][cuda-graph]") {
  using namespace bulwark::training;
  bulwark::testing::TempDir dir("graphs-bad");
  TrainConfig c = graph_config(dir / "free", "free", "sgd", "on");
  fs::create_directories(c.out);
  RunOptions quiet;
  quiet.quiet = true;
  CHECK_THROWS_WITH(Trainer(c, load_run_data(c), quiet), Contains("free step cannot be replayed as a CUDA graph"));
  TrainConfig cpu = graph_config(dir / "cpu", "pgd", "sgd", "on");
  cpu.device = "cpu";
  fs::create_directories(cpu.out);
  CHECK_THROWS_WITH(Trainer(cpu, load_run_data(cpu), quiet), Contains("--cuda-graphs on needs --device cuda"));
}

TEST_CASE("BatchNorm counts its training steps on the device: no host wait, so a graph can capture it",
          "[cuda][cuda-graph]") {
  using namespace bulwark;
  // The counter op on both backends, at one element and at an awkward size.
  for (int64_t n : {int64_t(1), int64_t(1037)}) {
    std::vector<int32_t> v(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) v[static_cast<size_t>(i)] = static_cast<int32_t>(i * 7 - 300);
    const Tensor cpu = Tensor::from_vector(v, {n});
    Tensor gpu = cpu.to(Device::cuda);
    Tensor host = cpu.clone();
    host.add_i32_(-3);
    gpu.add_i32_(-3);
    const Tensor back = gpu.to(Device::cpu);
    CHECK(std::memcmp(back.data<int32_t>(), host.data<int32_t>(), sizeof(int32_t) * static_cast<size_t>(n)) == 0);
    CHECK(host.data<int32_t>()[0] == v[0] - 3);
  }
  CHECK_THROWS_WITH(Tensor::zeros({2}).add_i32_(1), Contains("needs a contiguous i32 tensor"));

  BatchNorm2d bn(3);
  bn.to(Device::cuda);
  bn.train();
  const Tensor x = Tensor::ones({4, 3, 2, 2}).to(Device::cuda);
  const uint64_t waits = cuda::host_copy_count();
  (void)bn.forward(x);
  (void)bn.forward(x);
  CHECK(cuda::host_copy_count() == waits);  // two training forwards, no read-back
  CHECK(bn.num_batches_tracked.item() == 2);
}

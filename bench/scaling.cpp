// bulwark-bench scaling: what data parallelism costs and gains (docs/distributed.md).
//
// Measured, here: the gradient all-reduce of one step on the CPU backend, the trainer's own path
// (training::GradientAverager: the gradients copied into one bucket, summed over ranks by MPI,
// averaged and handed back), at 1 rank (the copies alone) and at 2 ranks, the second by running
// this bench under `mpirun -np 2` itself; and, at 2 ranks, a whole step (forward, backward,
// average) with --bucket-mb buckets sent while the backward runs against one bucket sent after
// it. The two ranks share this machine's cores and memory.
//
// Modelled, for GPUs: per model and method, one step's H100 time at --batch per GPU from the GPU
// cost model (training/gpu_model.h; record-only emulator where there is no GPU) against the ring
// all-reduce of its gradients over N GPUs,
//     t_ring(N) = 2 (N - 1) / N * bytes / bandwidth + 2 (N - 1) * latency
// with NVLink (450 GB/s per direction, 3 us a hop) inside a node of 8 GPUs and InfiniBand NDR
// (50 GB/s, 6 us a hop) once the ring leaves it (the ring is as slow as its slowest link). The
// efficiency t_step / (t_step + t_ring) assumes no overlap, t_step / max(t_step, t_ring) a
// perfect one (buckets sent while the backward goes on). NCCL's tree and hierarchical algorithms
// do better across nodes than a flat ring: these are its worst case.
#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "bench/train_step.h"
#include "engine/comm.h"
#include "engine/ops.h"
#include "engine/runtime.h"
#include "training/data_parallel.h"
#include "training/gpu_model.h"

namespace bulwark::bench {

namespace {

struct Link {
  double bandwidth, latency;  // bytes/s per direction, seconds a hop
};
constexpr Link kNvlink{450e9, 3e-6};
constexpr Link kInfiniband{50e9, 6e-6};
constexpr int kGpusPerNode = 8;

double ring_seconds(double bytes, int gpus) {
  if (gpus <= 1) return 0;
  const Link l = gpus <= kGpusPerNode ? kNvlink : kInfiniband;
  const double n = gpus;
  return 2 * (n - 1) / n * bytes / l.bandwidth + 2 * (n - 1) * l.latency;
}

// An optimizer that does nothing: the bench times the average, not the update.
struct NoUpdate : robust::ParameterUpdate {
  void zero_grad() override {}
  void step() override {}
};

// Median milliseconds of the all-reduce of a step of `model_name`'s gradients on this rank.
double allreduce_ms(const std::string& model_name, int reps, comm::Communicator& ranks) {
  const BenchBatch b = bench_batch(model_name, 1);
  std::shared_ptr<Module> model = make_model(model_name, b.model);
  const NamedTensors params = model->named_parameters();
  NoUpdate none;
  training::GradientAverager average(none, params, ranks, 1);
  std::vector<double> ms;
  for (int r = 0; r < reps + 1; ++r) {
    for (const auto& [name, p] : params) p.impl()->grad = Tensor::full(p.shape(), 1.0, p.dtype(), p.device()).impl_ptr();
    ranks.barrier();
    const auto t0 = std::chrono::steady_clock::now();
    average.begin_micro_batch(0);
    average.step();
    const double t = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    if (r > 0) ms.push_back(t);  // the first allocates
  }
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

// Median milliseconds of a training step's forward, backward and gradient average (no update)
// at `batch` samples a rank, with buckets of `bucket_bytes` (sent during the backward) and with
// one bucket (sent after it), timed alternately: {buckets, one bucket}.
std::pair<double, double> step_ms(const std::string& model_name, int64_t batch, int reps, int64_t bucket_bytes,
                                  comm::Communicator& ranks) {
  const BenchBatch b = bench_batch(model_name, batch);
  std::shared_ptr<Module> model = make_model(model_name, b.model);
  const NamedTensors params = model->named_parameters();
  NoUpdate none;
  training::GradientAverager buckets(none, params, ranks, 1, bucket_bytes), one(none, params, ranks, 1, int64_t{1} << 40);
  std::vector<double> ms[2];
  for (int r = 0; r < reps + 1; ++r)
    for (int k = 0; k < 2; ++k) {
      training::GradientAverager& average = k == 0 ? buckets : one;
      for (const auto& [name, p] : params) Tensor(p).zero_grad();
      ranks.barrier();
      const auto t0 = std::chrono::steady_clock::now();
      average.begin_micro_batch(0);
      average.backward(cross_entropy((*model)(b.x), b.y), true);
      average.step();
      const double t = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
      if (r > 0) ms[k].push_back(t);  // the first allocates
    }
  for (auto& v : ms) std::sort(v.begin(), v.end());
  return {ms[0][ms[0].size() / 2], ms[1][ms[1].size() / 2]};
}

struct TwoRanks {
  double allreduce_ms = 0, step_buckets_ms = 0, step_one_bucket_ms = 0;
};

// The 2-rank figures: this executable under mpirun, one JSON line per model from rank 0.
std::map<std::string, TwoRanks> measure_two_ranks(const std::vector<std::string>& models, int reps, int64_t step_batch,
                                                  double bucket_mb, std::string& why) {
#ifdef BULWARK_MPIEXEC
  const std::string self = std::filesystem::read_symlink("/proc/self/exe").string();
  std::string cmd = fmt::format("'{}' --allow-run-as-root --oversubscribe --bind-to none -np 2 '{}' scaling --reps {} "
                                "--step-batch {} --bucket-mb {} --measure-under-mpi",
                                BULWARK_MPIEXEC, self, reps, step_batch, bucket_mb);
  for (const std::string& m : models) cmd += " --model " + m;
  FILE* pipe = ::popen((cmd + " 2>&1").c_str(), "r");
  if (pipe == nullptr) {
    why = "popen failed";
    return {};
  }
  std::map<std::string, TwoRanks> out;
  std::string text;
  std::array<char, 4096> buf{};
  while (std::fgets(buf.data(), static_cast<int>(buf.size()), pipe) != nullptr) text += buf.data();
  const int status = ::pclose(pipe);
  size_t at = 0;
  while (at < text.size()) {
    const size_t end = text.find('\n', at);
    const std::string line = text.substr(at, end == std::string::npos ? std::string::npos : end - at);
    at = end == std::string::npos ? text.size() : end + 1;
    const nlohmann::json j = nlohmann::json::parse(line, nullptr, false);
    if (j.is_object() && j.contains("allreduce_ms"))
      out[j.at("model")] = {j.at("allreduce_ms"), j.at("step_buckets_ms"), j.at("step_one_bucket_ms")};
  }
  if (status != 0 || out.size() != models.size()) why = "mpirun failed: " + text.substr(0, 400);
  return out;
#else
  (void)models, (void)reps, (void)step_batch, (void)bucket_mb;
  why = "this build has no MPI (apt-get install libopenmpi-dev openmpi-bin, then rebuild)";
  return {};
#endif
}

}  // namespace

int scaling_main(int argc, char** argv) {
  CLI::App app{"bulwark-bench scaling: the gradient all-reduce of a step measured at 1 and 2 ranks on this CPU, and "
               "the modelled scaling of H100s over NVLink and InfiniBand"};
  std::vector<std::string> models{"wong_large", "cnn7", "preact_resnet18"};
  std::vector<std::string> methods{"standard", "pgd"};
  int64_t batch = 128, step_batch = 8;
  double bucket_mb = 25;
  int reps = 20;
  bool under_mpi = false, json = false;
  app.add_option("--model", models, "zoo models (default: wong_large, cnn7, preact_resnet18)");
  app.add_option("--method", methods, "methods of the modelled steps (default: standard, pgd)");
  app.add_option("--batch", batch, "batch size per GPU of the modelled steps")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 16));
  app.add_option("--reps", reps, "all-reduces timed per model (the median is reported)")->check(CLI::Range(1, 10000));
  app.add_option("--step-batch", step_batch, "samples per rank of the measured 2-rank training steps")
      ->check(CLI::Range(int64_t{1}, int64_t{4096}));
  app.add_option("--bucket-mb", bucket_mb, "bucket size of the measured steps' overlapped all-reduce (as train's)")
      ->check(CLI::PositiveNumber);
  app.add_flag("--json", json, "one JSON line per row instead of the tables");
  app.add_flag("--measure-under-mpi", under_mpi, "(internal) this process is a rank of the 2-rank measurement");
  CLI11_PARSE(app, argc, argv);

  if (under_mpi) {
    comm::set_world(comm::make_mpi(60));
    comm::Communicator& ranks = comm::world();
    runtime::set_num_threads(1);
    for (const std::string& m : models) {
      const double ms = allreduce_ms(m, reps, ranks);
      const auto [buckets, one] = step_ms(m, step_batch, reps, static_cast<int64_t>(bucket_mb * 1e6), ranks);
      if (ranks.rank() == 0)
        fmt::print("{}\n", nlohmann::json{{"model", m}, {"allreduce_ms", ms}, {"step_buckets_ms", buckets},
                                          {"step_one_bucket_ms", one}}
                               .dump());
    }
    comm::set_world(nullptr);
    return 0;
  }
  if (!runtime::cuda_emulated() && !runtime::cuda_available()) return run_emulated_twin("scaling", argc, argv);
  runtime::set_num_threads(1);

  // Measured.
  std::string why;
  const std::map<std::string, TwoRanks> two = measure_two_ranks(models, reps, step_batch, bucket_mb, why);
  if (!json) {
    fmt::print("measured: the gradient all-reduce of one step on this CPU (GradientAverager: bucket copies + MPI "
               "reduce/broadcast), median of {}; and a 2-rank step (forward, backward, average; batch {} a rank, "
               "1 thread each) with {:g} MB buckets sent during the backward vs one bucket after it\n",
               reps, step_batch, bucket_mb);
    fmt::print("{:<16} {:>10} {:>9} {:>11} {:>11} {:>10} {:>13} {:>13}\n", "model", "params", "grad MB", "1 rank ms",
               "2 ranks ms", "buckets", "step ms", "1-bucket ms");
  }
  for (const std::string& m : models) {
    const BenchBatch b = bench_batch(m, 1);
    const int64_t params = make_model(m, b.model)->num_parameters();
    const double one = allreduce_ms(m, reps, comm::world());
    const auto it = two.find(m);
    const auto measured = [&](double TwoRanks::*field) {
      return it == two.end() ? nlohmann::json() : nlohmann::json(it->second.*field);
    };
    const auto cell = [&](double TwoRanks::*field) {
      return it == two.end() ? std::string("-") : fmt::format("{:.2f}", it->second.*field);
    };
    NoUpdate none;
    const size_t n_buckets =
        training::GradientAverager(none, make_model(m, b.model)->named_parameters(), comm::world(), 1,
                                   static_cast<int64_t>(bucket_mb * 1e6))
            .buckets()
            .size();
    if (json)
      fmt::print("{}\n", nlohmann::json{{"measured", true},
                                        {"model", m},
                                        {"params", params},
                                        {"rank1_ms", one},
                                        {"rank2_ms", measured(&TwoRanks::allreduce_ms)},
                                        {"buckets", n_buckets},
                                        {"rank2_step_ms", measured(&TwoRanks::step_buckets_ms)},
                                        {"rank2_step_one_bucket_ms", measured(&TwoRanks::step_one_bucket_ms)}}
                             .dump());
    else
      fmt::print("{:<16} {:>10} {:>9.1f} {:>11.2f} {:>11} {:>10} {:>13} {:>13}\n", m, params,
                 4.0 * static_cast<double>(params) / 1e6, one, cell(&TwoRanks::allreduce_ms), n_buckets,
                 cell(&TwoRanks::step_buckets_ms), cell(&TwoRanks::step_one_bucket_ms));
  }
  if (!json && !why.empty()) fmt::print("2 ranks not measured: {}\n", why);

  // Modelled.
  const std::vector<int> gpus{1, 8, 64};
  if (!json) {
    fmt::print("\nmodelled: H100 step (GPU cost model, {}) at batch {} per GPU vs the ring all-reduce of its gradients; "
               "efficiency without / with overlap\n",
               runtime::cuda_emulated() ? "record-only emulator" : "this GPU's launches", batch);
    fmt::print("{:<16} {:<9} {:>9} {:>10}", "model", "method", "grad MB", "step ms");
    for (int n : gpus) fmt::print(" {:>9} {:>13}", fmt::format("ring{} ms", n), fmt::format("eff{}", n));
    fmt::print("\n");
  }
  for (const std::string& m : models) {
    const BenchBatch b = bench_batch(m, batch);
    for (const std::string& method : methods) {
      robust::MethodConfig cfg;
      cfg.name = method;
      cfg.options.set("eps", b.shape.eps);
      std::shared_ptr<Module> model = make_model(m, b.model);
      const double bytes = 4.0 * static_cast<double>(model->num_parameters());
      const training::StepRecord r =
          training::record_training_step(*model, cfg, b.x, b.y, runtime::cuda_emulated(), 1.0, 1, 0, false);
      const double step = training::modelled_seconds(r.launches, training::kH100, training::kEagerLaunchSeconds);
      nlohmann::json row{{"measured", false}, {"model", m}, {"method", method}, {"grad_bytes", bytes},
                         {"h100_step_ms", step * 1e3}};
      if (!json) fmt::print("{:<16} {:<9} {:>9.1f} {:>10.3f}", m, method, bytes / 1e6, step * 1e3);
      for (int n : gpus) {
        const double ring = ring_seconds(bytes, n);
        const double plain = step / (step + ring), overlapped = step / std::max(step, ring);
        row[fmt::format("ring{}_ms", n)] = ring * 1e3;
        row[fmt::format("efficiency{}", n)] = plain;
        row[fmt::format("efficiency{}_overlap", n)] = overlapped;
        if (!json) fmt::print(" {:>9.3f} {:>13}", ring * 1e3, fmt::format("{:.0f}% / {:.0f}%", 100 * plain, 100 * overlapped));
      }
      if (json)
        fmt::print("{}\n", row.dump());
      else
        fmt::print("\n");
    }
  }
  return 0;
}

}  // namespace bulwark::bench

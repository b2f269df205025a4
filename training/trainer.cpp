#include "training/trainer.h"

#include "engine/profiler.h"

#include <fmt/format.h>

#include <chrono>
#include <csignal>
#include <ctime>
#include <cmath>
#include <filesystem>
#include <fstream>

#include "engine/json_field.h"
#include "engine/runtime.h"
#include "engine/safetensors.h"
#include "models/layers.h"
#include "models/zoo.h"
#include "robust/attacks.h"
#include "robust/registry.h"
#include "training/evaluate.h"
#include "training/interrupt.h"
#include "training/memory.h"

namespace bulwark::training {

namespace fs = std::filesystem;

namespace {
using Clock = std::chrono::steady_clock;

// On CUDA every read of the step log makes the host wait for the device: the progress bar reads
// it at most this often there.
constexpr double kDeviceReadSeconds = 1.0;

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// CPU time of the whole process so far (user + system, all threads).
double process_cpu_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

// The method's Philox key: the run seed with a constant mixed in, so its stream never lines up
// with the model initialisation's stream (which is keyed by the seed itself).
uint64_t method_stream_seed(uint64_t seed) { return seed ^ 0x9E3779B97F4A7C15ull; }

void append_line(const std::string& path, const std::string& line) {
  std::ofstream out(path, std::ios::app);
  out << line << '\n';
  out.flush();
  if (!out) throw std::runtime_error(fmt::format("cannot append to {} (disk full or read-only?)", path));
}

// The metrics.jsonl lines of epochs <= `epochs_done`, raw and parsed. A line past the checkpoint
// belongs to an epoch that will be trained again.
std::vector<std::pair<std::string, EpochMetrics>> read_metrics(const std::string& path, int64_t epochs_done) {
  std::vector<std::pair<std::string, EpochMetrics>> out;
  std::ifstream in(path);
  std::string line;
  for (int64_t n = 1; std::getline(in, line); ++n) {
    if (line.empty()) continue;
    try {
      EpochMetrics m = metrics_from_json(nlohmann::json::parse(line));
      if (m.epoch <= epochs_done) out.emplace_back(line, std::move(m));
    } catch (const nlohmann::json::exception& e) {
      throw std::runtime_error(fmt::format("{} line {} is damaged ({}); fix or delete the line to resume", path, n, e.what()));
    }
  }
  return out;
}
// PGD-k accuracy on the first n samples of d: eval mode, step 2.5 eps / k (Madry's rule), one
// random start from a fixed Philox stream, so every epoch is attacked the same way. A
// self-gradient network is attacked through its full graph, whatever gradient it trains with.
double pgd_accuracy(Module& model, const data::Dataset& d, int64_t n, double eps, int steps, int64_t batch_size,
                    Device device) {
  SgnGradScope full_graph(model, SgnGrad::full);
  AttackOptions o;
  o.kind = AttackKind::pgd;
  o.eps = eps;
  o.steps = steps;
  o.seed = 0x5EED;
  return evaluate_attack(model, d, 0, n, o, batch_size, device).accuracy;
}
}  // namespace

nlohmann::ordered_json RunSummary::to_json() const {
  nlohmann::ordered_json j;
  j["out"] = out;
  j["complete"] = complete;
  j["epochs_completed"] = epochs_completed;
  j["best_val_acc"] = best_val_acc;
  j["best_epoch"] = best_epoch;
  j["final_val_acc"] = final_val_acc;
  j["test_acc"] = test_acc;
  j["test_loss"] = test_loss;
  j["test_size"] = test_size;
  j["test_robust_acc"] = test_robust_acc;
  j["test_robust_size"] = test_robust_size;
  j["stopped_at_epoch"] = stopped_at_epoch;
  j["seconds"] = seconds;
  j["cpu_seconds"] = cpu_seconds;
  j["fwd_passes"] = fwd_passes;
  j["bwd_passes"] = bwd_passes;
  j["num_parameters"] = num_parameters;
  return j;
}

std::shared_ptr<Module> build_model(const TrainConfig& cfg, Device device) {
  ModelConfig mc;
  mc.in_channels = cfg.input.channels;
  mc.height = cfg.input.height;
  mc.width = cfg.input.width;
  mc.num_classes = cfg.input.num_classes;
  mc.mean = cfg.input.mean;
  mc.std = cfg.input.std;
  mc.seed = cfg.seed;
  mc.sgn.taps = parse_sgn_taps(cfg.sgn.taps);
  mc.sgn.grad = parse_sgn_grad(cfg.sgn.grad);
  mc.sgn.gate_init = cfg.sgn.gate_init;
  std::shared_ptr<Module> model = make_model(cfg.model, mc);  // initialised on the CPU, the same on every device
  model->to(device);
  return model;
}

Trainer::Trainer(TrainConfig cfg, RunData data, RunOptions options)
    : cfg_(std::move(cfg)),
      comm_(comm::world()),
      layout_{comm_.size(), comm_.rank(), static_cast<int>(cfg_.grad_accum), cfg_.batch_size},
      data_(std::move(data)),
      options_(options),
      progress_(options.quiet || comm_.rank() > 0),
      device_(run_device(cfg_)),
      model_(build_model(cfg_, device_)),
      optimizer_(make_optimizer(cfg_.optimizer, model_->named_parameters())),
      schedule_(make_schedule(cfg_.schedule, cfg_.optimizer.lr, cfg_.epochs)),
      method_(robust::make_method(cfg_.method)),
      gen_(method_stream_seed(cfg_.seed)) {
  optimizer_->set_grad_clip(cfg_.grad_clip);
  if (cfg_.world_size != comm_.size())
    throw std::invalid_argument(fmt::format("the run was configured for {} rank{}, and {} were launched: a run keeps its "
                                            "rank count (mpirun -np {})",
                                            cfg_.world_size, cfg_.world_size == 1 ? "" : "s", comm_.size(),
                                            cfg_.world_size));
  if (layout_.parallel())
    averager_ = std::make_unique<GradientAverager>(*optimizer_, model_->named_parameters(), comm_, layout_.accum,
                                                   static_cast<int64_t>(cfg_.bucket_mb * 1e6));
  steps_once_per_batch_ = robust::method_registry().at(cfg_.method.name).steps_once_per_batch;
  // The guard's probe: the first batch_size training samples, fixed for the whole run.
  const int64_t n = std::min(cfg_.batch_size, data_.train.n);
  probe_x_ = images_tensor(data_.train, 0, n).to(device_);
  probe_y_ = labels_tensor(data_.train, 0, n).to(device_);
  method_->check(*model_, probe_x_, probe_y_, cfg_.batch_size);
  const bool profiling = options_.profile || !options_.trace.empty();
  if (cfg_.cuda_graphs == "on") {
    if (device_ != Device::cuda)
      throw std::invalid_argument("--cuda-graphs on needs --device cuda (CUDA graphs replay GPU work)");
    if (layout_.parallel())
      throw std::invalid_argument("--cuda-graphs on with several ranks or --grad-accum: the captured step does not "
                                  "include the gradient all-reduce; use --cuda-graphs off");
    if (!method_->capturable())
      throw std::invalid_argument(fmt::format(
          "--cuda-graphs on: the {} step cannot be replayed as a CUDA graph (it adapts on the host between batches or "
          "steps the optimizer more than once); graphs serve standard, pgd and fgsm-rs: use --cuda-graphs off",
          method_->name()));
    if (profiling)
      throw std::invalid_argument("--cuda-graphs on with --profile or --trace: a replayed graph has no ops to time; "
                                  "profile with --cuda-graphs off");
    use_graphs_ = true;
  } else {
    use_graphs_ = cfg_.cuda_graphs == "auto" && device_ == Device::cuda && !runtime::cuda_emulated() &&
                  !layout_.parallel() &&
                  method_->capturable() && !profiling;
  }
  const std::optional<std::vector<FusedLayer>> fusable_layers = fused_layers(*model_);
  const bool fusable = fusable_layers.has_value();
  if (cfg_.fused_attack == "on" && (!fusable || cfg_.precision != "fp32"))
    throw std::invalid_argument(fmt::format(
        "--fused-attack on: {}; use --fused-attack off",
        !fusable ? fmt::format("the {} model is not a chain of Normalize, Conv2d, Linear, ReLU and Flatten layers "
                               "(BatchNorm, pooling and residual blocks are not fused)",
                               cfg_.model)
                 : fmt::format("the fused attack computes in fp32, not --precision {}", cfg_.precision)));
  // auto: where one block per sample beats the layered attack on paper (docs/kernels.md, "Attack
  // step"): a small per-sample forward, at most kFusedAutoMacs multiply-adds.
  constexpr int64_t kFusedAutoMacs = 2'000'000;
  fused_attack_ = cfg_.fused_attack == "on" ||
                  (cfg_.fused_attack == "auto" && device_ == Device::cuda && !runtime::cuda_emulated() && fusable &&
                   cfg_.precision == "fp32" &&
                   fused_forward_macs(*fusable_layers, Shape(probe_x_.shape().begin() + 1, probe_x_.shape().end())) <=
                       kFusedAutoMacs);
}

std::string Trainer::path(const std::string& name) const { return (fs::path(cfg_.out) / name).string(); }

void Trainer::restore(const Checkpoint& c) {
  const CheckpointState& s = c.state;
  model_->load_state_dict(c.model);
  optimizer_->load_state(c.optimizer);
  try {
    schedule_->load_state(s.schedule_state);
    method_->load_state(s.method_state);
  } catch (const nlohmann::json::exception& e) {
    throw std::runtime_error(fmt::format("the checkpoint's schedule_state or method_state does not fit the {} "
                                         "schedule and the {} method: damaged checkpoint? ({})",
                                         cfg_.schedule.name, cfg_.method.name, e.what()));
  }
  if (s.rng_seed != gen_.seed())
    throw std::runtime_error(fmt::format("checkpoint RNG seed {} does not match the run's seed {}: the checkpoint "
                                         "belongs to another run",
                                         s.rng_seed, gen_.seed()));
  gen_.set_offset(s.rng_offset);
  start_epoch_ = s.epoch;
  start_batch_ = s.batch;
  resume_progress_ = s.epoch_progress;
  best_val_acc_ = s.best_val_acc;
  best_epoch_ = s.best_epoch;
  std::string kept;
  for (auto& [line, m] : read_metrics(path("metrics.jsonl"), s.epoch)) {
    kept += line + "\n";
    history_.push_back(std::move(m));
  }
  if (writes()) write_file_atomically(path("metrics.jsonl"), kept);
}

CheckpointState Trainer::checkpoint_state(int64_t epochs_done, const EpochMetrics& m) const {
  CheckpointState s;
  s.config = to_json(cfg_);
  s.epoch = epochs_done;
  s.batch = 0;
  s.rng_seed = gen_.seed();
  s.rng_offset = gen_.offset();
  s.schedule_state = schedule_->state();
  s.method_state = method_->state();
  s.best_val_acc = best_val_acc_;
  s.best_epoch = best_epoch_;
  s.metrics = m.to_json();
  return s;
}

void Trainer::train_batch(robust::StepContext& ctx, const Tensor& x, const Tensor& y) {
  if (!layout_.parallel()) {
    train_step(ctx, x, y);
    return;
  }
  robust::StepContext micro{ctx.model, *averager_, ctx.gen, ctx.passes, ctx.log, ctx.epoch, ctx.batch};
  micro.eps_scale = ctx.eps_scale;
  micro.fused_attack = ctx.fused_attack;
  const uint64_t base = gen_.offset();
  const int64_t n = layout_.micro_batch;
  const uint64_t stride = micro_batch_counters(n, x.numel() / x.size(0));
  if (!steps_once_per_batch_) {
    // A replay method takes the rank's micro-batches at once and sums them itself.
    averager_->begin_summed_batch();
    micro.micro_batch = n;
    const uint64_t start = base + static_cast<uint64_t>(layout_.global_micro(0)) * stride;
    gen_.set_offset(start);
    train_step(micro, x, y);
    if (gen_.offset() - start > stride * static_cast<uint64_t>(layout_.accum))
      throw std::logic_error(fmt::format("the {} step drew {} Philox counters, more than its micro-batches' {}",
                                         method_->name(), gen_.offset() - start, stride * layout_.accum));
    gen_.set_offset(base + static_cast<uint64_t>(layout_.micro_batches()) * stride);
    return;
  }
  for (int a = 0; a < layout_.accum; ++a) {
    averager_->begin_micro_batch(a);
    const uint64_t start = base + static_cast<uint64_t>(layout_.global_micro(a)) * stride;
    gen_.set_offset(start);
    train_step(micro, x.slice(0, a * n, (a + 1) * n), y.slice(0, a * n, (a + 1) * n));
    if (gen_.offset() - start > stride)
      throw std::logic_error(fmt::format("the {} step drew {} Philox counters, more than a micro-batch's {} (one "
                                         "random start): it cannot train on several ranks or with --grad-accum",
                                         method_->name(), gen_.offset() - start, stride));
  }
  gen_.set_offset(base + static_cast<uint64_t>(layout_.micro_batches()) * stride);
}

void Trainer::add_logged_batches(EpochTotals& totals, int64_t epoch, int64_t batches,
                                 const std::vector<double>& lr_of_batch) {
  for (const robust::BatchResult& r : step_log_.read_new_batches()) {
    if (!std::isfinite(r.loss_sum)) {
      const std::string kept =
          epoch > 0 ? fmt::format("{} still holds the model after epoch {}", path("last.safetensors"), epoch)
                    : std::string("no checkpoint was written (this was the first epoch)");
      throw TrainingDiverged(fmt::format("training diverged: the loss is {} at epoch {}/{}, batch {}/{} (lr {:.3g}); {}. "
                                         "Lower --lr (it is {:.3g}) or use a schedule that warms up.",
                                         r.loss_sum, epoch + 1, cfg_.epochs, r.batch + 1, batches,
                                         lr_of_batch[static_cast<size_t>(r.batch)], kept, cfg_.optimizer.lr));
    }
    totals.loss_sum += r.loss_sum;
    totals.correct += r.correct;
    totals.count += r.count;
  }
}

// With --cuda-graphs a full batch after the ramp is trained by replaying one captured step: its
// inputs are copied into the buffers the graph reads, the generator, the optimizer's step count,
// the pass counters and the step log advance as the eager step would have advanced them. The
// first full batch runs eagerly (it creates lazy state and lets --kernels auto time its shapes,
// which syncs), the second is captured and replayed, every later one replayed. A batch of another
// shape (the epoch's last) and the ramp's batches (eps changes every batch) run eagerly.
void Trainer::train_step(robust::StepContext& ctx, const Tensor& x, const Tensor& y) {
  const bool graphable = use_graphs_ && ctx.eps_scale == 1.0 && x.size(0) == cfg_.batch_size;
  if (!graphable || !graph_warmed_up_) {
    method_->train_batch(ctx, x, y);
    graph_warmed_up_ = graph_warmed_up_ || graphable;
    return;
  }
  if (!graph_.captured()) capture_step(ctx, x, y);
  graph_x_.copy_(x);
  graph_y_.copy_(y);
  graph_.replay(gen_, optimizer_->lr(), optimizer_->steps() + 1);
  optimizer_->set_steps(optimizer_->steps() + graph_optimizer_steps_);
  ctx.passes.fwd += graph_passes_.fwd;
  ctx.passes.bwd += graph_passes_.bwd;
  step_log_.record_captured(graph_log_);
}

void Trainer::capture_step(robust::StepContext& ctx, const Tensor& x, const Tensor& y) {
  graph_x_ = Tensor::empty(x.shape(), x.dtype(), device_);
  graph_y_ = Tensor::empty(y.shape(), y.dtype(), device_);
  const robust::PassCounter passes = ctx.passes;
  const int64_t steps = optimizer_->steps();
  step_log_.begin_capture();
  try {
    graph_.capture(gen_, [&] { method_->train_batch(ctx, graph_x_, graph_y_); });
  } catch (const std::exception& e) {
    step_log_.end_capture();
    throw std::runtime_error(fmt::format("--cuda-graphs: the {} step cannot be captured as a CUDA graph ({}); "
                                         "train with --cuda-graphs off",
                                         method_->name(), e.what()));
  }
  graph_log_ = step_log_.end_capture();
  graph_passes_ = {ctx.passes.fwd - passes.fwd, ctx.passes.bwd - passes.bwd};
  graph_optimizer_steps_ = optimizer_->steps() - steps;
  ctx.passes = passes;
  optimizer_->set_steps(steps);
  progress_.info(fmt::format("--cuda-graphs: captured the {} step ({} nodes a replay)", method_->name(), graph_.nodes()));
}

EpochMetrics Trainer::train_epoch(int64_t epoch, int64_t first_batch) {
  const auto t0 = Clock::now();
  const double cpu0 = process_cpu_seconds();
  data::Loader& loader = *loader_;
  const int64_t batches = loader.batches_per_epoch();
  loader.start_epoch(epoch, first_batch);
  progress_.start_epoch(epoch, cfg_.epochs, batches - first_batch);
  model_->train();

  PassCounter passes;
  step_log_.clear();
  EpochTotals totals;
  double seconds_before = 0, cpu_seconds_before = 0;  // spent on this epoch before an interrupt
  if (first_batch > 0 && !resume_progress_.empty()) {
    const nlohmann::json& p = resume_progress_;
    totals = {p.at("loss_sum").get<double>(), json_get<int64_t>(p.at("correct")), json_get<int64_t>(p.at("count"))};
    passes.fwd = json_get<int64_t>(p.at("fwd_passes"));
    passes.bwd = json_get<int64_t>(p.at("bwd_passes"));
    seconds_before = p.at("seconds").get<double>();
    cpu_seconds_before = p.at("cpu_seconds").get<double>();
    resume_progress_ = nlohmann::json::object();
  }
  std::vector<double> lr_of_batch(static_cast<size_t>(batches), 0.0);  // for the divergence message
  // A read of the step log makes the host wait for the device: on the CPU that costs nothing and
  // happens after every batch; on CUDA only when the progress bar redraws, and at the epoch's end.
  const bool read_every_batch = device_ == Device::cpu;
  int64_t done = 0;
  double lr = optimizer_->lr();
  data::Batch b;
  while (loader.next(b)) {
    const Tensor x = Tensor::from_vector(b.x, {b.n, b.c, b.h, b.w}).to(device_);
    const Tensor y = Tensor::from_vector(b.y, {b.n}).to(device_);
    const double progress = static_cast<double>(epoch) + static_cast<double>(b.index) / static_cast<double>(batches);
    lr = schedule_->lr(progress);
    optimizer_->set_lr(lr);
    lr_of_batch[static_cast<size_t>(b.index)] = lr;
    step_log_.begin_batch(b.index);
    robust::StepContext ctx{*model_, *optimizer_, gen_, passes, step_log_, epoch, b.index};
    ctx.eps_scale = cfg_.method.eps_scale(progress);
    ctx.fused_attack = fused_attack_;
    {
      const profiler::Step step;
      train_batch(ctx, x, y);
    }
    ++done;
    if (read_every_batch || progress_.due(done, kDeviceReadSeconds)) {
      add_logged_batches(totals, epoch, batches, lr_of_batch);
      progress_.batch(done, totals.loss_sum / static_cast<double>(totals.count),
                      static_cast<double>(totals.correct) / static_cast<double>(totals.count),
                      static_cast<double>(totals.count) / seconds_since(t0));
    }
    test_interrupt_point("batch");
    // After the epoch's last batch an interrupt waits for the epoch's own checkpoint (run()). The
    // ranks of a parallel run see a signal at different batches: they all wait for the epoch's end.
    if (interrupt_signal() != 0 && b.index + 1 < batches && !comm_.distributed()) {
      add_logged_batches(totals, epoch, batches, lr_of_batch);
      save_interrupted(epoch, b.index + 1, batches, totals, passes, seconds_before + seconds_since(t0),
                       cpu_seconds_before + process_cpu_seconds() - cpu0);
    }
  }
  add_logged_batches(totals, epoch, batches, lr_of_batch);  // on CUDA: waits for the epoch's last step
  if (comm_.distributed()) {
    // The epoch's sums over every rank's samples and passes (counted in passes of a micro-batch).
    std::vector<double> sums{totals.loss_sum, static_cast<double>(totals.correct), static_cast<double>(totals.count),
                             static_cast<double>(passes.fwd), static_cast<double>(passes.bwd)};
    comm_.all_reduce_sum(sums);
    totals = {sums[0], static_cast<int64_t>(sums[1]), static_cast<int64_t>(sums[2])};
    passes.fwd = static_cast<int64_t>(sums[3]);
    passes.bwd = static_cast<int64_t>(sums[4]);
    broadcast_buffers(*model_, comm_);  // every rank validates rank 0's model
  }
  const double train_seconds = seconds_since(t0);  // of this process (images_per_s)
  const int64_t count = totals.count;

  EpochMetrics m;
  m.epoch = epoch + 1;
  m.train_loss = count > 0 ? totals.loss_sum / static_cast<double>(count) : 0;
  m.train_acc = count > 0 ? static_cast<double>(totals.correct) / static_cast<double>(count) : 0;
  m.lr = lr;
  m.fwd_passes = passes.fwd;
  m.bwd_passes = passes.bwd;
  m.images_per_s = train_seconds > 0 ? static_cast<double>(count) / train_seconds : 0;
  m.val_acc = evaluate_clean(*model_, data_.val, cfg_.eval_batch_size, device_).accuracy;
  test_interrupt_point("validation");
  if (cfg_.robust_val_size > 0 && cfg_.method.eps() > 0)
    m.robust_val_acc = pgd_accuracy(*model_, data_.val, std::min(cfg_.robust_val_size, data_.val.n),
                                       cfg_.method.eps(), cfg_.robust_val_steps, cfg_.eval_batch_size, device_);
  if (robust::method_registry().at(cfg_.method.name).certified && cfg_.robust_val_size > 0) {
    // Verified by the bound the method trains with; the symbolic bound's d + 3 rows a sample take
    // small batches.
    const robust::BoundKind bound = method_->verified_bound();
    const int64_t batch = bound == robust::BoundKind::symbolic ? std::min<int64_t>(cfg_.eval_batch_size, 16)
                                                                : cfg_.eval_batch_size;
    m.extra["verified_val_acc"] = evaluate_verified(*model_, data_.val, 0, std::min(cfg_.robust_val_size, data_.val.n),
                                                    cfg_.method.eps(), bound, batch, device_)
                                      .accuracy;
  }
  robust::EpochEnd end{*model_, gen_, epoch, m.train_acc, m.val_acc, probe_x_, probe_y_, m.extra};
  if (comm_.distributed()) end.ranks = &comm_;
  stop_ = method_->on_epoch_end(end) == robust::EpochVerdict::stop_at_previous;
  model_->train();
  schedule_->on_epoch_end(m);
  for (const auto& [key, value] : schedule_->epoch_report()) m.extra[key] = value;
  m.seconds = seconds_before + seconds_since(t0);
  m.cpu_seconds = cpu_seconds_before + process_cpu_seconds() - cpu0;
  return m;
}

void Trainer::save_interrupted(int64_t epoch, int64_t next_batch, int64_t batches, const EpochTotals& totals,
                               const PassCounter& passes, double seconds, double cpu_seconds) {
  CheckpointState s = checkpoint_state(epoch, EpochMetrics{});
  s.batch = next_batch;
  s.metrics = nlohmann::json::object();
  s.epoch_progress = {{"loss_sum", totals.loss_sum}, {"correct", totals.correct}, {"count", totals.count},
                      {"fwd_passes", passes.fwd},    {"bwd_passes", passes.bwd},  {"seconds", seconds},
                      {"cpu_seconds", cpu_seconds}};
  const std::string file = path(kInterruptedCheckpoint);
  save_checkpoint(file, *model_, *optimizer_, s, [] { test_interrupt_point("checkpoint"); });
  const int signal = interrupt_signal();
  throw TrainingInterrupted(signal, fmt::format("interrupted by {} at epoch {}/{}, after batch {}/{}: the run so far is "
                                                "saved in {}\ncontinue with: bulwark train --resume {}",
                                                signal_name(signal), epoch + 1, cfg_.epochs, next_batch, batches, file,
                                                cfg_.out));
}

namespace {
// --profile / --trace over a run's training steps: started with the run, reported when training
// ends (the per-op table, profile.json and the trace in the run directory); an interrupted or
// failed run stops it without a report.
class RunProfile {
 public:
  RunProfile(const RunOptions& o, std::string out)
      : on_(o.profile || !o.trace.empty()), quiet_(o.quiet), trace_(o.trace), out_(std::move(out)) {
    if (on_) profiler::start(trace_.empty() ? -1 : 1);  // the trace: the second step, after the first's warm-up
  }
  ~RunProfile() {
    if (on_) profiler::stop();
  }
  RunProfile(const RunProfile&) = delete;
  RunProfile& operator=(const RunProfile&) = delete;
  void finish() {
    if (!on_) return;
    on_ = false;
    const profiler::Report r = profiler::stop();
    write_file_atomically((fs::path(out_) / "profile.json").string(), r.to_json().dump(2) + "\n");
    if (!quiet_) fmt::print("{}profile written to {}\n", r.table(), (fs::path(out_) / "profile.json").string());
    if (!trace_.empty()) {
      write_file_atomically(trace_, r.chrome_trace().dump() + "\n");
      if (!quiet_)
        fmt::print("trace of {} written to {} (open it in ui.perfetto.dev or chrome://tracing)\n",
                 r.trace.empty() ? "no step (the run trained fewer than 2)" : "the second step", trace_);
    }
  }

 private:
  bool on_, quiet_;
  std::string trace_, out_;
};
}  // namespace

namespace {
// --sync-bn for the length of a run.
class BatchNormSyncScope {
 public:
  BatchNormSyncScope(bool on, comm::Communicator& ranks) : previous_(batch_norm_sync()) {
    if (on) set_batch_norm_sync(&ranks);
  }
  ~BatchNormSyncScope() { set_batch_norm_sync(previous_); }
  BatchNormSyncScope(const BatchNormSyncScope&) = delete;
  BatchNormSyncScope& operator=(const BatchNormSyncScope&) = delete;

 private:
  comm::Communicator* previous_;
};
}  // namespace

RunSummary Trainer::run() {
  RunProfile profile(writes() ? options_ : RunOptions{}, cfg_.out);
  const BatchNormSyncScope sync_bn(cfg_.sync_bn, comm_);
  runtime::set_num_threads(cfg_.threads);
  if (device_ == Device::cuda) runtime::set_kernel_source(cfg_.kernels);
  const runtime::MathPrecisionScope precision(cfg_.precision);  // training, validation and the final test
  // A parallel run loads the global batch's part of this rank; the tail that would not fill a
  // global batch is dropped (data_parallel.h).
  loader_ = std::make_unique<data::Loader>(data_.train, layout_.global_batch(), true, cfg_.seed,
                                           data::AugmentOptions{cfg_.data.crop_pad, cfg_.data.flip},
                                           layout_.parallel());
  if (layout_.parallel()) {
    if (loader_->batches_per_epoch() == 0)
      throw std::invalid_argument(fmt::format("{} training samples do not fill one global batch of {} ({} ranks x "
                                              "--grad-accum {} x --batch-size {})",
                                              data_.train.n, layout_.global_batch(), layout_.world, layout_.accum,
                                              layout_.micro_batch));
    loader_->set_slice(layout_.global_micro(0) * layout_.micro_batch, layout_.accum * layout_.micro_batch);
  }
  const int64_t last_epoch = options_.stop_after > 0 ? std::min(options_.stop_after, cfg_.epochs) : cfg_.epochs;
  for (int64_t epoch = start_epoch_; epoch < last_epoch; ++epoch) {
    const EpochMetrics m = train_epoch(epoch, epoch == start_epoch_ ? start_batch_ : 0);
    if (stop_) {
      // The method's rule (Fast-AT's overfitting guard) rejected this epoch: record it, keep the
      // previous epoch's weights (last.safetensors still holds them) and end training there.
      if (writes()) append_line(path("metrics.jsonl"), m.to_json().dump());
      progress_.end_epoch(m, cfg_.epochs);
      rejected_ = m;
      model_->load_state_dict(load_checkpoint(path("last.safetensors")).model);
      std::error_code ignored;
      fs::remove(path(kInterruptedCheckpoint), ignored);  // a checkpoint inside the rejected epoch
      stopped_at_epoch_ = m.epoch;
      progress_.info(fmt::format("{} stopped training after epoch {}; the result is the model of epoch {}",
                                 method_->name(), m.epoch, m.epoch - 1));
      break;
    }
    history_.push_back(m);
    if (m.val_acc > best_val_acc_) {
      best_val_acc_ = m.val_acc;
      best_epoch_ = m.epoch;
      if (writes()) save_checkpoint(path("best.safetensors"), *model_, *optimizer_, checkpoint_state(m.epoch, m));
    }
    if (writes()) {
      append_line(path("metrics.jsonl"), m.to_json().dump());
      save_checkpoint(path("last.safetensors"), *model_, *optimizer_, checkpoint_state(m.epoch, m),
                      [] { test_interrupt_point("checkpoint"); });
      std::error_code ignored;
      fs::remove(path(kInterruptedCheckpoint), ignored);  // last.safetensors is now ahead of it
    }
    progress_.end_epoch(m, cfg_.epochs);
    // Every rank stops where any was interrupted (mpirun passes a signal to all of them).
    int signal = interrupt_signal();
    if (comm_.distributed() && comm_.sum(signal != 0 ? 1.0 : 0.0) > 0 && signal == 0) signal = SIGTERM;
    if (signal != 0 && m.epoch < last_epoch)
      throw TrainingInterrupted(signal, fmt::format("interrupted by {} during epoch {}/{}, which was completed: {} "
                                                    "holds it\ncontinue with: bulwark train --resume {}",
                                                    signal_name(signal), m.epoch, cfg_.epochs,
                                                    path("last.safetensors"), cfg_.out));
  }

  profile.finish();
  RunSummary s;
  s.out = cfg_.out;
  s.epochs_completed = stopped_at_epoch_ > 0 ? stopped_at_epoch_ - 1 : std::max(start_epoch_, last_epoch);
  s.stopped_at_epoch = stopped_at_epoch_;
  s.complete = s.epochs_completed >= cfg_.epochs || stopped_at_epoch_ > 0;
  s.best_val_acc = best_val_acc_;
  s.best_epoch = best_epoch_;
  s.num_parameters = model_->num_parameters();
  for (const EpochMetrics& m : history_) {
    s.seconds += m.seconds;
    s.cpu_seconds += m.cpu_seconds;
    s.fwd_passes += m.fwd_passes;
    s.bwd_passes += m.bwd_passes;
  }
  if (rejected_) {  // the rejected epoch's work was spent all the same
    s.seconds += rejected_->seconds;
    s.cpu_seconds += rejected_->cpu_seconds;
    s.fwd_passes += rejected_->fwd_passes;
    s.bwd_passes += rejected_->bwd_passes;
  }
  if (!history_.empty()) s.final_val_acc = history_.back().val_acc;
  if (!s.complete) {
    progress_.info(fmt::format("stopped after epoch {} of {}; continue with: bulwark train --resume {}",
                               s.epochs_completed, cfg_.epochs, cfg_.out));
    return s;
  }
  const EvalResult test = evaluate_clean(*model_, data_.test, cfg_.eval_batch_size, device_);
  s.test_acc = test.accuracy;
  s.test_loss = test.loss;
  s.test_size = test.count;
  if (cfg_.final_attack_size > 0 && cfg_.method.eps() > 0) {
    s.test_robust_size = std::min(cfg_.final_attack_size, data_.test.n);
    s.test_robust_acc = pgd_accuracy(*model_, data_.test, s.test_robust_size, cfg_.method.eps(),
                                        cfg_.final_attack_steps, cfg_.eval_batch_size, device_);
  }
  if (writes()) write_file_atomically(path("summary.json"), s.to_json().dump(2) + "\n");
  progress_.info(fmt::format("test accuracy {:.2f}% on {} samples of {} ({} parameters, {} training); run directory {}",
                             100 * s.test_acc, s.test_size, data_.test.name, s.num_parameters,
                             format_duration(s.seconds), cfg_.out));
  if (s.test_robust_acc >= 0)
    progress_.info(fmt::format("PGD-{} accuracy {:.2f}% at eps {:.4g} on the first {} test samples (`bulwark eval "
                               "--checkpoint {}` runs PGD-50x10, CW-20 and FGSM)",
                               cfg_.final_attack_steps, 100 * s.test_robust_acc, cfg_.method.eps(), s.test_robust_size,
                               cfg_.out));
  return s;
}

RunSummary train(TrainConfig cfg, const RunOptions& options) {
  const std::vector<std::string> notes = resolve_defaults(cfg);
  Progress info(options.quiet || comm::world().rank() > 0);
  for (const auto& n : notes) info.info(n);
  if (fs::exists(fs::path(cfg.out) / "config.json"))
    throw std::invalid_argument(fmt::format("{} already holds a run (config.json); continue it with --resume {} or "
                                            "choose another --out",
                                            cfg.out, cfg.out));
  RunData data = load_run_data(cfg);
  check_memory(cfg, data.train);  // before anything is written
  comm::Communicator& ranks = comm::world();
  check_same_config(to_json(cfg), ranks);  // also: no rank writes before every rank checked cfg.out
  if (ranks.rank() == 0) {
    std::error_code ec;
    fs::create_directories(cfg.out, ec);
    if (ec) throw std::runtime_error(fmt::format("cannot create the run directory {}: {}", cfg.out, ec.message()));
    write_file_atomically((fs::path(cfg.out) / "config.json").string(), to_json(cfg).dump(2) + "\n");
    std::ofstream((fs::path(cfg.out) / "metrics.jsonl").string(), std::ios::trunc);
  }
  ranks.barrier();  // the run directory exists for every rank
  info.info(fmt::format("training {} on {} ({} train / {} val / {} test samples) for {} epoch{}, {} thread{}; run "
                        "directory {}",
                        cfg.model, cfg.data.dataset, data.train.n, data.val.n, data.test.n, cfg.epochs,
                        cfg.epochs == 1 ? "" : "s", cfg.threads, cfg.threads == 1 ? "" : "s", cfg.out));
  if (ranks.size() > 1 || cfg.grad_accum > 1)
    info.info(fmt::format("data parallel: {} rank{} ({}) x --grad-accum {} x --batch-size {} = {} samples a step",
                          ranks.size(), ranks.size() == 1 ? "" : "s", ranks.backend(), cfg.grad_accum, cfg.batch_size,
                          static_cast<int64_t>(ranks.size()) * cfg.grad_accum * cfg.batch_size));
  Trainer trainer(std::move(cfg), std::move(data), options);
  return trainer.run();
}

std::string import_state_dict(TrainConfig cfg, const std::string& state_dict_path) {
  resolve_defaults(cfg);
  if (!fs::exists(state_dict_path)) throw std::invalid_argument(fmt::format("--state-dict {} does not exist", state_dict_path));
  const SafetensorsFile file = load_safetensors(state_dict_path);
  const auto format = file.metadata.find("format");  // PyTorch's files may say "pt"
  if (format != file.metadata.end() && format->second == kFormat)
    throw std::invalid_argument(fmt::format("{} is already a bulwark checkpoint (format '{}'): evaluate or resume it as "
                                            "it is",
                                            state_dict_path, file.metadata.at("format")));
  if (fs::exists(fs::path(cfg.out) / "config.json"))
    throw std::invalid_argument(fmt::format("{} already holds a run (config.json); choose another --out", cfg.out));
  load_run_data(cfg);  // fills cfg.input (shape, classes, the data's mean and std)
  const std::shared_ptr<Module> model = build_model(cfg);
  try {
    model->load_state_dict(file.tensors);
  } catch (const std::runtime_error& e) {
    throw std::invalid_argument(fmt::format("{} does not fit {} on {}: {}", state_dict_path, cfg.model,
                                            cfg.data.dataset, e.what()));
  }
  // The normalisation the weights came with is the model's, whatever the data's statistics.
  for (const auto& [name, t] : model->state_dict()) {
    if (name == "normalize.mean") cfg.input.mean = t.to(DType::f64).to_vector_f64();
    if (name == "normalize.std") cfg.input.std = t.to(DType::f64).to_vector_f64();
  }
  std::error_code ec;
  fs::create_directories(cfg.out, ec);
  if (ec) throw std::runtime_error(fmt::format("cannot create the run directory {}: {}", cfg.out, ec.message()));
  write_file_atomically((fs::path(cfg.out) / "config.json").string(), to_json(cfg).dump(2) + "\n");
  const std::unique_ptr<Optimizer> optimizer = make_optimizer(cfg.optimizer, model->named_parameters());
  CheckpointState state;
  state.config = to_json(cfg);
  save_checkpoint((fs::path(cfg.out) / "last.safetensors").string(), *model, *optimizer, state);
  return cfg.out;
}

RunSummary resume(const std::string& run_dir, const RunOptions& options, int threads) {
  std::string last = (fs::path(run_dir) / "last.safetensors").string();
  // An interrupted epoch's checkpoint continues mid-epoch; it is removed once the epoch is over.
  const std::string interrupted = (fs::path(run_dir) / kInterruptedCheckpoint).string();
  if (fs::exists(interrupted)) last = interrupted;
  if (!fs::exists(last)) {
    const bool is_run = fs::exists(fs::path(run_dir) / "config.json");
    throw std::invalid_argument(
        is_run ? fmt::format("{} has no last.safetensors: the run stopped before its first epoch ended; start it again", run_dir)
               : fmt::format("{} is not a run directory (no config.json or last.safetensors)", run_dir));
  }
  const Checkpoint ckpt = load_checkpoint(last);
  TrainConfig cfg = config_from_json(ckpt.state.config);
  cfg.out = run_dir;
  if (threads > 0) cfg.threads = threads;
  validate(cfg);
  check_same_config(to_json(cfg), comm::world());
  RunData data = load_run_data(cfg);
  check_memory(cfg, data.train);
  Progress info(options.quiet || comm::world().rank() > 0);
  if (ckpt.state.batch > 0)
    info.info(fmt::format("resuming {} in epoch {} of {}, at batch {}", run_dir, ckpt.state.epoch + 1, cfg.epochs,
                          ckpt.state.batch + 1));
  else
    info.info(fmt::format("resuming {} after epoch {} of {}", run_dir, ckpt.state.epoch, cfg.epochs));
  Trainer trainer(std::move(cfg), std::move(data), options);
  trainer.restore(ckpt);
  return trainer.run();
}

}  // namespace bulwark::training

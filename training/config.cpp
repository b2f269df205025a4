#include "training/config.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <stdexcept>

#include "data/idx.h"
#include "engine/check.h"
#include "engine/comm.h"
#include "engine/json_field.h"
#include "engine/runtime.h"
#include "models/zoo.h"
#include "training/memory.h"

namespace bulwark::training {

namespace {
using ojson = nlohmann::ordered_json;

std::string timestamp() {
  const std::time_t now = std::chrono::system_clock::to_time_t(std::chrono::system_clock::now());
  std::tm tm{};
  localtime_r(&now, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y%m%d-%H%M%S", &tm);
  return buf;
}

// An option bound to the field `access` returns (a generic lambda, so it serves both the const
// and the mutable config); its default is that field in a default-constructed TrainConfig.
template <class Access>
TrainOption bound(std::string group, Option o, Access access) {
  TrainOption t;
  t.group = std::move(group);
  t.get = [access](const TrainConfig& c) { return ojson(access(c)); };
  t.set = [access](TrainConfig& c, const ojson& v) {
    using T = std::decay_t<decltype(access(c))>;
    access(c) = json_get<T>(v);
  };
  if (o.fixed.is_null() && !o.rule) o.fixed = t.get(TrainConfig{});
  t.option = std::move(o);
  return t;
}

using T = OptionType;

std::vector<TrainOption> make_train_options() {
  std::vector<TrainOption> all;
  const auto add = [&](std::string group, Option o, auto access) { all.push_back(bound(std::move(group), std::move(o), access)); };
  add("", Option::make("model", "--model", T::text, "Model (docs/models.md; sgn:<model>: docs/sgn.md)").one_of(model_choices()),
      [](auto& c) -> auto& { return c.model; });
  add("sgn",
      Option::make("taps", "--sgn-taps", T::text,
                   "sgn models: comma-separated layers of the base whose outputs the network's own gradient corrects "
                   "(default: every ReLU of a sequential base, every block of a residual one; docs/sgn.md)"),
      [](auto& c) -> auto& { return c.sgn.taps; });
  add("sgn",
      Option::make("grad", "--sgn-grad", T::text,
                   "sgn models: full keeps the probe's gradient differentiable (double backward; what attacks "
                   "differentiate), detached treats it as data")
          .one_of({"full", "detached"}),
      [](auto& c) -> auto& { return c.sgn.grad; });
  add("sgn",
      Option::make("gate_init", "--sgn-gate-init", T::real, "sgn models: each gate's initial value gamma (softplus of a learned per-channel parameter)")
          .above(0),
      [](auto& c) -> auto& { return c.sgn.gate_init; });
  add("data",
      Option::make("dataset", "--dataset", T::text,
                   fmt::format("Dataset: {} (docs/data.md)", fmt::join(dataset_names(), ", ")))
          .default_to("")
          .default_by({}, "fashion-mnist when Debian's dataset-fashion-mnist is installed, else synthetic"),
      [](auto& c) -> auto& { return c.data.dataset; });
  add("data",
      Option::make("data_dir", "--data-dir", T::text,
                   "Folder with the dataset's files (mnist, cifar10, cifar100: required)")
          .default_by({}, "fashion-mnist: /usr/share/datasets/fashion-mnist"),
      [](auto& c) -> auto& { return c.data.data_dir; });
  add("data",
      Option::make("train_size", "--train-size", T::integer,
                   fmt::format("Training samples, from the start of the training split (0 = all but the validation "
                               "hold-out; synthetic: {})", kSyntheticTrainSize))
          .at_least(0),
      [](auto& c) -> auto& { return c.data.train_size; });
  add("data",
      Option::make("val_size", "--val-size", T::integer, "Validation samples, held out from the end of the training split")
          .at_least(1),
      [](auto& c) -> auto& { return c.data.val_size; });
  add("data",
      Option::make("test_size", "--test-size", T::integer,
                   fmt::format("Samples of the test split for the final evaluation (0 = all; synthetic: {})",
                               kSyntheticTestSize))
          .at_least(0),
      [](auto& c) -> auto& { return c.data.test_size; });
  add("data", Option::make("data_seed", "--data-seed", T::integer, "Seed that defines the synthetic dataset").at_least(0),
      [](auto& c) -> auto& { return c.data.data_seed; });
  add("data",
      Option::make("crop_pad", "--crop-pad", T::integer,
                   "Augmentation: random crop after zero-padding each side by this many pixels (CIFAR: 4; 0 = off)")
          .at_least(0),
      [](auto& c) -> auto& { return c.data.crop_pad; });
  add("data", Option::make("flip", "--flip", T::flag, "Augmentation: random horizontal flip"),
      [](auto& c) -> auto& { return c.data.flip; });
  add("", Option::make("epochs", "--epochs", T::integer, "Training epochs").at_least(1),
      [](auto& c) -> auto& { return c.epochs; });
  add("", Option::make("batch_size", "--batch-size", T::integer, "Training batch size").at_least(1),
      [](auto& c) -> auto& { return c.batch_size; });
  add("",
      Option::make("grad_accum", "--grad-accum", T::integer,
                   "Micro-batches of --batch-size summed before each optimizer step (the step's batch is their "
                   "total; with mpirun -np N, N times that); free and DEAT sum each replay's")
          .at_least(1),
      [](auto& c) -> auto& { return c.grad_accum; });
  add("",
      Option::make("sync_bn", "--sync-bn", T::flag,
                   "Under mpirun: BatchNorm normalises with the statistics of every rank's batch together (default: "
                   "each rank's own, as PyTorch's DistributedDataParallel); not with --grad-accum > 1"),
      [](auto& c) -> auto& { return c.sync_bn; });
  add("",
      Option::make("comm_timeout", "--comm-timeout", T::real,
                   "Under mpirun: seconds a rank waits in a collective for the others before the run fails (a rank "
                   "that died or hangs)")
          .above(0),
      [](auto& c) -> auto& { return c.comm_timeout; });
  add("",
      Option::make("bucket_mb", "--bucket-mb", T::real,
                   "Under mpirun (or --grad-accum): gradients go over the ranks in buckets of about this many MB, "
                   "each sent as soon as the backward has finished its gradients (larger than the model: one, "
                   "after the backward)")
          .above(0)
          .at_most(1e6),
      [](auto& c) -> auto& { return c.bucket_mb; });
  add("",
      Option::make("global_batch_size", "--global-batch-size", T::integer,
                   "Samples a step trains over all ranks and micro-batches: sets --batch-size to this / (ranks x "
                   "--grad-accum), which must divide it (0: use --batch-size)")
          .at_least(0),
      [](auto& c) -> auto& { return c.global_batch_size; });
  add("",
      Option::make("eval_batch_size", "--eval-batch-size", T::integer, "Batch size of validation and test evaluation")
          .at_least(1),
      [](auto& c) -> auto& { return c.eval_batch_size; });
  add("",
      Option::make("grad_clip", "--grad-clip", T::real,
                   "Clip the gradient's global L2 norm to this before every optimizer step (0 = off; auto_LiRPA's "
                   "certified-training recipe: 8)")
          .at_least(0),
      [](auto& c) -> auto& { return c.grad_clip; });
  add("optimizer", Option::make("name", "--optimizer", T::text, "Optimizer").one_of({"sgd", "adam"}),
      [](auto& c) -> auto& { return c.optimizer.name; });
  add("optimizer",
      Option::make("lr", "--lr", T::real, "Base learning rate")
          .at_least(0)
          .default_by({}, fmt::format("sgd: {} ({} under --schedule cyclic); adam: {}", kSgdDefaultLr, kSgdCyclicLr,
                                      kAdamDefaultLr)),
      [](auto& c) -> auto& { return c.optimizer.lr; });
  add("optimizer", Option::make("momentum", "--momentum", T::real, "SGD momentum").at_least(0).below(1),
      [](auto& c) -> auto& { return c.optimizer.momentum; });
  add("optimizer", Option::make("nesterov", "--nesterov", T::flag, "SGD with Nesterov momentum"),
      [](auto& c) -> auto& { return c.optimizer.nesterov; });
  add("optimizer",
      Option::make("weight_decay", "--weight-decay", T::real, "L2 weight decay (added to the gradient)").at_least(0),
      [](auto& c) -> auto& { return c.optimizer.weight_decay; });
  add("optimizer", Option::make("beta1", "--beta1", T::real, "Adam beta1").at_least(0).below(1),
      [](auto& c) -> auto& { return c.optimizer.beta1; });
  add("optimizer", Option::make("beta2", "--beta2", T::real, "Adam beta2").at_least(0).below(1),
      [](auto& c) -> auto& { return c.optimizer.beta2; });
  add("optimizer", Option::make("eps", "--adam-eps", T::real, "Adam epsilon").above(0),
      [](auto& c) -> auto& { return c.optimizer.eps; });
  add("schedule",
      Option::make("name", "--schedule", T::text, "LR schedule (its options below; docs/training.md)")
          .one_of(schedule_names()),
      [](auto& c) -> auto& { return c.schedule.name; });
  add("method",
      Option::make("name", "--method", T::text, "Training method (its options below; docs/methods.md)"),
      [](auto& c) -> auto& { return c.method.name; });
  add("",
      Option::make("robust_val_size", "--robust-val-size", T::integer,
                   "Validation samples attacked with PGD after every epoch (0 = off)")
          .at_least(0),
      [](auto& c) -> auto& { return c.robust_val_size; });
  add("",
      Option::make("robust_val_steps", "--robust-val-steps", T::integer, "PGD steps of the per-epoch robust validation")
          .at_least(1),
      [](auto& c) -> auto& { return c.robust_val_steps; });
  add("",
      Option::make("final_attack_size", "--final-attack-size", T::integer,
                   "Test samples attacked with PGD after training (0 = off; `bulwark eval` runs the full suite)")
          .at_least(0),
      [](auto& c) -> auto& { return c.final_attack_size; });
  add("",
      Option::make("final_attack_steps", "--final-attack-steps", T::integer, "PGD steps of the final attack").at_least(1),
      [](auto& c) -> auto& { return c.final_attack_steps; });
  add("",
      Option::make("kernels", "--kernels", T::text, "On a GPU: conv/GEMM kernels auto (the faster), ours or vendor")
          .one_of(runtime::kernel_source_names()),
      [](auto& c) -> auto& { return c.kernels; });
  add("",
      Option::make("precision", "--precision", T::text,
                   "Input format of the model's GEMMs and convolutions: fp32, or tf32 / bf16 with f32 accumulation "
                   "(tensor cores on a GPU, the same rounding on the CPU); master weights, optimizer and attack "
                   "steps stay f32; the certified methods need fp32")
          .one_of(runtime::math_precision_names()),
      [](auto& c) -> auto& { return c.precision; });
  add("",
      Option::make("cuda_graphs", "--cuda-graphs", T::text,
                   "CUDA: capture the training step as a CUDA Graph and replay it for every full batch (one launch "
                   "instead of hundreds); auto: on a GPU, with a method that allows it (standard, pgd, fgsm-rs) and "
                   "no --profile; on also under the emulator")
          .one_of({"auto", "on", "off"}),
      [](auto& c) -> auto& { return c.cuda_graphs; });
  add("",
      Option::make("fused_attack", "--fused-attack", T::text,
                   "Run the training attack (PGD, FGSM-RS: L-inf, cross-entropy) as one fused kernel for all its "
                   "steps instead of a forward and backward per step; needs a Sequential of Normalize, Conv2d, "
                   "Linear, ReLU and Flatten (mlp, wong_small, wong_large, ibp_small, ibp_large) and --precision "
                   "fp32; auto: on a GPU where it applies and the model is small (at most 2M multiply-adds a sample: "
                   "mlp, wong_small, ibp_small); on: on any device (the CPU runs the kernel's reference loops, slower "
                   "than the layered attack)")
          .one_of({"auto", "on", "off"}),
      [](auto& c) -> auto& { return c.fused_attack; });
  add("", Option::make("seed", "--seed", T::integer, "Seed of the initial weights, shuffling, augmentation and the method").at_least(0),
      [](auto& c) -> auto& { return c.seed; });
  add("", Option::make("threads", "--threads", T::integer, "CPU threads (0 = all cores)").at_least(0),
      [](auto& c) -> auto& { return c.threads; });
  add("", Option::make("device", "--device", T::text, "cuda or cpu; auto: cuda when a GPU is usable").one_of({"auto", "cpu", "cuda"}),
      [](auto& c) -> auto& { return c.device; });
  add("",
      Option::make("memory_limit", "--memory-limit", T::text,
                   "Memory the run may use, e.g. 2G or 512M (default: MemAvailable or the cgroup's limit; on CUDA the "
                   "device's free memory); a run whose measured step needs more fails before training")
          .default_by({}, "what the machine has"),
      [](auto& c) -> auto& { return c.memory_limit; });
  add("",
      Option::make("out", "--out", T::text, "Run directory").default_by({}, "runs/<timestamp>-<model>-<dataset>"),
      [](auto& c) -> auto& { return c.out; });
  return all;
}

// A block of the config that belongs to a registry (the method's, the schedule's): its "name"
// is one of the trainer's options, the rest its owner's.
bool owned_block(const TrainOption& t) { return t.group == "method" || t.group == "schedule"; }

}  // namespace

std::vector<std::string> dataset_names() { return {"synthetic", "mnist", "fashion-mnist", "cifar10", "cifar100"}; }

const std::vector<TrainOption>& train_options() {
  static const std::vector<TrainOption> all = make_train_options();
  return all;
}

ojson to_json(const TrainConfig& c) {
  ojson j;
  for (const TrainOption& t : train_options()) {
    if (owned_block(t)) continue;
    (t.group.empty() ? j[t.option.key] : j[t.group][t.option.key]) = t.get(c);
  }
  const ModelInput& in = c.input;
  j["input"] = {{"channels", in.channels}, {"height", in.height}, {"width", in.width},
                {"num_classes", in.num_classes}, {"mean", in.mean}, {"std", in.std}};
  j["world_size"] = c.world_size;
  j["schedule"] = to_json(c.schedule);
  j["method"] = robust::to_json(c.method);
  return j;
}

TrainConfig config_from_json(const nlohmann::json& j) {
  TrainConfig c;
  for (const TrainOption& t : train_options()) {
    if (owned_block(t)) continue;
    const nlohmann::json* block = t.group.empty() ? &j : (j.contains(t.group) ? &j.at(t.group) : nullptr);
    if (!block || !block->contains(t.option.key)) continue;
    const std::string where = t.group.empty() ? t.option.key : t.group + "." + t.option.key;
    try {
      t.set(c, block->at(t.option.key));
    } catch (const std::exception& e) {
      throw std::invalid_argument(fmt::format("config key '{}': {}", where, e.what()));
    }
  }
  if (j.contains("input")) {
    const nlohmann::json& in = j.at("input");
    read_json_field(in, "input", "channels", c.input.channels);
    read_json_field(in, "input", "height", c.input.height);
    read_json_field(in, "input", "width", c.input.width);
    read_json_field(in, "input", "num_classes", c.input.num_classes);
    read_json_field(in, "input", "mean", c.input.mean);
    read_json_field(in, "input", "std", c.input.std);
  }
  if (j.contains("schedule")) {
    c.schedule = schedule_config_from_json(j.at("schedule"));
    resolve_schedule(c.schedule, c.epochs);  // a block from before schedules had options may lack its milestones
  }
  if (j.contains("method")) c.method = robust::method_config_from_json(j.at("method"));
  read_json_field(j, "", "world_size", c.world_size);
  return c;
}

void validate(const DataConfig& d) {
  const auto datasets = dataset_names();
  require(d.dataset.empty() || std::find(datasets.begin(), datasets.end(), d.dataset) != datasets.end(),
          fmt::format("unknown dataset '{}' (available: {})", d.dataset, fmt::join(datasets, ", ")));
  TrainConfig c;
  c.data = d;
  for (const TrainOption& t : train_options())
    if (t.group == "data" && t.option.key != "dataset") check_option_value(t.option, t.get(c), "");
}

namespace {

// Given options whose owner is a registry entry: each must be one of the owner's, in its range.
void check_given(const std::vector<Option>& options, const OptionValues& given, const std::string& owner) {
  for (const auto& [key, value] : given.json().items()) {
    const Option* o = find_option(options, key);
    require(o != nullptr, fmt::format("option '{}' is not an option of {}", key, owner));
    check_option_value(*o, value, owner);
  }
}

// What can be checked before the defaults are resolved: every value that is set.
void validate_given(const TrainConfig& c) {
  for (const TrainOption& t : train_options())
    if (t.group != "data" && t.option.key != "lr" && !(t.group == "method" && t.option.key == "name"))
      check_option_value(t.option, t.get(c), "");
  require(c.optimizer.lr >= 0, fmt::format("--lr must be > 0, got {}", c.optimizer.lr));
  validate(c.data);
  check_given(robust::method_registry().at(c.method.name).options, c.method.options,
              fmt::format("method '{}'", c.method.name));
  check_given(schedule_info(c.schedule.name).options, c.schedule.options,
              fmt::format("schedule '{}'", c.schedule.name));
}

}  // namespace

void validate(const TrainConfig& c) {
  validate_given(c);
  if (!c.memory_limit.empty()) parse_memory_size(c.memory_limit);
  validate(c.optimizer);
  validate(c.schedule, c.epochs);
  robust::validate(c.method);
  require(!c.sync_bn || c.grad_accum == 1,
          fmt::format("--sync-bn with --grad-accum {}: a rank's micro-batches run one after another, so the first "
                      "cannot see the statistics of the next; use --grad-accum 1 and more ranks",
                      c.grad_accum));
  require(c.precision == "fp32" || !robust::method_registry().at(c.method.name).certified,
          fmt::format("--precision {} with --method {}: verified bounds need f32 arithmetic (a product of rounded "
                      "inputs is not an upper bound of the f32 one); use --precision fp32",
                      c.precision, c.method.name));
}

std::string resolve_device(const std::string& requested, std::vector<std::string>& notes) {
  if (requested != "cpu" && requested != "cuda" && requested != "auto")
    throw std::invalid_argument(fmt::format("unknown device '{}' (use cpu, cuda or auto)", requested));
  if (requested == "cpu") return requested;
  // The emulated backend runs CUDA kernels on the CPU for the tests; it is never a GPU.
  std::string why;
  const bool gpu = runtime::cuda_available(&why) && !runtime::cuda_emulated();
  if (runtime::cuda_emulated()) why = "this build's CUDA backend is the CPU emulator (no nvcc at build time)";
  // The tests' bulwark-emulated runs whole trainings on the emulator as processes (under mpirun):
  // they ask for it by name.
  if (requested == "cuda" && runtime::cuda_emulated() && std::getenv("BULWARK_TEST_EMULATED_DEVICE") != nullptr)
    return "cuda";
  if (requested == "cuda") {
    if (!gpu) throw std::invalid_argument(fmt::format("--device cuda: no usable GPU ({}); use --device cpu", why));
    return "cuda";
  }
  notes.push_back(gpu ? "device: cuda (--device auto found a GPU)"
                      : fmt::format("device: cpu (--device auto; no usable GPU: {})", why));
  return gpu ? "cuda" : "cpu";
}

void resolve_data_dir(DataConfig& d) {
  if (d.dataset == "synthetic") d.data_dir.clear();
  if (d.dataset == "fashion-mnist" && d.data_dir.empty()) d.data_dir = data::kFashionMnistDefaultDir;
  require(d.dataset == "synthetic" || !d.data_dir.empty(),
          fmt::format("--dataset {} needs --data-dir, the folder with its files", d.dataset));
}

std::vector<std::string> resolve_defaults(TrainConfig& c) {
  std::vector<std::string> notes;
  validate_given(c);
  if (c.data.dataset.empty()) {
    require(c.data.data_dir.empty(), fmt::format("--data-dir {} needs --dataset, to say which dataset is there",
                                                 c.data.data_dir));
    if (const auto dir = data::find_fashion_mnist()) {
      c.data.dataset = "fashion-mnist";
      c.data.data_dir = *dir;
      notes.push_back(fmt::format("dataset: fashion-mnist from {} (no --dataset given; Debian's "
                                  "dataset-fashion-mnist package is installed)", c.data.data_dir));
    } else {
      c.data.dataset = "synthetic";
      notes.push_back(fmt::format("dataset: synthetic (no --dataset given and Fashion-MNIST is not installed at {}; "
                                  "`apt-get install dataset-fashion-mnist` makes it the default)",
                                  data::kFashionMnistDefaultDir));
    }
  }
  resolve_data_dir(c.data);

  const bool mnist_like = c.data.dataset == "mnist" || c.data.dataset == "fashion-mnist";
  if (c.optimizer.lr == 0) {
    const bool adam = c.optimizer.name == "adam", cyclic = c.schedule.name == "cyclic";
    c.optimizer.lr = adam ? kAdamDefaultLr : cyclic ? kSgdCyclicLr : kSgdDefaultLr;
    notes.push_back(fmt::format("{}: --lr = {:g} ({})", c.optimizer.name, c.optimizer.lr,
                                adam     ? "Adam's default"
                                : cyclic ? "SGD's peak under the cyclic schedule, Wong et al.'s 0.2"
                                         : "SGD's default"));
  }
  for (auto& n : resolve_schedule(c.schedule, c.epochs)) notes.push_back(std::move(n));
  for (auto& n : robust::resolve_method(c.method, DefaultScope{c.method.options, c.data.dataset, mnist_like, c.epochs}))
    notes.push_back(std::move(n));
  comm::Communicator& ranks = comm::world();
  c.world_size = ranks.size();
  if (c.global_batch_size > 0) {
    const int64_t parts = c.world_size * c.grad_accum;
    require(c.global_batch_size % parts == 0,
            fmt::format("--global-batch-size {} over {} rank{} x --grad-accum {}: {} is not a multiple of {}; choose a "
                        "global batch that is (e.g. {}) or another rank count",
                        c.global_batch_size, c.world_size, c.world_size == 1 ? "" : "s", c.grad_accum,
                        c.global_batch_size, parts, std::max<int64_t>(1, c.global_batch_size / parts) * parts));
    c.batch_size = c.global_batch_size / parts;
    notes.push_back(fmt::format("--batch-size {}: --global-batch-size {} over {} rank{} x --grad-accum {}", c.batch_size,
                                c.global_batch_size, c.world_size, c.world_size == 1 ? "" : "s", c.grad_accum));
  }
  if (c.threads == 0) {
    // Ranks on one host share its cores.
    c.threads = std::max(1, runtime::num_threads() / ranks.local_size());
    if (ranks.local_size() > 1)
      notes.push_back(fmt::format("--threads {}: the host's {} cores shared by its {} ranks", c.threads,
                                  runtime::num_threads(), ranks.local_size()));
  }
  c.device = resolve_device(c.device, notes);
  if (c.out.empty()) {
    const std::string base = fmt::format("runs/{}-{}-{}", timestamp(), c.model, c.data.dataset);
    c.out = base;
    for (int k = 2; std::filesystem::exists(c.out); ++k) c.out = fmt::format("{}-{}", base, k);
    ranks.broadcast(c.out);  // rank 0's clock names the run
  }
  validate(c);
  return notes;
}

}  // namespace bulwark::training

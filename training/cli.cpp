#include "training/cli.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <unistd.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>
#include <vector>

#include "engine/runtime.h"
#include "models/zoo.h"
#include "robust/attacks.h"
#include "training/evaluate.h"
#include "training/progress.h"
#include "training/trainer.h"

namespace bulwark::training {

namespace fs = std::filesystem;

namespace {

constexpr double kSgdDefaultLr = 0.05, kAdamDefaultLr = 1e-3;

struct TrainArgs {
  TrainConfig cfg;
  RunOptions run;
  std::string resume;
  std::string eps;  // as typed: "0.3" or "8/255"
};

struct EvalArgs {
  std::string checkpoint;
  std::string dataset, data_dir;
  int64_t test_size = 0;
  int64_t batch_size = 500;
  int threads = 0;
  std::string device = "auto";
  std::string json;  // "" = the table only, "-" = JSON on stdout instead, else a file for the JSON
  std::string eps, alpha;  // as typed: "0.3" or "8/255"; "" = the defaults
  std::vector<std::string> attacks{"clean", "pgd", "cw", "fgsm"};
  int pgd_steps = 50, restarts = 10, cw_steps = 20;
  uint64_t seed = 0;
};

CLI::App* add_train_command(CLI::App& app, TrainArgs& a, CLI::Option*& lr_option) {
  TrainConfig& c = a.cfg;
  CLI::App* t = app.add_subcommand("train", "Train a model; writes a run directory (config.json, metrics.jsonl, "
                                            "checkpoints, summary.json)");
  t->footer(
      "With no options: fast adversarial training (FGSM-RS with its overfitting guard) of wong_small under the AccelAT\n"
      "schedule, on Fashion-MNIST at eps 0.1 when Debian's dataset-fashion-mnist is installed (else on the synthetic\n"
      "dataset at 8/255), for 5 epochs, with PGD-10 validation every epoch and a PGD-20 test at the end.\n\n"
      "Examples:\n"
      "  bulwark train\n"
      "  bulwark train --dataset mnist --data-dir data/mnist --method pgd --eps 0.3 --optimizer adam --lr 1e-3\n"
      "  bulwark train --method mplus-deat --schedule multistep --milestones 25,40 --epochs 50\n"
      "  bulwark train --dataset mnist --data-dir data/mnist --model wong_large --epochs 10 --schedule multistep\n"
      "  bulwark train --dataset cifar10 --data-dir data/cifar10 --model preact_resnet18 --crop-pad 4 --flip\n"
      "  bulwark train --resume runs/20250101-120000-wong_small-fashion-mnist");
  t->option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);  // a repeated option: the last wins

  t->add_option("--model", c.model, fmt::format("Model: {}", fmt::join(model_names(), ", ")))->capture_default_str();
  t->add_option("--dataset", c.data.dataset,
                fmt::format("Dataset: {} (default: fashion-mnist when installed, else synthetic)",
                            fmt::join(dataset_names(), ", ")));
  t->add_option("--data-dir", c.data.data_dir,
                "Folder with the dataset's files (mnist, cifar10, cifar100: required; fashion-mnist: default "
                "/usr/share/datasets/fashion-mnist)");
  t->add_option("--train-size", c.data.train_size,
                fmt::format("Training samples, from the start of the training split (0 = all but the validation "
                            "hold-out; synthetic: {})", kSyntheticTrainSize))
      ->capture_default_str();
  t->add_option("--val-size", c.data.val_size, "Validation samples, held out from the end of the training split")
      ->capture_default_str();
  t->add_option("--test-size", c.data.test_size,
                fmt::format("Samples of the test split for the final evaluation (0 = all; synthetic: {})",
                            kSyntheticTestSize))
      ->capture_default_str();
  t->add_option("--data-seed", c.data.data_seed, "Seed that defines the synthetic dataset")->capture_default_str();
  t->add_option("--crop-pad", c.data.crop_pad, "Augmentation: random crop after zero-padding each side by this many "
                                               "pixels (CIFAR: 4; 0 = off)")
      ->capture_default_str();
  t->add_flag("--flip", c.data.flip, "Augmentation: random horizontal flip");

  t->add_option("--epochs", c.epochs, "Training epochs")->capture_default_str();
  t->add_option("--batch-size", c.batch_size, "Training batch size")->capture_default_str();
  t->add_option("--eval-batch-size", c.eval_batch_size, "Batch size of validation and test evaluation")
      ->capture_default_str();
  t->add_option("--optimizer", c.optimizer.name, "Optimizer: sgd or adam")->capture_default_str();
  lr_option = t->add_option("--lr", c.optimizer.lr,
                            fmt::format("Base learning rate (default {} for sgd, {} for adam)", kSgdDefaultLr,
                                        kAdamDefaultLr));
  t->add_option("--momentum", c.optimizer.momentum, "SGD momentum")->capture_default_str();
  t->add_flag("--nesterov", c.optimizer.nesterov, "SGD with Nesterov momentum");
  t->add_option("--weight-decay", c.optimizer.weight_decay, "L2 weight decay (added to the gradient)")
      ->capture_default_str();
  t->add_option("--beta1", c.optimizer.beta1, "Adam beta1")->capture_default_str();
  t->add_option("--beta2", c.optimizer.beta2, "Adam beta2")->capture_default_str();
  t->add_option("--adam-eps", c.optimizer.eps, "Adam epsilon")->capture_default_str();

  t->add_option("--schedule", c.schedule.name,
                fmt::format("LR schedule: {} (see docs/training.md)", fmt::join(schedule_names(), ", ")))
      ->capture_default_str();
  t->add_option("--milestones", c.schedule.milestones,
                "multistep: epochs at which the LR is multiplied by --gamma, comma-separated (default: T/2,3T/4)")
      ->delimiter(',')
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  t->add_option("--gamma", c.schedule.gamma, "multistep: decay factor")->capture_default_str();
  t->add_option("--min-lr", c.schedule.min_lr, "cosine: the final learning rate")->capture_default_str();
  t->add_option("--cyclic-peak", c.schedule.peak, "cyclic: where the LR peaks, as a fraction of training")
      ->capture_default_str();
  t->add_option("--accelat-window", c.schedule.accelat_window,
                "accelat: epochs of accuracy averaged, and means needed before the first decay")
      ->capture_default_str();
  t->add_option("--accelat-threshold", c.schedule.accelat_threshold,
                "accelat: decay when the averaged accuracy gained less than this in an epoch")
      ->capture_default_str();
  t->add_option("--accelat-factor", c.schedule.accelat_factor, "accelat: the LR is multiplied by this on a decay")
      ->capture_default_str();
  t->add_option("--accelat-cooldown", c.schedule.accelat_cooldown, "accelat: epochs without a decay after one")
      ->capture_default_str();
  t->add_option("--accelat-floor", c.schedule.accelat_floor, "accelat: the lowest learning rate")->capture_default_str();

  robust::MethodConfig& m = c.method;
  t->add_option("--method", m.name,
                fmt::format("Training method: {} (see docs/methods.md)", fmt::join(robust::method_names(), ", ")))
      ->capture_default_str();
  t->add_option("--eps", a.eps,
                "L-inf radius in pixel units, as a fraction or k/255 (default: 0.3 MNIST, 0.1 Fashion-MNIST, 8/255 "
                "CIFAR and synthetic)");
  t->add_option("--alpha", m.alpha, "Attack step size (0 = the method's default for eps)")->capture_default_str();
  t->add_option("--eps-ramp", m.eps_ramp, "Warm-up: eps and alpha grow linearly from 0 over this many epochs (0 = off)")
      ->capture_default_str();
  t->add_option("--steps", m.steps, "pgd: attack steps k (0 = 40 on MNIST-like data, 7 on CIFAR-like)")
      ->capture_default_str();
  t->add_option("--replays", m.replays, "free: replays m of each batch (0 = 8)")->capture_default_str();
  t->add_option("--gamma-mplus", m.gamma, "M+: the threshold factor gamma (1.1 for ImageNet)")->capture_default_str();
  t->add_option("--r-max", m.r_max, "M+ and DEAT ablations: the most replays/steps (0 = the paper's)")
      ->capture_default_str();
  t->add_flag("--alpha-per-r", m.alpha_per_r, "mplus-deat: after an increase, alpha = max(eps / r, --alpha-min)");
  t->add_option("--alpha-min", m.alpha_min, "mplus-deat with --alpha-per-r: the smallest step (0 = eps / r_max)")
      ->capture_default_str();
  t->add_option("--deat-d", m.deat_d, "deat-d: epochs per replay increment")->capture_default_str();
  t->add_option("--deat-p-acc", m.deat_p_acc, "deat-p: training accuracy that adds a replay")->capture_default_str();
  t->add_option("--guard", m.guard, "fgsm-rs: the catastrophic-overfitting guard (true/false)")->capture_default_str();
  t->add_option("--guard-drop", m.guard_drop, "fgsm-rs guard: stop when probe robust accuracy falls this far below "
                                              "the best")
      ->capture_default_str();
  t->add_option("--guard-steps", m.guard_steps, "fgsm-rs guard: PGD steps on the probe batch")->capture_default_str();
  t->add_option("--robust-val-size", c.robust_val_size,
                "Validation samples attacked with PGD after every epoch (0 = off)")
      ->capture_default_str();
  t->add_option("--robust-val-steps", c.robust_val_steps, "PGD steps of the per-epoch robust validation")
      ->capture_default_str();
  t->add_option("--final-attack-size", c.final_attack_size,
                "Test samples attacked with PGD after training (0 = off; `bulwark eval` runs the full suite)")
      ->capture_default_str();
  t->add_option("--final-attack-steps", c.final_attack_steps, "PGD steps of the final attack")->capture_default_str();
  t->add_option("--kernels", c.kernels, "On a GPU: conv/GEMM kernels auto (the faster), ours or vendor")
      ->capture_default_str();
  t->add_option("--seed", c.seed, "Seed of the initial weights, shuffling and augmentation")->capture_default_str();
  t->add_option("--threads", c.threads, "CPU threads (0 = all cores)")->capture_default_str();
  t->add_option("--device", c.device, "cpu, cuda or auto (auto: cuda when a GPU is usable)")->capture_default_str();
  t->add_option("--out", c.out, "Run directory (default: runs/<timestamp>-<model>-<dataset>)");
  t->add_option("--resume", a.resume,
                "Continue the run in this directory from its last.safetensors (only --threads, --stop-after and "
                "--quiet may be given with it)");
  t->add_option("--stop-after", a.run.stop_after,
                "Stop once this many epochs are complete (continue later with --resume; 0 = train all epochs)")
      ->capture_default_str();
  t->add_flag("--quiet", a.run.quiet, "No progress bar, epoch table or info lines");
  return t;
}

CLI::App* add_eval_command(CLI::App& app, EvalArgs& a) {
  CLI::App* e = app.add_subcommand("eval", "Clean and robust accuracy of a checkpoint on a test split (clean, "
                                           "PGD-50x10, CW-20, FGSM; docs/attacks.md)");
  e->footer("Examples:\n"
            "  bulwark eval --checkpoint runs/my-run\n"
            "  bulwark eval --checkpoint runs/my-run/best.safetensors --test-size 1000 --eps 8/255 --json result.json\n"
            "  bulwark eval --checkpoint runs/my-run --attacks clean,pgd --pgd-steps 20 --restarts 1 --json");
  e->option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  e->add_option("--checkpoint", a.checkpoint, "A checkpoint file, or a run directory (its last.safetensors)")
      ->required();
  e->add_option("--dataset", a.dataset, "Dataset to evaluate on (default: the one the model was trained on)");
  e->add_option("--data-dir", a.data_dir, "Folder with the dataset's files (default: the training run's)");
  e->add_option("--test-size", a.test_size, "Samples from the start of the test split (0 = all; synthetic: 2000)")
      ->capture_default_str();
  e->add_option("--attacks", a.attacks, "Comma-separated, in this order: clean, pgd, cw, fgsm")
      ->delimiter(',')
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll)
      ->capture_default_str();
  e->add_option("--eps", a.eps,
                "L-inf radius as a fraction or k/255 (default: the run's training eps, else 0.3 for 1x28x28 "
                "images and 8/255 for the others)");
  e->add_option("--pgd-steps", a.pgd_steps, "PGD steps")->capture_default_str();
  e->add_option("--restarts", a.restarts, "PGD random restarts (the worst per sample counts)")->capture_default_str();
  e->add_option("--cw-steps", a.cw_steps, "CW steps (PGD on the margin loss, one restart)")->capture_default_str();
  e->add_option("--alpha", a.alpha, "PGD and CW step size, as --eps (default: 2.5 eps / steps)");
  e->add_option("--seed", a.seed, "Philox seed of the random starts")->capture_default_str();
  e->add_option("--batch-size", a.batch_size, "Evaluation batch size")->capture_default_str();
  e->add_option("--threads", a.threads, "CPU threads (0 = all cores)")->capture_default_str();
  e->add_option("--device", a.device, "cpu, cuda or auto (auto: the GPU when there is one)")->capture_default_str();
  e->add_option_function<std::string>(
       "--json", [&a](const std::string& file) { a.json = file.empty() ? "-" : file; },
       "Write the results as JSON to FILE (with the table on stdout); without FILE or with '-', print the JSON "
       "instead of the table")
      ->expected(0, 1)
      ->type_name("[FILE]");
  return e;
}

int run_train(CLI::App& cmd, TrainArgs& a, const CLI::Option& lr_option) {
  if (a.run.stop_after < 0) throw std::invalid_argument(fmt::format("--stop-after must be >= 0, got {}", a.run.stop_after));
  if (!a.resume.empty()) {
    const std::set<std::string> allowed{"--resume", "--threads", "--stop-after", "--quiet", "--help"};
    for (const CLI::Option* o : cmd.get_options())
      if (o->count() > 0 && !allowed.count(o->get_name()))
        throw std::invalid_argument(fmt::format("{} cannot be combined with --resume: a resumed run keeps the options "
                                                "saved in its checkpoint (start a new run to change them)",
                                                o->get_name()));
    resume(a.resume, a.run, a.cfg.threads);
    return 0;
  }
  if (!a.eps.empty()) a.cfg.method.eps = parse_eps(a.eps);
  if (lr_option.count() == 0) a.cfg.optimizer.lr = a.cfg.optimizer.name == "adam" ? kAdamDefaultLr : kSgdDefaultLr;
  train(a.cfg, a.run);
  return 0;
}

// The eps of an evaluation and where it came from: --eps, else the eps the run was trained with
// (its config's "eps", or "method"."eps", when > 0), else the usual radius of the input kind:
// 0.3 for MNIST-like 1x28x28 images, 8/255 for CIFAR-like ones.
double eval_eps(const EvalArgs& a, const nlohmann::json& config, const ModelInput& in, std::string& source) {
  if (!a.eps.empty()) {
    source = "--eps";
    return parse_eps(a.eps);
  }
  double trained = config.value("eps", -1.0);
  if (trained <= 0 && config.contains("method") && config["method"].is_object())
    trained = config["method"].value("eps", -1.0);
  if (trained > 0) {
    source = "the run's training eps";
    return trained;
  }
  const bool mnist_like = in.channels == 1 && in.height == 28 && in.width == 28;
  source = mnist_like ? "the default for 1x28x28 images" : "the default for CIFAR-like images";
  return mnist_like ? 0.3 : 8.0 / 255.0;
}

// "8/255 = 0.0313725" when eps is a whole number of 255ths, else "0.1".
std::string format_eps(double eps) {
  const double k = std::round(eps * 255.0);
  return k > 0 && std::abs(eps * 255.0 - k) < 1e-6 ? fmt::format("{:.0f}/255 = {:.6g}", k, eps) : fmt::format("{:.6g}", eps);
}

struct EvalAttack {
  std::string key;  // as in --attacks: clean, pgd, cw, fgsm
  AttackOptions options;
};

// Every option that can be checked before loading anything.
void validate_eval_args(const EvalArgs& a) {
  const auto require = [](bool ok, const std::string& message) {
    if (!ok) throw std::invalid_argument(message);
  };
  require(a.test_size >= 0, fmt::format("--test-size must be >= 0 (0 = all), got {}", a.test_size));
  require(a.batch_size >= 1, fmt::format("--batch-size must be >= 1, got {}", a.batch_size));
  require(a.threads >= 0, fmt::format("--threads must be >= 0, got {}", a.threads));
  require(a.pgd_steps >= 1, fmt::format("--pgd-steps must be >= 1, got {}", a.pgd_steps));
  require(a.restarts >= 1, fmt::format("--restarts must be >= 1, got {}", a.restarts));
  require(a.cw_steps >= 1, fmt::format("--cw-steps must be >= 1, got {}", a.cw_steps));
  require(!a.attacks.empty(), "--attacks is empty (use clean, pgd, cw, fgsm)");
  for (const std::string& key : a.attacks)
    require(std::set<std::string>{"clean", "pgd", "cw", "fgsm"}.count(key) > 0,
            fmt::format("unknown attack '{}' in --attacks (use clean, pgd, cw, fgsm)", key));
  try {
    if (!a.eps.empty()) parse_eps(a.eps);
  } catch (const std::invalid_argument& e) {
    throw std::invalid_argument(fmt::format("--eps: {}", e.what()));
  }
  try {
    if (!a.alpha.empty()) parse_eps(a.alpha);
  } catch (const std::invalid_argument& e) {
    throw std::invalid_argument(fmt::format("--alpha: {}", e.what()));
  }
}

// The attacks of a validated EvalArgs, in --attacks order (repeats dropped).
std::vector<EvalAttack> eval_attacks(const EvalArgs& a, double eps) {
  const double alpha = a.alpha.empty() ? 0.0 : parse_eps(a.alpha);
  std::vector<EvalAttack> attacks;
  std::set<std::string> seen;
  for (const std::string& key : a.attacks) {
    if (!seen.insert(key).second) continue;
    AttackOptions o;
    o.eps = eps;
    o.seed = a.seed;
    if (key == "clean") {
      o.kind = AttackKind::none;
    } else if (key == "pgd") {
      o.kind = AttackKind::pgd;
      o.steps = a.pgd_steps;
      o.restarts = a.restarts;
      o.alpha = alpha;
    } else if (key == "cw") {
      o.kind = AttackKind::cw;
      o.steps = a.cw_steps;
      o.alpha = alpha;
    } else {
      o.kind = AttackKind::fgsm;
    }
    attacks.push_back({key, resolve_attack(o)});
  }
  return attacks;
}

// A per-batch bar on stderr while an attack runs, when stderr is a terminal.
EvalProgress attack_progress_bar(const std::string& name) {
  if (!isatty(STDERR_FILENO)) return {};
  const auto start = std::chrono::steady_clock::now();
  return [name, start](int64_t done, int64_t batches, double accuracy) {
    const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    const double eta = elapsed / static_cast<double>(done) * static_cast<double>(batches - done);
    constexpr int64_t kWidth = 24;
    const int64_t filled = kWidth * done / batches;
    if (done == batches)
      fmt::print(stderr, "\r\033[K");
    else
      fmt::print(stderr, "\r\033[K{} [{}{}] batch {}/{}  acc {:.2f}%  ETA {}", name, std::string(filled, '#'),
                 std::string(kWidth - filled, '.'), done, batches, 100 * accuracy, format_duration(eta));
    std::fflush(stderr);
  };
}

struct EvalRow {
  EvalAttack attack;
  EvalResult result;
};

// Per sample, correct under every row: the accuracy against the strongest of the attacks run.
double worst_case_accuracy(const std::vector<EvalRow>& rows) {
  std::vector<uint8_t> all = rows.front().result.correct;
  for (const EvalRow& row : rows)
    for (size_t i = 0; i < all.size(); ++i) all[i] = all[i] && row.result.correct[i];
  int64_t correct = 0;
  for (uint8_t c : all) correct += c;
  return all.empty() ? 0.0 : static_cast<double>(correct) / static_cast<double>(all.size());
}

nlohmann::ordered_json eval_json(const std::vector<EvalRow>& rows, nlohmann::ordered_json j) {
  nlohmann::ordered_json list = nlohmann::ordered_json::array();
  for (const EvalRow& row : rows) {
    const AttackOptions& o = row.attack.options;
    const EvalResult& r = row.result;
    j[row.attack.key + "_acc"] = r.accuracy;
    if (row.attack.key == "clean") j["loss"] = r.loss;
    list.push_back({{"attack", attack_name(o)}, {"accuracy", r.accuracy}, {"loss", r.loss}, {"samples", r.count},
                    {"seconds", r.seconds}, {"fwd_passes", r.forward_passes}, {"bwd_passes", r.backward_passes},
                    {"eps", o.eps}, {"alpha", o.alpha}, {"steps", o.steps}, {"restarts", o.restarts}});
  }
  j["robust_acc"] = worst_case_accuracy(rows);
  j["attacks"] = std::move(list);
  return j;
}

void print_eval_table(const std::vector<EvalRow>& rows) {
  fmt::print("{:<12} | {:>8} | {:>7} | {:>8} | {:>10} | {:>10}\n", "attack", "accuracy", "samples", "seconds",
             "fwd passes", "bwd passes");
  fmt::print("{:-<12}-+-{:-<8}-+-{:-<7}-+-{:-<8}-+-{:-<10}-+-{:-<10}\n", "", "", "", "", "", "");
  for (const EvalRow& row : rows) {
    const EvalResult& r = row.result;
    fmt::print("{:<12} | {:>7.2f}% | {:>7} | {:>8.1f} | {:>10} | {:>10}\n", attack_name(row.attack.options),
               100 * r.accuracy, r.count, r.seconds, r.forward_passes, r.backward_passes);
  }
  std::vector<std::string> summary;
  for (const EvalRow& row : rows)
    if (row.attack.key == "clean") summary.push_back(fmt::format("clean acc {:.2f}%", 100 * row.result.accuracy));
  if (rows.size() > 1)
    summary.push_back(fmt::format("robust acc {:.2f}% (correct under every row above)", 100 * worst_case_accuracy(rows)));
  fmt::print("{}\n", fmt::join(summary, ", "));
}

int run_eval(const EvalArgs& a) {
  validate_eval_args(a);
  std::vector<std::string> notes;
  const Device device = resolve_device(a.device, notes) == "cuda" ? Device::cuda : Device::cpu;
  if (a.threads > 0) runtime::set_num_threads(a.threads);

  const std::string path = fs::is_directory(a.checkpoint) ? (fs::path(a.checkpoint) / "last.safetensors").string()
                                                          : a.checkpoint;
  if (!fs::exists(path)) throw std::invalid_argument(fmt::format("checkpoint {} does not exist", path));
  const Checkpoint ckpt = load_checkpoint(path);
  const TrainConfig cfg = config_from_json(ckpt.state.config);
  std::string eps_source;
  const double eps = eval_eps(a, ckpt.state.config, cfg.input, eps_source);
  const std::vector<EvalAttack> attacks = eval_attacks(a, eps);
  const std::shared_ptr<Module> model = build_model(cfg);
  model->load_state_dict(ckpt.model);
  model->to(device);

  DataConfig d = cfg.data;
  if (!a.dataset.empty() && a.dataset != d.dataset) {
    d.dataset = a.dataset;
    d.data_dir.clear();
  }
  if (!a.data_dir.empty()) d.data_dir = a.data_dir;
  validate(d);
  resolve_data_dir(d);
  const data::Dataset test = load_test_split(d, a.test_size);
  const ModelInput& in = cfg.input;
  if (test.c != in.channels || test.h != in.height || test.w != in.width || test.num_classes > in.num_classes)
    throw std::invalid_argument(fmt::format("the model takes {}x{}x{} images and {} classes; {} has {}x{}x{} and {}",
                                            in.channels, in.height, in.width, in.num_classes, test.name, test.c,
                                            test.h, test.w, test.num_classes));

  const bool table = a.json != "-";
  if (table) {
    for (const auto& n : notes) fmt::print("{}\n", n);
    fmt::print("checkpoint {} (epoch {}): {} on {}, {} samples, eps {} ({})\n", path, ckpt.state.epoch, cfg.model,
               test.name, test.n, format_eps(eps), eps_source);
    std::fflush(stdout);
  }
  std::vector<EvalRow> rows;
  for (const EvalAttack& attack : attacks)
    rows.push_back({attack, evaluate_attack(*model, test, 0, test.n, attack.options, a.batch_size, device,
                                            attack_progress_bar(attack_name(attack.options)))});
  if (table) print_eval_table(rows);
  if (a.json.empty()) return 0;

  const nlohmann::ordered_json j = eval_json(
      rows, {{"checkpoint", path}, {"model", cfg.model}, {"dataset", test.name}, {"samples", test.n},
             {"epoch", ckpt.state.epoch}, {"device", device_name(device)}, {"eps", eps}, {"eps_source", eps_source}});
  if (a.json == "-") {
    fmt::print("{}\n", j.dump());
    return 0;
  }
  std::ofstream out(a.json);
  out << j.dump(2) << "\n";
  out.close();
  if (!out) throw std::invalid_argument(fmt::format("--json {}: cannot write the file", a.json));
  fmt::print("results written to {}\n", a.json);
  return 0;
}

}  // namespace

int run_cli(int argc, char** argv) {
  CLI::App app{"bulwark: a from-scratch C++ tensor engine with fast adversarial and certified robust training"};
  app.name("bulwark");
  app.require_subcommand(1);
  TrainArgs train_args;
  EvalArgs eval_args;
  CLI::Option* lr_option = nullptr;
  CLI::App* train_cmd = add_train_command(app, train_args, lr_option);
  CLI::App* eval_cmd = add_eval_command(app, eval_args);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);  // --help
    const CLI::App* cmd = train_cmd->parsed() ? train_cmd : eval_cmd->parsed() ? eval_cmd : nullptr;
    fmt::print(stderr, "bulwark: error: {}\nRun '{} --help' for the options.\n", e.what(),
               cmd ? "bulwark " + cmd->get_name() : std::string("bulwark"));
    return 2;
  }
  try {
    if (train_cmd->parsed()) return run_train(*train_cmd, train_args, *lr_option);
    return run_eval(eval_args);
  } catch (const TrainingDiverged& e) {
    fmt::print(stderr, "bulwark: error: {}\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    fmt::print(stderr, "bulwark: error: {}\n", e.what());
    return 2;
  }
}

}  // namespace bulwark::training

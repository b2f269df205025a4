#include "training/cli.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <unistd.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "engine/check.h"
#include "engine/comm.h"
#include "engine/npy.h"
#include "engine/options.h"
#include "engine/runtime.h"
#include "engine/safetensors.h"
#include "models/sgn.h"
#include "models/zoo.h"
#include "robust/registry.h"
#include "robust/attack_registry.h"
#include "robust/attacks.h"
#include "robust/masking_checks.h"
#include "training/docs.h"
#include "training/evaluate.h"
#include "training/interrupt.h"
#include "training/progress.h"
#include "training/report.h"
#include "training/trainer.h"

namespace bulwark::training {

namespace fs = std::filesystem;

namespace {

struct TrainArgs {
  RunOptions run;
  std::string resume;
  bool dry_run = false;
  std::map<std::string, std::string> given;  // flag -> the text typed after it ("" for a bare flag)
};

struct EvalArgs {
  std::string checkpoint;
  std::string dataset, data_dir;
  int64_t test_size = 0;
  int64_t batch_size = 500;
  int threads = 0;
  std::string device = "auto";
  std::string json;  // "" = the table only, "-" = JSON on stdout instead, else a file for the JSON
  std::string eps;  // as typed: "0.3" or "8/255"; "" = the run's training eps
  std::string norm = "linf";  // the attacks' norm: linf or l2
  std::string logits;         // "" or a .npy / .safetensors file for the clean logits
  bool report = false;        // write report.md, report.json and report.svg into the run directory
  std::vector<std::string> attacks{"clean", "pgd", "cw", "fgsm"};
  std::map<std::string, std::string> given;  // the attacks' options: flag -> the text typed after it
  std::string suite;                         // "" or a suite name / attack list (evaluate_sequence)
  bool no_compact = false;                   // the suite attacks every sample, not only the survivors
  std::string source_checkpoint;             // transfer attacks: craft on this model
  std::vector<std::string> eps_sweep;        // as typed; every attack also runs at each of these
  uint64_t seed = 0;
};

const char* type_name(OptionType t) {
  switch (t) {
    case OptionType::flag: return "[BOOL]";
    case OptionType::integer: return "INT";
    case OptionType::real: return "FLOAT";
    case OptionType::radius: return "EPS";
    case OptionType::text: return "TEXT";
    case OptionType::reals: return "LIST";
  }
  return "TEXT";
}

// The --help line of an option: its help, its default and its valid range.
std::string describe(const Option& o) {
  std::string d = o.help;
  const std::string range = o.range_text();
  if (!range.empty() && o.type != OptionType::flag) d += fmt::format(" (valid: {})", range);
  d += fmt::format(" [default: {}]", o.default_text());
  return d;
}

// One command-line flag that records what was typed; parsing and checking come later, when the
// method and schedule (whose options give the flag its meaning) are known.
void add_recorded(CLI::App* cmd, std::map<std::string, std::string>& given, const Option& o,
                  const std::string& description, const std::string& group) {
  CLI::Option* opt = cmd->add_option_function<std::string>(
      o.flag, [&given, flag = o.flag](const std::string& text) { given[flag] = text; }, description);
  opt->type_name(type_name(o.type))->group(group);
  if (o.type == OptionType::flag) opt->expected(0, 1);
}

// A registry's options (a flag several entries declare is one line, with each one's default).
template <class Entry>
void add_owned_flags(CLI::App* cmd, std::map<std::string, std::string>& given, const std::vector<Entry>& entries,
                     const std::string& kind, const std::string& group) {
  for (const SharedFlag& f : shared_flags(entries)) {
    const Option& o = *f.option;
    std::string d = o.help;
    const std::string range = o.range_text();
    if (!range.empty() && o.type != OptionType::flag) d += fmt::format(" (valid: {})", range);
    d += f.every_owner ? fmt::format(" [every {}]", kind) : fmt::format(" [{}: {}]", kind, fmt::join(f.owners, ", "));
    d += fmt::format(" [default: {}]", f.default_text());
    add_recorded(cmd, given, o, d, group);
  }
}

// The flags of a run's config (train_options(), the schedules' and the methods' options), recorded
// into a.given: `bulwark train` and `bulwark import` describe a run the same way.
void add_config_flags(CLI::App* t, TrainArgs& a) {
  t->option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);  // a repeated option: the last wins
  for (const TrainOption& o : train_options()) {
    std::string d = describe(o.option);
    if (o.group == "method" && o.option.key == "name")
      d = fmt::format("Training method: {} (its options are listed below; docs/methods.md) [default: {}]",
                      fmt::join(robust::method_registry().names(), ", "), o.option.default_text());
    add_recorded(t, a.given, o.option, d, "Options");
  }
  add_owned_flags(t, a.given, schedule_registry(), "schedule", "Options of the --schedule");
  add_owned_flags(t, a.given, robust::method_registry().all(), "method", "Options of the --method");
}

CLI::App* add_train_command(CLI::App& app, TrainArgs& a) {
  CLI::App* t = app.add_subcommand("train", "Train a model; writes a run directory (config.json, metrics.jsonl, "
                                            "checkpoints, summary.json)");
  t->footer(
      "With no options: PGD-AT (10 steps) of wong_small under the cyclic learning rate (SGD, peak 0.2), on\n"
      "Fashion-MNIST at eps 0.1 when Debian's dataset-fashion-mnist is installed (else on the synthetic dataset at\n"
      "8/255, 7 steps), for 5 epochs, with PGD-10 validation every epoch and a PGD-20 test at the end\n"
      "(docs/results/default_job.md: why this job).\n"
      "Defaults that depend on other options (eps, the step size, lr, milestones) are resolved after all options\n"
      "are read, and each resolved value is printed with the rule that chose it.\n\n"
      "Examples:\n"
      "  bulwark train\n"
      "  bulwark train --dataset mnist --data-dir data/mnist --method pgd --eps 0.3 --optimizer adam --lr 1e-3\n"
      "  bulwark train --method mplus-deat --schedule multistep --milestones 25,40 --epochs 50\n"
      "  bulwark train --dataset mnist --data-dir data/mnist --model wong_large --epochs 10 --schedule multistep\n"
      "  bulwark train --dataset cifar10 --data-dir data/cifar10 --model preact_resnet18 --crop-pad 4 --flip\n"
      "  bulwark train --resume runs/20250101-120000-wong_small-fashion-mnist");
  add_config_flags(t, a);

  t->add_option("--resume", a.resume,
                "Continue the run in this directory from its last.safetensors (only --threads, --stop-after, "
                "--quiet, --profile and --trace may be given with it)");
  t->add_option("--stop-after", a.run.stop_after,
                "Stop once this many epochs are complete (continue later with --resume; 0 = train all epochs)")
      ->capture_default_str();
  t->add_flag("--quiet", a.run.quiet, "No progress bar, epoch table or info lines");
  t->add_flag("--profile", a.run.profile,
              "Time every op of the training steps (forward and backward kernels, calls, GFLOP/s, share of the step) "
              "and print the table when training ends; also written to profile.json in the run directory");
  t->add_option("--trace", a.run.trace,
                "With or without --profile: write a Chrome trace of the run's second training step to FILE (open it "
                "in ui.perfetto.dev)")
      ->type_name("FILE");
  t->add_flag("--dry-run", a.dry_run,
              "Resolve every default, print the resolved-default lines (stderr) and the run's config.json (stdout), "
              "and stop before loading any data");
  return t;
}

// A registry entry's option given on the command line: parsed as that option, or an error that
// names the flag, its owners and the options `owner` does take.
template <class Entry>
void apply_owned(OptionValues& values, const std::vector<Option>& options, const std::string& owner,
                 const std::vector<Entry>& entries, const std::string& flag, const std::string& text) {
  for (const Option& o : options)
    if (o.flag == flag) {
      const nlohmann::ordered_json v = parse_option_text(o, text);
      check_option_value(o, v, owner);
      values.set(o.key, v);
      return;
    }
  std::vector<std::string> owners, own;
  for (const Entry& e : entries)
    for (const Option& o : e.options)
      if (o.flag == flag) owners.push_back(e.name);
  for (const Option& o : options) own.push_back(o.flag);
  throw std::invalid_argument(fmt::format("{} is an option of {}, not of {} (which takes {})", flag,
                                          fmt::join(owners, ", "), owner, own.empty() ? "no options" : fmt::format("{}", fmt::join(own, ", "))));
}

// The config the command line describes, before its defaults are resolved.
TrainConfig config_from_args(const TrainArgs& a) {
  TrainConfig cfg;
  std::set<std::string> used;
  for (const TrainOption& t : train_options()) {
    const auto it = a.given.find(t.option.flag);
    if (it == a.given.end()) continue;
    t.set(cfg, parse_option_text(t.option, it->second));
    used.insert(it->first);
  }
  const robust::MethodInfo& method = robust::method_registry().at(cfg.method.name);
  const ScheduleInfo& schedule = schedule_info(cfg.schedule.name);
  for (const auto& given : a.given) {  // not a structured binding: clang 14 cannot capture one
    const std::string& flag = given.first;
    const std::string& text = given.second;
    if (used.count(flag)) continue;
    const bool of_schedule = std::any_of(schedule_registry().begin(), schedule_registry().end(), [&](const ScheduleInfo& s) {
      return find_if(s.options.begin(), s.options.end(), [&](const Option& o) { return o.flag == flag; }) != s.options.end();
    });
    if (of_schedule)
      apply_owned(cfg.schedule.options, schedule.options, fmt::format("--schedule {}", schedule.name),
                  schedule_registry(), flag, text);
    else
      apply_owned(cfg.method.options, method.options, fmt::format("--method {}", method.name),
                  robust::method_registry().all(), flag, text);
  }
  return cfg;
}

struct ImportArgs {
  TrainArgs run;  // the run's config flags: --model, --dataset, --data-dir, --out, ...
  std::string state_dict;
};

CLI::App* add_import_command(CLI::App& app, ImportArgs& a) {
  CLI::App* c = app.add_subcommand("import", "Make a run directory from a safetensors state_dict (from PyTorch: "
                                             "python/bulwark_torch.py), to evaluate it with bulwark eval");
  c->footer("The run's flags are bulwark train's: the model and dataset say which network the weights are for.\n\n"
            "Example:\n"
            "  bulwark import --state-dict model.safetensors --model wong_small --dataset fashion-mnist --out runs/torch\n"
            "  bulwark eval --checkpoint runs/torch");
  c->add_option("--state-dict", a.state_dict,
                "A safetensors file of the model's state_dict under its PyTorch names (I64 buffers allowed)")
      ->required();
  add_config_flags(c, a.run);
  return c;
}

int run_import(const ImportArgs& a) {
  const TrainConfig cfg = config_from_args(a.run);
  const std::string out = import_state_dict(cfg, a.state_dict);
  fmt::print("imported {} into {}/last.safetensors ({} on {}); evaluate it with: bulwark eval --checkpoint {}\n",
             a.state_dict, out, cfg.model, cfg.data.dataset, out);
  return 0;
}

// The flags `bulwark eval` and `bulwark verify` share about what they evaluate: --checkpoint,
// --dataset, --data-dir and --test-size.
template <class Args>
void add_target_flags(CLI::App* c, Args& a) {
  c->add_option("--checkpoint", a.checkpoint, "A checkpoint file, or a run directory (its last.safetensors)")
      ->required();
  c->add_option("--dataset", a.dataset, "Dataset to evaluate on (default: the one the model was trained on)");
  c->add_option("--data-dir", a.data_dir, "Folder with the dataset's files (default: the training run's)");
  c->add_option("--test-size", a.test_size, "Samples from the start of the test split (0 = all; synthetic: 2000)")
      ->capture_default_str();
}

// The flags `bulwark eval` and `bulwark verify` share about how they run: --seed, --batch-size,
// --threads, --device and --json.
template <class Args>
void add_run_flags(CLI::App* c, Args& a) {
  c->add_option("--seed", a.seed, "Philox seed of the random starts")->capture_default_str();
  c->add_option("--batch-size", a.batch_size, "Evaluation batch size")->capture_default_str();
  c->add_option("--threads", a.threads, "CPU threads (0 = all cores)")->capture_default_str();
  c->add_option("--device", a.device, "cpu, cuda or auto (auto: the GPU when there is one)")->capture_default_str();
  c->add_option_function<std::string>(
       "--json", [&a](const std::string& file) { a.json = file.empty() ? "-" : file; },
       "Write the results as JSON to FILE (with the table on stdout); without FILE or with '-', print the JSON "
       "instead of the table")
      ->expected(0, 1)
      ->type_name("[FILE]");
}

CLI::App* add_eval_command(CLI::App& app, EvalArgs& a) {
  CLI::App* e = app.add_subcommand("eval", "Clean and robust accuracy of a checkpoint on a test split (clean, "
                                           "PGD-50x10, CW-20, FGSM; docs/attacks.md)");
  e->footer("Examples:\n"
            "  bulwark eval --checkpoint runs/my-run\n"
            "  bulwark eval --checkpoint runs/my-run/best.safetensors --test-size 1000 --eps 8/255 --json result.json\n"
            "  bulwark eval --checkpoint runs/my-run --attacks clean,pgd --pgd-steps 20 --restarts 1 --json");
  e->option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  add_target_flags(e, a);
  e->add_option("--attacks", a.attacks,
                fmt::format("Comma-separated, run in this order: {}", fmt::join(robust::eval_attack_names(), ", ")))
      ->delimiter(',')
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll)
      ->capture_default_str();
  e->add_option("--eps", a.eps,
                "Radius as a fraction or k/255 (default, L-inf: the run's training eps, else 0.3 for 1x28x28 "
                "images and 8/255 for the others; L2: required)");
  e->add_option("--norm", a.norm, "The attacks' norm: linf, or l2 (pgd, cw, fgsm, apgd-*, fab-t)")
      ->check(CLI::IsMember({"linf", "l2"}))
      ->capture_default_str();
  e->add_option("--suite", a.suite,
                "After the rows: run these attacks in sequence, each on the samples still robust (AutoAttack's "
                "protocol): a suite's name (autoattack, autoattack-rand) or a comma-separated list of --attacks names");
  e->add_flag("--no-compact", a.no_compact,
              "The suite's later attacks run on every batch, masking the broken samples, instead of on full batches "
              "of the survivors (for measuring what compaction saves)");
  e->add_option("--logits", a.logits,
                "Also write the clean logits of the evaluated samples, in dataset order, to FILE: .npy (float32 [N, "
                "K]) or .safetensors (logits, labels and the input images), for checking the model elsewhere "
                "(python/bulwark_torch.py)")
      ->type_name("FILE");
  e->add_flag("--report", a.report,
              "Write a robustness report into the checkpoint's run directory: report.md, report.json and "
              "report.svg (accuracy against eps; needs python3-matplotlib). Without --eps-sweep the attacks (and the "
              "--suite) also run at eps/4, eps/2 and 2 eps");
  e->add_option("--source-checkpoint", a.source_checkpoint,
                "Transfer attacks: also craft every gradient attack on this checkpoint's model (a file or run "
                "directory; same input shape) and evaluate the examples on --checkpoint's model");
  e->add_option("--eps-sweep", a.eps_sweep,
                "Also run every attack at each of these radii (comma-separated, fractions or k/255; include 1 for the "
                "eps-1 check): accuracy must fall as eps grows")
      ->delimiter(',')
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  add_owned_flags(e, a.given, robust::eval_attack_registry(), "attack", "Options of the --attacks");
  add_run_flags(e, a);
  return e;
}

int run_train(CLI::App& cmd, TrainArgs& a) {
  const InterruptScope interrupts;  // Ctrl-C and SIGTERM save the run (training/interrupt.h)
  if (a.run.stop_after < 0) throw std::invalid_argument(fmt::format("--stop-after must be >= 0, got {}", a.run.stop_after));
  // Started by mpirun (or another MPI launcher): this process is one rank of the run
  // (docs/distributed.md). A build without MPI says so on every rank instead of training alone.
  if (comm::launched_by_mpi()) {
    const TrainConfig given = config_from_args(a);
    std::unique_ptr<comm::Communicator> ranks = comm::make_mpi(given.comm_timeout);
    // On GPUs: one per rank (its local index), and NCCL for the gradients where it is built in.
    const bool gpu = given.device != "cpu" && runtime::cuda_available() && !runtime::cuda_emulated();
    if (gpu) runtime::cuda_select_device(ranks->local_rank());
    comm::set_world(gpu && comm::nccl_built() ? comm::make_nccl(std::move(ranks), given.comm_timeout) : std::move(ranks));
  }
  if (!a.resume.empty()) {
    const std::set<std::string> allowed{"--resume", "--threads", "--stop-after", "--quiet", "--profile", "--trace",
                                        "--comm-timeout", "--help"};
    for (const CLI::Option* o : cmd.get_options())
      if (o->count() > 0 && !allowed.count(o->get_name()))
        throw std::invalid_argument(fmt::format("{} cannot be combined with --resume: a resumed run keeps the options "
                                                "saved in its checkpoint (start a new run to change them)",
                                                o->get_name()));
    resume(a.resume, a.run, config_from_args(a).threads);
    comm::set_world(nullptr);  // MPI_Finalize
    return 0;
  }
  TrainConfig cfg = config_from_args(a);
  if (a.dry_run) {
    for (const std::string& note : resolve_defaults(cfg)) fmt::print(stderr, "{}\n", note);
    fmt::print("{}\n", to_json(cfg).dump(2));
    return 0;
  }
  train(std::move(cfg), a.run);
  comm::set_world(nullptr);  // MPI_Finalize
  return 0;
}

// The eps of an evaluation and where it came from: --eps, else the eps the run was trained with
// (its config's "eps", or "method"."eps", when > 0), else the usual radius of the input kind:
// 0.3 for MNIST-like 1x28x28 images, 8/255 for CIFAR-like ones.
Norm eval_norm(const EvalArgs& a) { return a.norm == "l2" ? Norm::l2 : Norm::linf; }

// A radius typed after `flag` in the evaluation's norm: L-inf at most 1 (the whole image box),
// L2 any finite size.
double eval_radius(const std::string& text, Norm norm, const char* flag) {
  try {
    const double eps = parse_radius(text, std::numeric_limits<double>::max());
    if (norm == Norm::linf && eps > 1)
      throw std::invalid_argument(fmt::format("{:.6g} is larger than any L-inf distance between images in [0, 1] (at "
                                              "most 1): an L2 radius? add --norm l2",
                                              eps));
    return eps;
  } catch (const std::invalid_argument& e) {
    throw std::invalid_argument(fmt::format("{}: {}", flag, e.what()));
  }
}

double eval_eps(const std::string& eps_text, Norm norm, const nlohmann::json& config, const ModelInput& in,
                std::string& source) {
  if (!eps_text.empty()) {
    source = "--eps";
    return eval_radius(eps_text, norm, "--eps");
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
  std::string key;  // as in --attacks: clean, pgd, cw, fgsm, square
  AttackOptions options;
  robust::AttackRole role = robust::AttackRole::white_box;
};

// The attacks of --attacks in order (repeats dropped), each with its given options checked and
// the rest at their defaults. An option of an attack --attacks does not run is an error.
std::vector<EvalAttack> eval_attacks(const EvalArgs& a, const std::vector<std::string>& names, double eps,
                                     const std::map<std::string, std::string>& settings = {}) {
  require(!a.attacks.empty(), fmt::format("--attacks is empty (use {})", fmt::join(robust::eval_attack_names(), ", ")));
  // Every attack the command runs: an option given for one of them is not an error elsewhere.
  std::vector<std::string> everything = a.attacks;
  if (!a.suite.empty())
    for (const std::string& name : robust::suite_attacks(a.suite)) everything.push_back(name);
  std::vector<const robust::EvalAttackInfo*> chosen;
  for (const std::string& key : names) {
    const robust::EvalAttackInfo* info = &robust::eval_attack_info(key);
    robust::require_norm(*info, eval_norm(a));
    if (std::find(chosen.begin(), chosen.end(), info) == chosen.end()) chosen.push_back(info);
  }
  std::vector<OptionValues> values(chosen.size());
  std::map<std::string, std::string> given = settings;  // the suite's settings, unless typed
  for (const auto& [flag, text] : a.given) given[flag] = text;
  for (const auto& entry : given) {  // not a structured binding: clang 14 cannot capture one
    const std::string& flag = entry.first;
    const std::string& text = entry.second;
    bool used = false;
    for (size_t i = 0; i < chosen.size(); ++i)
      for (const Option& o : chosen[i]->options)
        if (o.flag == flag) {
          const nlohmann::ordered_json v = parse_option_text(o, text);
          check_option_value(o, v, "attack '" + chosen[i]->name + "'");
          values[i].set(o.key, v);
          used = true;
        }
    const auto runs_it = [&](const std::string& name) {
      for (const Option& o : robust::eval_attack_info(name).options)
        if (o.flag == flag) return true;
      return false;
    };
    if (!used && !std::any_of(everything.begin(), everything.end(), runs_it)) {
      std::vector<std::string> owners;
      for (const robust::EvalAttackInfo& e : robust::eval_attack_registry())
        for (const Option& o : e.options)
          if (o.flag == flag) owners.push_back(e.name);
      throw std::invalid_argument(fmt::format("{} is an option of {}, which --attacks {}{} does not run", flag,
                                              fmt::join(owners, ", "), fmt::join(a.attacks, ","),
                                              a.suite.empty() ? "" : " --suite " + a.suite));
    }
  }
  std::vector<EvalAttack> attacks;
  for (size_t i = 0; i < chosen.size(); ++i) {
    const std::string owner = "attack '" + chosen[i]->name + "'";
    resolve_options(chosen[i]->options, values[i], DefaultScope{values[i], "", false, 0}, owner);
    AttackOptions o = chosen[i]->make(values[i], eps, a.seed);
    o.norm = eval_norm(a);
    attacks.push_back({chosen[i]->name, resolve_attack(o), chosen[i]->role});
  }
  return attacks;
}

// Every option that can be checked before loading anything.
void validate_eval_args(const EvalArgs& a) {
  require(a.test_size >= 0, fmt::format("--test-size must be >= 0 (0 = all), got {}", a.test_size));
  const auto ends_with = [&](const std::string& suffix) {
    return a.logits.size() >= suffix.size() && a.logits.compare(a.logits.size() - suffix.size(), suffix.size(), suffix) == 0;
  };
  require(a.logits.empty() || ends_with(".npy") || ends_with(".safetensors"),
          fmt::format("--logits {}: the file must end in .npy or .safetensors", a.logits));
  require(a.batch_size >= 1, fmt::format("--batch-size must be >= 1, got {}", a.batch_size));
  require(a.threads >= 0, fmt::format("--threads must be >= 0, got {}", a.threads));
  if (!a.eps.empty()) eval_radius(a.eps, eval_norm(a), "--eps");
  require(!a.eps.empty() || eval_norm(a) == Norm::linf,
          "--norm l2 needs --eps: the run's training eps and the defaults are L-inf radii");
  eval_attacks(a, a.attacks, 0.1);  // the attacks and their options (eps is the checkpoint's, known later)
  if (!a.suite.empty()) eval_attacks(a, robust::suite_attacks(a.suite), 0.1, robust::suite_settings(a.suite));
  for (const std::string& e : a.eps_sweep) eval_radius(e, eval_norm(a), "--eps-sweep");
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
  bool transfer = false;  // crafted on --source-checkpoint's model
  bool detached = false;  // a self-gradient network attacked with its probe's gradient as data
  std::string name() const {
    return (transfer ? "transfer " : "") + std::string(detached ? "detached " : "") + attack_name(attack.options);
  }
  robust::AttackRow summary() const {
    return {name(), attack.role, transfer, attack.options.eps, result.accuracy, result.count, attack.options.norm};
  }
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
    j[(row.transfer ? "transfer_" : "") + std::string(row.detached ? "detached_" : "") + row.attack.key + "_acc"] = r.accuracy;
    if (row.attack.key == "clean") j["loss"] = r.loss;
    list.push_back({{"attack", row.name()}, {"transfer", row.transfer}, {"detached", row.detached}, {"accuracy", r.accuracy}, {"loss", r.loss}, {"samples", r.count},
                    {"seconds", r.seconds}, {"fwd_passes", r.forward_passes}, {"bwd_passes", r.backward_passes},
                    {"fwd_images", r.forward_images}, {"bwd_images", r.backward_images}, {"eps", o.eps}, {"alpha", o.alpha}, {"steps", o.steps}, {"restarts", o.restarts}});
  }
  j["robust_acc"] = worst_case_accuracy(rows);
  j["attacks"] = std::move(list);
  return j;
}

void print_eval_table(const std::vector<EvalRow>& rows) {
  fmt::print("{:<21} | {:>8} | {:>7} | {:>8} | {:>10} | {:>10} | {:>11} | {:>11}\n", "attack", "accuracy", "samples",
             "seconds", "fwd passes", "bwd passes", "fwd images", "bwd images");
  fmt::print("{:-<21}-+-{:-<8}-+-{:-<7}-+-{:-<8}-+-{:-<10}-+-{:-<10}-+-{:-<11}-+-{:-<11}\n", "", "", "", "", "", "", "", "");
  for (const EvalRow& row : rows) {
    const EvalResult& r = row.result;
    fmt::print("{:<21} | {:>7.2f}% | {:>7} | {:>8.1f} | {:>10} | {:>10} | {:>11} | {:>11}\n", row.name(),
               100 * r.accuracy, r.count, r.seconds, r.forward_passes, r.backward_passes, r.forward_images,
               r.backward_images);
  }
  std::vector<std::string> summary;
  for (const EvalRow& row : rows)
    if (row.attack.key == "clean") summary.push_back(fmt::format("clean acc {:.2f}%", 100 * row.result.accuracy));
  if (rows.size() > 1)
    summary.push_back(fmt::format("robust acc {:.2f}% (correct under every row above)", 100 * worst_case_accuracy(rows)));
  fmt::print("{}\n", fmt::join(summary, ", "));
}

// What `bulwark eval` and `bulwark verify` evaluate: a checkpoint's model, in eval mode on
// `device`, and the test split (--dataset / --data-dir override the run's) it takes.
struct EvalTarget {
  std::string path;  // the checkpoint file
  Checkpoint ckpt;
  TrainConfig cfg;
  std::shared_ptr<Module> model;
};

EvalTarget load_eval_target(const std::string& checkpoint, Device device) {
  EvalTarget t;
  t.path = fs::is_directory(checkpoint) ? (fs::path(checkpoint) / "last.safetensors").string() : checkpoint;
  if (!fs::exists(t.path)) throw std::invalid_argument(fmt::format("checkpoint {} does not exist", t.path));
  t.ckpt = load_checkpoint(t.path);
  t.cfg = config_from_json(t.ckpt.state.config);
  t.model = build_model(t.cfg);
  t.model->load_state_dict(t.ckpt.model);
  t.model->to(device);
  t.model->eval();
  return t;
}

data::Dataset load_eval_split(const TrainConfig& cfg, const std::string& dataset, const std::string& data_dir,
                              int64_t test_size) {
  DataConfig d = cfg.data;
  if (!dataset.empty() && dataset != d.dataset) {
    d.dataset = dataset;
    d.data_dir.clear();
  }
  if (!data_dir.empty()) d.data_dir = data_dir;
  validate(d);
  resolve_data_dir(d);
  data::Dataset test = load_test_split(d, test_size);
  const ModelInput& in = cfg.input;
  if (test.c != in.channels || test.h != in.height || test.w != in.width || test.num_classes > in.num_classes)
    throw std::invalid_argument(fmt::format("the model takes {}x{}x{} images and {} classes; {} has {}x{}x{} and {}",
                                            in.channels, in.height, in.width, in.num_classes, test.name, test.c,
                                            test.h, test.w, test.num_classes));
  return test;
}

int run_eval(const EvalArgs& a) {
  validate_eval_args(a);
  std::vector<std::string> notes;
  const Device device = resolve_device(a.device, notes) == "cuda" ? Device::cuda : Device::cpu;
  if (a.threads > 0) runtime::set_num_threads(a.threads);

  const EvalTarget target = load_eval_target(a.checkpoint, device);
  const std::string& path = target.path;
  const Checkpoint& ckpt = target.ckpt;
  const TrainConfig& cfg = target.cfg;
  const std::shared_ptr<Module>& model = target.model;
  std::string eps_source;
  const double eps = eval_eps(a.eps, eval_norm(a), ckpt.state.config, cfg.input, eps_source);
  const std::vector<EvalAttack> attacks = eval_attacks(a, a.attacks, eps);
  std::shared_ptr<Module> source;
  if (!a.source_checkpoint.empty()) {
    const std::string source_path = fs::is_directory(a.source_checkpoint)
                                        ? (fs::path(a.source_checkpoint) / "last.safetensors").string()
                                        : a.source_checkpoint;
    if (!fs::exists(source_path))
      throw std::invalid_argument(fmt::format("--source-checkpoint {} does not exist", source_path));
    const Checkpoint source_ckpt = load_checkpoint(source_path);
    const TrainConfig source_cfg = config_from_json(source_ckpt.state.config);
    const ModelInput &si = source_cfg.input, &ti = cfg.input;
    require(si.channels == ti.channels && si.height == ti.height && si.width == ti.width &&
                si.num_classes == ti.num_classes,
            fmt::format("--source-checkpoint takes {}x{}x{} images and {} classes; --checkpoint's model {}x{}x{} and {}",
                        si.channels, si.height, si.width, si.num_classes, ti.channels, ti.height, ti.width,
                        ti.num_classes));
    source = build_model(source_cfg);
    source->load_state_dict(source_ckpt.model);
    source->to(device);
  }

  const data::Dataset test = load_eval_split(cfg, a.dataset, a.data_dir, a.test_size);

  const bool table = a.json != "-";
  if (table) {
    for (const auto& n : notes) fmt::print("{}\n", n);
    fmt::print("checkpoint {} (epoch {}): {} on {}, {} samples, {} eps {} ({})\n", path, ckpt.state.epoch, cfg.model,
               test.name, test.n, eval_norm(a) == Norm::l2 ? "L2" : "L-inf", format_eps(eps), eps_source);
    std::fflush(stdout);
  }
  if (!a.logits.empty()) {
    const Tensor logits = evaluate_logits(*model, test, 0, test.n, a.batch_size, device);
    if (a.logits.size() > 4 && a.logits.compare(a.logits.size() - 4, 4, ".npy") == 0)
      save_npy(a.logits, logits);
    else
      save_safetensors(a.logits, {{"logits", logits}, {"labels", labels_tensor(test, 0, test.n)},
                                  {"images", images_tensor(test, 0, test.n)}});
    if (table) fmt::print("logits of the {} samples written to {}\n", test.n, a.logits);
  }
  // A self-gradient network is attacked through its full graph (the probe's backward
  // differentiated, whatever mode it trained in); its "detached" rows treat the probe's gradient
  // as data, the cheaper and weaker attack, reported beside, never instead.
  const bool sgn = as_self_gradient(*model) != nullptr;
  SgnGradScope full_graph(*model, SgnGrad::full);
  const auto run = [&](const EvalAttack& attack, bool transfer, bool detached = false) {
    EvalRow row{attack, {}, transfer, detached};
    SgnGradScope mode(*model, detached ? SgnGrad::detached : SgnGrad::full);
    const AttackOptions& o = attack.options;
    const bool restarts = o.restarts > 1 && (o.kind == AttackKind::pgd || o.kind == AttackKind::cw);
    if (restarts && !transfer && !a.no_compact) {
      // Restart r runs on full batches of the samples every earlier restart left correct, from
      // its own Philox range (2^40 counters apart: no batch of a restart reaches the next).
      std::vector<AttackOptions> each(static_cast<size_t>(o.restarts), o);
      for (int r = 0; r < o.restarts; ++r) {
        each[r].restarts = 1;
        each[r].offset = o.offset + (static_cast<uint64_t>(r) << 40);
      }
      const SequenceResult seq = evaluate_sequence(*model, test, 0, test.n, each, a.batch_size, device, true);
      row.result = seq.robust;
      row.result.count = test.n;
      row.result.loss = std::numeric_limits<double>::quiet_NaN();  // not measured (null in the JSON)
      return row;
    }
    row.result = evaluate_attack(*model, test, 0, test.n, o, a.batch_size, device, attack_progress_bar(row.name()),
                                 transfer ? source.get() : nullptr);
    return row;
  };
  const auto gradient_based = [](const EvalAttack& attack) {
    return attack.role == robust::AttackRole::white_box || attack.role == robust::AttackRole::single_step;
  };
  std::vector<EvalRow> rows;
  for (const EvalAttack& attack : attacks) rows.push_back(run(attack, false));
  if (sgn)
    for (const EvalAttack& attack : attacks)
      if (gradient_based(attack)) rows.push_back(run(attack, false, true));
  if (source)
    for (const EvalAttack& attack : attacks)
      if (gradient_based(attack)) rows.push_back(run(attack, true));
  // The radii of the sweep: --eps-sweep, else for a report eps/4, eps/2 and 2 eps (L-inf: at most 1).
  std::vector<double> sweep_eps;
  for (const std::string& text : a.eps_sweep) sweep_eps.push_back(eval_radius(text, eval_norm(a), "--eps-sweep"));
  if (a.report && a.eps_sweep.empty())
    for (const double factor : {0.25, 0.5, 2.0})
      if (eval_norm(a) == Norm::l2 || factor * eps <= 1) sweep_eps.push_back(factor * eps);
  std::vector<EvalRow> sweep;
  for (const double radius : sweep_eps)
    for (const EvalAttack& attack : eval_attacks(a, a.attacks, radius))
      if (attack.role != robust::AttackRole::clean) sweep.push_back(run(attack, false));
  std::optional<SequenceResult> suite;
  std::vector<EvalAttack> suite_attacks;
  std::vector<std::pair<double, SequenceResult>> suite_sweep;  // a report's suite at the sweep's radii
  const auto run_suite = [&](double radius) {
    std::vector<AttackOptions> options;
    for (const EvalAttack& s : eval_attacks(a, robust::suite_attacks(a.suite), radius, robust::suite_settings(a.suite)))
      options.push_back(s.options);
    return evaluate_sequence(*model, test, 0, test.n, options, a.batch_size, device, !a.no_compact);
  };
  if (!a.suite.empty()) {
    suite_attacks = eval_attacks(a, robust::suite_attacks(a.suite), eps, robust::suite_settings(a.suite));
    suite = run_suite(eps);
    if (a.report)
      for (const double radius : sweep_eps) suite_sweep.emplace_back(radius, run_suite(radius));
  }
  std::vector<robust::AttackRow> main_rows, sweep_rows;
  for (const EvalRow& row : rows)
    if (!row.detached) main_rows.push_back(row.summary());
  for (const EvalRow& row : sweep) sweep_rows.push_back(row.summary());
  const std::vector<robust::MaskingCheck> checks = robust::masking_checks(main_rows, sweep_rows);
  // The headline: correct under every row and, with --suite, robust to the suite.
  const double headline = std::min(worst_case_accuracy(rows), suite ? suite->robust.accuracy : 1.0);
  if (table) {
    if (sgn)
      fmt::print("sgn model: gradient attacks differentiate its full graph (through the probe's backward); the "
                 "'detached' rows treat the probe's gradient as data (docs/sgn.md)\n");
    print_eval_table(rows);
    if (!sweep.empty()) {
      fmt::print("eps sweep:\n");
      for (const EvalRow& row : sweep)
        fmt::print("  eps {:<10.4g} {:<21} {:>7.2f}%\n", row.attack.options.eps, row.name(), 100 * row.result.accuracy);
    }
    if (suite) {
      fmt::print("suite {} (each attack on the samples still robust; {}):\n", a.suite,
                 a.no_compact ? "every batch, survivors masked" : "survivors compacted into full batches");
      fmt::print("  {:<21} | {:>10} | {:>8} | {:>8} | {:>10} | {:>10} | {:>11} | {:>11}\n", "attack", "robust acc",
                 "attacked", "seconds", "fwd passes", "bwd passes", "fwd images", "bwd images");
      const auto suite_row = [](const std::string& name, const EvalResult& r) {
        fmt::print("  {:<21} | {:>9.2f}% | {:>8} | {:>8.1f} | {:>10} | {:>10} | {:>11} | {:>11}\n", name,
                   100 * r.accuracy, r.count, r.seconds, r.forward_passes, r.backward_passes, r.forward_images,
                   r.backward_images);
      };
      suite_row("clean", suite->clean);
      for (size_t i = 0; i < suite_attacks.size(); ++i)
        suite_row(attack_name(suite_attacks[i].options), suite->attacks[i]);
      fmt::print("suite robust acc {:.2f}%\n", 100 * suite->robust.accuracy);
      fmt::print("headline robust acc {:.2f}% (the lower of the rows' and the suite's)\n", 100 * headline);
      const bool eot = std::any_of(suite_attacks.begin(), suite_attacks.end(),
                                   [](const EvalAttack& s) { return s.options.eot > 1; });
      if (suite->randomised && !eot)
        fmt::print("note: the model's outputs changed between two forwards of the same batch: it is randomised, and "
                   "only attacks that average over its randomness measure it (--suite autoattack-rand)\n");
    }
    fmt::print("gradient-masking checks (docs/attacks.md):\n");
    for (const robust::MaskingCheck& c : checks)
      fmt::print("  {:<8} {:<22} {}\n", !c.applicable ? "not run" : c.fired ? "FLAGGED" : "ok", c.name, c.detail);
  }
  if (a.json.empty() && !a.report) return 0;

  nlohmann::ordered_json j = eval_json(
      rows, {{"checkpoint", path}, {"model", cfg.model}, {"dataset", test.name}, {"samples", test.n},
             {"epoch", ckpt.state.epoch}, {"device", device_name(device)}, {"eps", eps}, {"norm", a.norm}, {"eps_source", eps_source}});
  if (source) j["source_checkpoint"] = a.source_checkpoint;
  j["headline_acc"] = headline;
  nlohmann::ordered_json sweep_json = nlohmann::ordered_json::array(), checks_json = nlohmann::ordered_json::array();
  for (const EvalRow& row : sweep)
    sweep_json.push_back({{"eps", row.attack.options.eps}, {"attack", row.name()}, {"accuracy", row.result.accuracy}});
  bool flagged = false;
  for (const robust::MaskingCheck& c : checks) {
    checks_json.push_back({{"check", c.name}, {"applicable", c.applicable}, {"fired", c.fired}, {"detail", c.detail}});
    flagged = flagged || c.fired;
  }
  j["eps_sweep"] = std::move(sweep_json);
  if (suite) {
    nlohmann::ordered_json steps = nlohmann::ordered_json::array();
    for (size_t i = 0; i < suite_attacks.size(); ++i) {
      const EvalResult& r = suite->attacks[i];
      steps.push_back({{"attack", attack_name(suite_attacks[i].options)}, {"robust_acc", r.accuracy},
                       {"attacked", r.count}, {"seconds", r.seconds}, {"fwd_passes", r.forward_passes},
                       {"bwd_passes", r.backward_passes}, {"fwd_images", r.forward_images},
                       {"bwd_images", r.backward_images}});
    }
    j["suite"] = {{"name", a.suite},
                  {"compact", !a.no_compact},
                  {"randomised_model", suite->randomised},
                  {"clean_acc", suite->clean.accuracy},
                  {"robust_acc", suite->robust.accuracy},
                  {"seconds", suite->robust.seconds},
                  {"fwd_passes", suite->robust.forward_passes},
                  {"bwd_passes", suite->robust.backward_passes},
                  {"fwd_images", suite->robust.forward_images},
                  {"bwd_images", suite->robust.backward_images},
                  {"steps", std::move(steps)}};
  }
  j["masking_checks"] = std::move(checks_json);
  j["masking_flagged"] = flagged;
  if (a.report) {
    nlohmann::ordered_json swept = nlohmann::ordered_json::array();
    for (const auto& [radius, result] : suite_sweep)
      swept.push_back({{"eps", radius}, {"robust_acc", result.robust.accuracy}});
    nlohmann::ordered_json report = j;
    report["suite_sweep"] = std::move(swept);
    const fs::path dir = fs::path(path).parent_path();
    const fs::path summary_path = dir / "summary.json";
    nlohmann::json summary;
    if (fs::exists(summary_path)) {
      std::ifstream in(summary_path);
      summary = nlohmann::json::parse(in, nullptr, false);
    }
    report["training"] = training_summary(ckpt.state.config, ckpt.state.epoch, summary);
    const std::string json_path = (dir / "report.json").string(), svg_path = (dir / "report.svg").string();
    write_file_atomically(json_path, report.dump(2) + "\n");
    const std::string why_not = draw_report_plot(json_path, svg_path);
    write_file_atomically((dir / "report.md").string(),
                          report_markdown(report, why_not.empty() ? "report.svg" : "", why_not));
    if (table)
      fmt::print("report written to {}{}\n", (dir / "report.md").string(),
                 why_not.empty() ? " (plot report.svg)" : " (no plot: " + why_not + ")");
  }
  if (a.json.empty()) return 0;
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

struct VerifyArgs {
  std::string checkpoint, dataset, data_dir, eps, bound = "ibp";
  int64_t test_size = 0, batch_size = 500;
  int threads = 0;
  std::string device = "auto", json;
  int pgd_steps = 20, restarts = 1;
  uint64_t seed = 0;
};

CLI::App* add_verify_command(CLI::App& app, VerifyArgs& a) {
  CLI::App* v = app.add_subcommand("verify", "Verified accuracy of a checkpoint: the samples whose decision no input "
                                             "of the eps-box can change, proved by bound propagation (docs/certified.md)");
  v->footer("Examples:\n"
            "  bulwark verify --checkpoint runs/my-run\n"
            "  bulwark verify --checkpoint runs/my-run --eps 0.3 --test-size 1000 --json result.json");
  v->option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  add_target_flags(v, a);
  v->add_option("--bound", a.bound, fmt::format("The bound: {}", fmt::join(robust::bound_names(), ", ")))
      ->capture_default_str();
  v->add_option("--eps", a.eps,
                "L-inf radius as a fraction or k/255 (default: the run's training eps, else 0.3 for 1x28x28 images and "
                "8/255 for the others)");
  v->add_option("--pgd-steps", a.pgd_steps, "Steps of the PGD row beside the verified one (an upper bound on it)")
      ->capture_default_str();
  v->add_option("--restarts", a.restarts, "Restarts of the PGD row")->capture_default_str();
  add_run_flags(v, a);
  return v;
}

int run_verify(const VerifyArgs& a) {
  const robust::BoundKind bound = robust::bound_from_name(a.bound);
  require(a.test_size >= 0, fmt::format("--test-size must be >= 0 (0 = all), got {}", a.test_size));
  require(a.batch_size >= 1, fmt::format("--batch-size must be >= 1, got {}", a.batch_size));
  require(a.pgd_steps >= 1, fmt::format("--pgd-steps must be >= 1, got {}", a.pgd_steps));
  require(a.restarts >= 1, fmt::format("--restarts must be >= 1, got {}", a.restarts));
  if (!a.eps.empty()) eval_radius(a.eps, Norm::linf, "--eps");
  std::vector<std::string> notes;
  const Device device = resolve_device(a.device, notes) == "cuda" ? Device::cuda : Device::cpu;
  if (a.threads > 0) runtime::set_num_threads(a.threads);
  const EvalTarget target = load_eval_target(a.checkpoint, device);
  std::string eps_source;
  const double eps = eval_eps(a.eps, Norm::linf, target.ckpt.state.config, target.cfg.input, eps_source);
  const data::Dataset test = load_eval_split(target.cfg, a.dataset, a.data_dir, a.test_size);
  const bool table = a.json != "-";
  if (table) {
    for (const auto& n : notes) fmt::print("{}\n", n);
    fmt::print("checkpoint {} (epoch {}): {} on {}, {} samples, L-inf eps {} ({}), bound {}\n", target.path,
               target.ckpt.state.epoch, target.cfg.model, test.name, test.n, format_eps(eps), eps_source, a.bound);
    std::fflush(stdout);
  }
  AttackOptions clean;
  clean.kind = AttackKind::none;
  AttackOptions pgd;
  pgd.kind = AttackKind::pgd;
  pgd.eps = eps;
  pgd.steps = a.pgd_steps;
  pgd.restarts = a.restarts;
  pgd.seed = a.seed;
  pgd = resolve_attack(pgd);
  const EvalResult clean_r = evaluate_attack(*target.model, test, 0, test.n, clean, a.batch_size, device);
  const EvalResult pgd_r =
      evaluate_attack(*target.model, test, 0, test.n, pgd, a.batch_size, device, attack_progress_bar(attack_name(pgd)));
  const EvalResult verified_r = evaluate_verified(*target.model, test, 0, test.n, eps, bound, a.batch_size, device,
                                                  attack_progress_bar(fmt::format("verified ({})", a.bound)));
  // A verified sample that PGD breaks would be a bug in the bound: say so loudly.
  int64_t contradictions = 0;
  for (size_t i = 0; i < verified_r.correct.size(); ++i) contradictions += verified_r.correct[i] && !pgd_r.correct[i];
  if (contradictions > 0)
    throw std::runtime_error(fmt::format("{} samples verified by {} were broken by {}: the bound is unsound (please "
                                         "report this)",
                                         contradictions, a.bound, attack_name(pgd)));
  const std::string verified_name = fmt::format("verified ({})", a.bound);
  if (table) {
    fmt::print("{:<21} | {:>8} | {:>7} | {:>8} | {:>10} | {:>10}\n", "", "accuracy", "samples", "seconds",
               "fwd passes", "bwd passes");
    fmt::print("{:-<21}-+-{:-<8}-+-{:-<7}-+-{:-<8}-+-{:-<10}-+-{:-<10}\n", "", "", "", "", "", "");
    for (const auto& [name, r] : std::vector<std::pair<std::string, const EvalResult*>>{
             {"clean", &clean_r}, {attack_name(pgd), &pgd_r}, {verified_name, &verified_r}})
      fmt::print("{:<21} | {:>7.2f}% | {:>7} | {:>8.1f} | {:>10} | {:>10}\n", name, 100 * r->accuracy, r->count,
                 r->seconds, r->forward_passes, r->backward_passes);
    fmt::print("verified accuracy {:.2f}% <= {} accuracy {:.2f}% <= clean {:.2f}% (the gap between the first two is "
               "what the bound cannot prove and the attack cannot break)\n",
               100 * verified_r.accuracy, attack_name(pgd), 100 * pgd_r.accuracy, 100 * clean_r.accuracy);
  }
  if (a.json.empty()) return 0;
  nlohmann::ordered_json j{{"checkpoint", target.path},
                           {"model", target.cfg.model},
                           {"dataset", test.name},
                           {"samples", test.n},
                           {"epoch", target.ckpt.state.epoch},
                           {"device", device_name(device)},
                           {"eps", eps},
                           {"eps_source", eps_source},
                           {"bound", a.bound},
                           {"clean_acc", clean_r.accuracy},
                           {"pgd", attack_name(pgd)},
                           {"pgd_acc", pgd_r.accuracy},
                           {"verified_acc", verified_r.accuracy},
                           {"verified_loss", verified_r.loss},
                           {"seconds", {{"clean", clean_r.seconds}, {"pgd", pgd_r.seconds}, {"verified", verified_r.seconds}}}};
  if (a.json == "-") {
    fmt::print("{}\n", j.dump());
    return 0;
  }
  write_file_atomically(a.json, j.dump(2) + "\n");
  fmt::print("results written to {}\n", a.json);
  return 0;
}

struct DocsArgs {
  std::string check, write;
};

CLI::App* add_docs_command(CLI::App& app, DocsArgs& a) {
  CLI::App* d = app.add_subcommand("docs", "Print the option and method tables generated from the registries, or "
                                            "check / rewrite their blocks in docs/");
  d->add_option("--check", a.check, "Exit 1, naming each block, when a generated block in this folder's pages differs");
  d->add_option("--write", a.write, "Rewrite the generated blocks in this folder's pages");
  return d;
}

int run_docs(const DocsArgs& a) {
  if (!a.check.empty()) {
    const std::vector<std::string> stale = sync_docs(a.check, false);
    for (const std::string& s : stale) fmt::print(stderr, "bulwark docs: out of date: {}\n", s);
    if (stale.empty()) return 0;
    fmt::print(stderr, "bulwark docs: run `bulwark docs --write {}` and commit the pages\n", a.check);
    return 1;
  }
  if (!a.write.empty()) {
    for (const std::string& s : sync_docs(a.write, true)) fmt::print("rewrote {}\n", s);
    return 0;
  }
  for (const DocSection& s : doc_sections()) fmt::print("## {}\n\n{}\n", s.name, s.markdown);
  return 0;
}

// `bulwark info`: what this build and machine can run, the first thing to look at when a GPU or
// a multi-process run does not start.
int run_info() {
  fmt::print("bulwark: what this build can run here\n");
  fmt::print("  {:<9} {} (OpenMP; --threads)\n", "threads", runtime::num_threads());
  std::string why;
  std::string cuda;
  if (runtime::cuda_emulated())
    cuda = "the emulated backend (kernels/cuda run on the CPU through the emulator)";
  else if (runtime::cuda_available(&why))
    cuda = "a GPU (--device cuda)";
  else
    cuda = why.empty() ? "no GPU" : fmt::format("no GPU ({})", why);
  fmt::print("  {:<9} {}\n", "CUDA", cuda);
  const std::string mpi = comm::mpi_library();
  fmt::print("  {:<9} {}\n", "MPI",
             mpi.empty() ? "not built in (apt-get install libopenmpi-dev openmpi-bin, then build again)"
                         : mpi + " (mpirun -np N bulwark train ...)");
  std::string nccl;
  const bool loads = comm::nccl_loads(&nccl);
  fmt::print("  {:<9} {}{}\n", "NCCL", loads ? "" : "not available: ", nccl);
  fmt::print("  {:<9} {}\n", "launch", comm::launched_by_mpi() ? "a rank of an MPI job" : "a single process");
  return 0;
}

}  // namespace

namespace {
// A failure one rank may meet alone (a diverged loss, a file it cannot read, a timed-out
// collective): the message, then the whole job ends, instead of the other ranks waiting for this
// one in their next collective. On one process: the message and the exit code.
int rank_failed(const std::string& message, int code) {
  comm::Communicator& ranks = comm::world();
  if (!ranks.distributed()) {
    fmt::print(stderr, "bulwark: {}\n", message);
    return code;
  }
  fmt::print(stderr, "bulwark: rank {} of {}: {}\nbulwark: rank {} ends the job\n", ranks.rank(), ranks.size(), message,
             ranks.rank());
  std::fflush(stderr);
  ranks.abort(code);
  return code;  // not reached
}
}  // namespace

int run_cli(int argc, char** argv) {
  CLI::App app{"bulwark: a from-scratch C++ tensor engine with fast adversarial and certified robust training"};
  app.name("bulwark");
  app.require_subcommand(1);
  TrainArgs train_args;
  EvalArgs eval_args;
  ImportArgs import_args;
  VerifyArgs verify_args;
  CLI::App* train_cmd = add_train_command(app, train_args);
  CLI::App* verify_cmd = add_verify_command(app, verify_args);
  CLI::App* eval_cmd = add_eval_command(app, eval_args);
  CLI::App* import_cmd = add_import_command(app, import_args);
  DocsArgs docs_args;
  CLI::App* docs_cmd = add_docs_command(app, docs_args);
  CLI::App* info_cmd = app.add_subcommand("info", "What this build can run here: threads, the CUDA backend and GPU, MPI "
                                                  "and NCCL (their versions, or why they are missing)");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);  // --help
    const CLI::App* cmd = train_cmd->parsed()  ? train_cmd
                          : eval_cmd->parsed() ? eval_cmd
                          : docs_cmd->parsed() ? docs_cmd
                          : import_cmd->parsed() ? import_cmd
                          : verify_cmd->parsed() ? verify_cmd
                                               : nullptr;
    fmt::print(stderr, "bulwark: error: {}\nRun '{} --help' for the options.\n", e.what(),
               cmd ? "bulwark " + cmd->get_name() : std::string("bulwark"));
    return 2;
  }
  try {
    if (train_cmd->parsed()) return run_train(*train_cmd, train_args);
    if (docs_cmd->parsed()) return run_docs(docs_args);
    if (info_cmd->parsed()) return run_info();
    if (import_cmd->parsed()) return run_import(import_args);
    if (verify_cmd->parsed()) return run_verify(verify_args);
    return run_eval(eval_args);
  } catch (const RanksDisagree& e) {
    // Every rank throws this from the same collective: each says why, and MPI ends in order.
    fmt::print(stderr, "bulwark: error: {}\n", e.what());
    comm::set_world(nullptr);
    return 2;
  } catch (const TrainingDiverged& e) {
    return rank_failed(fmt::format("error: {}", e.what()), 1);
  } catch (const TrainingInterrupted& e) {
    fmt::print(stderr, "bulwark: {}\n", e.what());
    comm::set_world(nullptr);  // every rank stops at the same epoch's end
    return 128 + e.signal;
  } catch (const std::exception& e) {
    return rank_failed(fmt::format("error: {}", e.what()), 2);
  }
}

}  // namespace bulwark::training

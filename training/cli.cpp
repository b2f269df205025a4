#include "training/cli.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <CLI/CLI.hpp>
#include <filesystem>
#include <set>
#include <string>

#include "kernels/cpu/cpu_kernels.h"
#include "models/zoo.h"
#include "training/evaluate.h"
#include "training/trainer.h"

namespace bulwark::training {

namespace fs = std::filesystem;

namespace {

constexpr double kSgdDefaultLr = 0.05, kAdamDefaultLr = 1e-3;

struct TrainArgs {
  TrainConfig cfg;
  RunOptions run;
  std::string resume;
};

struct EvalArgs {
  std::string checkpoint;
  std::string dataset, data_dir;
  int64_t test_size = 0;
  int64_t batch_size = 500;
  int threads = 0;
  std::string device = "auto";
  bool json = false;
};

CLI::App* add_train_command(CLI::App& app, TrainArgs& a, CLI::Option*& lr_option) {
  TrainConfig& c = a.cfg;
  CLI::App* t = app.add_subcommand("train", "Train a model; writes a run directory (config.json, metrics.jsonl, "
                                            "checkpoints, summary.json)");
  t->footer(
      "With no options: wong_small on Fashion-MNIST when Debian's dataset-fashion-mnist is installed, else on the\n"
      "synthetic dataset, for 5 epochs.\n\n"
      "Examples:\n"
      "  bulwark train\n"
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

  t->add_option("--method", c.method, "Training method: standard")->capture_default_str();
  t->add_option("--seed", c.seed, "Seed of the initial weights, shuffling and augmentation")->capture_default_str();
  t->add_option("--threads", c.threads, "CPU threads (0 = all cores)")->capture_default_str();
  t->add_option("--device", c.device, "cpu, cuda or auto (this build: cpu only)")->capture_default_str();
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
  CLI::App* e = app.add_subcommand("eval", "Clean accuracy of a checkpoint on a test split");
  e->footer("Examples:\n"
            "  bulwark eval --checkpoint runs/my-run\n"
            "  bulwark eval --checkpoint runs/my-run/best.safetensors --test-size 1000 --json");
  e->option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  e->add_option("--checkpoint", a.checkpoint, "A checkpoint file, or a run directory (its last.safetensors)")
      ->required();
  e->add_option("--dataset", a.dataset, "Dataset to evaluate on (default: the one the model was trained on)");
  e->add_option("--data-dir", a.data_dir, "Folder with the dataset's files (default: the training run's)");
  e->add_option("--test-size", a.test_size, "Samples from the start of the test split (0 = all; synthetic: 2000)")
      ->capture_default_str();
  e->add_option("--batch-size", a.batch_size, "Evaluation batch size")->capture_default_str();
  e->add_option("--threads", a.threads, "CPU threads (0 = all cores)")->capture_default_str();
  e->add_option("--device", a.device, "cpu, cuda or auto (this build: cpu only)")->capture_default_str();
  e->add_flag("--json", a.json, "Print one JSON object instead of the table");
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
  if (lr_option.count() == 0) a.cfg.optimizer.lr = a.cfg.optimizer.name == "adam" ? kAdamDefaultLr : kSgdDefaultLr;
  train(a.cfg, a.run);
  return 0;
}

int run_eval(const EvalArgs& a) {
  if (a.test_size < 0) throw std::invalid_argument(fmt::format("--test-size must be >= 0 (0 = all), got {}", a.test_size));
  if (a.batch_size < 1) throw std::invalid_argument(fmt::format("--batch-size must be >= 1, got {}", a.batch_size));
  if (a.threads < 0) throw std::invalid_argument(fmt::format("--threads must be >= 0, got {}", a.threads));
  std::vector<std::string> notes;
  resolve_device(a.device, notes);
  if (a.threads > 0) cpu::set_num_threads(a.threads);

  const std::string path = fs::is_directory(a.checkpoint) ? (fs::path(a.checkpoint) / "last.safetensors").string()
                                                          : a.checkpoint;
  if (!fs::exists(path)) throw std::invalid_argument(fmt::format("checkpoint {} does not exist", path));
  const Checkpoint ckpt = load_checkpoint(path);
  const TrainConfig cfg = config_from_json(ckpt.state.config);
  const std::shared_ptr<Module> model = build_model(cfg);
  model->load_state_dict(ckpt.model);

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
  const EvalResult r = evaluate_clean(*model, test, a.batch_size);

  if (a.json) {
    nlohmann::ordered_json j{{"checkpoint", path},    {"model", cfg.model},    {"dataset", test.name},
                             {"samples", r.count},     {"clean_acc", r.accuracy}, {"loss", r.loss},
                             {"epoch", ckpt.state.epoch}};
    fmt::print("{}\n", j.dump());
  } else {
    for (const auto& n : notes) fmt::print("{}\n", n);
    fmt::print("{:<40} | {:<16} | {:<24} | {:>7} | {:>9}\n", "checkpoint", "model", "dataset", "samples", "clean acc");
    fmt::print("{:-<40}-+-{:-<16}-+-{:-<24}-+-{:-<7}-+-{:-<9}\n", "", "", "", "", "");
    fmt::print("{:<40} | {:<16} | {:<24} | {:>7} | {:>8.2f}%\n", path, cfg.model, test.name, r.count, 100 * r.accuracy);
  }
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

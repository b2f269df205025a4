#include "training/report.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <sys/wait.h>

#include "data/file_io.h"

namespace bulwark::training {

namespace {

namespace fs = std::filesystem;

std::string pct(double v) { return fmt::format("{:.2f}%", 100 * v); }

// "pgd (steps 10, alpha 0.025, eps 0.1)": a registry entry's name and its resolved options, less
// those `unused` by it (the optimizer config holds both SGD's and Adam's fields).
std::string named_options(const nlohmann::json& entry, const std::vector<std::string>& unused = {}) {
  if (!entry.is_object()) return entry.is_null() ? "-" : entry.dump();
  std::string options;
  for (const auto& [key, value] : entry.items()) {
    if (key == "name" || std::find(unused.begin(), unused.end(), key) != unused.end()) continue;
    options += fmt::format("{}{} {}", options.empty() ? "" : ", ", key, value.is_string() ? value.get<std::string>() : value.dump());
  }
  const std::string name = entry.value("name", std::string("?"));
  return options.empty() ? name : fmt::format("{} ({})", name, options);
}

// Shell-quotes a path for std::system.
std::string quoted(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

}  // namespace

nlohmann::ordered_json training_summary(const nlohmann::json& config, int64_t epoch, const nlohmann::json& summary) {
  nlohmann::ordered_json t;
  t["method"] = config.contains("method") ? config["method"] : nlohmann::json();
  t["schedule"] = config.contains("schedule") ? config["schedule"] : nlohmann::json();
  t["optimizer"] = config.contains("optimizer") ? config["optimizer"] : nlohmann::json();
  t["epochs_planned"] = config.value("epochs", 0);
  t["epochs_done"] = epoch;
  t["batch_size"] = config.value("batch_size", 0);
  t["train_size"] = config.contains("data") ? config["data"].value("train_size", 0) : 0;
  if (summary.is_object()) {
    for (const char* key : {"fwd_passes", "bwd_passes", "seconds", "cpu_seconds", "num_parameters", "stopped_at_epoch"})
      if (summary.contains(key)) t[key] = summary[key];
  }
  return t;
}

std::string report_markdown(const nlohmann::ordered_json& r, const std::string& plot, const std::string& plot_note) {
  std::string md;
  const std::string norm = r.value("norm", std::string("linf")) == "l2" ? "L2" : "L-inf";
  md += fmt::format("# Robustness report: {} on {}\n\n", r.value("model", std::string("?")),
                    r.value("dataset", std::string("?")));
  md += fmt::format("Checkpoint `{}` (epoch {}), evaluated by `bulwark eval --report` on {} test samples at {} eps "
                    "{:.6g} ({}), on the {}. Every figure below was measured in this run.\n\n",
                    r.value("checkpoint", std::string("?")), r.value("epoch", 0), r.value("samples", 0), norm,
                    r.value("eps", 0.0), r.value("eps_source", std::string("?")), r.value("device", std::string("?")));

  const nlohmann::json t = r.contains("training") ? nlohmann::json(r["training"]) : nlohmann::json::object();
  md += "## Training\n\n| | |\n|---|---|\n";
  md += fmt::format("| method | {} |\n", named_options(t.value("method", nlohmann::json())));
  md += fmt::format("| LR schedule | {} |\n", named_options(t.value("schedule", nlohmann::json())));
  const nlohmann::json optimizer = t.value("optimizer", nlohmann::json());
  const bool adam = optimizer.is_object() && optimizer.value("name", std::string()) == "adam";
  md += fmt::format("| optimizer | {} |\n", named_options(optimizer, adam ? std::vector<std::string>{"momentum", "nesterov"}
                                                                            : std::vector<std::string>{"beta1", "beta2", "eps"}));
  md += fmt::format("| epochs | {} of {} (batch {}, {} training samples) |\n", t.value("epochs_done", 0),
                    t.value("epochs_planned", 0), t.value("batch_size", 0), t.value("train_size", 0));
  if (t.contains("fwd_passes"))
    md += fmt::format("| work | {} forward + {} backward passes, {:.1f} s ({:.1f} CPU s) |\n",
                      data::with_commas(t["fwd_passes"].get<int64_t>()), data::with_commas(t["bwd_passes"].get<int64_t>()),
                      t.value("seconds", 0.0), t.value("cpu_seconds", 0.0));
  else
    md += "| work | not recorded (no summary.json: an imported or unfinished run) |\n";
  if (t.contains("num_parameters")) md += fmt::format("| parameters | {} |\n", data::with_commas(t["num_parameters"].get<int64_t>()));
  md += "\n";

  md += "## Accuracy under each attack\n\n| attack | accuracy | samples | seconds | fwd / bwd passes | fwd / bwd images |\n"
        "|---|---:|---:|---:|---:|---:|\n";
  std::string strongest;
  double lowest = 2;
  for (const auto& row : r.value("attacks", nlohmann::json::array())) {
    md += fmt::format("| {} | {} | {} | {:.1f} | {} / {} | {} / {} |\n", row["attack"].get<std::string>(),
                      pct(row["accuracy"].get<double>()), row["samples"].get<int64_t>(), row["seconds"].get<double>(),
                      data::with_commas(row["fwd_passes"].get<int64_t>()), data::with_commas(row["bwd_passes"].get<int64_t>()),
                      data::with_commas(row.value("fwd_images", int64_t{0})), data::with_commas(row.value("bwd_images", int64_t{0})));
    if (row["attack"] != "clean" && row["accuracy"].get<double>() < lowest) {
      lowest = row["accuracy"].get<double>();
      strongest = row["attack"].get<std::string>();
    }
  }
  md += fmt::format("\n**Robust accuracy {}**: correct under every attack above.", pct(r.value("robust_acc", 0.0)));
  if (!strongest.empty()) md += fmt::format(" The strongest single attack: {} ({}).", strongest, pct(lowest));
  md += "\n\n";
  if (r.contains("suite")) {
    const auto& s = r["suite"];
    md += fmt::format("### Suite `{}` (each attack on the samples still robust)\n\n| attack | robust so far | attacked | "
                      "seconds | fwd / bwd passes |\n|---|---:|---:|---:|---:|\n",
                      s["name"].get<std::string>());
    for (const auto& step : s["steps"])
      md += fmt::format("| {} | {} | {} | {:.1f} | {} / {} |\n", step["attack"].get<std::string>(),
                        pct(step["robust_acc"].get<double>()), step["attacked"].get<int64_t>(),
                        step["seconds"].get<double>(), data::with_commas(step["fwd_passes"].get<int64_t>()),
                        data::with_commas(step["bwd_passes"].get<int64_t>()));
    md += fmt::format("\n**{} robust accuracy {}** (clean {}).", s["name"].get<std::string>(),
                      pct(s["robust_acc"].get<double>()), pct(s["clean_acc"].get<double>()));
    if (s.value("randomised_model", false)) md += " The model's outputs are randomised: only EOT attacks measure it.";
    md += "\n\n";
  }

  md += "## Gradient-masking checks\n\n";
  for (const auto& c : r.value("masking_checks", nlohmann::json::array())) {
    const std::string state = !c["applicable"].get<bool>() ? "not run" : c["fired"].get<bool>() ? "**FLAGGED**" : "ok";
    const std::string detail = c["detail"].get<std::string>();
    md += fmt::format("- {} `{}`{}\n", state, c["check"].get<std::string>(), detail.empty() ? "" : ": " + detail);
  }
  md += r.value("masking_flagged", false)
            ? "\nA check fired: the white-box figure it names is void; the lowest of the white-box, transfer and "
              "gradient-free accuracies is the one to report.\n\n"
            : "\n";

  md += "## Accuracy against eps\n\n";
  if (!plot.empty()) md += fmt::format("![accuracy against eps]({})\n\n", plot);
  else md += fmt::format("No plot: {}.\n\n", plot_note);
  const auto& sweep = r.value("eps_sweep", nlohmann::json::array());
  const auto& suite_sweep = r.value("suite_sweep", nlohmann::json::array());
  if (!sweep.empty() || !suite_sweep.empty()) {
    md += "| eps | attack | accuracy |\n|---:|---|---:|\n";
    for (const auto& row : sweep)
      md += fmt::format("| {:.4g} | {} | {} |\n", row["eps"].get<double>(), row["attack"].get<std::string>(),
                        pct(row["accuracy"].get<double>()));
    for (const auto& row : suite_sweep)
      md += fmt::format("| {:.4g} | suite {} | {} |\n", row["eps"].get<double>(), r["suite"]["name"].get<std::string>(),
                        pct(row["robust_acc"].get<double>()));
    md += "\n";
  }
  return md;
}

std::string draw_report_plot(const std::string& json_path, const std::string& svg_path) {
  const char* env_dir = std::getenv("BULWARK_PYTHON_DIR");
  const fs::path script = fs::path(env_dir && *env_dir ? env_dir : BULWARK_PYTHON_DIR) / "plot_report.py";
  if (!fs::exists(script))
    return fmt::format("{} is not there (set BULWARK_PYTHON_DIR to the repository's python/ folder)", script.string());
  const std::string python = fs::exists("/usr/bin/python3") ? "/usr/bin/python3" : "python3";
  const std::string cmd = fmt::format("{} {} {} {} 2>/dev/null", python, quoted(script.string()), quoted(json_path),
                                      quoted(svg_path));
  const int status = std::system(cmd.c_str());
  const int code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  if (code == 0) return "";
  if (code == 3) return "python3-matplotlib is not installed (`bash .ci/setup` installs it)";
  if (code == 127) return "python3 is not installed";
  return fmt::format("python/plot_report.py failed (exit code {}); run it by hand: {} {} {} {}", code, python,
                     script.string(), json_path, svg_path);
}

}  // namespace bulwark::training

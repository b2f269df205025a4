#pragma once
// The robustness report of a checkpoint (`bulwark eval --report`, docs/attacks.md): what a reader
// of a paper or a leaderboard entry expects beside a robust figure. Written into the run
// directory:
//   report.json  the evaluation's JSON (every attack's accuracy, the suite, the eps sweep, the
//                gradient-masking checks) plus "training": the run's method, schedule,
//                optimizer, epochs, passes and time
//   report.md    rendered from report.json by report_markdown
//   report.svg   accuracy against eps (clean, each attack, the suite), drawn by
//                python/plot_report.py with matplotlib when Debian's python3-matplotlib is there
#include <string>

#include <nlohmann/json.hpp>

namespace bulwark::training {

// The training side of a report, from a checkpoint's config, its epoch, and the run's
// summary.json when there is one (null otherwise: an imported or unfinished run).
nlohmann::ordered_json training_summary(const nlohmann::json& config, int64_t epoch, const nlohmann::json& summary);

// report.md from report.json; `plot` is the plot's file name beside it, or "" with `plot_note`
// saying why there is none.
std::string report_markdown(const nlohmann::ordered_json& report, const std::string& plot, const std::string& plot_note);

// Runs python/plot_report.py (Debian's python3 first) on report.json into `svg_path`. Returns ""
// when the plot was drawn, else why not (no python3, no matplotlib, the script failed).
std::string draw_report_plot(const std::string& json_path, const std::string& svg_path);

}  // namespace bulwark::training

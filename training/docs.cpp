#include "training/docs.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "engine/check.h"
#include "robust/attack_registry.h"
#include "robust/registry.h"
#include "training/config.h"
#include "training/schedule.h"

namespace bulwark::training {

namespace fs = std::filesystem;

namespace {

constexpr const char* kBegin = "<!-- bulwark docs: ";
constexpr const char* kEnd = "<!-- end bulwark docs -->";

// A table cell: pipes escaped, never empty.
std::string cell(const std::string& text) {
  std::string out;
  for (char c : text) out += c == '|' ? std::string("\\|") : std::string(1, c);
  return out.empty() ? "" : out;
}

std::string code(const std::string& text) { return text.empty() ? "" : "`" + text + "`"; }

std::string train_options_table() {
  std::string md = "| option | default | valid | meaning |\n|---|---|---|---|\n";
  for (const TrainOption& t : train_options()) {
    const Option& o = t.option;
    std::string range = o.range_text();
    if (t.group == "method" && o.key == "name")
      range = fmt::format("{}", fmt::join(robust::method_registry().names(), ", "));
    if (o.type == OptionType::flag) range = "a flag";
    md += fmt::format("| {} | {} | {} | {} |\n", code(o.flag), cell(o.default_text()), cell(range), cell(o.help));
  }
  return md;
}

std::string schedules_table() {
  std::string md = "| `--schedule` | shape | its options |\n|---|---|---|\n";
  for (const ScheduleInfo& s : schedule_registry()) {
    std::vector<std::string> flags;
    for (const Option& o : s.options) flags.push_back(code(o.flag));
    md += fmt::format("| {} | {} | {} |\n", code(s.name), cell(s.summary), fmt::join(flags, ", "));
  }
  return md;
}

// One row per flag of a registry (a flag several entries declare is one row, with each one's default).
template <class Entry>
std::string owned_options_table(const std::vector<Entry>& entries, const std::string& kind) {
  std::string md = fmt::format("| option | {} | default | valid | meaning |\n|---|---|---|---|---|\n", kind);
  for (const SharedFlag& f : shared_flags(entries)) {
    const Option& o = *f.option;
    const std::string who = f.every_owner ? "all" : fmt::format("{}", fmt::join(f.owners, ", "));
    md += fmt::format("| {} | {} | {} | {} | {} |\n", code(o.flag), who, cell(f.default_text()),
                      cell(o.type == OptionType::flag ? "a flag" : o.range_text()), cell(o.help));
  }
  return md;
}

std::string methods_table() {
  std::string md = "| `--method` | method | what it does |\n|---|---|---|\n";
  for (const robust::MethodInfo& m : robust::method_registry().all())
    md += fmt::format("| {} | {} | {} |\n", code(m.name), cell(m.title), cell(m.summary));
  return md;
}

std::string eval_attacks_table() {
  std::string md = "| `--attacks` | `--norm` | what it does |\n|---|---|---|\n";
  for (const robust::EvalAttackInfo& a : robust::eval_attack_registry()) {
    std::vector<std::string> norms;
    for (const Norm n : a.norms) norms.push_back(robust::norm_name(n));
    md += fmt::format("| {} | {} | {} |\n", code(a.name), fmt::join(norms, ", "), cell(a.summary));
  }
  return md;
}

std::string eval_suites_table() {
  std::string md = "| `--suite` | attacks, in order | sets | what it is |\n|---|---|---|---|\n";
  for (const robust::EvalSuiteInfo& s : robust::eval_suite_registry()) {
    std::vector<std::string> settings;
    for (const auto& [flag, value] : s.settings) settings.push_back(fmt::format("`{} {}`", flag, value));
    md += fmt::format("| {} | {} | {} | {} |\n", code(s.name), fmt::join(s.attacks, ", "),
                      settings.empty() ? "-" : fmt::format("{}", fmt::join(settings, ", ")), cell(s.summary));
  }
  return md;
}

std::string read_text(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace

std::vector<DocSection> doc_sections() {
  return {{"train-options", train_options_table()},
          {"schedules", schedules_table()},
          {"schedule-options", owned_options_table(schedule_registry(), "schedule")},
          {"methods", methods_table()},
          {"method-options", owned_options_table(robust::method_registry().all(), "methods")},
          {"eval-attacks", eval_attacks_table()},
          {"eval-suites", eval_suites_table()},
          {"eval-attack-options", owned_options_table(robust::eval_attack_registry(), "attacks")}};
}

std::vector<std::string> sync_docs(const std::string& dir, bool write) {
  require(fs::is_directory(dir), fmt::format("{} is not a folder (give the docs/ folder)", dir));
  const std::vector<DocSection> sections = doc_sections();
  std::vector<std::string> report, found;
  std::vector<fs::path> pages;
  for (const auto& entry : fs::directory_iterator(dir))
    if (entry.path().extension() == ".md") pages.push_back(entry.path());
  std::sort(pages.begin(), pages.end());
  for (const fs::path& page : pages) {
    const std::string text = read_text(page);
    std::string out;
    size_t pos = 0;
    bool changed = false;
    for (size_t begin; (begin = text.find(kBegin, pos)) != std::string::npos;) {
      const size_t name_end = text.find(" -->", begin);
      require(name_end != std::string::npos, fmt::format("{}: unclosed '{}' marker", page.string(), kBegin));
      const std::string name =
          text.substr(begin + std::string(kBegin).size(), name_end - begin - std::string(kBegin).size());
      const auto section =
          std::find_if(sections.begin(), sections.end(), [&](const DocSection& s) { return s.name == name; });
      require(section != sections.end(), fmt::format("{}: unknown generated block '{}'", page.string(), name));
      const size_t body = text.find('\n', name_end) + 1;
      const size_t end = text.find(kEnd, body);
      require(end != std::string::npos, fmt::format("{}: block '{}' has no '{}'", page.string(), name, kEnd));
      out += text.substr(pos, body - pos) + section->markdown;
      if (text.substr(body, end - body) != section->markdown) {
        changed = true;
        report.push_back(fmt::format("{}: {}", page.string(), name));
      }
      found.push_back(name);
      pos = end;
    }
    out += text.substr(pos);
    if (write && changed) {
      std::ofstream(page, std::ios::binary) << out;
    }
  }
  for (const DocSection& s : sections)
    if (std::find(found.begin(), found.end(), s.name) == found.end())
      report.push_back(fmt::format("no page in {} holds the generated block '{}'", dir, s.name));
  return report;
}

}  // namespace bulwark::training

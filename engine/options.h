#pragma once
// Options declared once. A training method, an LR schedule, an attack and the trainer itself
// each declare their options as a list of Option: JSON key, command-line flag, type, default
// (fixed, or a rule that looks at other options and the data), valid range and help text.
// Everything else is generated from that list: the CLI flags and `--help`, reading and writing
// the config JSON, validation, the "resolved defaults" lines a run prints, and the option tables
// of docs/ (`bulwark options --markdown`).
//
// Values travel as an OptionValues: an ordered JSON object keyed by the options' JSON keys, so a
// config.json block is exactly the values of its owner's options.
#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

namespace bulwark {

enum class OptionType {
  flag,     // true/false; on the command line a flag without a value (or --x=false)
  integer,  // int64
  real,     // double
  radius,   // double in [0, 1] pixel units; the command line also takes k/255 ("8/255")
  text,     // a string, often one of `choices`
  reals,    // a list of doubles; comma-separated on the command line
};

class OptionValues {
 public:
  OptionValues() = default;
  explicit OptionValues(nlohmann::ordered_json values);
  bool has(const std::string& key) const;
  double real(const std::string& key) const;  // real, radius or integer
  int64_t integer(const std::string& key) const;
  bool flag(const std::string& key) const;
  std::string text(const std::string& key) const;
  std::vector<double> reals(const std::string& key) const;
  void set(const std::string& key, nlohmann::ordered_json value);
  void erase(const std::string& key);
  const nlohmann::ordered_json& json() const { return values_; }

 private:
  const nlohmann::ordered_json& at(const std::string& key) const;
  nlohmann::ordered_json values_ = nlohmann::ordered_json::object();
};

// What a default may depend on besides the other options of its owner: the data it trains on.
struct DefaultScope {
  const OptionValues& values;  // the owner's options: those given and those resolved before this one
  std::string dataset;         // synthetic | mnist | fashion-mnist | cifar10 | cifar100
  bool mnist_like = false;     // 1x28x28 images (MNIST, Fashion-MNIST); else CIFAR-like 3x32x32
  int64_t epochs = 0;          // training epochs (0 where there is no training)
};

// A default a rule chose, with the rule's reason for the run's log ("2.5 eps / k").
struct DefaultChoice {
  nlohmann::ordered_json value;
  std::string why;
};
using DefaultRule = std::function<DefaultChoice(const DefaultScope&)>;

struct Option {
  std::string key;   // JSON key inside its owner's block
  std::string flag;  // command-line flag, "--alpha"
  OptionType type = OptionType::real;
  std::string help;
  nlohmann::ordered_json fixed;  // the default when it depends on nothing; null with a rule
  DefaultRule rule;              // a default that depends on other options or the data
  std::string rule_help;         // how the rule decides, for --help and the docs
  std::optional<double> min, max;
  bool min_open = false, max_open = false;  // (min, ...) rather than [min, ...
  std::vector<std::string> choices;         // text: the accepted values (empty = any)

  static Option make(std::string key, std::string flag, OptionType type, std::string help);
  Option& default_to(nlohmann::ordered_json value);
  Option& default_by(DefaultRule rule, std::string how);
  Option& at_least(double v);
  Option& above(double v);
  Option& at_most(double v);
  Option& below(double v);
  Option& one_of(std::vector<std::string> values);

  // "[0, 1]", "> 1", ">= 0 and <= 10000", "sgd, adam", "true or false"; "" when anything goes.
  std::string range_text() const;
  // The default as --help and the docs show it: the value, or the rule's description.
  std::string default_text() const;
};

// The text of an option value on the command line, as a typed JSON value; throws naming the flag.
nlohmann::ordered_json parse_option_text(const Option& o, const std::string& text);
// A value's type and range; throws std::invalid_argument naming the flag, the valid range and
// `owner` ("method 'pgd'"), e.g. "--steps must be >= 1 (method 'pgd'), got 0".
void check_option_value(const Option& o, const nlohmann::ordered_json& value, const std::string& owner);
// A value as the user would type it ("0.0313725", "true", "25,40").
std::string option_value_text(const nlohmann::ordered_json& value);

// The perturbation size a user typed: a fraction in [0, max] ("0.3"; max 1 for an L-inf radius) or
// k/255 ("8/255").
double parse_radius(const std::string& text, double max = 1.0);

// Fills in every option of `options` that `values` lacks, in declaration order (a rule sees
// what was given and what was resolved before it), then checks every value. Returns one line per
// rule-chosen default: "<owner>: --alpha = 0.00784 (2.5 eps / k)".
std::vector<std::string> resolve_options(const std::vector<Option>& options, OptionValues& values,
                                         const DefaultScope& scope, const std::string& owner);

// The values of `options` in the JSON block `j`. Keys in `ignored` are skipped (blocks written
// before options had owners carry other owners' keys); any other unknown key is an error. An
// option the block lacks takes its fixed default (an option added since the block was written:
// the run behaved as its default); one whose default is a rule stays unset.
OptionValues read_options(const std::vector<Option>& options, const nlohmann::json& j, const std::string& where,
                          const std::vector<std::string>& ignored = {});

// The values in the options' declaration order, as config.json writes them.
nlohmann::ordered_json ordered_values(const std::vector<Option>& options, const OptionValues& values);

const Option* find_option(const std::vector<Option>& options, const std::string& key);

// Throws std::invalid_argument unless `values` holds exactly the options of `options`, each in
// its range: a config whose defaults are resolved.
void check_complete(const std::vector<Option>& options, const OptionValues& values, const std::string& owner);

// One flag of a registry (methods, schedules, attacks) as --help and the docs show it: several
// entries may declare it (--alpha, --r-max), each with its own default.
struct SharedFlag {
  const Option* option = nullptr;  // the first declaration
  std::vector<std::string> owners, defaults;
  bool every_owner = false;  // every entry declares it
  // The default, or "owner: default; ..." when the owners differ.
  std::string default_text() const;
};

// The distinct flags of `entries` (anything with `name` and `options`), in declaration order.
template <class Entry>
std::vector<SharedFlag> shared_flags(const std::vector<Entry>& entries) {
  std::vector<SharedFlag> flags;
  for (const Entry& e : entries)
    for (const Option& o : e.options) {
      auto it = flags.begin();
      while (it != flags.end() && it->option->flag != o.flag) ++it;
      if (it == flags.end()) it = flags.insert(flags.end(), SharedFlag{&o, {}, {}, false});
      it->owners.push_back(e.name);
      it->defaults.push_back(o.default_text());
    }
  for (SharedFlag& f : flags) f.every_owner = f.owners.size() == entries.size();
  return flags;
}

}  // namespace bulwark

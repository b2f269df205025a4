#pragma once
// The training methods, by name. Each method lives in its own file under robust/methods/ and
// describes itself with a MethodInfo: its name, a paragraph on what it does and which paper it
// comes from, its options (engine/options.h: JSON key, CLI flag, type, default or default rule,
// valid range, help) and a factory. robust/registry.cpp registers the built-in methods, one line
// each; a program (or a test) may add its own with method_registry().add(...). The CLI flags,
// --help, config JSON, validation, the resolved-defaults lines and the docs' method tables are
// generated from the registry, and this is the one place that looks methods up by name.
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "engine/options.h"
#include "robust/method.h"

namespace bulwark::robust {

struct MethodInfo {
  std::string name;             // the value of --method
  std::string title;            // "PGD-AT (Madry et al. 2018)"
  std::string summary;          // what it does, its paper, and the options that reproduce the paper's setting
  bool adversarial = true;      // trains on attacked inputs (prints its eps/alpha choices)
  bool certified = false;       // trains on verified bounds: validation also reports verified accuracy
  // One optimizer step per batch: under --grad-accum the trainer hands it one micro-batch at a
  // time. Free-AT and DEAT step on every replay, and sum a step's micro-batches themselves
  // (StepContext::micro_batch).
  bool steps_once_per_batch = true;
  std::vector<Option> options;  // every option, eps first (robust/method_steps.h has the shared ones)
  std::function<std::unique_ptr<Method>(const OptionValues&)> make;  // from resolved, checked values
};

class MethodRegistry {
 public:
  // Adds a method. Throws std::logic_error for a second method of the same name, or an option
  // whose flag another method already uses with another JSON key or type.
  void add(MethodInfo info);
  const MethodInfo* find(const std::string& name) const;
  // Throws std::invalid_argument "unknown method 'x' (available: ...)".
  const MethodInfo& at(const std::string& name) const;
  std::vector<std::string> names() const;
  const std::vector<MethodInfo>& all() const { return methods_; }
  // The methods that declare an option with this flag, in registration order.
  std::vector<const MethodInfo*> with_flag(const std::string& flag) const;

 private:
  std::vector<MethodInfo> methods_;
};

// The process's registry, holding the built-in methods.
MethodRegistry& method_registry();

// A method and its option values (given, then resolved). config.json's "method" block is
// {"name": ..., <the method's options>}.
struct MethodConfig {
  std::string name = "standard";
  OptionValues options;
  // The attack radius of the run (every method has one: robust validation uses it), -1 before
  // the defaults are resolved; the eps warm-up in epochs, 0 for a method without one.
  double eps() const;
  double eps_ramp() const;
  // The fraction of eps a step at `progress` epochs into training uses (robust/method_steps.h
  // eps_ramp_scale with this method's --eps-ramp, --eps-ramp-start and --eps-ramp-shape).
  double eps_scale(double progress) const;
};

// Fills in every option the config lacks, from its default or default rule (which may look at
// the dataset: `scope`), and checks every value against its range. Returns one line per
// rule-chosen default for the run's log, naming the rule.
std::vector<std::string> resolve_method(MethodConfig& cfg, const DefaultScope& scope);

// Throws std::invalid_argument for an unknown method, a missing option or one out of range.
void validate(const MethodConfig& cfg);

nlohmann::ordered_json to_json(const MethodConfig& cfg);
// Reads a "method" block. Blocks written before methods declared their own options carried
// every method's fields; the ones that are not this method's options are skipped.
MethodConfig method_config_from_json(const nlohmann::json& j);

// The method `cfg` describes (resolved and validated).
std::unique_ptr<Method> make_method(const MethodConfig& cfg);

}  // namespace bulwark::robust

#pragma once
// The attacks `bulwark eval --attacks` runs, by name, each with its options declared once
// (engine/options.h), like the training methods (robust/registry.h) and the LR schedules: the
// eval command's flags, --help, validation and the docs come from this list, and this is the one
// place that looks an evaluation attack up by name.
#include <functional>
#include <string>
#include <vector>

#include "engine/options.h"
#include "robust/attacks.h"

namespace bulwark::robust {

struct EvalAttackInfo {
  std::string name;     // the value in --attacks: clean, pgd, cw, fgsm, square
  std::string summary;  // what it does, and its paper
  std::vector<Option> options;
  // The attack at radius eps with the Philox stream `seed`, from resolved, checked values.
  std::function<AttackOptions(const OptionValues&, double eps, uint64_t seed)> make;
};

const std::vector<EvalAttackInfo>& eval_attack_registry();
// Throws std::invalid_argument "unknown attack 'x' in --attacks (available: ...)".
const EvalAttackInfo& eval_attack_info(const std::string& name);
std::vector<std::string> eval_attack_names();

}  // namespace bulwark::robust

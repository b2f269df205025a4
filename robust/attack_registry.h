#pragma once
// The attacks `bulwark eval --attacks` runs, by name, each with its options declared once
// (engine/options.h), like the training methods (robust/registry.h) and the LR schedules: the
// eval command's flags, --help, validation and the docs come from this list, and this is the one
// place that looks an evaluation attack up by name.
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "engine/options.h"
#include "robust/attacks.h"

namespace bulwark::robust {

// What an attack can see of the model, for the gradient-masking checks (robust/masking_checks.h).
enum class AttackRole {
  clean,        // no attack
  single_step,  // one gradient step (FGSM): never stronger than many on a model that does not mask
  white_box,    // iterative, from gradients (PGD, CW, APGD)
  black_box,    // from scores or queries alone (Square): blind to masked gradients
};

struct EvalAttackInfo {
  std::string name;     // the value in --attacks: clean, pgd, cw, fgsm, square
  std::string summary;  // what it does, and its paper
  std::vector<Option> options;
  // The attack at radius eps with the Philox stream `seed`, from resolved, checked values.
  std::function<AttackOptions(const OptionValues&, double eps, uint64_t seed)> make;
  AttackRole role = AttackRole::white_box;
  std::vector<Norm> norms{Norm::linf, Norm::l2};  // the norms bulwark implements it in
};

// A named sequence of attacks for `bulwark eval --suite`, each run on the samples the earlier
// ones left correct (training/evaluate.h evaluate_sequence).
struct EvalSuiteInfo {
  std::string name;
  std::string summary;
  std::vector<std::string> attacks;  // names in eval_attack_registry()
  // Attack options the suite sets (flag -> value, as typed on the command line) unless the
  // command line gives them: autoattack-rand's EOT.
  std::map<std::string, std::string> settings;
};
const std::vector<EvalSuiteInfo>& eval_suite_registry();
// The attacks of --suite: a registered suite's name, or a comma-separated list of attack names.
// Throws std::invalid_argument naming what is missing: an unknown suite or attack, or a suite's
// attack that bulwark does not implement yet.
std::vector<std::string> suite_attacks(const std::string& suite);
// The settings of a registered suite (empty for a list of attacks).
std::map<std::string, std::string> suite_settings(const std::string& suite);

// "l2" or "linf" (as --norm takes them).
const char* norm_name(Norm norm);
// Throws std::invalid_argument naming the attacks that have a version in `norm` when `attack`
// has none: "--norm l2: square is implemented in L-inf only (attacks in L2: ...)".
void require_norm(const EvalAttackInfo& attack, Norm norm);

const std::vector<EvalAttackInfo>& eval_attack_registry();
// Throws std::invalid_argument "unknown attack 'x' in --attacks (available: ...)".
const EvalAttackInfo& eval_attack_info(const std::string& name);
std::vector<std::string> eval_attack_names();

}  // namespace bulwark::robust

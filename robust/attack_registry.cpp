#include "robust/attack_registry.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "engine/check.h"

namespace bulwark::robust {

namespace {

// --alpha of the iterative attacks: absent = Madry's 2.5 eps / steps (resolve_attack's rule).
Option step_option() {
  return Option::make("alpha", "--alpha", OptionType::radius, "PGD and CW step size, as --eps")
      .above(0)
      .default_by({}, "2.5 eps / steps");
}

AttackOptions base(AttackKind kind, double eps, uint64_t seed) {
  AttackOptions o;
  o.kind = kind;
  o.eps = eps;
  o.seed = seed;
  return o;
}

std::vector<EvalAttackInfo> builtin_attacks() {
  std::vector<EvalAttackInfo> all;
  all.push_back({"clean", "the unperturbed test samples", {}, [](const OptionValues&, double eps, uint64_t seed) {
                   return base(AttackKind::none, eps, seed);
                 }});
  all.push_back(
      {"pgd",
       "PGD on the cross-entropy (Madry et al. 2018): random start, signed steps projected to the eps-ball "
       "and [0,1]; per sample the worst of the restarts counts",
       {Option::make("steps", "--pgd-steps", OptionType::integer, "PGD steps").at_least(1).default_to(50),
        Option::make("restarts", "--restarts", OptionType::integer, "PGD random restarts (the worst per sample counts)")
            .at_least(1)
            .default_to(10),
        step_option()},
       [](const OptionValues& v, double eps, uint64_t seed) {
         AttackOptions o = base(AttackKind::pgd, eps, seed);
         o.steps = static_cast<int>(v.integer("steps"));
         o.restarts = static_cast<int>(v.integer("restarts"));
         if (v.has("alpha")) o.alpha = v.real("alpha");
         return o;
       }});
  all.push_back(
      {"cw",
       "PGD on the Carlini-Wagner margin max_{j != y} z_j - z_y, one random start",
       {Option::make("steps", "--cw-steps", OptionType::integer, "CW steps").at_least(1).default_to(20), step_option()},
       [](const OptionValues& v, double eps, uint64_t seed) {
         AttackOptions o = base(AttackKind::cw, eps, seed);
         o.steps = static_cast<int>(v.integer("steps"));
         if (v.has("alpha")) o.alpha = v.real("alpha");
         return o;
       }});
  all.push_back({"fgsm",
                 "one signed gradient step of eps from the sample (Goodfellow et al. 2015)",
                 {},
                 [](const OptionValues&, double eps, uint64_t seed) { return base(AttackKind::fgsm, eps, seed); }});
  all.push_back(
      {"square",
       "Square attack (Andriushchenko et al. 2020): score-based random search over square L-inf updates, "
       "accepted when the margin falls; no gradients, so gradient masking cannot fool it",
       {Option::make("queries", "--square-queries", OptionType::integer, "Square forwards per restart (its query budget)")
            .at_least(1)
            .default_to(5000),
        Option::make("p_init", "--square-p-init", OptionType::real,
                     "Square's first square covers this fraction of the image (halved on the paper's schedule)")
            .above(0)
            .at_most(1)
            .default_to(0.8),
        Option::make("restarts", "--square-restarts", OptionType::integer,
                     "Square restarts, each on the samples still standing")
            .at_least(1)
            .default_to(1)},
       [](const OptionValues& v, double eps, uint64_t seed) {
         AttackOptions o = base(AttackKind::square, eps, seed);
         o.queries = static_cast<int>(v.integer("queries"));
         o.p_init = v.real("p_init");
         o.restarts = static_cast<int>(v.integer("restarts"));
         return o;
       }});
  return all;
}

}  // namespace

const std::vector<EvalAttackInfo>& eval_attack_registry() {
  static const std::vector<EvalAttackInfo> all = builtin_attacks();
  return all;
}

std::vector<std::string> eval_attack_names() {
  std::vector<std::string> names;
  for (const EvalAttackInfo& a : eval_attack_registry()) names.push_back(a.name);
  return names;
}

const EvalAttackInfo& eval_attack_info(const std::string& name) {
  for (const EvalAttackInfo& a : eval_attack_registry())
    if (a.name == name) return a;
  throw std::invalid_argument(
      fmt::format("unknown attack '{}' in --attacks (available: {})", name, fmt::join(eval_attack_names(), ", ")));
}

}  // namespace bulwark::robust

#include "robust/attack_registry.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <utility>

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

// The options of the APGD attacks (each declares them; --apgd-targets only APGD-T).
std::vector<Option> apgd_options(bool targeted) {
  std::vector<Option> options{
      Option::make("steps", "--apgd-steps", OptionType::integer, "APGD iterations per run (the paper: 100)")
          .at_least(1)
          .default_to(100),
      Option::make("restarts", "--apgd-restarts", OptionType::integer,
                   "APGD random restarts, later ones on the samples still standing")
          .at_least(1)
          .default_to(1),
      Option::make("eot", "--apgd-eot", OptionType::integer,
                   "APGD: loss and gradient averaged over this many forwards and backwards per point (EOT, for "
                   "randomised models; autoattack-rand: 20)")
          .at_least(1)
          .default_to(1)};
  if (targeted)
    options.push_back(Option::make("targets", "--apgd-targets", OptionType::integer,
                                   "APGD-T target classes: the highest non-true clean logits, in turn")
                          .at_least(1)
                          .at_most(999)
                          .default_to(9));
  return options;
}

EvalAttackInfo apgd_attack(std::string name, std::string summary, AttackKind kind) {
  return {std::move(name), std::move(summary), apgd_options(kind == AttackKind::apgd_t),
          [kind](const OptionValues& v, double eps, uint64_t seed) {
            AttackOptions o = base(kind, eps, seed);
            o.steps = static_cast<int>(v.integer("steps"));
            o.restarts = static_cast<int>(v.integer("restarts"));
            o.eot = static_cast<int>(v.integer("eot"));
            if (v.has("targets")) o.targets = static_cast<int>(v.integer("targets"));
            return o;
          }};
}

std::vector<EvalAttackInfo> builtin_attacks() {
  std::vector<EvalAttackInfo> all;
  all.push_back({"clean", "the unperturbed test samples", {},
                 [](const OptionValues&, double eps, uint64_t seed) { return base(AttackKind::none, eps, seed); },
                 AttackRole::clean});
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
                 [](const OptionValues&, double eps, uint64_t seed) { return base(AttackKind::fgsm, eps, seed); },
                 AttackRole::single_step});
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
       },
       AttackRole::black_box,
       {Norm::linf}});
  all.push_back(apgd_attack("apgd-ce",
                            "APGD on the cross-entropy (Croce & Hein 2020): momentum steps from 2 eps, halved per "
                            "sample at checkpoints when the loss stalls, restarting from the best point",
                            AttackKind::apgd_ce));
  all.push_back(apgd_attack("apgd-dlr",
                            "APGD on the DLR loss -(z_y - max_{j != y} z_j) / (z_pi1 - z_pi3), invariant to the "
                            "logits' shift and scale",
                            AttackKind::apgd_dlr));
  all.push_back(apgd_attack("apgd-t",
                            "APGD on the targeted DLR loss -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2), once per "
                            "target class t, each on the samples still standing (AutoAttack's APGD-T)",
                            AttackKind::apgd_t));
  all.push_back({"fab-t",
                 "FAB-T (Croce & Hein 2020): the targeted minimum-norm attack; walks to the nearest point of the "
                 "linearised boundary towards each of the top target classes, and breaks a sample when that point is "
                 "within eps",
                 {Option::make("steps", "--fab-steps", OptionType::integer, "FAB-T iterations per target class")
                      .at_least(1)
                      .default_to(100),
                  Option::make("targets", "--fab-targets", OptionType::integer,
                               "FAB-T target classes: the highest non-true clean logits, in turn")
                      .at_least(1)
                      .at_most(999)
                      .default_to(9)},
                 [](const OptionValues& v, double eps, uint64_t seed) {
                   AttackOptions o = base(AttackKind::fab_t, eps, seed);
                   o.steps = static_cast<int>(v.integer("steps"));
                   o.targets = static_cast<int>(v.integer("targets"));
                   return o;
                 },
                 AttackRole::white_box});
  all.push_back({"interval",
                 "the interval attack (MixTrain, Wang et al. 2018): PGD from x and from random starts; where it fails, "
                 "the symbolic bound of a box around the point, widened until it cannot prove the sample, gives a "
                 "direction to step along, and PGD finishes from there. Symbolic bounds cost d + 3 rows a sample: an "
                 "MNIST-scale attack",
                 {Option::make("steps", "--interval-steps", OptionType::integer,
                               "the interval attack's base PGD steps (the paper: 40, step 0.01)")
                      .at_least(1)
                      .default_to(40),
                  Option::make("restarts", "--interval-restarts", OptionType::integer,
                               "interval attack restarts: the first from x, the others from random starts")
                      .at_least(1)
                      .default_to(2)},
                 [](const OptionValues& v, double eps, uint64_t seed) {
                   AttackOptions o = base(AttackKind::interval, eps, seed);
                   o.steps = static_cast<int>(v.integer("steps"));
                   o.restarts = static_cast<int>(v.integer("restarts"));
                   return o;
                 },
                 AttackRole::white_box,
                 {Norm::linf}});
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

const std::vector<EvalSuiteInfo>& eval_suite_registry() {
  static const std::vector<EvalSuiteInfo> all{
      {"autoattack", "AutoAttack's standard suite (Croce & Hein 2020): APGD-CE, APGD-T, FAB-T, Square",
       {"apgd-ce", "apgd-t", "fab-t", "square"},
       {}},
      {"autoattack-rand",
       "AutoAttack's suite for randomised defences: APGD-CE and APGD-DLR, each point's loss and gradient averaged "
       "over 20 draws of the model (Expectation over Transformation)",
       {"apgd-ce", "apgd-dlr"},
       {{"--apgd-eot", "20"}}},
  };
  return all;
}

namespace {
std::vector<std::string> attacks_only() {  // the registry's names but "clean"
  std::vector<std::string> names;
  for (const EvalAttackInfo& a : eval_attack_registry())
    if (a.role != AttackRole::clean) names.push_back(a.name);
  return names;
}
}  // namespace

std::vector<std::string> suite_attacks(const std::string& suite) {
  std::vector<std::string> names;
  bool named = false;
  for (const EvalSuiteInfo& s : eval_suite_registry())
    if (s.name == suite) {
      names = s.attacks;
      named = true;
    }
  if (!named) {
    std::string rest = suite;
    while (!rest.empty()) {
      const size_t comma = rest.find(',');
      names.push_back(rest.substr(0, comma));
      rest = comma == std::string::npos ? "" : rest.substr(comma + 1);
    }
  }
  std::vector<std::string> suites;
  for (const EvalSuiteInfo& s : eval_suite_registry()) suites.push_back(s.name);
  for (const std::string& name : names) {
    const bool known = std::any_of(eval_attack_registry().begin(), eval_attack_registry().end(),
                                   [&](const EvalAttackInfo& a) { return a.name == name; });
    if (known) continue;
    if (named)
      throw std::invalid_argument(fmt::format("--suite {} needs the attack '{}', which bulwark does not implement yet "
                                              "(available attacks: {}; give them as a list, e.g. --suite {})",
                                              suite, name, fmt::join(eval_attack_names(), ", "),
                                              fmt::join(attacks_only(), ",")));
    throw std::invalid_argument(fmt::format("--suite {}: unknown attack '{}' (suites: {}; attacks: {})", suite, name,
                                            fmt::join(suites, ", "), fmt::join(eval_attack_names(), ", ")));
  }
  require(!names.empty(), "--suite is empty");
  return names;
}

std::map<std::string, std::string> suite_settings(const std::string& suite) {
  for (const EvalSuiteInfo& s : eval_suite_registry())
    if (s.name == suite) return s.settings;
  return {};
}

const char* norm_name(Norm norm) { return norm == Norm::l2 ? "l2" : "linf"; }

void require_norm(const EvalAttackInfo& attack, Norm norm) {
  if (std::find(attack.norms.begin(), attack.norms.end(), norm) != attack.norms.end()) return;
  std::vector<std::string> have;
  for (const EvalAttackInfo& a : eval_attack_registry())
    if (std::find(a.norms.begin(), a.norms.end(), norm) != a.norms.end()) have.push_back(a.name);
  throw std::invalid_argument(fmt::format("--norm {}: {} is implemented in {} only (attacks in {}: {})", norm_name(norm),
                                          attack.name, norm == Norm::l2 ? "L-inf" : "L2", norm_name(norm),
                                          fmt::join(have, ", ")));
}

const EvalAttackInfo& eval_attack_info(const std::string& name) {
  for (const EvalAttackInfo& a : eval_attack_registry())
    if (a.name == name) return a;
  throw std::invalid_argument(
      fmt::format("unknown attack '{}' in --attacks (available: {})", name, fmt::join(eval_attack_names(), ", ")));
}

}  // namespace bulwark::robust

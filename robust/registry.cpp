#include "robust/registry.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <stdexcept>

#include "engine/check.h"
#include "robust/method_steps.h"

namespace bulwark::robust {

// Each built-in method's file (robust/methods/) defines one of these.
MethodInfo standard_method();
MethodInfo pgd_method();
MethodInfo fgsm_rs_method();
MethodInfo free_method();
MethodInfo mplus_deat_method();
MethodInfo mplus_pgd_method();
MethodInfo deat_d_method();
MethodInfo deat_p_method();
MethodInfo ibp_method();
MethodInfo crown_ibp_method();
MethodInfo mixtrain_method();

namespace {

// The built-in methods: adding one is its file under robust/methods/ and one line here.
void register_builtin_methods(MethodRegistry& r) {
  r.add(standard_method());
  r.add(pgd_method());
  r.add(fgsm_rs_method());
  r.add(free_method());
  r.add(mplus_deat_method());
  r.add(mplus_pgd_method());
  r.add(deat_d_method());
  r.add(deat_p_method());
  r.add(ibp_method());
  r.add(crown_ibp_method());
  r.add(mixtrain_method());
}

// The fields of the single method block written before methods declared their own options
// (every method's, whatever the method): skipped when such a block is read.
const std::vector<std::string> kLegacyMethodKeys{"eps",        "alpha", "eps_ramp",    "steps",      "replays",
                                                 "gamma",      "r_max", "alpha_per_r", "alpha_min",  "deat_d",
                                                 "deat_p_acc", "guard", "guard_drop",  "guard_steps"};

std::string owner(const std::string& name) { return fmt::format("method '{}'", name); }

}  // namespace

void MethodRegistry::add(MethodInfo info) {
  if (find(info.name)) throw std::logic_error(fmt::format("method '{}' is registered twice", info.name));
  if (!info.make) throw std::logic_error(fmt::format("method '{}' has no factory", info.name));
  if (info.options.empty() || info.options.front().key != "eps")
    throw std::logic_error(fmt::format("method '{}': its first option must be eps (eps_option())", info.name));
  for (const Option& o : info.options)
    for (const MethodInfo& other : methods_)
      for (const Option& p : other.options)
        if (p.flag == o.flag && (p.key != o.key || p.type != o.type))
          throw std::logic_error(
              fmt::format("method '{}': option {} clashes with method '{}''s {} (same flag, another "
                          "key or type)",
                          info.name, o.flag, other.name, p.flag));
  methods_.push_back(std::move(info));
}

const MethodInfo* MethodRegistry::find(const std::string& name) const {
  for (const MethodInfo& m : methods_)
    if (m.name == name) return &m;
  return nullptr;
}

const MethodInfo& MethodRegistry::at(const std::string& name) const {
  const MethodInfo* m = find(name);
  require(m != nullptr, fmt::format("unknown method '{}' (available: {})", name, fmt::join(names(), ", ")));
  return *m;
}

std::vector<std::string> MethodRegistry::names() const {
  std::vector<std::string> out;
  for (const MethodInfo& m : methods_) out.push_back(m.name);
  return out;
}

std::vector<const MethodInfo*> MethodRegistry::with_flag(const std::string& flag) const {
  std::vector<const MethodInfo*> out;
  for (const MethodInfo& m : methods_)
    if (std::any_of(m.options.begin(), m.options.end(), [&](const Option& o) { return o.flag == flag; }))
      out.push_back(&m);
  return out;
}

MethodRegistry& method_registry() {
  static MethodRegistry registry = [] {
    MethodRegistry r;
    register_builtin_methods(r);
    return r;
  }();
  return registry;
}

double MethodConfig::eps() const { return options.has("eps") ? options.real("eps") : -1.0; }
double MethodConfig::eps_ramp() const { return options.has("eps_ramp") ? options.real("eps_ramp") : 0.0; }

double MethodConfig::eps_scale(double progress) const {
  const double start = options.has("eps_ramp_start") ? options.real("eps_ramp_start") : 0.0;
  const bool smoothed = options.has("eps_ramp_shape") && options.text("eps_ramp_shape") == "smoothed";
  return eps_ramp_scale(progress, start, eps_ramp(), smoothed ? EpsRampShape::smoothed : EpsRampShape::linear);
}

std::vector<std::string> resolve_method(MethodConfig& cfg, const DefaultScope& scope) {
  const MethodInfo& info = method_registry().at(cfg.name);
  const DefaultScope s{cfg.options, scope.dataset, scope.mnist_like, scope.epochs};
  return resolve_options(info.options, cfg.options, s, owner(cfg.name));
}

void validate(const MethodConfig& cfg) {
  check_complete(method_registry().at(cfg.name).options, cfg.options, owner(cfg.name));
}

nlohmann::ordered_json to_json(const MethodConfig& cfg) {
  nlohmann::ordered_json j{{"name", cfg.name}};
  const MethodInfo* info = method_registry().find(cfg.name);
  const auto values = info ? ordered_values(info->options, cfg.options) : cfg.options.json();
  for (const auto& [key, value] : values.items()) j[key] = value;
  return j;
}

MethodConfig method_config_from_json(const nlohmann::json& j) {
  MethodConfig c;
  if (j.is_string()) {  // run directories written before methods had options
    c.name = j.get<std::string>();
    return c;
  }
  require(j.is_object() && j.contains("name") && j.at("name").is_string(),
          fmt::format("config key 'method' must be an object with a \"name\", got {}", j.dump()));
  c.name = j.at("name").get<std::string>();
  const MethodInfo& info = method_registry().at(c.name);
  c.options = read_options(info.options, j, "method", kLegacyMethodKeys);
  return c;
}

std::unique_ptr<Method> make_method(const MethodConfig& cfg) {
  validate(cfg);
  return method_registry().at(cfg.name).make(cfg.options);
}

}  // namespace bulwark::robust

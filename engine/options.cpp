#include "engine/options.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <stdexcept>
#include <string_view>

#include "engine/check.h"
#include "engine/json_field.h"

namespace bulwark {

using ojson = nlohmann::ordered_json;

OptionValues::OptionValues(ojson values) : values_(std::move(values)) {
  require(values_.is_object(), fmt::format("option values must be a JSON object, got {}", values_.dump()));
}

bool OptionValues::has(const std::string& key) const { return values_.contains(key); }

const ojson& OptionValues::at(const std::string& key) const {
  if (!values_.contains(key)) throw std::logic_error(fmt::format("option '{}' has no value (not resolved?)", key));
  return values_.at(key);
}

double OptionValues::real(const std::string& key) const { return at(key).get<double>(); }
int64_t OptionValues::integer(const std::string& key) const { return at(key).get<int64_t>(); }
bool OptionValues::flag(const std::string& key) const { return at(key).get<bool>(); }
std::string OptionValues::text(const std::string& key) const { return at(key).get<std::string>(); }
std::vector<double> OptionValues::reals(const std::string& key) const { return at(key).get<std::vector<double>>(); }
void OptionValues::set(const std::string& key, ojson value) { values_[key] = std::move(value); }
void OptionValues::erase(const std::string& key) { values_.erase(key); }

Option Option::make(std::string key, std::string flag, OptionType type, std::string help) {
  Option o;
  o.key = std::move(key);
  o.flag = std::move(flag);
  o.type = type;
  o.help = std::move(help);
  if (type == OptionType::radius) o.at_least(0).at_most(1);
  return o;
}

Option& Option::default_to(ojson value) {
  fixed = std::move(value);
  return *this;
}
Option& Option::default_by(DefaultRule r, std::string how) {
  rule = std::move(r);
  rule_help = std::move(how);
  return *this;
}
Option& Option::at_least(double v) {
  min = v;
  min_open = false;
  return *this;
}
Option& Option::above(double v) {
  min = v;
  min_open = true;
  return *this;
}
Option& Option::at_most(double v) {
  max = v;
  max_open = false;
  return *this;
}
Option& Option::below(double v) {
  max = v;
  max_open = true;
  return *this;
}
Option& Option::one_of(std::vector<std::string> values) {
  choices = std::move(values);
  return *this;
}

std::string Option::range_text() const {
  if (type == OptionType::flag) return "true or false";
  if (!choices.empty()) return fmt::format("{}", fmt::join(choices, ", "));
  if (min && max && !min_open && !max_open) return fmt::format("[{:g}, {:g}]", *min, *max);
  if (min && max && min_open && !max_open) return fmt::format("({:g}, {:g}]", *min, *max);
  if (min && max) return fmt::format("{}{:g}, {:g}{}", min_open ? "(" : "[", *min, *max, max_open ? ")" : "]");
  if (min) return fmt::format("{} {:g}", min_open ? ">" : ">=", *min);
  if (max) return fmt::format("{} {:g}", max_open ? "<" : "<=", *max);
  return "";
}

std::string option_value_text(const ojson& value) {
  if (value.is_string()) return value.get<std::string>();
  if (value.is_boolean()) return value.get<bool>() ? "true" : "false";
  if (value.is_number_integer()) return std::to_string(value.get<int64_t>());
  if (value.is_number()) return fmt::format("{:.6g}", value.get<double>());
  if (value.is_array()) {
    std::vector<std::string> parts;
    for (const auto& v : value) parts.push_back(option_value_text(v));
    return fmt::format("{}", fmt::join(parts, ","));
  }
  return value.dump();
}

std::string Option::default_text() const {
  if (!rule_help.empty()) return rule_help;
  if (fixed.is_null()) return "none";
  if (fixed.is_string() && fixed.get<std::string>().empty()) return "none";
  if (fixed.is_array() && fixed.empty()) return "none";
  return option_value_text(fixed);
}

double parse_radius(const std::string& text, double max) {
  const auto fail = [&](const std::string& why) {
    return std::invalid_argument(fmt::format(
        "'{}' is not a perturbation size: {} (write a fraction such as 0.3, or k/255 such as 8/255)", text, why));
  };
  const auto number = [&](std::string_view s) {
    double v = 0;
    const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
    if (s.empty() || ec != std::errc() || end != s.data() + s.size() || !std::isfinite(v)) throw fail("not a number");
    return v;
  };
  const std::string_view all(text);
  const size_t slash = all.find('/');
  double value = 0;
  if (slash == std::string_view::npos) {
    value = number(all);
  } else {
    const double numerator = number(all.substr(0, slash)), denominator = number(all.substr(slash + 1));
    if (denominator == 0) throw fail("division by zero");
    value = numerator / denominator;
  }
  if (!(value >= 0 && value <= max))
    throw fail(max == 1 ? fmt::format("{:.6g} is outside [0, 1]", value) : fmt::format("{:.6g} is below 0 or above {:.6g}", value, max));
  return value;
}

namespace {

template <class T>
T parse_number(const Option& o, std::string_view s) {
  T v{};
  const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (s.empty() || ec != std::errc() || end != s.data() + s.size())
    throw std::invalid_argument(
        fmt::format("{}: '{}' is not {}", o.flag, s, std::is_integral_v<T> ? "a whole number" : "a number"));
  if constexpr (std::is_floating_point_v<T>)
    if (!std::isfinite(v)) throw std::invalid_argument(fmt::format("{}: '{}' is not a finite number", o.flag, s));
  return v;
}

const char* type_name(OptionType t) {
  switch (t) {
    case OptionType::flag:
      return "true or false";
    case OptionType::integer:
      return "a whole number";
    case OptionType::real:
      return "a number";
    case OptionType::radius:
      return "a number in [0, 1]";
    case OptionType::text:
      return "a string";
    case OptionType::reals:
      return "a list of numbers";
  }
  return "?";
}

bool has_type(OptionType t, const ojson& v) {
  switch (t) {
    case OptionType::flag:
      return v.is_boolean();
    case OptionType::integer:
      return v.is_number_integer();
    case OptionType::real:
    case OptionType::radius:
      return v.is_number();
    case OptionType::text:
      return v.is_string();
    case OptionType::reals:
      return v.is_array() && std::all_of(v.begin(), v.end(), [](const ojson& x) { return x.is_number(); });
  }
  return false;
}

}  // namespace

ojson parse_option_text(const Option& o, const std::string& text) {
  switch (o.type) {
    case OptionType::flag: {
      if (text.empty() || text == "true" || text == "1" || text == "on" || text == "yes") return true;
      if (text == "false" || text == "0" || text == "off" || text == "no") return false;
      throw std::invalid_argument(fmt::format("{}: '{}' is not true or false", o.flag, text));
    }
    case OptionType::integer:
      return parse_number<int64_t>(o, text);
    case OptionType::real:
      return parse_number<double>(o, text);
    case OptionType::radius:
      try {
        return parse_radius(text);
      } catch (const std::invalid_argument& e) {
        throw std::invalid_argument(fmt::format("{}: {}", o.flag, e.what()));
      }
    case OptionType::text:
      return text;
    case OptionType::reals: {
      ojson list = ojson::array();
      std::string_view rest(text);
      while (!rest.empty()) {
        const size_t comma = rest.find(',');
        list.push_back(parse_number<double>(o, rest.substr(0, comma)));
        rest = comma == std::string_view::npos ? std::string_view() : rest.substr(comma + 1);
      }
      return list;
    }
  }
  return text;
}

void check_option_value(const Option& o, const ojson& v, const std::string& owner) {
  const std::string range = o.range_text();
  const std::string valid = range.empty() ? type_name(o.type) : range;
  const std::string of = owner.empty() ? "" : fmt::format(" ({})", owner);
  require(has_type(o.type, v), fmt::format("{} must be {}{}, got {}", o.flag, type_name(o.type), of, v.dump()));
  if (!o.choices.empty())
    require(std::find(o.choices.begin(), o.choices.end(), v.get<std::string>()) != o.choices.end(),
            fmt::format("unknown {} '{}'{} (available: {})", o.flag.substr(2), v.get<std::string>(), of, valid));
  if (v.is_number_float())
    require(std::isfinite(v.get<double>()),
            fmt::format("{} must be a finite number{}, got {}", o.flag, of, v.get<double>()));
  const auto in_range = [&](double x) {
    if (o.min && (o.min_open ? !(x > *o.min) : !(x >= *o.min))) return false;
    if (o.max && (o.max_open ? !(x < *o.max) : !(x <= *o.max))) return false;
    return true;
  };
  // "must be >= 1", "must be in [0, 1]": the range as a condition.
  const std::string must = !range.empty() && (range.front() == '[' || range.front() == '(') ? "in " + range : range;
  if (v.is_number())
    require(in_range(v.get<double>()), fmt::format("{} must be {}{}, got {}", o.flag, must, of, option_value_text(v)));
  if (v.is_array())
    for (const ojson& x : v)
      require(in_range(x.get<double>()),
              fmt::format("{}: every value must be {}{}, got {}", o.flag, must, of, option_value_text(x)));
}

const Option* find_option(const std::vector<Option>& options, const std::string& key) {
  for (const Option& o : options)
    if (o.key == key) return &o;
  return nullptr;
}

std::vector<std::string> resolve_options(const std::vector<Option>& options, OptionValues& values,
                                         const DefaultScope& scope, const std::string& owner) {
  std::vector<std::string> notes;
  for (const Option& o : options) {
    if (values.has(o.key)) continue;
    if (o.rule) {
      DefaultChoice choice = o.rule(scope);
      if (choice.value.is_null()) continue;  // the rule leaves it unset (an option that does not apply)
      notes.push_back(fmt::format("{}: {} = {} ({})", owner, o.flag, option_value_text(choice.value), choice.why));
      values.set(o.key, std::move(choice.value));
    } else if (!o.fixed.is_null()) {
      values.set(o.key, o.fixed);
    }
  }
  for (const Option& o : options)
    if (values.has(o.key)) check_option_value(o, values.json().at(o.key), owner);
  return notes;
}

OptionValues read_options(const std::vector<Option>& options, const nlohmann::json& j, const std::string& where,
                          const std::vector<std::string>& ignored) {
  require(j.is_object(), fmt::format("config key '{}' must be a JSON object, got {}", where, j.dump()));
  for (const auto& [key, value] : j.items()) {
    if (key == "name" || find_option(options, key) || std::find(ignored.begin(), ignored.end(), key) != ignored.end())
      continue;
    std::vector<std::string> keys;
    for (const Option& known : options) keys.push_back(known.key);
    throw std::invalid_argument(fmt::format("config key '{}.{}' is not an option of {} (its options: {})", where, key,
                                            where, fmt::join(keys, ", ")));
  }
  OptionValues values;  // in declaration order, whatever the file's
  for (const Option& o : options) {
    if (!j.contains(o.key)) {
      // An option added since the file was written: the run had the behaviour of its default,
      // when that default depends on nothing (a rule's default was always written out).
      if (!o.fixed.is_null()) values.set(o.key, o.fixed);
      continue;
    }
    ojson v = j.at(o.key);
    if (o.type == OptionType::integer && v.is_number_float()) {  // 3.0 reads as 3; 2.5 and 1e99 fail has_type below
      try {
        v = json_get<int64_t>(v);
      } catch (const std::invalid_argument&) {
      }
    }
    if (!has_type(o.type, v))
      throw std::invalid_argument(
          fmt::format("config key '{}.{}' must be {}, got {}", where, o.key, type_name(o.type), j.at(o.key).dump()));
    values.set(o.key, std::move(v));
  }
  return values;
}

void check_complete(const std::vector<Option>& options, const OptionValues& values, const std::string& owner) {
  for (const auto& [key, value] : values.json().items())
    require(find_option(options, key) != nullptr, fmt::format("option '{}' is not an option of {}", key, owner));
  for (const Option& o : options) {
    require(values.has(o.key), fmt::format("{} ({}) has no value", o.flag, owner));
    check_option_value(o, values.json().at(o.key), owner);
  }
}

std::string SharedFlag::default_text() const {
  if (std::all_of(defaults.begin(), defaults.end(), [&](const std::string& d) { return d == defaults.front(); }))
    return defaults.front();
  std::vector<std::string> each;
  for (size_t i = 0; i < owners.size(); ++i) each.push_back(fmt::format("{}: {}", owners[i], defaults[i]));
  return fmt::format("{}", fmt::join(each, "; "));
}

// The values in the options' declaration order (a value no option declares goes last).
ojson ordered_values(const std::vector<Option>& options, const OptionValues& values) {
  ojson out = ojson::object();
  for (const Option& o : options)
    if (values.has(o.key)) out[o.key] = values.json().at(o.key);
  for (const auto& [key, value] : values.json().items())
    if (!out.contains(key)) out[key] = value;
  return out;
}

}  // namespace bulwark

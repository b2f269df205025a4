#pragma once
// Reading JSON that comes from files (config.json, the method block, checkpoint state, metrics
// lines): a missing key keeps the default, a key of the wrong type is an error that names it.

#include <fmt/format.h>

#include <cmath>
#include <limits>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string_view>
#include <type_traits>
#include <vector>

namespace bulwark {

namespace detail {
template <class T> struct is_vector : std::false_type {};
template <class T> struct is_vector<std::vector<T>> : std::true_type {};
}  // namespace detail

// j.get<T>(), except that an integer (or a list of them) is read only from a JSON number that is a
// whole number within T's range: nlohmann's own get<int64_t>() of 1e99 casts a double out of range
// (undefined behaviour), and of 2.5 or of 2^40 into an int silently gives another number. Throws
// std::invalid_argument for those, nlohmann's type_error for a value of another type.
template <class T, class Json>
T json_get(const Json& j) {
  if constexpr (std::is_integral_v<T> && !std::is_same_v<T, bool>) {
    const auto out_of_range = [&] {
      return std::invalid_argument(fmt::format("{} is not a whole number in [{}, {}]", j.dump(),
                                               std::numeric_limits<T>::min(), std::numeric_limits<T>::max()));
    };
    if (j.is_number_unsigned()) {
      const uint64_t v = j.template get<uint64_t>();
      if (v > static_cast<uint64_t>(std::numeric_limits<T>::max())) throw out_of_range();
      return static_cast<T>(v);
    }
    if (j.is_number_integer()) {
      const int64_t v = j.template get<int64_t>();
      if (v < 0 && (std::is_unsigned_v<T> || v < static_cast<int64_t>(std::numeric_limits<T>::min()))) throw out_of_range();
      if (v > 0 && static_cast<uint64_t>(v) > static_cast<uint64_t>(std::numeric_limits<T>::max())) throw out_of_range();
      return static_cast<T>(v);
    }
    if (j.is_number_float()) {
      // Whole numbers written as 3.0 are accepted; 2^63 is the first double past int64's range.
      const double v = j.template get<double>();
      if (!(v >= static_cast<double>(std::numeric_limits<T>::min()) && v < std::ldexp(1.0, std::numeric_limits<T>::digits)) ||
          std::floor(v) != v)
        throw out_of_range();
      return static_cast<T>(v);
    }
    return j.template get<T>();  // a type_error naming what the value is
  } else if constexpr (detail::is_vector<T>::value) {
    if (!j.is_array()) return j.template get<T>();  // the type_error
    T out;
    for (const auto& e : j) out.push_back(json_get<typename T::value_type>(e));
    return out;
  } else {
    return j.template get<T>();
  }
}

// j[key] into `value` when present. `where` is the key's group as the user sees it in the file
// ("method", "data"), or empty at the top level.
template <class T>
void read_json_field(const nlohmann::json& j, std::string_view where, const char* key, T& value) {
  if (!j.contains(key)) return;
  try {
    value = json_get<T>(j.at(key));
  } catch (const std::exception& e) {
    throw std::invalid_argument(
        fmt::format("config key '{}{}{}': {}", where, where.empty() ? "" : ".", key, e.what()));
  }
}

}  // namespace bulwark

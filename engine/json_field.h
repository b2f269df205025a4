#pragma once
// Reading one optional field of a JSON config (config.json, the method block, checkpoint state):
// a missing key keeps the default, a key of the wrong type is an error that names it.

#include <fmt/format.h>

#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string_view>

namespace bulwark {

// j[key] into `value` when present. `where` is the key's group as the user sees it in the file
// ("method", "data"), or empty at the top level.
template <class T>
void read_json_field(const nlohmann::json& j, std::string_view where, const char* key, T& value) {
  if (!j.contains(key)) return;
  try {
    value = j.at(key).get<T>();
  } catch (const nlohmann::json::exception& e) {
    throw std::invalid_argument(
        fmt::format("config key '{}{}{}': {}", where, where.empty() ? "" : ".", key, e.what()));
  }
}

}  // namespace bulwark

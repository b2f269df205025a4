#pragma once
// The one check helper: a failed user-facing condition becomes std::invalid_argument with a
// message the user can act on (it names the option or file, the valid range and what was given).
// The CLI catches it once and exits with code 2.
#include <stdexcept>
#include <string>

namespace bulwark {

inline void require(bool ok, const std::string& message) {
  if (!ok) throw std::invalid_argument(message);
}

}  // namespace bulwark

// libFuzzer's entry point for one target, chosen at compile time (-DBULWARK_FUZZ_TARGET=<name>).
#include <cstring>

#include "tests/fuzz/targets.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const bulwark::fuzz::Target run = [] {
    for (const auto& t : bulwark::fuzz::targets())
      if (std::strcmp(t.name, BULWARK_FUZZ_TARGET) == 0) return t.run;
    __builtin_trap();  // a build of a target that does not exist
  }();
  return run(data, size);
}

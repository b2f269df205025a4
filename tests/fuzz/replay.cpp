// bulwark-fuzz-replay TARGET PATH...: every file under each PATH (a file or a folder) through the
// fuzz target, as libFuzzer's -runs=0 does, with the normal compiler and no libFuzzer. ctest runs
// it on each target's committed corpus and regressions (tests/fuzz/README.md).
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <vector>

#include "tests/fuzz/targets.h"

namespace fs = std::filesystem;

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s TARGET PATH...\n", argv[0]);
    return 2;
  }
  const auto& all = bulwark::fuzz::targets();
  const auto it = std::find_if(all.begin(), all.end(), [&](const auto& t) { return std::strcmp(t.name, argv[1]) == 0; });
  if (it == all.end()) {
    std::fprintf(stderr, "unknown fuzz target %s\n", argv[1]);
    return 2;
  }
  std::vector<fs::path> files;
  for (int i = 2; i < argc; ++i) {
    if (fs::is_regular_file(argv[i])) files.emplace_back(argv[i]);
    else if (fs::is_directory(argv[i]))
      for (const auto& e : fs::recursive_directory_iterator(argv[i]))
        if (e.is_regular_file()) files.push_back(e.path());
  }
  std::sort(files.begin(), files.end());
  if (files.empty()) {
    std::fprintf(stderr, "no input files under the paths given\n");
    return 2;
  }
  size_t refused = 0;
  for (const fs::path& f : files) {
    std::ifstream in(f, std::ios::binary);
    const std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    it->run(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
    const std::string& why = bulwark::fuzz::last_refusal();
    if (!why.empty()) ++refused;
    std::printf("  %s: %s\n", f.filename().c_str(), why.empty() ? "accepted" : ("refused: " + why).c_str());
  }
  std::printf("%s: %zu inputs replayed, %zu accepted, %zu refused with an error\n", argv[1], files.size(),
              files.size() - refused, refused);
  return 0;
}

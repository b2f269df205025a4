#pragma once
// File reading shared by the dataset readers. Internal to data/: the readers turn what these
// return into validated Datasets, so every message names the dataset and the file.
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace bulwark::data {

// The whole contents of a file, decompressed if it is gzip (decided by the gzip magic bytes, not
// the name). A gzip stream that stops early is not an error here: `gzip_truncated` is set and
// `bytes` holds what could be decompressed, so the caller can report the size it expected.
struct FileBytes {
  // malloc'd so the buffer can start at the size the gzip trailer claims without touching (or
  // zero-filling) memory it never uses, and grow or shrink with realloc.
  std::unique_ptr<uint8_t, void (*)(void*)> data{nullptr, std::free};
  size_t size = 0;
  bool gzipped = false;
  bool gzip_truncated = false;
};

// Throws std::runtime_error naming `path` when it cannot be opened or the gzip data is corrupt.
FileBytes read_file_maybe_gzip(const std::string& path);

// The first of `dir/name` for `name` in `names` that exists, if any.
std::optional<std::string> first_existing(const std::string& dir, const std::vector<std::string>& names);

// 47040016 -> "47,040,016": sizes in error messages are read by people.
std::string with_commas(int64_t value);

}  // namespace bulwark::data

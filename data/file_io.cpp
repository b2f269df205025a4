#include "data/file_io.h"

#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <memory>
#include <stdexcept>

#include <fmt/format.h>

namespace bulwark::data {

namespace fs = std::filesystem;

FileBytes read_file_maybe_gzip(const std::string& path) {
  std::error_code ec;
  const auto on_disk = fs::file_size(path, ec);
  if (ec) throw std::runtime_error(fmt::format("cannot read {}: {}", path, ec.message()));

  // gzopen reads plain files transparently, so one code path serves .gz and uncompressed copies.
  std::unique_ptr<gzFile_s, int (*)(gzFile)> file(gzopen(path.c_str(), "rb"), gzclose);
  if (!file) throw std::runtime_error(fmt::format("cannot open {}: {}", path, std::strerror(errno)));
  gzbuffer(file.get(), 1 << 20);

  FileBytes out;
  // Start from the on-disk size (exact for plain files; MNIST-like data inflates ~5x) and grow
  // geometrically, so a 47 MB image file costs one or two reallocations.
  size_t capacity = std::max<size_t>(on_disk, 1 << 16);
  size_t used = 0;
  out.bytes.resize(capacity);
  for (;;) {
    if (used == capacity) {
      capacity *= 2;
      out.bytes.resize(capacity);
    }
    const unsigned want = static_cast<unsigned>(std::min<size_t>(capacity - used, 1u << 30));
    const int got = gzread(file.get(), out.bytes.data() + used, want);
    if (got < 0) {
      int code = Z_OK;
      const char* what = gzerror(file.get(), &code);
      throw std::runtime_error(fmt::format(
          "{}: gzip data is corrupt after {} decompressed bytes ({}): re-download the file",
          path, with_commas(static_cast<int64_t>(used)), what));
    }
    if (got == 0) break;
    used += static_cast<size_t>(got);
  }
  out.gzipped = gzdirect(file.get()) == 0;
  int code = Z_OK;
  gzerror(file.get(), &code);
  // zlib reports a gzip stream that ends before its trailer as Z_BUF_ERROR and still hands out
  // the data it could inflate.
  out.gzip_truncated = out.gzipped && code == Z_BUF_ERROR;
  out.bytes.resize(used);
  return out;
}

std::optional<std::string> first_existing(const std::string& dir, const std::vector<std::string>& names) {
  for (const auto& name : names) {
    const fs::path p = fs::path(dir) / name;
    std::error_code ec;
    if (fs::is_regular_file(p, ec)) return p.string();
  }
  return std::nullopt;
}

std::string with_commas(int64_t value) {
  std::string digits = std::to_string(value < 0 ? -value : value);
  std::string out;
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) out += ',';
    out += digits[i];
  }
  return value < 0 ? "-" + out : out;
}

}  // namespace bulwark::data

#include "data/file_io.h"

#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <stdexcept>

#include <fmt/format.h>

namespace bulwark::data {

namespace fs = std::filesystem;

namespace {

// How many bytes to allocate up front. gzip ends with the uncompressed size mod 2^32 (ISIZE),
// exact for any dataset file under 4 GiB; +1 lets the read loop see end-of-file without
// growing. A damaged trailer only costs reallocations, so it is bounded by deflate's maximum
// ratio (1032:1) and otherwise ignored.
size_t initial_capacity(const std::string& path, uintmax_t on_disk) {
  const size_t fallback = std::max<size_t>(static_cast<size_t>(on_disk) * 4, 1 << 16);
  std::unique_ptr<FILE, int (*)(FILE*)> file(std::fopen(path.c_str(), "rb"), std::fclose);
  uint8_t head[2] = {0, 0}, tail[4] = {0, 0, 0, 0};
  if (!file || on_disk < 18 || std::fread(head, 1, 2, file.get()) != 2 || head[0] != 0x1f || head[1] != 0x8b)
    return static_cast<size_t>(on_disk) + 1;
  if (std::fseek(file.get(), -4, SEEK_END) != 0 || std::fread(tail, 1, 4, file.get()) != 4) return fallback;
  const size_t isize = size_t{tail[0]} | size_t{tail[1]} << 8 | size_t{tail[2]} << 16 | size_t{tail[3]} << 24;
  return isize <= on_disk * 1032 ? isize + 1 : fallback;
}

}  // namespace

FileBytes read_file_maybe_gzip(const std::string& path) {
  std::error_code ec;
  const auto on_disk = fs::file_size(path, ec);
  if (ec) throw std::runtime_error(fmt::format("cannot read {}: {}", path, ec.message()));

  // gzopen reads plain files transparently, so one code path serves .gz and uncompressed copies.
  std::unique_ptr<gzFile_s, int (*)(gzFile)> file(gzopen(path.c_str(), "rb"), gzclose);
  if (!file) throw std::runtime_error(fmt::format("cannot open {}: {}", path, std::strerror(errno)));
  gzbuffer(file.get(), 1 << 20);

  FileBytes out;
  size_t capacity = initial_capacity(path, on_disk);
  // Grow to at least `want` bytes, or throw with the file's name.
  auto reserve = [&](size_t want) {
    void* grown = std::realloc(out.data.get(), want);
    if (!grown)
      throw std::runtime_error(fmt::format("{}: out of memory reading {} bytes", path, with_commas(static_cast<int64_t>(want))));
    out.data.release();
    out.data.reset(static_cast<uint8_t*>(grown));
    capacity = want;
  };
  reserve(capacity);
  for (;;) {
    if (out.size == capacity) reserve(capacity * 2);
    const unsigned want = static_cast<unsigned>(std::min<size_t>(capacity - out.size, 1u << 30));
    const int got = gzread(file.get(), out.data.get() + out.size, want);
    if (got < 0) {
      int code = Z_OK;
      std::string what = gzerror(file.get(), &code);
      if (what.rfind(path + ": ", 0) == 0) what.erase(0, path.size() + 2);  // zlib prefixes the path
      throw std::runtime_error(fmt::format("{}: gzip data is corrupt ({}): re-download the file", path, what));
    }
    if (got == 0) break;
    out.size += static_cast<size_t>(got);
  }
  out.gzipped = gzdirect(file.get()) == 0;
  int code = Z_OK;
  gzerror(file.get(), &code);
  // zlib reports a gzip stream that ends before its trailer as Z_BUF_ERROR and still hands out
  // the data it could inflate.
  out.gzip_truncated = out.gzipped && code == Z_BUF_ERROR;
  if (out.size > 0) reserve(out.size);  // give back what the size hint over-estimated
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

#include "data/cifar.h"

#include <array>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <stdexcept>

#include <fmt/format.h>

#include "data/file_io.h"

namespace bulwark::data {

namespace {

namespace fs = std::filesystem;

constexpr int64_t kPixels = 3 * 32 * 32;

struct Layout {
  const char* dataset;  // "CIFAR-10"
  int label_bytes;      // 1 or 2
  int num_classes;      // of the label that is kept (the last label byte)
  int64_t record() const { return label_bytes + kPixels; }
};
constexpr Layout kCifar10{"CIFAR-10", 1, 10};
constexpr Layout kCifar100{"CIFAR-100", 2, 100};

// The other layout whose record size divides `bytes`: a CIFAR-100 file read as CIFAR-10 (or the
// reverse) is the likeliest cause of a size that fits no whole number of records.
std::string layout_hint(const Layout& layout, int64_t bytes) {
  const Layout& other = layout.label_bytes == 1 ? kCifar100 : kCifar10;
  if (bytes > 0 && bytes % other.record() == 0)
    return fmt::format(" (it is a whole number of {}-byte {} records: is this {} data?)",
                       with_commas(other.record()), other.dataset, other.dataset);
  return "";
}

// Appends the records of `path` to `d`, checking the size (exactly `expected_records` of them
// when > 0, else any positive whole number) and every label.
void append_records(const std::string& path, const Layout& layout, int64_t expected_records, Dataset& d) {
  std::error_code ec;
  const auto size = static_cast<int64_t>(fs::file_size(path, ec));
  if (ec) throw std::runtime_error(fmt::format("{} file {}: cannot read it: {}", layout.dataset, path, ec.message()));
  const int64_t record = layout.record();
  if (expected_records > 0 && size != expected_records * record)
    throw std::runtime_error(fmt::format(
        "{} file {} is {} bytes, expected {} ({} records of {} bytes): {}{}", layout.dataset, path,
        with_commas(size), with_commas(expected_records * record), with_commas(expected_records), with_commas(record),
        size < expected_records * record ? "truncated download?" : "wrong file?", layout_hint(layout, size)));
  if (size == 0 || size % record != 0)
    throw std::runtime_error(fmt::format(
        "{} file {} is {} bytes, not a whole number of {}-byte records ({} label byte{} + 3,072 pixels): "
        "truncated, or not the binary version?{}",
        layout.dataset, path, with_commas(size), with_commas(record), layout.label_bytes,
        layout.label_bytes > 1 ? "s" : "", layout_hint(layout, size)));

  std::vector<uint8_t> bytes(static_cast<size_t>(size));
  std::unique_ptr<FILE, int (*)(FILE*)> file(std::fopen(path.c_str(), "rb"), std::fclose);
  if (!file || std::fread(bytes.data(), 1, bytes.size(), file.get()) != bytes.size())
    throw std::runtime_error(fmt::format("{} file {}: read failed: {}", layout.dataset, path, std::strerror(errno)));

  std::array<float, 256> to_unit{};  // x / 255 as torchvision's ToTensor
  for (int v = 0; v < 256; ++v) to_unit[v] = static_cast<float>(v) / 255.0f;
  const int64_t records = size / record, first = d.n;
  d.images.resize(static_cast<size_t>((first + records) * kPixels));
  d.labels.resize(static_cast<size_t>(first + records));
  for (int64_t r = 0; r < records; ++r) {
    const uint8_t* rec = bytes.data() + r * record;
    if (layout.label_bytes == 2 && rec[0] >= 20)
      throw std::runtime_error(fmt::format("{} file {}: coarse label {} in record {} is outside 0..19: corrupted file?",
                                           layout.dataset, path, rec[0], r));
    const uint8_t label = rec[layout.label_bytes - 1];
    if (label >= layout.num_classes)
      throw std::runtime_error(fmt::format("{} file {}: label {} in record {} is outside 0..{}: corrupted file{}?",
                                           layout.dataset, path, label, r, layout.num_classes - 1,
                                           layout.label_bytes == 1 ? ", or CIFAR-100 data" : ""));
    d.labels[first + r] = label;
    float* out = d.images.data() + (first + r) * kPixels;
    for (int64_t k = 0; k < kPixels; ++k) out[k] = to_unit[rec[layout.label_bytes + k]];
  }
  d.n += records;
}

Dataset empty_cifar(const std::string& name, int num_classes, const std::vector<float>& mean,
                    const std::vector<float>& stdev) {
  Dataset d;
  d.name = name;
  d.c = 3;
  d.h = d.w = 32;
  d.num_classes = num_classes;
  d.mean = mean;
  d.stdev = stdev;
  return d;
}

// Where each dataset's files live: the binary archive extracts to `subfolder`; the Python
// (pickle) archive, a common wrong download, extracts to `python_subfolder`.
struct Source {
  std::string subfolder, python_subfolder, archive;
};
const Source kCifar10Source{"cifar-10-batches-bin", "cifar-10-batches-py",
                            "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"};
const Source kCifar100Source{"cifar-100-binary", "cifar-100-python",
                             "https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz"};

// The folder holding `probe`: `dir` itself or the archive's own subfolder.
std::string resolve_dir(const std::string& dir, const std::string& probe, const Layout& layout, const Source& src) {
  std::error_code ec;
  for (const fs::path& candidate : {fs::path(dir), fs::path(dir) / src.subfolder})
    if (fs::is_regular_file(candidate / probe, ec)) return candidate.string();
  const std::string hint = !fs::is_directory(dir, ec) ? "the folder does not exist"
                           : fs::exists(fs::path(dir) / src.python_subfolder, ec)
                               ? "found " + src.python_subfolder + ", the Python version; bulwark reads the binary one"
                               : "file not found";
  throw std::runtime_error(fmt::format("{}: no {} in {} or {}/{} ({}): download and extract {} there", layout.dataset,
                                       probe, dir, dir, src.subfolder, hint, src.archive));
}

}  // namespace

Dataset load_cifar10(const std::string& dir, bool train) {
  const std::string root = resolve_dir(dir, train ? "data_batch_1.bin" : "test_batch.bin", kCifar10, kCifar10Source);
  Dataset d = empty_cifar(train ? "cifar10/train" : "cifar10/test", 10, stats::kCifar10Mean, stats::kCifar10Std);
  if (!train) {
    append_records((fs::path(root) / "test_batch.bin").string(), kCifar10, 10000, d);
    return d;
  }
  for (int batch = 1; batch <= 5; ++batch) {
    const std::string path = (fs::path(root) / fmt::format("data_batch_{}.bin", batch)).string();
    std::error_code ec;
    if (!fs::is_regular_file(path, ec))
      throw std::runtime_error(fmt::format("CIFAR-10: {} is missing (the training set is data_batch_1.bin .. "
                                           "data_batch_5.bin): extract all of {}", path, kCifar10Source.archive));
    append_records(path, kCifar10, 10000, d);
  }
  return d;
}

Dataset load_cifar100(const std::string& dir, bool train) {
  const std::string file = train ? "train.bin" : "test.bin";
  const std::string root = resolve_dir(dir, file, kCifar100, kCifar100Source);
  Dataset d = empty_cifar(train ? "cifar100/train" : "cifar100/test", 100, stats::kCifar100Mean, stats::kCifar100Std);
  append_records((fs::path(root) / file).string(), kCifar100, train ? 50000 : 10000, d);
  return d;
}

Dataset load_cifar10_file(const std::string& path) {
  Dataset d = empty_cifar("cifar10/" + fs::path(path).filename().string(), 10, stats::kCifar10Mean,
                          stats::kCifar10Std);
  append_records(path, kCifar10, 0, d);
  return d;
}

Dataset load_cifar100_file(const std::string& path) {
  Dataset d = empty_cifar("cifar100/" + fs::path(path).filename().string(), 100, stats::kCifar100Mean,
                          stats::kCifar100Std);
  append_records(path, kCifar100, 0, d);
  return d;
}

}  // namespace bulwark::data

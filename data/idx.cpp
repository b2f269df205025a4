#include "data/idx.h"

#include <array>
#include <filesystem>
#include <stdexcept>

#include <fmt/format.h>

#include "data/file_io.h"

namespace bulwark::data {

namespace {

constexpr uint32_t kImagesMagic = 0x00000803, kLabelsMagic = 0x00000801;

uint32_t big_endian_u32(const uint8_t* p) {
  return uint32_t{p[0]} << 24 | uint32_t{p[1]} << 16 | uint32_t{p[2]} << 8 | uint32_t{p[3]};
}

// "got 1,024" plus the reason when zlib saw the stream end early.
std::string got_bytes(const FileBytes& f) {
  return fmt::format("got {}{}", with_commas(static_cast<int64_t>(f.size)),
                     f.gzip_truncated ? " before the gzip stream ended early" : "");
}

std::string size_hint(const FileBytes& f, size_t expected) {
  return f.size < expected ? "truncated download?" : "extra data after the payload: wrong header or a concatenated file?";
}

void check_magic(const std::string& where, uint32_t magic, uint32_t expected) {
  if (magic == expected) return;
  const uint32_t other = expected == kImagesMagic ? kLabelsMagic : kImagesMagic;
  std::string hint;
  if (magic == other)
    hint = fmt::format("this is an IDX {} file: were the image and label files swapped?",
                       other == kImagesMagic ? "images" : "labels");
  else if ((magic >> 24) == '<')
    hint = "the file starts with '<': an HTML error page saved instead of the data?";
  else
    hint = "not an IDX file of unsigned bytes: wrong file or corrupted download?";
  throw std::runtime_error(fmt::format("{}: magic number 0x{:08X} expected 0x{:08X} ({})", where, magic,
                                       expected, hint));
}

// Reads one IDX file and checks its header and exact size; `dims` receives count (and rows,
// cols for images). The payload starts at bytes[header].
FileBytes read_idx(const std::string& path, const std::string& dataset, bool images, std::array<uint32_t, 3>& dims) {
  const std::string where = fmt::format("{} file {}", dataset, path);
  FileBytes f = read_file_maybe_gzip(path);
  const size_t header = images ? 16 : 8;
  if (f.size < header)
    throw std::runtime_error(fmt::format("{}: {}, too short for the {}-byte IDX {} header: truncated download?",
                                         where, got_bytes(f), header, images ? "images" : "labels"));
  check_magic(where, big_endian_u32(f.data.get()), images ? kImagesMagic : kLabelsMagic);
  const uint8_t* p = f.data.get() + 4;
  dims = {big_endian_u32(p), images ? big_endian_u32(p + 4) : 1u, images ? big_endian_u32(p + 8) : 1u};
  if (images && (dims[1] == 0 || dims[2] == 0 || dims[1] > 4096 || dims[2] > 4096))
    throw std::runtime_error(fmt::format("{}: header says {}x{} images: corrupted header?", where, dims[1], dims[2]));
  const size_t expected = header + size_t{dims[0]} * dims[1] * dims[2];
  if (f.size != expected) {
    const std::string what = images ? fmt::format("{} {}x{} images", with_commas(dims[0]), dims[1], dims[2])
                                    : fmt::format("{} labels", with_commas(dims[0]));
    throw std::runtime_error(fmt::format("{}: expected {} bytes{} for {}, {}: {}", where,
                                         with_commas(static_cast<int64_t>(expected)),
                                         f.gzipped ? " after decompression" : "", what, got_bytes(f),
                                         size_hint(f, expected)));
  }
  return f;
}

// The dataset of an image/label pair, without stats. `dataset` names it in messages.
Dataset read_idx_pair(const std::string& images_path, const std::string& labels_path, const std::string& dataset,
                      int num_classes, int required_side) {
  std::array<uint32_t, 3> image_dims{}, label_dims{};
  const FileBytes images = read_idx(images_path, dataset, true, image_dims);
  const FileBytes labels = read_idx(labels_path, dataset, false, label_dims);
  if (required_side > 0 && (image_dims[1] != uint32_t(required_side) || image_dims[2] != uint32_t(required_side)))
    throw std::runtime_error(fmt::format("{} file {}: images are {}x{}, expected {}x{}: not {} data?", dataset,
                                         images_path, image_dims[1], image_dims[2], required_side, required_side,
                                         dataset));
  if (image_dims[0] != label_dims[0])
    throw std::runtime_error(fmt::format(
        "{}: images file {} has {} images but labels file {} has {} labels: files from different splits?",
        dataset, images_path, with_commas(image_dims[0]), labels_path, with_commas(label_dims[0])));

  Dataset d;
  d.n = image_dims[0];
  d.c = 1;
  d.h = static_cast<int>(image_dims[1]);
  d.w = static_cast<int>(image_dims[2]);
  d.num_classes = num_classes;
  d.labels.resize(d.n);
  const uint8_t* label_bytes = labels.data.get() + 8;
  for (int64_t i = 0; i < d.n; ++i) {
    if (label_bytes[i] >= num_classes)
      throw std::runtime_error(fmt::format("{} file {}: label {} at index {} is outside 0..{}: corrupted file?",
                                           dataset, labels_path, label_bytes[i], i, num_classes - 1));
    d.labels[i] = label_bytes[i];
  }
  // x / 255 exactly as torchvision's ToTensor computes it, through a 256-entry table.
  std::array<float, 256> to_unit{};
  for (int v = 0; v < 256; ++v) to_unit[v] = static_cast<float>(v) / 255.0f;
  const uint8_t* pixels = images.data.get() + 16;
  d.images.resize(static_cast<size_t>(d.n) * d.h * d.w);
  for (size_t i = 0; i < d.images.size(); ++i) d.images[i] = to_unit[pixels[i]];
  return d;
}

// Resolves `stem` (e.g. "train-images-idx3-ubyte") in `dir`, plain or gzipped.
std::string find_idx_file(const std::string& dir, const std::string& stem, const std::string& dataset,
                          const std::string& fix) {
  if (auto path = first_existing(dir, {stem, stem + ".gz"})) return *path;
  std::error_code ec;
  if (!std::filesystem::is_directory(dir, ec))
    throw std::runtime_error(fmt::format("{}: folder {} does not exist: {}", dataset, dir, fix));
  throw std::runtime_error(fmt::format("{}: neither {} nor {}.gz is in {}: {}", dataset, stem, stem, dir, fix));
}

Dataset load_mnist_family(const std::string& dir, bool train, const std::string& dataset, const std::string& id,
                          const std::string& fix, const std::vector<float>& mean, const std::vector<float>& stdev) {
  const std::string prefix = train ? "train" : "t10k";
  const std::string images = find_idx_file(dir, prefix + "-images-idx3-ubyte", dataset, fix);
  const std::string labels = find_idx_file(dir, prefix + "-labels-idx1-ubyte", dataset, fix);
  Dataset d = read_idx_pair(images, labels, dataset, 10, 28);
  d.name = id + (train ? "/train" : "/test");
  d.mean = mean;
  d.stdev = stdev;
  return d;
}

}  // namespace

Dataset load_mnist(const std::string& dir, bool train) {
  return load_mnist_family(dir, train, "MNIST", "mnist",
                           "put the four IDX files there (e.g. from https://ossci-datasets.s3.amazonaws.com/mnist/)",
                           stats::kMnistMean, stats::kMnistStd);
}

std::optional<std::string> find_fashion_mnist() {
  for (const char* stem : {"train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                           "t10k-labels-idx1-ubyte"})
    if (!first_existing(kFashionMnistDefaultDir, {stem, std::string(stem) + ".gz"})) return std::nullopt;
  return std::string(kFashionMnistDefaultDir);
}

Dataset load_fashion_mnist(const std::string& dir, bool train) {
  const std::string fix = "install it with `apt-get install dataset-fashion-mnist` or pass the folder holding the "
                          "four IDX files";
  std::string resolved = dir;
  if (resolved.empty()) {
    auto found = find_fashion_mnist();
    if (!found)
      throw std::runtime_error(
          fmt::format("Fashion-MNIST: not found in {}: {}", kFashionMnistDefaultDir, fix));
    resolved = *found;
  }
  return load_mnist_family(resolved, train, "Fashion-MNIST", "fashion-mnist", fix, stats::kFashionMnistMean,
                           stats::kFashionMnistStd);
}

Dataset load_idx(const std::string& images_path, const std::string& labels_path, const std::string& name,
                 int num_classes) {
  if (num_classes < 1 || num_classes > 256)
    throw std::invalid_argument(fmt::format("{}: num_classes {} must be in 1..256 for byte labels", name, num_classes));
  Dataset d = read_idx_pair(images_path, labels_path, name, num_classes, 0);
  d.name = name;
  compute_channel_stats(d, d.mean, d.stdev);
  return d;
}

}  // namespace bulwark::data

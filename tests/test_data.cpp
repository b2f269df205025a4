// data/: the real-file readers (and how they fail), the synthetic dataset, augmentation and
// the loader's determinism.
#include <catch2/catch.hpp>

#include "tests/test_util.h"

#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include "data/augment.h"
#include "data/cifar.h"
#include "data/dataset.h"
#include "data/idx.h"
#include "data/loader.h"
#include "data/synthetic.h"
#include "kernels/common/philox.h"

namespace fs = std::filesystem;
using namespace bulwark::data;
using Catch::Contains;

namespace {

#ifdef BULWARK_SHARED_DATA
const std::string kSharedData = BULWARK_SHARED_DATA;
#else
const std::string kSharedData;
#endif

// The shared data folder `sub`, or nothing (after a WARN naming what is skipped) when absent.
std::optional<std::string> shared_data(const std::string& sub, const std::string& skipping) {
  const fs::path p = fs::path(kSharedData) / sub;
  std::error_code ec;
  if (!kSharedData.empty() && fs::exists(p, ec)) return p.string();
  WARN("SKIPPED " << skipping << ": " << p.string() << " not found (set BULWARK_SHARED_DATA)");
  return std::nullopt;
}

using bulwark::testing::TempDir;

using Bytes = std::vector<uint8_t>;

void write_file(const std::string& path, const Bytes& bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
}

void write_gzip(const std::string& path, const Bytes& bytes) {
  gzFile f = gzopen(path.c_str(), "wb");
  REQUIRE(f != nullptr);
  REQUIRE(gzwrite(f, bytes.data(), static_cast<unsigned>(bytes.size())) == static_cast<int>(bytes.size()));
  gzclose(f);
}

Bytes read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return Bytes(std::istreambuf_iterator<char>(in), {});
}

void put_u32(Bytes& b, uint32_t v) {
  for (int shift = 24; shift >= 0; shift -= 8) b.push_back(static_cast<uint8_t>(v >> shift));
}

// Pixel bytes from Philox: incompressible, so a truncated .gz really loses image data.
Bytes random_bytes(size_t n, uint64_t seed) {
  Bytes b(n);
  for (size_t i = 0; i < n; ++i) b[i] = static_cast<uint8_t>(bulwark::philox::word(seed, 0, i));
  return b;
}

Bytes idx_images(uint32_t n, uint32_t rows = 28, uint32_t cols = 28, uint32_t magic = 0x803) {
  Bytes b;
  put_u32(b, magic);
  put_u32(b, n);
  put_u32(b, rows);
  put_u32(b, cols);
  const Bytes pixels = random_bytes(size_t{n} * rows * cols, 7);
  b.insert(b.end(), pixels.begin(), pixels.end());
  return b;
}

Bytes idx_labels(uint32_t n, uint32_t magic = 0x801) {
  Bytes b;
  put_u32(b, magic);
  put_u32(b, n);
  for (uint32_t i = 0; i < n; ++i) b.push_back(static_cast<uint8_t>(i % 10));
  return b;
}

Bytes cifar_records(int records, int label_bytes, uint8_t label = 3) {
  Bytes b;
  const Bytes pixels = random_bytes(3072, 11);
  for (int r = 0; r < records; ++r) {
    if (label_bytes == 2) b.push_back(static_cast<uint8_t>(r % 20));
    b.push_back(label_bytes == 2 ? static_cast<uint8_t>(r % 100) : label);
    b.insert(b.end(), pixels.begin(), pixels.end());
  }
  return b;
}

std::vector<int64_t> histogram(const Dataset& d) {
  std::vector<int64_t> h(d.num_classes, 0);
  for (int32_t y : d.labels) ++h[y];
  return h;
}

// A dataset whose sample i is filled with the value i / n, so a batch shows what it gathered.
Dataset indexed_dataset(int64_t n, int c = 1, int h = 4, int w = 5) {
  Dataset d;
  d.name = "indexed";
  d.n = n;
  d.c = c;
  d.h = h;
  d.w = w;
  d.num_classes = 7;
  d.images.resize(n * d.sample_size());
  for (int64_t i = 0; i < n; ++i)
    std::fill(d.images.begin() + i * d.sample_size(), d.images.begin() + (i + 1) * d.sample_size(),
              static_cast<float>(i) / n);
  for (int64_t i = 0; i < n; ++i) d.labels.push_back(static_cast<int32_t>(i % 7));
  d.mean.assign(c, 0.5f);
  d.stdev.assign(c, 0.25f);
  return d;
}

std::vector<Batch> whole_epoch(Loader& loader, int64_t epoch, int64_t first_batch = 0) {
  loader.start_epoch(epoch, first_batch);
  std::vector<Batch> out;
  Batch b;
  while (loader.next(b)) out.push_back(b);
  return out;
}

bool same_batch(const Batch& a, const Batch& b) {
  return a.x == b.x && a.y == b.y && a.indices == b.indices && a.n == b.n && a.epoch == b.epoch && a.index == b.index;
}

}  // namespace

// ----------------------------------------------------------------------------- real data files

TEST_CASE("MNIST: the real IDX files load with the right shape, labels and pixels", "[data][mnist]") {
  const auto dir = shared_data("mnist", "real MNIST test");
  if (!dir) return;
  const auto t0 = std::chrono::steady_clock::now();
  const Dataset train = load_mnist(*dir, true);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const Dataset test = load_mnist(*dir, false);
  INFO("loading the 60,000 training images took " << seconds << " s");

  CHECK(train.name == "mnist/train");
  CHECK(test.name == "mnist/test");
  for (const Dataset* d : {&train, &test}) {
    CHECK_NOTHROW(d->check());
    CHECK(d->c == 1);
    CHECK(d->h == 28);
    CHECK(d->w == 28);
    CHECK(d->num_classes == 10);
    CHECK(d->mean == std::vector<float>{0.1307f});
    CHECK(d->stdev == std::vector<float>{0.3081f});
    const auto [lo, hi] = std::minmax_element(d->images.begin(), d->images.end());
    CHECK(*lo == 0.0f);
    CHECK(*hi == 1.0f);
  }
  REQUIRE(train.n == 60000);
  REQUIRE(test.n == 10000);
  // The canonical first labels, and class counts (train 5,421..6,742, test 892..1,135).
  CHECK(train.labels[0] == 5);
  CHECK(test.labels[0] == 7);
  for (int64_t count : histogram(train)) CHECK((count > 5000 && count < 7000));
  for (int64_t count : histogram(test)) CHECK((count > 800 && count < 1200));
  // The published mean is the training set's.
  std::vector<float> mean, stdev;
  compute_channel_stats(train, mean, stdev);
  CHECK(mean[0] == Approx(0.1307).margin(1e-4));
  CHECK(stdev[0] == Approx(0.3081).margin(1e-4));
}

TEST_CASE("Fashion-MNIST: the Debian package's files load", "[data][fashion]") {
  const auto dir = find_fashion_mnist();
  if (!dir) {
    WARN("SKIPPED Fashion-MNIST test: " << kFashionMnistDefaultDir
                                        << " not found (apt-get install dataset-fashion-mnist)");
    return;
  }
  const Dataset train = load_fashion_mnist("", true);
  const Dataset test = load_fashion_mnist(*dir, false);
  CHECK(train.name == "fashion-mnist/train");
  REQUIRE(train.n == 60000);
  REQUIRE(test.n == 10000);
  CHECK((train.c == 1 && train.h == 28 && train.w == 28));
  // Fashion-MNIST is exactly balanced.
  for (int64_t count : histogram(train)) CHECK(count == 6000);
  for (int64_t count : histogram(test)) CHECK(count == 1000);
  std::vector<float> mean, stdev;
  compute_channel_stats(train, mean, stdev);
  CHECK(mean[0] == Approx(train.mean[0]).margin(1e-3));
  CHECK(stdev[0] == Approx(train.stdev[0]).margin(1e-3));
}

TEST_CASE("CIFAR-10: the 200-record sample of the test set loads", "[data][cifar]") {
  const auto dir = shared_data("cifar10-sample", "CIFAR-10 sample test");
  if (!dir) return;
  const Dataset d = load_cifar10_file(*dir + "/cifar10_test_subset200.bin");
  CHECK_NOTHROW(d.check());
  REQUIRE(d.n == 200);
  CHECK((d.c == 3 && d.h == 32 && d.w == 32 && d.num_classes == 10));
  CHECK(d.mean == std::vector<float>{0.4914f, 0.4822f, 0.4465f});
  // Natural images: several classes present, pixels spread over [0, 1], mean near CIFAR's.
  const auto counts = histogram(d);
  CHECK(std::count_if(counts.begin(), counts.end(), [](int64_t c) { return c > 0; }) >= 8);
  const auto [lo, hi] = std::minmax_element(d.images.begin(), d.images.end());
  CHECK(*lo == 0.0f);
  CHECK(*hi == 1.0f);
  std::vector<float> mean, stdev;
  compute_channel_stats(d, mean, stdev);
  for (int ch = 0; ch < 3; ++ch) CHECK(mean[ch] == Approx(d.mean[ch]).margin(0.05));
}

// ----------------------------------------------------------------------------- broken files

TEST_CASE("IDX: valid plain and gzipped files load byte for byte", "[data][idx]") {
  TempDir tmp;
  const Bytes images = idx_images(30), labels = idx_labels(30);
  write_file(tmp / "train-images-idx3-ubyte", images);
  write_gzip(tmp / "train-labels-idx1-ubyte.gz", labels);
  const Dataset d = load_mnist(tmp.path.string(), true);
  REQUIRE(d.n == 30);
  for (size_t i = 0; i < d.images.size(); ++i) REQUIRE(d.images[i] == static_cast<float>(images[16 + i]) / 255.0f);
  for (int64_t i = 0; i < d.n; ++i) REQUIRE(d.labels[i] == labels[8 + i]);

  const Dataset any = load_idx(tmp / "train-images-idx3-ubyte", tmp / "train-labels-idx1-ubyte.gz", "custom", 10);
  CHECK(any.name == "custom");
  CHECK(any.mean[0] == Approx(127.5 / 255).margin(0.01));  // uniform random bytes
}

TEST_CASE("IDX: truncated, swapped and inconsistent files fail naming the file and the problem", "[data][idx]") {
  TempDir tmp;
  const std::string dir = tmp.path.string();
  const std::string images = tmp / "train-images-idx3-ubyte", labels = tmp / "train-labels-idx1-ubyte";
  write_file(labels, idx_labels(100));

  SECTION("plain file cut short") {
    Bytes b = idx_images(100);
    b.resize(1024);
    write_file(images, b);
    REQUIRE_THROWS_WITH(load_mnist(dir, true), Contains(images) && Contains("expected 78,416 bytes for 100 28x28 "
                                                                            "images, got 1,024: truncated download?"));
  }
  SECTION("gzip stream cut short") {
    write_gzip(images + ".gz", idx_images(100));
    Bytes gz = read_file(images + ".gz");
    gz.resize(gz.size() / 2);
    write_file(images + ".gz", gz);
    REQUIRE_THROWS_WITH(load_mnist(dir, true), Contains(images + ".gz") && Contains("after decompression") &&
                                                   Contains("gzip stream ended early") && Contains("truncated download?"));
  }
  SECTION("gzip data corrupted in the middle") {
    write_gzip(images + ".gz", idx_images(100));
    Bytes gz = read_file(images + ".gz");
    for (size_t i = gz.size() / 2; i < gz.size() / 2 + 64; ++i) gz[i] ^= 0x5a;
    write_file(images + ".gz", gz);
    REQUIRE_THROWS_WITH(load_mnist(dir, true), Contains(images + ".gz") && Contains("gzip data is corrupt") &&
                                                   Contains("re-download"));
  }
  SECTION("a header alone") {
    write_file(images, Bytes{0, 0, 8});
    REQUIRE_THROWS_WITH(load_mnist(dir, true), Contains(images) && Contains("too short for the 16-byte IDX images header"));
  }
  SECTION("extra bytes after the last image") {
    Bytes b = idx_images(100);
    b.push_back(0);
    write_file(images, b);
    REQUIRE_THROWS_WITH(load_mnist(dir, true), Contains(images) && Contains("got 78,417") && Contains("extra data"));
  }
  SECTION("labels where the images should be") {
    write_file(images, idx_labels(100));
    REQUIRE_THROWS_WITH(load_mnist(dir, true), Contains(images) &&
                                                   Contains("magic number 0x00000801 expected 0x00000803") &&
                                                   Contains("swapped"));
  }
  SECTION("not an IDX file at all") {
    const std::string html = "<!DOCTYPE html><html>404 not found</html>";
    write_file(images, Bytes(html.begin(), html.end()));
    REQUIRE_THROWS_WITH(load_mnist(dir, true), Contains(images) && Contains("HTML error page"));
  }
  SECTION("label count differs from image count") {
    write_file(images, idx_images(100));
    write_file(labels, idx_labels(99));
    REQUIRE_THROWS_WITH(load_mnist(dir, true), Contains(images) && Contains(labels) &&
                                                   Contains("has 100 images but labels file") && Contains("99 labels"));
  }
  SECTION("label out of range") {
    write_file(images, idx_images(100));
    Bytes l = idx_labels(100);
    l[8 + 42] = 10;
    write_file(labels, l);
    REQUIRE_THROWS_WITH(load_mnist(dir, true), Contains(labels) && Contains("label 10 at index 42 is outside 0..9"));
  }
  SECTION("images of the wrong size") {
    write_file(images, idx_images(100, 32, 32));
    REQUIRE_THROWS_WITH(load_mnist(dir, true), Contains(images) && Contains("images are 32x32, expected 28x28"));
  }
  SECTION("missing files and folders") {
    REQUIRE_THROWS_WITH(load_mnist(dir, false), Contains("t10k-images-idx3-ubyte.gz") && Contains(dir));
    REQUIRE_THROWS_WITH(load_mnist(dir + "/nope", true), Contains(dir + "/nope") && Contains("does not exist"));
    REQUIRE_THROWS_WITH(load_fashion_mnist(dir + "/nope", true), Contains("apt-get install dataset-fashion-mnist"));
  }
}

TEST_CASE("IDX: a truncated copy of the real MNIST download is reported as such", "[data][idx][mnist]") {
  const auto dir = shared_data("mnist", "truncated real MNIST test");
  if (!dir) return;
  TempDir tmp;
  Bytes gz = read_file(*dir + "/train-images-idx3-ubyte.gz");
  gz.resize(1 << 20);
  write_file(tmp / "train-images-idx3-ubyte.gz", gz);
  fs::copy_file(*dir + "/train-labels-idx1-ubyte.gz", tmp / "train-labels-idx1-ubyte.gz");
  REQUIRE_THROWS_WITH(load_mnist(tmp.path.string(), true),
                      Contains(tmp / "train-images-idx3-ubyte.gz") &&
                          Contains("expected 47,040,016 bytes after decompression for 60,000 28x28 images") &&
                          Contains("truncated download?"));
}

TEST_CASE("CIFAR: standard files are checked for exact size and label range", "[data][cifar]") {
  TempDir tmp;
  const std::string dir = tmp.path.string();

  SECTION("a valid CIFAR-10 test batch in the archive's subfolder") {
    fs::create_directories(tmp / "cifar-10-batches-bin");
    write_file(tmp / "cifar-10-batches-bin/test_batch.bin", cifar_records(10000, 1, 4));
    const Dataset d = load_cifar10(dir, false);
    REQUIRE(d.n == 10000);
    CHECK(d.name == "cifar10/test");
    CHECK(histogram(d)[4] == 10000);
  }
  SECTION("a valid CIFAR-100 test file uses the fine labels") {
    write_file(tmp / "test.bin", cifar_records(10000, 2));
    const Dataset d = load_cifar100(dir, false);
    REQUIRE(d.n == 10000);
    CHECK(d.num_classes == 100);
    CHECK(d.labels[57] == 57);
    CHECK(d.mean == std::vector<float>{0.5071f, 0.4865f, 0.4409f});
  }
  SECTION("a truncated training batch") {
    for (int i = 1; i <= 5; ++i) write_file(tmp / ("data_batch_" + std::to_string(i) + ".bin"), cifar_records(10, 1));
    REQUIRE_THROWS_WITH(load_cifar10(dir, true),
                        Contains(tmp / "data_batch_1.bin") && Contains("is 30,730 bytes, expected 30,730,000 "
                                                                       "(10,000 records of 3,073 bytes): truncated download?"));
  }
  SECTION("a missing training batch") {
    write_file(tmp / "data_batch_1.bin", cifar_records(10000, 1));
    REQUIRE_THROWS_WITH(load_cifar10(dir, true), Contains(tmp / "data_batch_2.bin") && Contains("missing"));
  }
  SECTION("a CIFAR-100 file of the wrong size") {
    write_file(tmp / "train.bin", cifar_records(10000, 2));
    REQUIRE_THROWS_WITH(load_cifar100(dir, true), Contains(tmp / "train.bin") && Contains("expected 153,700,000"));
  }
  SECTION("no files at all, or the Python version") {
    REQUIRE_THROWS_WITH(load_cifar10(dir, false), Contains("no test_batch.bin in " + dir) &&
                                                      Contains("cifar-10-binary.tar.gz"));
    fs::create_directories(tmp / "cifar-100-python");
    REQUIRE_THROWS_WITH(load_cifar100(dir, true), Contains("the Python version"));
  }
}

TEST_CASE("CIFAR: any-size CIFAR-100 files load fine labels and check both", "[data][cifar]") {
  TempDir tmp;
  const std::string path = tmp / "subset100.bin";
  Bytes b = cifar_records(3, 2);
  write_file(path, b);
  const Dataset d = load_cifar100_file(path);
  CHECK(d.n == 3);
  CHECK(d.num_classes == 100);
  CHECK(d.labels == std::vector<int32_t>{0, 1, 2});  // the fine labels, not the coarse ones
  b[3074] = 20;  // record 1's coarse label
  write_file(path, b);
  REQUIRE_THROWS_WITH(load_cifar100_file(path), Contains(path) && Contains("coarse label 20 in record 1 is outside 0..19"));
  write_file(path, cifar_records(2, 1));
  REQUIRE_THROWS_WITH(load_cifar100_file(path), Contains(path) && Contains("not a whole number of 3,074-byte records"));
}

TEST_CASE("CIFAR: any-size CIFAR-10 files must hold whole records with valid labels", "[data][cifar]") {
  TempDir tmp;
  const std::string path = tmp / "subset.bin";
  SECTION("whole records load") {
    write_file(path, cifar_records(3, 1, 9));
    const Dataset d = load_cifar10_file(path);
    CHECK(d.n == 3);
    CHECK(d.name == "cifar10/subset.bin");
  }
  SECTION("a partial record") {
    Bytes b = cifar_records(3, 1);
    b.resize(b.size() - 10);
    write_file(path, b);
    REQUIRE_THROWS_WITH(load_cifar10_file(path), Contains(path) && Contains("9,209 bytes, not a whole number of "
                                                                            "3,073-byte records"));
  }
  SECTION("an empty file") {
    write_file(path, {});
    REQUIRE_THROWS_WITH(load_cifar10_file(path), Contains(path) && Contains("0 bytes"));
  }
  SECTION("CIFAR-100 records") {
    write_file(path, cifar_records(3, 2));
    REQUIRE_THROWS_WITH(load_cifar10_file(path), Contains(path) && Contains("is this CIFAR-100 data?"));
  }
  SECTION("a label outside 0..9") {
    Bytes b = cifar_records(3, 1);
    b[3073] = 10;
    write_file(path, b);
    REQUIRE_THROWS_WITH(load_cifar10_file(path), Contains(path) && Contains("label 10 in record 1 is outside 0..9"));
  }
  SECTION("a missing file") {
    REQUIRE_THROWS_WITH(load_cifar10_file(tmp / "nope.bin"), Contains(tmp / "nope.bin"));
  }
}

// ----------------------------------------------------------------------------- dataset

TEST_CASE("Dataset: slice copies a range and keeps the stats", "[data]") {
  const Dataset d = indexed_dataset(10);
  const Dataset s = d.slice(3, 4);
  CHECK(s.n == 4);
  CHECK(s.name == "indexed[3:7]");
  CHECK(s.image(0)[0] == d.image(3)[0]);
  CHECK(s.labels == std::vector<int32_t>{3, 4, 5, 6});
  CHECK(s.mean == d.mean);
  CHECK_THROWS_AS(d.slice(8, 3), std::out_of_range);
}

// ----------------------------------------------------------------------------- synthetic

TEST_CASE("Synthetic: deterministic, shaped, balanced, splits differ", "[data][synthetic]") {
  const Dataset a = make_synthetic(200, 5);
  CHECK_NOTHROW(a.check());
  CHECK((a.n == 200 && a.c == 3 && a.h == 32 && a.w == 32 && a.num_classes == 10));
  CHECK(a.name == "synthetic/train");
  for (int64_t count : histogram(a)) CHECK(count == 20);
  const auto [lo, hi] = std::minmax_element(a.images.begin(), a.images.end());
  CHECK((*lo >= 0.0f && *hi <= 1.0f && *hi - *lo > 0.5f));

  const Dataset again = make_synthetic(200, 5);
  CHECK(again.images == a.images);
  CHECK(again.labels == a.labels);
  // The first m samples do not depend on n; other seeds and the test split give other images.
  CHECK(make_synthetic(50, 5).images == a.slice(0, 50).images);
  CHECK(make_synthetic(200, 6).images != a.images);
  const Dataset test = make_synthetic_split(200, 5, false);
  CHECK(test.name == "synthetic/test");
  CHECK(test.images != a.images);
  CHECK(make_synthetic_split(200, 5, true).images == a.images);

  // Stats are the data's own.
  std::vector<float> mean, stdev;
  compute_channel_stats(a, mean, stdev);
  CHECK(a.mean == mean);
  CHECK(a.stdev == stdev);

  const Dataset small = make_synthetic(30, 1, 1, 16, 12, 3);
  CHECK((small.c == 1 && small.h == 16 && small.w == 12 && small.num_classes == 3));
  CHECK_THROWS_AS(make_synthetic(10, 1, 3, 32, 32, 1), std::invalid_argument);
}

TEST_CASE("Synthetic: nearest class mean learns it, but far from perfectly", "[data][synthetic]") {
  // The class lives in spatial structure under random shifts, phases and colours: pixel means
  // carry some of it (blobs) but not all (gratings), so a CNN has something to learn.
  const Dataset train = make_synthetic_split(2000, 0, true), test = make_synthetic_split(1000, 0, false);
  const int64_t size = train.sample_size();
  std::vector<double> means(train.num_classes * size, 0.0);
  const auto counts = histogram(train);
  for (int64_t i = 0; i < train.n; ++i)
    for (int64_t k = 0; k < size; ++k) means[train.labels[i] * size + k] += train.image(i)[k] / counts[train.labels[i]];
  int correct = 0;
  for (int64_t i = 0; i < test.n; ++i) {
    int best = 0;
    double best_distance = 1e300;
    for (int c = 0; c < test.num_classes; ++c) {
      double distance = 0;
      for (int64_t k = 0; k < size; ++k) distance += (test.image(i)[k] - means[c * size + k]) * (test.image(i)[k] - means[c * size + k]);
      if (distance < best_distance) {
        best_distance = distance;
        best = c;
      }
    }
    correct += best == test.labels[i];
  }
  const double accuracy = correct / 1000.0;
  INFO("nearest-class-mean test accuracy " << accuracy);
  CHECK(accuracy > 0.40);
  CHECK(accuracy < 0.995);
}

// ----------------------------------------------------------------------------- augmentation

TEST_CASE("Augment: crop pads with zeros, flip mirrors, draws are deterministic", "[data][augment]") {
  const int c = 2, h = 3, w = 4;
  std::vector<float> src(c * h * w), dst(c * h * w);
  std::iota(src.begin(), src.end(), 1.0f);  // pixel (ch, y, x) = 1 + ch*12 + y*4 + x
  auto at = [&](const std::vector<float>& v, int ch, int y, int x) { return v[(ch * h + y) * w + x]; };

  augment_image(src.data(), dst.data(), c, h, w, AugmentDraw{0, 0, false});
  CHECK(dst == src);
  augment_image(src.data(), dst.data(), c, h, w, AugmentDraw{0, 0, true});
  for (int ch = 0; ch < c; ++ch)
    for (int y = 0; y < h; ++y)
      for (int x = 0; x < w; ++x) CHECK(at(dst, ch, y, x) == at(src, ch, y, w - 1 - x));
  // Window shifted down 1 and left 2: output (y, x) = input (y + 1, x - 2), zero outside.
  augment_image(src.data(), dst.data(), c, h, w, AugmentDraw{1, -2, false});
  for (int ch = 0; ch < c; ++ch)
    for (int y = 0; y < h; ++y)
      for (int x = 0; x < w; ++x) {
        const bool inside = y + 1 < h && x - 2 >= 0;
        CHECK(at(dst, ch, y, x) == (inside ? at(src, ch, y + 1, x - 2) : 0.0f));
      }

  const AugmentOptions opt{4, true};
  int flips = 0;
  std::set<std::pair<int, int>> shifts;
  for (int64_t i = 0; i < 2000; ++i) {
    const AugmentDraw d = augment_draw(opt, 9, 3, i), again = augment_draw(opt, 9, 3, i);
    REQUIRE((d.dy == again.dy && d.dx == again.dx && d.flip == again.flip));
    REQUIRE((d.dy >= -4 && d.dy <= 4 && d.dx >= -4 && d.dx <= 4));
    flips += d.flip;
    shifts.insert({d.dy, d.dx});
  }
  CHECK((flips > 900 && flips < 1100));
  CHECK(shifts.size() == 81);
  const AugmentDraw none = augment_draw(AugmentOptions{}, 9, 3, 5);
  CHECK((none.dy == 0 && none.dx == 0 && !none.flip));
}

// ----------------------------------------------------------------------------- loader

TEST_CASE("Loader: each epoch visits every sample exactly once", "[data][loader]") {
  const Dataset d = indexed_dataset(103);
  SECTION("keeping the last partial batch") {
    Loader loader(d, 10, true, 1);
    CHECK(loader.batches_per_epoch() == 11);
    for (int64_t epoch = 0; epoch < 3; ++epoch) {
      const auto batches = whole_epoch(loader, epoch);
      REQUIRE(batches.size() == 11);
      std::vector<int> seen(d.n, 0);
      for (size_t k = 0; k < batches.size(); ++k) {
        const Batch& b = batches[k];
        CHECK(b.n == (k == 10 ? 3 : 10));
        CHECK((b.epoch == epoch && b.index == static_cast<int64_t>(k)));
        CHECK((b.c == 1 && b.h == 4 && b.w == 5));
        REQUIRE(b.x.size() == static_cast<size_t>(b.n * 20));
        for (int64_t s = 0; s < b.n; ++s) {
          const int64_t i = b.indices[s];
          ++seen[i];
          CHECK(b.y[s] == d.labels[i]);
          CHECK(b.x[s * 20 + 19] == d.image(i)[19]);  // gathered the right image
        }
      }
      CHECK(std::all_of(seen.begin(), seen.end(), [](int v) { return v == 1; }));
    }
  }
  SECTION("dropping it") {
    Loader loader(d, 10, true, 1, {}, true);
    CHECK(loader.batches_per_epoch() == 10);
    const auto batches = whole_epoch(loader, 0);
    REQUIRE(batches.size() == 10);
    std::set<int64_t> seen;
    for (const Batch& b : batches) seen.insert(b.indices.begin(), b.indices.end());
    CHECK(seen.size() == 100);
  }
  SECTION("in order without shuffling") {
    Loader loader(d, 25, false, 1);
    int64_t next = 0;
    for (const Batch& b : whole_epoch(loader, 4))
      for (int64_t i : b.indices) CHECK(i == next++);
    CHECK(next == 103);
  }
}

TEST_CASE("Loader: the order is a function of (seed, epoch) only", "[data][loader]") {
  const Dataset d = indexed_dataset(500);
  Loader a(d, 64, true, 42), b(d, 64, true, 42), other_seed(d, 64, true, 43);
  auto order = [](const std::vector<Batch>& batches) {
    std::vector<int64_t> out;
    for (const Batch& b : batches) out.insert(out.end(), b.indices.begin(), b.indices.end());
    return out;
  };
  const auto e0 = order(whole_epoch(a, 0));
  CHECK(order(whole_epoch(b, 0)) == e0);
  CHECK(e0 == epoch_permutation(500, 42, 0));
  CHECK(order(whole_epoch(a, 1)) != e0);
  CHECK(order(whole_epoch(other_seed, 0)) != e0);
  CHECK(order(whole_epoch(a, 0)) == e0);  // revisiting an epoch repeats it
  // A different batch size cuts the same order differently.
  Loader small_batches(d, 7, true, 42);
  CHECK(order(whole_epoch(small_batches, 0)) == e0);
  // Not the identity, and a permutation.
  std::vector<int64_t> sorted = e0;
  std::sort(sorted.begin(), sorted.end());
  std::vector<int64_t> identity(500);
  std::iota(identity.begin(), identity.end(), 0);
  CHECK(sorted == identity);
  CHECK(e0 != identity);
}

TEST_CASE("Loader: start_epoch(e, k) yields exactly batches k.. of the uninterrupted epoch", "[data][loader]") {
  const Dataset d = make_synthetic(300, 3);
  Loader full(d, 32, true, 7, AugmentOptions{4, true});
  const auto reference = whole_epoch(full, 5);
  REQUIRE(reference.size() == 10);
  for (int64_t k : {0, 1, 6, 9, 10}) {
    Loader resumed(d, 32, true, 7, AugmentOptions{4, true});
    // Work on another epoch first and abandon it half-way, as an interrupted run would.
    resumed.start_epoch(2);
    Batch scratch;
    REQUIRE(resumed.next(scratch));
    const auto tail = whole_epoch(resumed, 5, k);
    REQUIRE(tail.size() == reference.size() - k);
    for (size_t j = 0; j < tail.size(); ++j) CHECK(same_batch(tail[j], reference[k + j]));
  }
  CHECK_THROWS_AS(full.start_epoch(0, 11), std::out_of_range);
  CHECK_THROWS_AS(full.start_epoch(-1), std::invalid_argument);
}

TEST_CASE("Loader: augmentation keeps the shape, is reproducible and changes images", "[data][loader][augment]") {
  const Dataset d = make_synthetic(64, 2);
  Loader plain(d, 16, false, 3), augmented(d, 16, false, 3, AugmentOptions{4, true}),
      again(d, 16, false, 3, AugmentOptions{4, true}), flip_only(d, 16, false, 3, AugmentOptions{0, true});
  const auto p = whole_epoch(plain, 0), a = whole_epoch(augmented, 0), b = whole_epoch(again, 0),
             f = whole_epoch(flip_only, 0);
  REQUIRE(a.size() == p.size());
  int changed = 0, flipped = 0;
  for (size_t k = 0; k < a.size(); ++k) {
    CHECK(a[k].x.size() == p[k].x.size());
    CHECK(a[k].y == p[k].y);
    CHECK(same_batch(a[k], b[k]));
    for (int64_t s = 0; s < a[k].n; ++s) {
      const float* orig = p[k].x.data() + s * 3072;
      changed += !std::equal(orig, orig + 3072, a[k].x.data() + s * 3072);
      // Flip-only: either the original or its exact mirror.
      const float* out = f[k].x.data() + s * 3072;
      bool mirrored = true;
      for (int row = 0; row < 3 * 32 && mirrored; ++row)
        for (int x = 0; x < 32; ++x) mirrored = mirrored && out[row * 32 + x] == orig[row * 32 + 31 - x];
      const bool same = std::equal(orig, orig + 3072, out);
      CHECK((mirrored || same));
      flipped += mirrored;
    }
  }
  CHECK(changed > 50);
  CHECK((flipped > 16 && flipped < 48));
  // Another epoch draws other crops.
  CHECK(!same_batch(whole_epoch(augmented, 1)[0], a[0]));
}

TEST_CASE("Loader: worker errors reach next(), misuse is reported, shutdown is clean", "[data][loader]") {
  const Dataset d = indexed_dataset(100);
  SECTION("an exception on the worker is rethrown in order, and the next epoch runs") {
    Loader loader(d, 10, true, 1);
    loader.set_batch_hook([](Batch& b) {
      if (b.epoch == 0 && b.index == 3) throw std::runtime_error("hook failed on batch 3");
    });
    loader.start_epoch(0);
    Batch b;
    for (int k = 0; k < 3; ++k) {
      REQUIRE(loader.next(b));
      CHECK(b.index == k);
    }
    REQUIRE_THROWS_WITH(loader.next(b), "hook failed on batch 3");
    CHECK_FALSE(loader.next(b));
    CHECK(whole_epoch(loader, 1).size() == 10);
  }
  SECTION("the hook sees and may change every batch") {
    Loader loader(d, 10, false, 1);
    loader.set_batch_hook([](Batch& b) {
      for (float& v : b.x) v = -v;
    });
    const auto batches = whole_epoch(loader, 0);
    CHECK(batches[2].x[0] == -d.image(20)[0]);
  }
  SECTION("misuse") {
    Loader loader(d, 10, true, 1);
    Batch b;
    CHECK_THROWS_AS(loader.next(b), std::logic_error);
    CHECK_THROWS_AS(Loader(d, 0, true, 1), std::invalid_argument);
    CHECK_THROWS_AS(Loader(d, 10, true, 1, AugmentOptions{-1, false}), std::invalid_argument);
    loader.start_epoch(0);
    CHECK_THROWS_AS(loader.set_batch_hook([](Batch&) {}), std::logic_error);  // the worker may be running it
  }
  SECTION("abandoning epochs and destroying mid-epoch") {
    for (int round = 0; round < 50; ++round) {
      Loader loader(d, 3, true, static_cast<uint64_t>(round));
      Batch b;
      loader.start_epoch(0);
      REQUIRE(loader.next(b));
      loader.start_epoch(1, 5);
      REQUIRE(loader.next(b));
      CHECK((b.epoch == 1 && b.index == 5));
    }  // destroyed with a full prefetch queue and the worker possibly mid-batch
  }
}

#pragma once
// MNIST and Fashion-MNIST in LeCun's IDX format, gzipped or plain.
//
// An IDX file is a big-endian header followed by raw unsigned bytes:
//   images: magic 0x00000803 (2051), count, rows, cols, then count*rows*cols pixels (row-major)
//   labels: magic 0x00000801 (2049), count, then count labels
// The third magic byte (0x08) is the element type "unsigned byte", the fourth the number of
// dimensions. Every field is checked, and the file size must be exactly header + payload, so a
// truncated download or a swapped file fails with a message naming the file and the fix.
#include <optional>
#include <string>

#include "data/dataset.h"

namespace bulwark::data {

inline constexpr const char* kFashionMnistDefaultDir = "/usr/share/datasets/fashion-mnist";

// `dir` holds train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte and
// t10k-labels-idx1-ubyte, each plain or with .gz (the plain file wins when both exist).
// Returns 1x28x28 images, 10 classes, the published normalisation stats.
Dataset load_mnist(const std::string& dir, bool train);

// Same layout and file names. An empty `dir` means find_fashion_mnist(), and throws with the
// apt-get command when that finds nothing.
Dataset load_fashion_mnist(const std::string& dir, bool train);

// kFashionMnistDefaultDir (where Debian's dataset-fashion-mnist package installs the files)
// when all four files are there, else nullopt.
std::optional<std::string> find_fashion_mnist();

// Any IDX image/label pair (KMNIST, EMNIST, subsets, ...): any image size, labels in
// [0, num_classes), stats computed from the images. `name` prefixes the error messages.
Dataset load_idx(const std::string& images_path, const std::string& labels_path, const std::string& name,
                 int num_classes);

}  // namespace bulwark::data

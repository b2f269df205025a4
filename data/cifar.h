#pragma once
// CIFAR-10 and CIFAR-100 in their binary layout (cifar-10-binary.tar.gz, cifar-100-binary.tar.gz).
//
// A file is a sequence of fixed-size records, each labels then a 3x32x32 image as 1024 red,
// 1024 green and 1024 blue bytes (row-major), which is already NCHW:
//   CIFAR-10:  1 label byte (0..9)                         + 3072 = 3073 bytes
//   CIFAR-100: 1 coarse label (0..19) + 1 fine label (0..99) + 3072 = 3074 bytes (fine is used)
// There is no header, so the file size is the only integrity check: the standard files must
// be exactly 10,000 records (CIFAR-10 batches, CIFAR-100 test.bin) or 50,000 (CIFAR-100 train.bin).
#include <string>

#include "data/dataset.h"

namespace bulwark::data {

// `dir` holds data_batch_1.bin .. data_batch_5.bin (train, 50,000) and test_batch.bin (test,
// 10,000), directly or in the archive's cifar-10-batches-bin/ subfolder.
Dataset load_cifar10(const std::string& dir, bool train);

// `dir` holds train.bin (50,000) and test.bin (10,000), directly or in cifar-100-binary/.
// Labels are the 100 fine classes.
Dataset load_cifar100(const std::string& dir, bool train);

// Any file in the CIFAR-10 record layout whose size is a multiple of 3073 bytes (subsets such
// as the 200-image test sample). Uses the CIFAR-10 stats.
Dataset load_cifar10_file(const std::string& path);
// The same for the CIFAR-100 record layout (a multiple of 3074 bytes; fine labels, CIFAR-100 stats).
Dataset load_cifar100_file(const std::string& path);

}  // namespace bulwark::data

#pragma once
// The fuzz targets (tests/fuzz/README.md): each takes any bytes and must return without crashing,
// hanging, leaking, reading out of bounds, hitting undefined behaviour or allocating without a
// bound; a clear exception (std::exception) is the expected answer to bad input.
//
// The same functions serve libFuzzer (libfuzzer_main.cpp, clang with -fsanitize=fuzzer, address and
// undefined: bulwark-fuzz-<target>) and the corpus replay that ctest runs with the normal compiler
// (replay.cpp), so every kept input is checked on every build.
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace bulwark::fuzz {

using Target = int (*)(const uint8_t* data, size_t size);

// IDX images and labels (data/idx.h), raw or gzip: the first two bytes (little endian) split the
// rest into the images file and the labels file.
int idx_pair(const uint8_t* data, size_t size);
// A CIFAR-10 binary batch (data/cifar.h): the bytes are the file.
int cifar10_file(const uint8_t* data, size_t size);
// A file of CIFAR-100 binary records (data/cifar.h, load_cifar100_file: the reader of train.bin and
// test.bin, on any number of records): the bytes are the file.
int cifar100_file(const uint8_t* data, size_t size);
// A command-line value (engine/options.h): the first byte picks the option's type (radius such as
// 8/255, integer, real, list of reals such as milestones, flag, text from a list), the rest is the
// text typed; also parse_radius.
int option_value(const uint8_t* data, size_t size);
// A safetensors file (engine/safetensors.h, load_safetensors): the bytes are the file.
int safetensors_file(const uint8_t* data, size_t size);
// A checkpoint's metadata, as resume reads it (training/checkpoint.h checkpoint_state, then the
// run config (config_from_json, validate), the schedule's and method's saved state, and the last
// epoch's metrics line as metrics.jsonl's lines are read (metrics_from_json)): the bytes
// are a JSON object whose members are the metadata entries, each a string or JSON (dumped to the
// string a checkpoint holds).
int checkpoint_metadata(const uint8_t* data, size_t size);

// What the last input's reader said when it refused it ("" when the input was accepted), so the
// replay can show which corpus inputs reach past the first check.
const std::string& last_refusal();

struct NamedTarget {
  const char* name;
  Target run;
};
const std::vector<NamedTarget>& targets();

}  // namespace bulwark::fuzz

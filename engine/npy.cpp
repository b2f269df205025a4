#include "engine/npy.h"

#include <fmt/format.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <stdexcept>

namespace bulwark {

namespace {

const char* npy_descr(DType t) {
  switch (t) {
    case DType::f32: return "<f4";
    case DType::f64: return "<f8";
    case DType::i32: return "<i4";
  }
  return "?";
}

// "(N, K)", "(N,)" for one dimension, "()" for a scalar: Python's tuple syntax.
std::string shape_tuple(const Shape& shape) {
  if (shape.size() == 1) return fmt::format("({},)", shape[0]);
  std::string out = "(";
  for (size_t i = 0; i < shape.size(); ++i) out += fmt::format("{}{}", i ? ", " : "", shape[i]);
  return out + ")";
}

}  // namespace

void save_npy(const std::string& path, const Tensor& t) {
  const Tensor c = t.detach().cpu().contiguous();
  std::string header =
      fmt::format("{{'descr': '{}', 'fortran_order': False, 'shape': {}, }}", npy_descr(c.dtype()), shape_tuple(c.shape()));
  constexpr size_t kPrefix = 10;  // magic (6) + version (2) + header length (2)
  header.append(63 - (kPrefix + header.size()) % 64, ' ');
  header += '\n';
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) throw std::runtime_error(fmt::format("cannot create {}: {}", tmp, std::strerror(errno)));
    const auto length = static_cast<uint16_t>(header.size());
    out.write("\x93NUMPY\x01\x00", 8);
    const char length_bytes[2] = {static_cast<char>(length & 0xff), static_cast<char>(length >> 8)};
    out.write(length_bytes, 2);
    out << header;
    out.write(static_cast<const char*>(c.impl()->storage->data) + c.offset() * dtype_size(c.dtype()),
              static_cast<std::streamsize>(c.numel() * dtype_size(c.dtype())));
    out.flush();
    if (!out) throw std::runtime_error(fmt::format("writing {} failed: {}", tmp, std::strerror(errno)));
  }
  std::filesystem::rename(tmp, path);
}

}  // namespace bulwark

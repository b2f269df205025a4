#pragma once
// NumPy's .npy format (version 1.0), for handing tensors to Python tools: the magic "\x93NUMPY",
// version 1.0, a little-endian uint16 header length, then an ASCII dict
//   {'descr': '<f4', 'fortran_order': False, 'shape': (N, K), }
// padded with spaces and a newline so the data starts at a multiple of 64 bytes, then the raw
// C-order little-endian data. np.load reads it; so does python/bulwark_torch.py without NumPy.
#include <string>

#include "engine/tensor.h"

namespace bulwark {

// Writes t (any device; f32 '<f4', f64 '<f8', i32 '<i4') to path + ".tmp" and renames it over
// `path`. Throws naming the path when it cannot be written.
void save_npy(const std::string& path, const Tensor& t);

}  // namespace bulwark

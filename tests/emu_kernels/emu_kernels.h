#pragma once
// Host entry points of the test kernels in tests/emu_kernels/*.cu. Those files are CUDA source
// compiled by g++ under the emulator (CMake's bulwark_emulated_cuda), exactly as kernels/cuda
// will be; tests/test_emu.cpp calls them through this plain C++ interface.
#include <vector>

namespace emu_kernels {

// C = A B for row-major A (m x k) and B (k x n), by a shared-memory tiled kernel with square
// tiles of `tile` (8, 16 or 32) threads per side, run on the emulator; returns C (m x n).
std::vector<float> gemm_tiled(const std::vector<float>& a, const std::vector<float>& b, int m, int n, int k, int tile);

}  // namespace emu_kernels

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

namespace emu_kernels {

// One warp's D = A B + C through the emulated warp matrix API (tests/emu_kernels/wmma.cu):
// A 16 x k row-major, B k x 16 (column-major in memory when `b_col_major`), C 16 x 16 row-major,
// D returned row-major (stored column-major first when `d_col_major`). k = 8 takes TF32
// fragments (inputs passed unrounded: the kernel rounds them with __float_to_tf32), k = 16 BF16
// (the inputs converted with __float2bfloat16 on the host).
std::vector<float> wmma_tile(const std::vector<float>& a, const std::vector<float>& b, const std::vector<float>& c,
                             int k, bool b_col_major, bool d_col_major);
// Loads C (16 x 16, row-major) into an accumulator fragment and writes element x[i] of lane l
// to position 8 l + i: what code that assumes a fragment layout does. Returns that matrix.
std::vector<float> wmma_positional(const std::vector<float>& c);
// Misuse the emulator must reject as a GPU would: a load from a pointer 4 bytes off the 32-byte
// alignment; a load that only half of the warp reaches.
void wmma_misaligned_load();
void wmma_half_warp_load();

}  // namespace emu_kernels

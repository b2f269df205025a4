#pragma once
// Helpers shared by the kernel files of kernels/cuda (an included header, not a translation
// unit: CMake compiles only the .cu files). Everything here compiles under nvcc and under the
// emulator (docs/emulator.md).
#include <cstdint>

#include "kernels/cuda/cuda_kernels.h"
#include "kernels/emu/launch.h"

namespace bulwark::cuda {

// The stream every launcher queues its work on (runtime.cu).
cudaStream_t current_stream();

// Throws std::runtime_error "CUDA <what> failed: <error name>: <error text>" unless err is
// cudaSuccess (runtime.cu): the one check of a CUDA runtime call's result.
void check_cuda(cudaError_t err, const char* what);

// The Philox offset a random kernel starts at (cuda_kernels.h: a graph replay moves its base).
__device__ inline uint64_t resolve(PhiloxOffset p) { return p.base ? *p.base + p.offset : p.offset; }

constexpr int kThreads = 256;  // block size of the 1-D elementwise kernels
// A grid-stride loop needs no more blocks than fill the GPU a few times over: 132 SMs (H100)
// x 8 resident 256-thread blocks. Larger n loops inside the kernel.
constexpr int64_t kMaxBlocks = 132 * 8;

inline unsigned blocks_for(int64_t n, int threads = kThreads) {
  const int64_t b = (n + threads - 1) / threads;
  return static_cast<unsigned>(b < 1 ? 1 : (b > kMaxBlocks ? kMaxBlocks : b));
}

// Sum over the 32 lanes of a full warp (every lane gets the total).
template <class T>
__device__ inline T warp_sum(T v) {
  for (int d = 16; d > 0; d >>= 1) v += __shfl_xor_sync(0xffffffffu, v, d);
  return v;
}

// Sum over a block whose size is a multiple of 32 (at most 1024 threads); every thread gets the
// total. The order of the additions is fixed, so the result is deterministic run to run.
template <class T>
__device__ inline T block_sum(T v, BW_SHARED_PTR(T) scratch /* 32 elements */) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  v = warp_sum(v);
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  T total = lane < warps ? static_cast<T>(scratch[lane]) : T(0);
  total = warp_sum(total);
  __syncthreads();  // scratch may be reused by the caller right after
  return total;
}

}  // namespace bulwark::cuda

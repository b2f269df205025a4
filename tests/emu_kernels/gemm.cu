// Tiled shared-memory GEMM, C = A B (row-major), written as a CUDA source file that both nvcc
// and the emulator compile: launched through BW_LAUNCH, shared memory through BW_SHARED, and
// <cuda_runtime.h> included as a GPU build would (the emulated build maps it to the emulator).
//
// One block computes a TILE x TILE block of C; each step loads a TILE x TILE tile of A and of
// B into shared memory (zero outside the matrices, so sizes need not be multiples of TILE),
// synchronizes, accumulates TILE products per thread, and synchronizes again before the next
// load overwrites the tiles. Bs has a padding column, the usual bank-conflict fix.
// FLOPs 2 m n k; bytes moved (ideal) 4 (m k + k n + m n).
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "kernels/emu/launch.h"
#include "tests/emu_kernels/emu_kernels.h"

namespace emu_kernels {
namespace {

template <int TILE>
__global__ void gemm_tiled_kernel(const float* __restrict__ a, const float* __restrict__ b, float* __restrict__ c,
                                  int m, int n, int k) {
  BW_SHARED(float, as, [TILE][TILE]);
  BW_SHARED(float, bs, [TILE][TILE + 1]);
  const int row = blockIdx.y * TILE + threadIdx.y;
  const int col = blockIdx.x * TILE + threadIdx.x;
  float acc = 0.0f;
  for (int k0 = 0; k0 < k; k0 += TILE) {
    const int ka = k0 + threadIdx.x, kb = k0 + threadIdx.y;
    as[threadIdx.y][threadIdx.x] = (row < m && ka < k) ? __ldg(&a[row * k + ka]) : 0.0f;
    bs[threadIdx.y][threadIdx.x] = (kb < k && col < n) ? __ldg(&b[kb * n + col]) : 0.0f;
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < TILE; ++kk) acc += as[threadIdx.y][kk] * bs[kk][threadIdx.x];
    __syncthreads();
  }
  if (row < m && col < n) c[row * n + col] = acc;
}

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(e));
}

template <int TILE>
void launch_gemm(const float* a, const float* b, float* c, int m, int n, int k, cudaStream_t stream) {
  const dim3 block(TILE, TILE);
  const dim3 grid((n + TILE - 1) / TILE, (m + TILE - 1) / TILE);
  BW_LAUNCH((gemm_tiled_kernel<TILE>), grid, block, 0, stream, a, b, c, m, n, k);
}

}  // namespace

std::vector<float> gemm_tiled(const std::vector<float>& a, const std::vector<float>& b, int m, int n, int k, int tile) {
  float *da = nullptr, *db = nullptr, *dc = nullptr;
  cudaStream_t stream;
  check(cudaStreamCreate(&stream), "cudaStreamCreate");
  check(cudaMallocAsync(&da, a.size() * sizeof(float), stream), "cudaMallocAsync A");
  check(cudaMallocAsync(&db, b.size() * sizeof(float), stream), "cudaMallocAsync B");
  check(cudaMallocAsync(&dc, size_t(m) * n * sizeof(float), stream), "cudaMallocAsync C");
  check(cudaMemcpyAsync(da, a.data(), a.size() * sizeof(float), cudaMemcpyHostToDevice, stream), "copy A");
  check(cudaMemcpyAsync(db, b.data(), b.size() * sizeof(float), cudaMemcpyHostToDevice, stream), "copy B");
  switch (tile) {
    case 8: launch_gemm<8>(da, db, dc, m, n, k, stream); break;
    case 16: launch_gemm<16>(da, db, dc, m, n, k, stream); break;
    case 32: launch_gemm<32>(da, db, dc, m, n, k, stream); break;
    default: throw std::invalid_argument("gemm_tiled: tile must be 8, 16 or 32, got " + std::to_string(tile));
  }
  std::vector<float> c(size_t(m) * n);
  check(cudaMemcpyAsync(c.data(), dc, c.size() * sizeof(float), cudaMemcpyDeviceToHost, stream), "copy C");
  check(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
  check(cudaFreeAsync(da, stream), "free A");
  check(cudaFreeAsync(db, stream), "free B");
  check(cudaFreeAsync(dc, stream), "free C");
  check(cudaStreamDestroy(stream), "cudaStreamDestroy");
  return c;
}

}  // namespace emu_kernels

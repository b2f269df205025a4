// The warp matrix API as bulwark's tensor-core kernels use it (kernels/cuda/tensor_core.cuh),
// one warp and one 16x16 tile at a time, for the emulator's fragment tests (tests/test_emu.cpp).
// Written as CUDA source: under nvcc the same code runs on nvcuda::wmma.
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/cuda/tensor_core.cuh"
#include "tests/emu_kernels/emu_kernels.h"

namespace emu_kernels {
namespace {

namespace wmma = bulwark::cuda::tc::wmma;

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(e));
}

template <class T>
struct Device {
  T* ptr = nullptr;
  explicit Device(const std::vector<T>& host) {
    check(cudaMalloc(&ptr, sizeof(T) * (host.empty() ? 1 : host.size())), "cudaMalloc");
    if (!host.empty()) check(cudaMemcpy(ptr, host.data(), sizeof(T) * host.size(), cudaMemcpyHostToDevice), "copy");
  }
  std::vector<T> host(size_t n) const {
    std::vector<T> out(n);
    check(cudaMemcpy(out.data(), ptr, sizeof(T) * n, cudaMemcpyDeviceToHost), "copy back");
    return out;
  }
  ~Device() { cudaFree(ptr); }
};

template <class BLayout>
__global__ void tf32_tile_kernel(float* a, const float* b, const float* c, float* d, bool d_col_major) {
  wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, wmma::row_major> fa;
  wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, BLayout> fb;
  wmma::fragment<wmma::accumulator, 16, 16, 8, float> fc;
  wmma::load_matrix_sync(fa, a, 8);
  wmma::load_matrix_sync(fb, b, std::is_same_v<BLayout, wmma::row_major> ? 16 : 8);
  for (int i = 0; i < fa.num_elements; ++i) fa.x[i] = wmma::__float_to_tf32(fa.x[i]);
  for (int i = 0; i < fb.num_elements; ++i) fb.x[i] = wmma::__float_to_tf32(fb.x[i]);
  wmma::load_matrix_sync(fc, c, 16, wmma::mem_row_major);
  wmma::mma_sync(fc, fa, fb, fc);
  wmma::store_matrix_sync(d, fc, 16, d_col_major ? wmma::mem_col_major : wmma::mem_row_major);
}

template <class BLayout>
__global__ void bf16_tile_kernel(const __nv_bfloat16* a, const __nv_bfloat16* b, const float* c, float* d,
                                 bool d_col_major) {
  wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> fa;
  wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, BLayout> fb;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> fc;
  wmma::load_matrix_sync(fa, a, 16);
  wmma::load_matrix_sync(fb, b, 16);
  wmma::load_matrix_sync(fc, c, 16, wmma::mem_row_major);
  wmma::mma_sync(fc, fa, fb, fc);
  wmma::store_matrix_sync(d, fc, 16, d_col_major ? wmma::mem_col_major : wmma::mem_row_major);
}

__global__ void positional_kernel(const float* c, float* out) {
  wmma::fragment<wmma::accumulator, 16, 16, 8, float> fc;
  wmma::load_matrix_sync(fc, c, 16, wmma::mem_row_major);
  const int lane = threadIdx.x % 32;
  for (int i = 0; i < fc.num_elements; ++i) out[lane * fc.num_elements + i] = fc.x[i];
}

__global__ void misaligned_kernel(const float* c) {
  wmma::fragment<wmma::accumulator, 16, 16, 8, float> fc;
  wmma::load_matrix_sync(fc, c + 1, 16, wmma::mem_row_major);
}

__global__ void half_warp_kernel(const float* c) {
  wmma::fragment<wmma::accumulator, 16, 16, 8, float> fc;
  if (threadIdx.x < 16) wmma::load_matrix_sync(fc, c, 16, wmma::mem_row_major);
}

// B (k x 16, row-major on the host) as the kernel reads it.
template <class T>
std::vector<T> b_in_memory(const std::vector<T>& b, int k, bool col_major) {
  if (!col_major) return b;
  std::vector<T> out(b.size());
  for (int r = 0; r < k; ++r)
    for (int c = 0; c < 16; ++c) out[size_t(c * k + r)] = b[size_t(r * 16 + c)];
  return out;
}

std::vector<float> row_major_result(const std::vector<float>& d, bool col_major) {
  if (!col_major) return d;
  std::vector<float> out(d.size());
  for (int r = 0; r < 16; ++r)
    for (int c = 0; c < 16; ++c) out[size_t(r * 16 + c)] = d[size_t(c * 16 + r)];
  return out;
}

}  // namespace

std::vector<float> wmma_tile(const std::vector<float>& a, const std::vector<float>& b, const std::vector<float>& c,
                             int k, bool b_col_major, bool d_col_major) {
  if ((k != 8 && k != 16) || a.size() != size_t(16 * k) || b.size() != size_t(16 * k) || c.size() != 256)
    throw std::invalid_argument("wmma_tile: k is 8 or 16, A 16 x k, B k x 16, C 16 x 16");
  Device<float> dc(c), dd(std::vector<float>(256));
  if (k == 8) {
    Device<float> da(a), db(b_in_memory(b, k, b_col_major));
    if (b_col_major)
      BW_LAUNCH(tf32_tile_kernel<wmma::col_major>, 1, 32, 0, 0, da.ptr, db.ptr, dc.ptr, dd.ptr, d_col_major);
    else
      BW_LAUNCH(tf32_tile_kernel<wmma::row_major>, 1, 32, 0, 0, da.ptr, db.ptr, dc.ptr, dd.ptr, d_col_major);
  } else {
    std::vector<__nv_bfloat16> ha, hb;
    for (float v : a) ha.push_back(__float2bfloat16(v));
    for (float v : b) hb.push_back(__float2bfloat16(v));
    Device<__nv_bfloat16> da(ha), db(b_in_memory(hb, k, b_col_major));
    if (b_col_major)
      BW_LAUNCH(bf16_tile_kernel<wmma::col_major>, 1, 32, 0, 0, da.ptr, db.ptr, dc.ptr, dd.ptr, d_col_major);
    else
      BW_LAUNCH(bf16_tile_kernel<wmma::row_major>, 1, 32, 0, 0, da.ptr, db.ptr, dc.ptr, dd.ptr, d_col_major);
  }
  return row_major_result(dd.host(256), d_col_major);
}

std::vector<float> wmma_positional(const std::vector<float>& c) {
  Device<float> dc(c), out(std::vector<float>(256));
  BW_LAUNCH(positional_kernel, 1, 32, 0, 0, dc.ptr, out.ptr);
  return out.host(256);
}

void wmma_misaligned_load() {
  Device<float> dc(std::vector<float>(300, 1.0f));
  BW_LAUNCH(misaligned_kernel, 1, 32, 0, 0, dc.ptr);
}

void wmma_half_warp_load() {
  Device<float> dc(std::vector<float>(256, 1.0f));
  BW_LAUNCH(half_warp_kernel, 1, 32, 0, 0, dc.ptr);
}

}  // namespace emu_kernels

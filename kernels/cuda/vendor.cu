// Version 0 of gemm.cu and conv.cu: the same launchers (vendor.h) on the vendor libraries, cuBLAS
// SGEMM and cuDNN convolutions. The benches time them beside ours, and cuda::gemm /
// cuda::conv2d_* run them when kernel_source() picks them (kernel_source.h). They are the only
// cuBLAS/cuDNN calls in bulwark, gathered here so each kernel file holds bulwark's own kernels.
//
// Both libraries are asked for plain f32 FMA math (cuBLAS's default; cuDNN's CUDNN_FMA_MATH), not
// TF32 tensor cores, so the comparison with our f32 kernels is like for like. The FLOPs and bytes
// of each problem are in gemm.cu and conv.cu.
//
// The emulated backend has no cuBLAS or cuDNN: there each launcher throws the
// std::invalid_argument of throw_vendor_unavailable(), and nothing else in it calls them.
#include <cuda_runtime.h>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/kernel_source.h"
#include "kernels/cuda/vendor.h"

#ifndef BULWARK_EMU
#include <cublas_v2.h>
#include <cudnn.h>

#include <stdexcept>
#include <string>
#endif

namespace bulwark::cuda {

#ifndef BULWARK_EMU
namespace {

// ---- cuBLAS ----------------------------------------------------------------------------------------

void check_cublas(cublasStatus_t st, const char* what) {
  if (st != CUBLAS_STATUS_SUCCESS)
    throw std::runtime_error(std::string(what) + " failed: " + cublasGetStatusString(st));
}

cublasHandle_t cublas_handle() {
  static cublasHandle_t handle = [] {
    cublasHandle_t h = nullptr;
    check_cublas(cublasCreate(&h), "cublasCreate");
    return h;
  }();
  check_cublas(cublasSetStream(handle, current_stream()), "cublasSetStream");
  return handle;
}

// ---- cuDNN -----------------------------------------------------------------------------------------

void check_cudnn(cudnnStatus_t st, const char* what) {
  if (st != CUDNN_STATUS_SUCCESS)
    throw std::runtime_error(std::string(what) + " failed: " + cudnnGetErrorString(st));
}

cudnnHandle_t cudnn_handle() {
  static cudnnHandle_t handle = [] {
    cudnnHandle_t h = nullptr;
    check_cudnn(cudnnCreate(&h), "cudnnCreate");
    return h;
  }();
  check_cudnn(cudnnSetStream(handle, current_stream()), "cudnnSetStream");
  return handle;
}

// The descriptors of one convolution shape, created per call (the benches time the steady
// state, where cuDNN's cost is the kernel, not this), plus a workspace ordered on the stream
// the launchers use (current_stream()).
struct CudnnConv {
  cudnnTensorDescriptor_t x = nullptr, y = nullptr, bias = nullptr;
  cudnnFilterDescriptor_t w = nullptr;
  cudnnConvolutionDescriptor_t conv = nullptr;
  void* workspace = nullptr;

  explicit CudnnConv(const ConvShape& s) {
    check_cudnn(cudnnCreateTensorDescriptor(&x), "cudnnCreateTensorDescriptor");
    check_cudnn(cudnnCreateTensorDescriptor(&y), "cudnnCreateTensorDescriptor");
    check_cudnn(cudnnCreateTensorDescriptor(&bias), "cudnnCreateTensorDescriptor");
    check_cudnn(cudnnCreateFilterDescriptor(&w), "cudnnCreateFilterDescriptor");
    check_cudnn(cudnnCreateConvolutionDescriptor(&conv), "cudnnCreateConvolutionDescriptor");
    check_cudnn(
        cudnnSetTensor4dDescriptor(x, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, int(s.n), int(s.c), int(s.h), int(s.w)),
        "cudnnSetTensor4dDescriptor(x)");
    check_cudnn(
        cudnnSetTensor4dDescriptor(y, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, int(s.n), int(s.o), int(s.oh), int(s.ow)),
        "cudnnSetTensor4dDescriptor(y)");
    check_cudnn(cudnnSetTensor4dDescriptor(bias, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, 1, int(s.o), 1, 1),
                "cudnnSetTensor4dDescriptor(bias)");
    check_cudnn(
        cudnnSetFilter4dDescriptor(w, CUDNN_DATA_FLOAT, CUDNN_TENSOR_NCHW, int(s.o), int(s.c), int(s.kh), int(s.kw)),
        "cudnnSetFilter4dDescriptor");
    check_cudnn(cudnnSetConvolution2dDescriptor(conv, int(s.pad), int(s.pad), int(s.stride), int(s.stride), 1, 1,
                                                CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT),
                "cudnnSetConvolution2dDescriptor");
    // Keep f32 exact: no TF32 tensor-op math, so the comparison with our kernels is like for like.
    check_cudnn(cudnnSetConvolutionMathType(conv, CUDNN_FMA_MATH), "cudnnSetConvolutionMathType");
  }
  void* workspace_of(size_t bytes) {
    if (bytes && cudaMallocAsync(&workspace, bytes, current_stream()) != cudaSuccess)
      throw std::runtime_error("cuDNN workspace of " + std::to_string(bytes) + " bytes: out of device memory");
    return workspace;
  }
  ~CudnnConv() {
    if (workspace) cudaFreeAsync(workspace, current_stream());  // stream-ordered: no host sync
    cudnnDestroyConvolutionDescriptor(conv);
    cudnnDestroyFilterDescriptor(w);
    cudnnDestroyTensorDescriptor(bias);
    cudnnDestroyTensorDescriptor(y);
    cudnnDestroyTensorDescriptor(x);
  }
  CudnnConv(const CudnnConv&) = delete;
  CudnnConv& operator=(const CudnnConv&) = delete;
};
}  // namespace

void gemm_vendor(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
                 const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  if (M == 0 || N == 0) return;
  // Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T, and a row-major matrix is
  // its column-major transpose: so pass B first, A second, with the same transpose flags.
  check_cublas(cublasSgemm(cublas_handle(), tb ? CUBLAS_OP_T : CUBLAS_OP_N, ta ? CUBLAS_OP_T : CUBLAS_OP_N, int(N),
                           int(M), int(K), &alpha, B, int(ldb), A, int(lda), &beta, C, int(ldc)),
               "cublasSgemm");
}

void conv2d_forward_vendor(const ConvShape& s, const float* x, const float* w, const float* bias, float* y, bool relu) {
  CudnnConv d(s);
  cudnnConvolutionFwdAlgoPerf_t perf[CUDNN_CONVOLUTION_FWD_ALGO_COUNT];
  int found = 0;
  check_cudnn(cudnnGetConvolutionForwardAlgorithm_v7(cudnn_handle(), d.x, d.w, d.conv, d.y,
                                                     CUDNN_CONVOLUTION_FWD_ALGO_COUNT, &found, perf),
              "cudnnGetConvolutionForwardAlgorithm_v7");
  size_t bytes = 0;
  check_cudnn(cudnnGetConvolutionForwardWorkspaceSize(cudnn_handle(), d.x, d.w, d.conv, d.y, perf[0].algo, &bytes),
              "cudnnGetConvolutionForwardWorkspaceSize");
  void* ws = d.workspace_of(bytes);
  const float one = 1.0f, zero = 0.0f;
  check_cudnn(
      cudnnConvolutionForward(cudnn_handle(), &one, d.x, x, d.w, w, d.conv, perf[0].algo, ws, bytes, &zero, d.y, y),
      "cudnnConvolutionForward");
  if (bias) check_cudnn(cudnnAddTensor(cudnn_handle(), &one, d.bias, bias, &one, d.y, y), "cudnnAddTensor");
  // The ReLU in place by our elementwise kernel (ew::relu_if's bits, NaN to 0), a third launch:
  // the vendor route is the benches' baseline, not the fused path.
  if (relu) unary(ew::Unary::relu, y, y, s.n * s.o * s.oh * s.ow, 0.0f, 0.0f);
}

void conv2d_backward_input_vendor(const ConvShape& s, const float* g, const float* w, float* dx) {
  CudnnConv d(s);
  cudnnConvolutionBwdDataAlgoPerf_t perf[CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT];
  int found = 0;
  check_cudnn(cudnnGetConvolutionBackwardDataAlgorithm_v7(cudnn_handle(), d.w, d.y, d.conv, d.x,
                                                          CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT, &found, perf),
              "cudnnGetConvolutionBackwardDataAlgorithm_v7");
  size_t bytes = 0;
  check_cudnn(cudnnGetConvolutionBackwardDataWorkspaceSize(cudnn_handle(), d.w, d.y, d.conv, d.x, perf[0].algo, &bytes),
              "cudnnGetConvolutionBackwardDataWorkspaceSize");
  void* ws = d.workspace_of(bytes);
  const float one = 1.0f, zero = 0.0f;
  check_cudnn(cudnnConvolutionBackwardData(cudnn_handle(), &one, d.w, w, d.y, g, d.conv, perf[0].algo, ws, bytes, &zero,
                                           d.x, dx),
              "cudnnConvolutionBackwardData");
}

void conv2d_backward_weight_vendor(const ConvShape& s, const float* x, const float* g, float* dw) {
  CudnnConv d(s);
  cudnnConvolutionBwdFilterAlgoPerf_t perf[CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT];
  int found = 0;
  check_cudnn(cudnnGetConvolutionBackwardFilterAlgorithm_v7(cudnn_handle(), d.x, d.y, d.conv, d.w,
                                                            CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT, &found, perf),
              "cudnnGetConvolutionBackwardFilterAlgorithm_v7");
  size_t bytes = 0;
  check_cudnn(
      cudnnGetConvolutionBackwardFilterWorkspaceSize(cudnn_handle(), d.x, d.y, d.conv, d.w, perf[0].algo, &bytes),
      "cudnnGetConvolutionBackwardFilterWorkspaceSize");
  void* ws = d.workspace_of(bytes);
  const float one = 1.0f, zero = 0.0f;
  check_cudnn(cudnnConvolutionBackwardFilter(cudnn_handle(), &one, d.x, x, d.y, g, d.conv, perf[0].algo, ws, bytes,
                                             &zero, d.w, dw),
              "cudnnConvolutionBackwardFilter");
}

#else  // the emulated backend: no vendor library
void gemm_vendor(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
                 const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  throw_vendor_unavailable();
}
void conv2d_forward_vendor(const ConvShape& s, const float* x, const float* w, const float* bias, float* y, bool relu) {
  throw_vendor_unavailable();
}
void conv2d_backward_input_vendor(const ConvShape& s, const float* g, const float* w, float* dx) {
  throw_vendor_unavailable();
}
void conv2d_backward_weight_vendor(const ConvShape& s, const float* x, const float* g, float* dw) {
  throw_vendor_unavailable();
}
#endif

}  // namespace bulwark::cuda

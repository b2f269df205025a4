#pragma once
// The two implementations behind each compute-heavy launcher of cuda_kernels.h, with the same
// arguments: ours (*_ours, gemm.cu and conv.cu) and the vendor libraries' (*_vendor, vendor.cu:
// cuBLAS SGEMM, cuDNN convolutions), "version 0" in llm.c's terms. cuda::gemm and cuda::conv2d_* run
// one of them as kernel_source() says (kernel_source.h); the benches call each one directly.
// The vendor versions exist only in the real (nvcc) build: the emulated backend has no cuBLAS
// or cuDNN, and there they throw std::invalid_argument saying so.
#include <cstdint>

#include "kernels/cuda/cuda_kernels.h"

namespace bulwark::cuda {

// Our register-blocked tile GEMM (gemm_tile.cuh) and implicit-GEMM convolutions.
void gemm_ours(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
               const float* B, int64_t ldb, float beta, float* C, int64_t ldc);
void conv2d_forward_ours(const ConvShape& s, const float* x, const float* w, const float* bias, float* y, bool relu);
void conv2d_backward_input_ours(const ConvShape& s, const float* g, const float* w, float* dx);
void conv2d_backward_weight_ours(const ConvShape& s, const float* x, const float* g, float* dw);

// cublasSgemm on the row-major problem, by computing C^T = op(B)^T op(A)^T in column-major.
// cuBLAS's default math mode: f32 FMA; TF32 tensor cores only when a math mode asks for them.
void gemm_vendor(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
                 const float* B, int64_t ldb, float beta, float* C, int64_t ldc);
// cudnnConvolutionForward (+ cudnnAddTensor for the bias, cudnnActivationForward in place for the
// ReLU), BackwardData, BackwardFilter, NCHW f32, cross-correlation, with the fastest algorithm
// cuDNN's heuristics pick for the shape.
void conv2d_forward_vendor(const ConvShape& s, const float* x, const float* w, const float* bias, float* y, bool relu);
void conv2d_backward_input_vendor(const ConvShape& s, const float* g, const float* w, float* dx);
void conv2d_backward_weight_vendor(const ConvShape& s, const float* x, const float* g, float* dw);

}  // namespace bulwark::cuda

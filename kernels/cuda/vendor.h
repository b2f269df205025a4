#pragma once
// The vendor libraries' versions of our compute-heavy launchers (cuBLAS SGEMM, cuDNN
// convolutions), with the same arguments as kernels/cuda/cuda_kernels.h, for the benches to
// compare against ("version 0" in llm.c's terms). They exist in the real (nvcc) build only:
// the emulated backend has no cuBLAS or cuDNN, so these are declared everywhere but defined
// only when BULWARK_EMU is not set (kernels/cuda/gemm.cu, kernels/cuda/conv.cu).
#include <cstdint>

#include "kernels/cuda/cuda_kernels.h"

namespace bulwark::cuda {

// cublasSgemm on the row-major problem, by computing C^T = op(B)^T op(A)^T in column-major.
void gemm_vendor(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
                 const float* B, int64_t ldb, float beta, float* C, int64_t ldc);
// cudnnConvolutionForward (+ cudnnAddTensor for the bias), BackwardData, BackwardFilter, NCHW f32,
// cross-correlation, with the fastest algorithm cuDNN's heuristics pick for the shape.
void conv2d_forward_vendor(const ConvShape& s, const float* x, const float* w, const float* bias, float* y);
void conv2d_backward_input_vendor(const ConvShape& s, const float* g, const float* w, float* dx);
void conv2d_backward_weight_vendor(const ConvShape& s, const float* x, const float* g, float* dw);

}  // namespace bulwark::cuda

#pragma once
// Direct (implicit-GEMM) convolution on the CPU for f32: no im2col buffer, the output channels
// in vector registers. See conv_direct.cpp for the method and when it is used.
#include "kernels/common/shapes.h"

namespace bulwark::cpu::direct {

// Whether the direct kernels take this convolution's forward / backward-input / backward-weight
// pass (f32 tensors at fp32, or at bf16 on a CPU with AVX512-BF16; the callers fall back to
// im2col + GEMM otherwise).
bool takes_forward(const ConvShape& s);
bool takes_backward_input(const ConvShape& s);
bool takes_backward_weight(const ConvShape& s);

void forward(const ConvShape& s, const float* x, const float* w, const float* bias, float* y, bool relu);
void backward_input(const ConvShape& s, const float* g, const float* w, float* dx);
void backward_weight(const ConvShape& s, const float* x, const float* g, float* dw);

}  // namespace bulwark::cpu::direct

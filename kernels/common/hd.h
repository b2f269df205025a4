#pragma once
// BW_HD marks scalar code shared by the CPU kernels and the CUDA kernels (compiled by nvcc, or
// by g++ under the emulator). Everything in kernels/common is header-only and branch-light.
#if defined(__CUDACC__) || defined(BULWARK_EMU)
#define BW_HD __host__ __device__
#else
#define BW_HD
#endif

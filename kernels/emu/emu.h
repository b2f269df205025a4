#pragma once
// The CUDA emulator's front door. g++ compiles a kernels/cuda/*.cu file as C++ with
//
//     g++ -std=c++20 -DBULWARK_EMU -include kernels/emu/emu.h -I kernels/emu/shim -I . -c file.cpp
//
// (CMake's bulwark_emulated_cuda() does this through a generated one-line file.cpp that
// #includes the .cu), and the kernel source then compiles and runs on the CPU, threads as fibers
// (execution.h), device memory as host memory (runtime.h), shared memory instrumented (shared.h).
//
// What this header does with CUDA's language extensions:
//   __global__, __device__, __host__, __constant__, __launch_bounds__(..), __grid_constant__
//       vanish: everything is host code. A __device__ function defined in a header must
//       therefore be `inline` (or __forceinline__, or static), as any C++ function in a header.
//   __forceinline__   becomes `inline`.
//   __align__(n)      becomes __attribute__((aligned(n))).
//   __shared__        becomes `static thread_local`: all threads of a block are fibers on one OS
//       thread and blocks run one at a time, so a function-local static is exactly "one copy
//       per block" (thread_local keeps concurrent launches from different OS threads apart).
//       Such plain __shared__ arrays compile, but are neither bounds- nor race-checked, keep the
//       previous block's contents, and do not count towards the shared-memory limit: bulwark's
//       kernels declare shared memory with BW_SHARED / BW_DYNAMIC_SHARED (launch.h), which the
//       emulator allocates per block, limits and checks. `extern __shared__` cannot be expressed
//       with a macro in C++ and does not compile here: use BW_DYNAMIC_SHARED.
//   __noinline__      is left undefined: libstdc++ spells __attribute__((__noinline__)) and a
//       macro would break it.
//   threadIdx, blockIdx, blockDim, gridDim, warpSize, dim3 and the vector types exist;
//   __CUDA_ARCH__ is not defined (the code is host code); test BULWARK_EMU instead.
//   `#pragma unroll` is ignored (compile with -Wno-unknown-pragmas).
#ifndef BULWARK_EMU
#define BULWARK_EMU 1
#endif

// Standard headers first, so the keyword macros below cannot reach into them.
#include <math.h>
#include <algorithm>
#include <array>
#include <atomic>
#include <cfloat>
#include <climits>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "kernels/emu/cuda_types.h"
#include "kernels/emu/runtime.h"
#include "kernels/emu/execution.h"
#include "kernels/emu/shared.h"
#include "kernels/emu/device.h"

#define __global__
#define __device__
#define __host__
#define __constant__
#define __grid_constant__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
#define __shared__ static thread_local

#pragma once
// Under the emulator, `#include <cuda_runtime_api.h>` resolves here: see cuda_runtime.h.
#include "kernels/emu/emu.h"

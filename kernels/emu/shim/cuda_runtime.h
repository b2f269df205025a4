#pragma once
// Under the emulator, `#include <cuda_runtime.h>` in a kernel file resolves here (the emulated
// build adds kernels/emu/shim to the include path) and gets the emulated runtime instead.
#include "kernels/emu/emu.h"

#pragma once
// What the emulator's .cpp files tell each other (not for kernel code): whether ASan is on, and
// how the scheduler drives the shared-memory checker through block starts, barriers and
// __syncwarp.
#include <cstddef>
#include <cstdint>
#include <string>
#include "kernels/emu/execution.h"

// Whether AddressSanitizer instruments this build (GCC defines __SANITIZE_ADDRESS__, clang has
// the feature test): the fibers and the shared-memory arena then tell it what they do.
#if defined(__SANITIZE_ADDRESS__)
#define BW_EMU_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define BW_EMU_ASAN 1
#endif
#endif

namespace bulwark::emu::detail {

// scheduler.cpp
const char* current_kernel_name();
// "file.cu:42" from the last two components of the path.
std::string format_site(const Site& site);

// shared.cpp
void shared_begin_launch(size_t dynamic_bytes, size_t optin_dynamic_bytes, unsigned threads_per_block);
void shared_begin_block();
// Every thread of the block passed the barrier at `site`: accesses before it are ordered
// before all accesses after it.
void shared_after_block_barrier(Site site);
// The lanes of `warp` passed __syncwarp().
void shared_after_warp_sync(unsigned warp);

}  // namespace bulwark::emu::detail

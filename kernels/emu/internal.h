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

namespace bulwark::emu::detail {

// runtime.cpp
// Records `code` as the thread's last error with a detailed message; returns code.
cudaError_t record_error(cudaError_t code, const std::string& detail);
// cudaMemcpy / cudaMemset semantics (validated, then done at once), for graph nodes as they run.
cudaError_t copy_now(void* dst, const void* src, size_t count, cudaMemcpyKind kind, const char* api);
cudaError_t set_now(void* ptr, int value, size_t count, const char* api);

// graph.cpp: stream capture.
// Whether `stream` is capturing (an active or invalidated capture).
bool stream_is_capturing(cudaStream_t stream);
// Whether work queued on `stream` now would be an implicit dependency on a capture: the legacy
// stream while a capture that is not in relaxed mode is open.
bool capture_forbids_legacy(cudaStream_t stream);
// Records a kernel launch on a capturing stream into its graph. Throws Error when the stream's
// capture is invalidated or the launch is on the legacy stream during a capture (which it
// invalidates, as a GPU does).
void capture_kernel(const KernelLaunch& launch);
// For an API that would make the host wait, or is otherwise unsafe while this thread captures
// (`stream`: the stream it waits on, or nullptr for the whole device / no stream): cudaSuccess
// when it may run, else the error (recorded), with the offending captures invalidated.
cudaError_t capture_check_unsafe(const char* api, cudaStream_t stream, bool waits_on_stream);
// cudaMemcpyAsync / cudaMemsetAsync on `stream`: *captured is set when the call was recorded
// into the stream's capture instead of run (the result is then cudaSuccess, or the capture's
// error: a pageable host buffer is unsupported and invalidates it).
cudaError_t capture_copy(void* dst, const void* src, size_t count, cudaMemcpyKind kind, cudaStream_t stream,
                         bool* captured);
cudaError_t capture_set(void* ptr, int value, size_t count, cudaStream_t stream, bool* captured);

}  // namespace bulwark::emu::detail

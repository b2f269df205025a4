#pragma once
// Fibers for the emulator: a stack per emulated CUDA thread and a context switch between them.
//
// On x86-64 the switch is 20 instructions of assembly (fiber.cpp) that save the callee-saved
// registers and the SSE/x87 control words on the old stack and pop them from the new one:
// about 30-50 ns, against about 600 ns for glibc's swapcontext, which also makes a
// rt_sigprocmask system call per switch. A 256x256x256 tiled matmul switches ~2 million times,
// so this is the difference between 0.1 s and 1.3 s. Elsewhere (or with -DBULWARK_EMU_UCONTEXT)
// the portable makecontext/swapcontext is used.
//
// Each stack is an mmap with a PROT_NONE guard page below it; a kernel that overflows its stack
// faults on the guard page and the SIGSEGV handler installed here prints which kernel and thread
// overflowed and how to raise the stack size, instead of a bare segmentation fault.
//
// Under AddressSanitizer, every switch is announced with __sanitizer_start/finish_switch_fiber,
// so ASan knows which stack is live and reports kernel memory errors with correct stacks.
#include <cstddef>

#if !defined(__x86_64__) && !defined(BULWARK_EMU_UCONTEXT)
#define BULWARK_EMU_UCONTEXT 1
#endif
#if defined(BULWARK_EMU_UCONTEXT)
#include <ucontext.h>
#endif

namespace bulwark::emu::detail {

struct FiberStack {
  unsigned char* mapping = nullptr;  // the whole mmap, guard page first
  size_t mapping_bytes = 0;
  unsigned char* base = nullptr;     // lowest usable byte
  size_t bytes = 0;                  // usable bytes
};

// A stack with at least `bytes` usable bytes (rounded up to pages) above a guard page.
FiberStack allocate_stack(size_t bytes);
void free_stack(FiberStack& stack);

struct Context {
#if defined(BULWARK_EMU_UCONTEXT)
  ucontext_t uc;
#else
  void* sp = nullptr;
#endif
};

// Make `ctx` start entry(arg) on `stack` the first time it is switched to. entry must never
// return: it ends by switching away for good.
void prepare_context(Context& ctx, const FiberStack& stack, void (*entry)(void*), void* arg);

// Save the running context in `from` and resume `to`, whose stack is `to_stack` (nullptr for the
// OS thread's own stack). `from_finished` says `from` will never be resumed (ASan frees its fake
// stack). Returns when something switches back to `from`.
void switch_context(Context& from, Context& to, const FiberStack* to_stack, bool from_finished);

// Called first thing on a new fiber (completes the ASan switch announcement).
void fiber_started();

// What the stack-overflow message names; set by the scheduler for each launch, which also makes
// sure the overflow handler is installed.
void set_overflow_context(const char* kernel_name, size_t stack_bytes);

}  // namespace bulwark::emu::detail

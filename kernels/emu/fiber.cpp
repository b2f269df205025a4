// Fibers for the emulator: stacks with guard pages, the x86-64 context switch, the portable
// ucontext fallback, the stack-overflow report, and the AddressSanitizer announcements.
// fiber.h explains why the switch is hand-written.
#include "kernels/emu/fiber.h"

#include <pthread.h>
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <new>
#include <vector>

#include "kernels/emu/execution.h"
#include "kernels/emu/internal.h"

#if defined(BW_EMU_ASAN)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

#if !defined(BULWARK_EMU_UCONTEXT)
// bulwark_emu_switch_stack(void** save_sp, void* load_sp), System V x86-64:
// push the callee-saved registers and the MXCSR / x87 control words (callee-saved by the ABI)
// on the current stack, store the stack pointer in *save_sp, load load_sp and pop the same
// frame from there; `ret` then continues wherever that context called the switch from.
// A new context's frame is built by prepare_context so that `ret` lands in the trampoline,
// which calls entry(arg) with entry in r13 and arg in r12 on a 16-byte aligned stack.
extern "C" void bulwark_emu_switch_stack(void** save_sp, void* load_sp);
extern "C" void bulwark_emu_fiber_trampoline();
asm(R"(
  .pushsection .text
  .globl bulwark_emu_switch_stack
  .hidden bulwark_emu_switch_stack
  .type bulwark_emu_switch_stack, @function
  .p2align 4
bulwark_emu_switch_stack:
  .cfi_startproc
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .cfi_endproc
  .size bulwark_emu_switch_stack, .-bulwark_emu_switch_stack

  .globl bulwark_emu_fiber_trampoline
  .hidden bulwark_emu_fiber_trampoline
  .type bulwark_emu_fiber_trampoline, @function
  .p2align 4
bulwark_emu_fiber_trampoline:
  .cfi_startproc
  .cfi_undefined rip
  movq %r12, %rdi
  callq *%r13
  ud2
  .cfi_endproc
  .size bulwark_emu_fiber_trampoline, .-bulwark_emu_fiber_trampoline
  .popsection
)");
#endif

namespace bulwark::emu::detail {
namespace {

// Below each stack: enough unmapped bytes that a frame with a large local array still lands in
// the guard instead of on the neighbouring stack.
constexpr size_t kGuardBytes = 64 * 1024;
constexpr size_t kAltStackBytes = 64 * 1024;

size_t page_bytes() {
  static const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  return page;
}
size_t round_up(size_t n, size_t to) { return (n + to - 1) / to * to; }

struct GuardRange {
  uintptr_t lo, hi;
};
// Every live guard region of the process. Static, not thread_local: the scheduler frees its
// stacks from a thread_local destructor, and statics outlive all of those.
struct GuardRegistry {
  std::mutex mutex;
  std::vector<GuardRange> ranges;
};
GuardRegistry& guards() {
  static GuardRegistry g;
  return g;
}
thread_local const char* t_kernel_name = "";
thread_local size_t t_stack_bytes = 0;
struct sigaction g_previous_segv;

// The handler runs on the alternate signal stack (the faulting stack is exhausted).
void on_segv(int sig, siginfo_t* info, void* ucontext) {
  const auto addr = reinterpret_cast<uintptr_t>(info->si_addr);
  // No lock: this thread may hold it, and a crash report only reads.
  for (const GuardRange& g : guards().ranges) {
    if (addr >= g.lo && addr < g.hi) {
      char msg[512];
      const int n = snprintf(msg, sizeof msg,
                             "bulwark CUDA emulator: thread (%u,%u,%u) of block (%u,%u,%u) in kernel '%s' "
                             "overflowed its %zu-byte fiber stack (large local arrays or deep recursion). "
                             "Raise bulwark::emu::config().stack_bytes or set BULWARK_EMU_STACK_KB.\n",
                             threadIdx.x, threadIdx.y, threadIdx.z, blockIdx.x, blockIdx.y, blockIdx.z, t_kernel_name,
                             t_stack_bytes);
      if (n > 0) (void)!write(2, msg, static_cast<size_t>(n) < sizeof msg ? static_cast<size_t>(n) : sizeof msg - 1);
      abort();
    }
  }
  // Not a fiber stack overflow: whoever handled SIGSEGV before us decides.
  if (g_previous_segv.sa_flags & SA_SIGINFO) {
    if (g_previous_segv.sa_sigaction) g_previous_segv.sa_sigaction(sig, info, ucontext);
  } else if (g_previous_segv.sa_handler == SIG_DFL) {
    signal(sig, SIG_DFL);  // returning re-executes the faulting access, now with the default action
  } else if (g_previous_segv.sa_handler != SIG_IGN) {
    g_previous_segv.sa_handler(sig);
  }
}

// A per-OS-thread alternate signal stack (unless the thread has one, e.g. from ASan).
struct AltStack {
  void* mapping = nullptr;
  AltStack() {
    stack_t current{};
    if (sigaltstack(nullptr, &current) == 0 && !(current.ss_flags & SS_DISABLE)) return;
    mapping = mmap(nullptr, kAltStackBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mapping == MAP_FAILED) {
      mapping = nullptr;
      return;
    }
    stack_t ss{};
    ss.ss_sp = mapping;
    ss.ss_size = kAltStackBytes;
    sigaltstack(&ss, nullptr);
  }
  ~AltStack() {
    if (!mapping) return;
    stack_t ss{};
    ss.ss_flags = SS_DISABLE;
    sigaltstack(&ss, nullptr);
    munmap(mapping, kAltStackBytes);
  }
};

// Puts on_segv first in line for SIGSEGV, chaining to whatever handler was there. Done at every
// launch, because test frameworks (Catch2 among them) install their own handler per test.
void prepare_overflow_report() {
  thread_local AltStack alt_stack;
  struct sigaction current{};
  sigaction(SIGSEGV, nullptr, &current);
  if ((current.sa_flags & SA_SIGINFO) && current.sa_sigaction == on_segv) return;
  struct sigaction sa{};
  sa.sa_sigaction = on_segv;
  sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGSEGV, &sa, &g_previous_segv);
}

#if defined(BW_EMU_ASAN)
// The OS thread's own stack, which ASan needs to hear about when a fiber switches back to it.
void thread_stack(const void** bottom, size_t* size) {
  thread_local const void* t_bottom = nullptr;
  thread_local size_t t_size = 0;
  if (!t_bottom) {
    pthread_attr_t attr;
    void* addr = nullptr;
    pthread_getattr_np(pthread_self(), &attr);
    pthread_attr_getstack(&attr, &addr, &t_size);
    pthread_attr_destroy(&attr);
    t_bottom = addr;
  }
  *bottom = t_bottom;
  *size = t_size;
}
#endif

#if defined(BULWARK_EMU_UCONTEXT)
// makecontext passes int arguments only: the entry and its argument travel as 32-bit halves.
void ucontext_entry(unsigned entry_hi, unsigned entry_lo, unsigned arg_hi, unsigned arg_lo) {
  auto entry = reinterpret_cast<void (*)(void*)>((static_cast<uintptr_t>(entry_hi) << 32) | entry_lo);
  auto* arg = reinterpret_cast<void*>((static_cast<uintptr_t>(arg_hi) << 32) | arg_lo);
  entry(arg);
  abort();  // entry never returns
}
#endif

}  // namespace

FiberStack allocate_stack(size_t bytes) {
  FiberStack s;
  s.bytes = round_up(bytes, page_bytes());
  const size_t guard = round_up(kGuardBytes, page_bytes());
  s.mapping_bytes = guard + s.bytes;
  void* m = mmap(nullptr, s.mapping_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (m == MAP_FAILED) throw std::bad_alloc();
  s.mapping = static_cast<unsigned char*>(m);
  s.base = s.mapping + guard;
  mprotect(s.mapping, guard, PROT_NONE);
  std::lock_guard<std::mutex> lock(guards().mutex);
  guards().ranges.push_back({reinterpret_cast<uintptr_t>(s.mapping), reinterpret_cast<uintptr_t>(s.base)});
  return s;
}

void free_stack(FiberStack& s) {
  if (!s.mapping) return;
  const auto lo = reinterpret_cast<uintptr_t>(s.mapping);
  {
    std::lock_guard<std::mutex> lock(guards().mutex);
    auto& r = guards().ranges;
    for (size_t i = 0; i < r.size(); ++i) {
      if (r[i].lo == lo) {
        r[i] = r.back();
        r.pop_back();
        break;
      }
    }
  }
  munmap(s.mapping, s.mapping_bytes);
  s = FiberStack{};
}

void set_overflow_context(const char* kernel_name, size_t stack_bytes) {
  t_kernel_name = kernel_name;
  t_stack_bytes = stack_bytes;
  prepare_overflow_report();
}

void prepare_context(Context& ctx, const FiberStack& stack, void (*entry)(void*), void* arg) {
#if defined(BW_EMU_ASAN)
  // A fiber abandoned mid-kernel (the launch failed) left its frames' redzones poisoned.
  ASAN_UNPOISON_MEMORY_REGION(stack.base, stack.bytes);
#endif
#if defined(BULWARK_EMU_UCONTEXT)
  getcontext(&ctx.uc);
  ctx.uc.uc_stack.ss_sp = stack.base;
  ctx.uc.uc_stack.ss_size = stack.bytes;
  ctx.uc.uc_link = nullptr;
  const auto e = reinterpret_cast<uintptr_t>(entry);
  const auto a = reinterpret_cast<uintptr_t>(arg);
  makecontext(&ctx.uc, reinterpret_cast<void (*)()>(ucontext_entry), 4, static_cast<unsigned>(e >> 32),
              static_cast<unsigned>(e), static_cast<unsigned>(a >> 32), static_cast<unsigned>(a));
#else
  // The frame bulwark_emu_switch_stack pops, from the top of the stack down: return address
  // (the trampoline), rbp, rbx, r12 (arg), r13 (entry), r14, r15, MXCSR + x87 control word.
  // Popping it leaves rsp 16-byte aligned at the trampoline, so entry is called correctly.
  const uintptr_t top = reinterpret_cast<uintptr_t>(stack.base + stack.bytes) & ~uintptr_t{15};
  auto* sp = reinterpret_cast<uint64_t*>(top - 16);
  *--sp = reinterpret_cast<uint64_t>(&bulwark_emu_fiber_trampoline);
  *--sp = 0;                                 // rbp
  *--sp = 0;                                 // rbx
  *--sp = reinterpret_cast<uint64_t>(arg);   // r12
  *--sp = reinterpret_cast<uint64_t>(entry); // r13
  *--sp = 0;                                 // r14
  *--sp = 0;                                 // r15
  uint32_t control[2] = {0, 0};
  asm volatile("stmxcsr %0\n\tfnstcw %1" : "=m"(control[0]), "=m"(control[1]));
  --sp;
  std::memcpy(sp, control, sizeof control);
  ctx.sp = sp;
#endif
}

void switch_context(Context& from, Context& to, const FiberStack* to_stack, bool from_finished) {
#if defined(BW_EMU_ASAN)
  const void* bottom;
  size_t size;
  if (to_stack) {
    bottom = to_stack->base;
    size = to_stack->bytes;
  } else {
    thread_stack(&bottom, &size);
  }
  void* fake_stack = nullptr;
  __sanitizer_start_switch_fiber(from_finished ? nullptr : &fake_stack, bottom, size);
#else
  (void)to_stack;
  (void)from_finished;
#endif
#if defined(BULWARK_EMU_UCONTEXT)
  swapcontext(&from.uc, &to.uc);
#else
  bulwark_emu_switch_stack(&from.sp, to.sp);
#endif
#if defined(BW_EMU_ASAN)
  __sanitizer_finish_switch_fiber(fake_stack, nullptr, nullptr);
#endif
}

void fiber_started() {
#if defined(BW_EMU_ASAN)
  __sanitizer_finish_switch_fiber(nullptr, nullptr, nullptr);
#endif
}

}  // namespace bulwark::emu::detail

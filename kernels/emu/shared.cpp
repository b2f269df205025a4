// The per-block shared-memory arena behind BW_SHARED / BW_DYNAMIC_SHARED, its limits, and the
// race and uninitialized-read checker (shared.h says what is checked and why this design).
//
// Arena. One per OS thread (blocks run one at a time): the launch's dynamic shared memory at
// offset 0, then each BW_SHARED array of the block as its declaration is first reached, 16-byte
// aligned. The static + dynamic total is checked against the GPU's limits as arrays are added.
//
// Shadow. One record per arena byte:
//   write_epoch, writer, write_sync   the barrier interval of the last write, the thread, and the
//                                     writer's warp __syncwarp count at that moment;
//   read_epoch, reader, read_sync     the same for reads, with flags for "several readers" and
//                                     "readers in several warps";
//   flags                             whether the last write was atomic, or several unordered
//                                     atomics happened.
// Epochs are a per-OS-thread counter bumped at every block start and every __syncthreads(), so
// "written in this barrier interval" is `write_epoch == epoch` and "written in this block" is
// `write_epoch >= block_epoch`; nothing needs clearing between blocks. Two accesses by threads
// t and u in the same interval are ordered only if they are lanes of the same warp and that
// warp passed a __syncwarp() in between (its count grew). The warp count is per warp, not per
// lane, so a __syncwarp(mask) with a partial mask also orders lanes outside the mask: a missed
// race in that corner, never a false one.
#include <algorithm>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "kernels/emu/emu.h"
#include "kernels/emu/internal.h"

#if defined(BW_EMU_ASAN)
#include <sanitizer/asan_interface.h>
#endif

namespace bulwark::emu::detail {
namespace {

// Three whole words, read and written as such: updating 2- and 1-byte fields and then
// reading the record back as a word stalls store forwarding, which once cost a third of the
// checker's time.
struct Shadow {
  uint64_t write = 0;  // epoch << 32 | the writer's warp sync count; epoch 0: never written
  uint64_t read = 0;   // epoch << 32 | the latest reader's warp sync count
  uint64_t who = 0;    // writer | reader << 16 | flags << 32
  bool operator==(const Shadow&) const = default;
};
constexpr uint64_t stamp(uint32_t epoch, uint32_t sync) { return uint64_t{epoch} << 32 | sync; }
constexpr uint32_t epoch_of(uint64_t stamp) { return static_cast<uint32_t>(stamp >> 32); }
constexpr uint32_t sync_of(uint64_t stamp) { return static_cast<uint32_t>(stamp); }
enum : uint8_t {
  kAtomic = 1,         // the last write was an atomic
  kAtomicMany = 2,     // atomics by several unordered threads in this interval
  kReadMany = 4,       // several unordered readers in this interval
  kReadManyWarps = 8,  // ... from more than one warp
};

struct Region {
  size_t offset, bytes, element_bytes;
  const char* name;  // nullptr: the dynamic shared memory
  Site site;
};

// Dynamic (at most the opt-in ceiling) + static (at most 48 KB) + alignment slack.
constexpr size_t kArenaBytes = kSharedPerBlockOptin + kSharedPerBlockDefault + 4096;

struct SharedState {
  std::unique_ptr<unsigned char[]> storage;
  unsigned char* arena = nullptr;  // 128-byte aligned
  std::vector<Shadow> shadow;
  size_t used = 0, dynamic_bytes = 0, static_bytes = 0, optin = 0;
  uint64_t block_serial = 0;
  uint32_t epoch = 0, block_epoch = 0;
  std::vector<uint32_t> warp_sync;
  std::vector<Region> regions;
  Site last_barrier;
  bool after_barrier = false;
};

thread_local std::unique_ptr<SharedState> t_owner;
thread_local constinit SharedState* t_state = nullptr;

size_t round_up(size_t n, size_t to) { return (n + to - 1) / to * to; }

std::string kernel() { return std::string("kernel '") + current_kernel_name() + "'"; }

std::string thread_coords(unsigned linear) {
  return "thread (" + std::to_string(linear % blockDim.x) + "," + std::to_string(linear / blockDim.x % blockDim.y) + "," +
         std::to_string(linear / (blockDim.x * blockDim.y)) + ")";
}

const Region* region_at(const SharedState& s, size_t offset) {
  for (const Region& r : s.regions)
    if (offset >= r.offset && offset < r.offset + r.bytes) return &r;
  return nullptr;
}

std::string describe_region(const Region& r) {
  if (!r.name) return "dynamic shared memory (" + std::to_string(r.bytes) + " bytes)";
  return "BW_SHARED '" + std::string(r.name) + "' (" + format_site(r.site) + ")";
}

std::string describe_byte(const SharedState& s, size_t offset) {
  const Region* r = region_at(s, offset);
  if (!r) return "shared byte " + std::to_string(offset);
  if (!r->name) return "byte " + std::to_string(offset - r->offset) + " of " + describe_region(*r);
  return "element " + std::to_string((offset - r->offset) / r->element_bytes) + " of " + describe_region(*r);
}

const char* verb(Access a) {
  switch (a) {
    case Access::read: return "reads";
    case Access::write: return "writes";
    case Access::atomic: return "atomically updates";
  }
  return "touches";
}

[[noreturn]] void report_race(const SharedState& s, size_t offset, Access access, int other, const char* other_did) {
  const std::string since = s.after_barrier ? "since the last __syncthreads() (" + format_site(s.last_barrier) + ")"
                                            : "since the block started";
  const std::string who = other >= 0 && static_cast<unsigned>(other) != current.linear
                              ? thread_coords(static_cast<unsigned>(other))
                              : std::string("another thread");
  fail(Fault::shared_race, "shared-memory race: " + describe_thread(current.linear) + " " + verb(access) + " " +
                               describe_byte(s, offset) + ", which " + who + " " + other_did + " " + since +
                               ", with no barrier in between. Separate the two accesses with __syncthreads() "
                               "(or __syncwarp() between lanes of one warp), or make both atomic.");
}

[[noreturn]] void report_uninitialized(const SharedState& s, size_t offset, Access access) {
  fail(Fault::shared_uninitialized, describe_thread(current.linear) + " " + verb(access) + " " + describe_byte(s, offset) +
                                        " before any thread of the block wrote it: shared memory is undefined "
                                        "at the start of every block.");
}

void poison_arena(SharedState& s) {
#if defined(BW_EMU_ASAN)
  ASAN_POISON_MEMORY_REGION(s.arena, kArenaBytes);
  if (s.dynamic_bytes) ASAN_UNPOISON_MEMORY_REGION(s.arena, s.dynamic_bytes);
#else
  (void)s;
#endif
}

}  // namespace

void shared_begin_launch(size_t dynamic_bytes, size_t optin_dynamic_bytes, unsigned threads_per_block) {
  if (!t_owner) {
    t_owner = std::make_unique<SharedState>();
    t_owner->storage = std::make_unique<unsigned char[]>(kArenaBytes + 128);
    const auto base = reinterpret_cast<uintptr_t>(t_owner->storage.get());
    t_owner->arena = t_owner->storage.get() + (round_up(base, 128) - base);
    t_state = t_owner.get();
  }
  SharedState& s = *t_state;
  s.dynamic_bytes = dynamic_bytes;
  s.optin = optin_dynamic_bytes;
  s.warp_sync.assign((threads_per_block + 31) / 32, 0);
}

void shared_begin_block() {
  SharedState& s = *t_state;
  ++s.block_serial;
  s.used = round_up(s.dynamic_bytes, 16);
  s.static_bytes = 0;
  s.regions.clear();
  if (s.dynamic_bytes) s.regions.push_back(Region{0, s.dynamic_bytes, 1, nullptr, Site{}});
  if (s.shadow.size() < s.used) s.shadow.resize(s.used);
  if (s.epoch > 0xF0000000u) {  // renumber before the 32-bit counter could wrap
    std::fill(s.shadow.begin(), s.shadow.end(), Shadow{});
    s.epoch = 0;
  }
  s.block_epoch = ++s.epoch;
  std::fill(s.warp_sync.begin(), s.warp_sync.end(), 0u);
  s.after_barrier = false;
  poison_arena(s);
}

void shared_after_block_barrier(Site site) {
  SharedState& s = *t_state;
  ++s.epoch;
  s.last_barrier = site;
  s.after_barrier = true;
}

void shared_after_warp_sync(unsigned warp) { ++t_state->warp_sync[warp]; }

unsigned char* shared_static_allocate(SharedSite& site, size_t bytes, size_t align, size_t element_bytes,
                                      const char* name, Site where) {
  if (!current.in_kernel || t_state == nullptr) shared_outside_kernel();
  SharedState& s = *t_state;
  if (site.block_serial == s.block_serial) return site.ptr;
  const size_t static_total = s.static_bytes + bytes;
  const std::string decl = "BW_SHARED '" + std::string(name) + "' (" + std::to_string(bytes) + " bytes, " +
                           format_site(where) + ")";
  if (static_total > kSharedPerBlockDefault)
    fail(Fault::shared_memory_limit,
         kernel() + " declares " + std::to_string(static_total) + " bytes of static shared memory once " + decl +
             " is added; static shared memory is limited to 49152 bytes (48 KB). Larger tiles need dynamic shared "
             "memory (BW_DYNAMIC_SHARED) and cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes).");
  if (s.optin == 0 && static_total + s.dynamic_bytes > kSharedPerBlockDefault)
    fail(Fault::shared_memory_limit,
         kernel() + " uses " + std::to_string(static_total) + " bytes of static shared memory (with " + decl + ") plus " +
             std::to_string(s.dynamic_bytes) + " bytes of dynamic: " + std::to_string(static_total + s.dynamic_bytes) +
             " bytes exceed the 49152 bytes (48 KB) a block gets without the cudaFuncSetAttribute opt-in.");
  if (s.optin != 0 && static_total + s.optin > kSharedPerBlockOptin)
    fail(Fault::shared_memory_limit,
         kernel() + " uses " + std::to_string(static_total) + " bytes of static shared memory (with " + decl + ") plus " +
             std::to_string(s.optin) + " bytes of opted-in dynamic shared memory: more than the 232448 bytes (227 KB) "
             "a block can have.");
  const size_t offset = round_up(s.used, align);
  if (offset + bytes > kArenaBytes)
    fail(Fault::shared_memory_limit, kernel() + ": the shared-memory arena is full at " + decl);
  s.used = offset + bytes;
  s.static_bytes = static_total;
  if (s.shadow.size() < s.used) s.shadow.resize(s.used);
  s.regions.push_back(Region{offset, bytes, element_bytes, name, where});
#if defined(BW_EMU_ASAN)
  ASAN_UNPOISON_MEMORY_REGION(s.arena + offset, bytes);
#endif
  site.block_serial = s.block_serial;
  site.ptr = s.arena + offset;
  return site.ptr;
}

unsigned char* dynamic_shared_base() {
  if (!current.in_kernel || t_state == nullptr) shared_outside_kernel();
  return t_state->arena;
}

size_t dynamic_shared_bytes() { return t_state ? t_state->dynamic_bytes : 0; }

void shared_region_of(const void* p, const unsigned char** lo, const unsigned char** hi) {
  if (!current.in_kernel || t_state == nullptr) shared_outside_kernel();
  const SharedState& s = *t_state;
  const Region* r = region_at(s, static_cast<size_t>(static_cast<const unsigned char*>(p) - s.arena));
  if (!r) fail(Fault::shared_out_of_bounds, describe_thread(current.linear) + " takes the address of shared memory outside every allocation");
  *lo = s.arena + r->offset;
  *hi = s.arena + r->offset + r->bytes;
}

void shared_outside_kernel() {
  fail(Fault::launch_config, "shared memory (BW_SHARED / BW_DYNAMIC_SHARED) used outside a kernel launch");
}

void shared_pointer_out_of_bounds(const void* p, size_t bytes, const void* lo, const void* hi) {
  const SharedState& s = *t_state;
  const auto* q = static_cast<const unsigned char*>(p);
  const auto* l = static_cast<const unsigned char*>(lo);
  const auto* h = static_cast<const unsigned char*>(hi);
  const Region* r = l < h ? region_at(s, static_cast<size_t>(l - s.arena)) : nullptr;
  if (!r && l == h && l == s.arena)
    fail(Fault::shared_out_of_bounds, describe_thread(current.linear) +
                                          " uses dynamic shared memory, but the kernel was launched with 0 bytes of it "
                                          "(the shared_bytes argument of BW_LAUNCH)");
  const long long at = static_cast<long long>(q - l);
  fail(Fault::shared_out_of_bounds,
       describe_thread(current.linear) + " accesses " + std::to_string(bytes) + " bytes at byte offset " +
           std::to_string(at) + " of " + (r ? describe_region(*r) : std::string("shared memory")) + ", outside its " +
           std::to_string(h - l) + " bytes");
}

void shared_index_out_of_bounds(const void* base, long long index, size_t extent) {
  const SharedState& s = *t_state;
  const Region* r = region_at(s, static_cast<size_t>(static_cast<const unsigned char*>(base) - s.arena));
  fail(Fault::shared_out_of_bounds, describe_thread(current.linear) + " indexes " +
                                        (r ? describe_region(*r) : std::string("a BW_SHARED array")) + " with " +
                                        std::to_string(index) + ", outside [0, " + std::to_string(extent) + ")");
}

void note_access(Access access, const void* p, size_t bytes) {
  SharedState& s = *t_state;
  const size_t first = static_cast<size_t>(static_cast<const unsigned char*>(p) - s.arena);
  const unsigned t = current.linear;
  const unsigned warp = t >> 5;
  const uint32_t sync = s.warp_sync[warp];
  const uint32_t epoch = s.epoch;
  // Whether an earlier access by thread u in this interval (u's warp sync count then: u_sync) is
  // ordered before this one: only through a __syncwarp() of the same warp.
  auto ordered = [&](unsigned u, uint32_t u_sync) { return (u >> 5) == warp && sync > u_sync; };
  // The bytes of one access nearly always share one history, and the update depends only on
  // that history: work out the first byte, then copy its result to every byte that started
  // out identical to it.
  const Shadow before = s.shadow[first];
  Shadow after;
  for (size_t i = first; i < first + bytes; ++i) {
    if (i != first && s.shadow[i] == before) {
      s.shadow[i] = after;  // from registers: reloading shadow[first] would stall store forwarding
      continue;
    }
    const Shadow old = s.shadow[i];
    const unsigned writer = old.who & 0xffff, reader = (old.who >> 16) & 0xffff;
    uint8_t flags = static_cast<uint8_t>(old.who >> 32);
    const bool written_now = epoch_of(old.write) == epoch, read_now = epoch_of(old.read) == epoch;

    if (access != Access::write && epoch_of(old.write) < s.block_epoch) report_uninitialized(s, i, access);
    if (written_now) {
      const bool conflict = (flags & kAtomicMany)
                                ? access != Access::atomic
                                : writer != t && !ordered(writer, sync_of(old.write)) &&
                                      !(access == Access::atomic && (flags & kAtomic));
      if (conflict) report_race(s, i, access, static_cast<int>(writer), (flags & kAtomic) ? "atomically updated" : "wrote");
    }
    if (access != Access::read && read_now) {
      const bool others = reader != t || (flags & kReadMany);
      const bool all_ordered = !(flags & kReadManyWarps) && ordered(reader, sync_of(old.read));
      if (others && !all_ordered) report_race(s, i, access, static_cast<int>(reader), "read");
    }

    Shadow sh = old;
    unsigned new_writer = writer, new_reader = reader;
    switch (access) {
      case Access::read:
        if (!read_now || (!(flags & kReadManyWarps) && ordered(reader, sync_of(old.read)))) {
          // The first read of the interval, or every earlier one is ordered before this one.
          new_reader = t;
          flags &= static_cast<uint8_t>(~(kReadMany | kReadManyWarps));
        } else if (reader != t || (flags & kReadMany)) {
          flags |= kReadMany;
          if ((reader >> 5) != warp) flags |= kReadManyWarps;
        }
        sh.read = stamp(epoch, sync);
        break;
      case Access::write:
        new_writer = t;
        flags &= static_cast<uint8_t>(~(kAtomic | kAtomicMany));
        sh.write = stamp(epoch, sync);
        break;
      case Access::atomic:
        if (written_now && (flags & kAtomic)) {
          if (writer != t && !ordered(writer, sync_of(old.write))) flags |= kAtomicMany;
        } else {
          flags &= static_cast<uint8_t>(~kAtomicMany);
        }
        new_writer = t;
        flags |= kAtomic;
        sh.write = stamp(epoch, sync);
        break;
    }
    sh.who = new_writer | uint64_t{new_reader} << 16 | uint64_t{flags} << 32;
    s.shadow[i] = sh;
    if (i == first) after = sh;
  }
}

}  // namespace bulwark::emu::detail

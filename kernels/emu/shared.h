#pragma once
// Instrumented shared memory: what BW_SHARED / BW_DYNAMIC_SHARED (launch.h) become under the
// emulator, so that every shared-memory access of a kernel is bounds-checked and race-checked.
//
// Why instrument instead of comparing two schedules: a race between two threads of a block is
// an unordered pair of accesses to one byte, at least one a write, with no barrier between
// them. Recording, per byte, who last wrote and read it and in which barrier interval finds
// every such pair on the first run, whatever the schedule happened to be, and names the byte,
// the two threads and the barrier interval. Re-running a launch under another schedule and
// comparing outputs needs a snapshot of all device memory the kernel might write, and only
// finds races that happen to change the output. (The Schedule switch in execution.h offers that
// second, weaker check for what this one cannot see: plain `__shared__` arrays and global memory.)
//
// The pieces, all views onto the block's shared-memory arena (shared.cpp):
//   SharedArray<float[32][33]>  a BW_SHARED array: t[i] is a row view, t[i][j] an element;
//                               every index is checked against its own dimension.
//   SharedPtr<float>            a pointer into shared memory (dynamic shared memory, decayed
//                               arrays, &t[i][j]); dereferences are checked against the
//                               allocation it points into. BW_SHARED_PTR(T) in device-function
//                               parameters keeps accesses inside helpers checked.
//   SharedRef<float>            one element. Reading converts to float (a checked read);
//                               assigning writes (a checked write); += reads then writes.
// Element proxies live in a small per-thread ring and are handed out by reference with their
// copy constructor deleted, so `auto x = t[i];` does not compile: on a GPU it would be a copy of
// the value, and a proxy that silently re-read shared memory later would not be. Write
// `float x = t[i];`. Taking `&t[i]` yields a SharedPtr; `static_cast<float*>(p)` is the
// (unchecked) way out to a raw pointer. Two consequences of views not being arrays: `sizeof(t)`
// is the size of the view, not of the array (use the dimension constants), and a reference
// `auto& r = t[i]` is only valid until the thread's next 64 element accesses recycle its slot.
//
// The checks (shared.cpp) run when Config::check_shared is on (the default):
//   race: thread A touches byte b after thread B wrote it (or A writes b after B read it) since
//         the last __syncthreads(), unless both are lanes of one warp separated by __syncwarp()
//         or both accesses are atomics;
//   uninitialized read: a read of a byte that no thread of this block has written;
// and always: an index outside its array, a dereference outside its allocation.
#include <compare>
#include <cstddef>
#include <cstdint>
#include <new>
#include <type_traits>
#include "kernels/emu/execution.h"

namespace bulwark::emu {

template <class T> class SharedRef;
template <class T> class SharedPtr;
template <class A> class SharedArray;

namespace detail {

enum class Access : uint8_t { read, write, atomic };

// Race and uninitialized-read check of one access (shared.cpp). Throws Error.
void note_access(Access access, const void* p, size_t bytes);
inline void on_access(Access access, const void* p, size_t bytes) {
  if (current.check_shared) note_access(access, p, bytes);
}

[[noreturn]] void shared_pointer_out_of_bounds(const void* p, size_t bytes, const void* lo, const void* hi);
[[noreturn]] void shared_index_out_of_bounds(const void* base, long long index, size_t extent);
[[noreturn]] void shared_outside_kernel();

// One BW_SHARED declaration: which block it was last allocated for, and where.
struct SharedSite {
  uint64_t block_serial = 0;
  unsigned char* ptr = nullptr;
};
// The storage of a BW_SHARED array in the current block: the first thread to reach the
// declaration allocates it from the arena (checking the shared-memory limit), the others get
// the same bytes.
unsigned char* shared_static_allocate(SharedSite& site, size_t bytes, size_t align, size_t element_bytes,
                                      const char* name, Site where);
unsigned char* dynamic_shared_base();
size_t dynamic_shared_bytes();
// The allocation (BW_SHARED array or the dynamic region) containing p, for &element.
void shared_region_of(const void* p, const unsigned char** lo, const unsigned char** hi);

template <class T>
SharedRef<T>& make_ref(T* p) {
  static_assert(sizeof(SharedRef<T>) == sizeof(ProxySlot) && alignof(SharedRef<T>) <= alignof(ProxySlot));
  if (current.proxy_ring == nullptr) shared_outside_kernel();
  ProxySlot& slot = current.proxy_ring[current.proxy_pos++ % kProxySlots];
  return *::new (static_cast<void*>(&slot)) SharedRef<T>(p);
}

template <class T>
T* atomic_address(const SharedPtr<T>& p);

}  // namespace detail

template <class T>
class SharedRef {
 public:
  explicit SharedRef(T* p) : p_(p) {}
  SharedRef(const SharedRef&) = delete;  // see the header comment: `auto x = t[i]` must not compile

  operator T() const {
    detail::on_access(detail::Access::read, p_, sizeof(T));
    return *p_;
  }
  SharedRef& operator=(const T& value) {
    detail::on_access(detail::Access::write, p_, sizeof(T));
    *p_ = value;
    return *this;
  }
  SharedRef& operator=(const SharedRef& other) { return *this = static_cast<T>(other); }

  template <class U> SharedRef& operator+=(const U& v) { return *this = static_cast<T>(static_cast<T>(*this) + v); }
  template <class U> SharedRef& operator-=(const U& v) { return *this = static_cast<T>(static_cast<T>(*this) - v); }
  template <class U> SharedRef& operator*=(const U& v) { return *this = static_cast<T>(static_cast<T>(*this) * v); }
  template <class U> SharedRef& operator/=(const U& v) { return *this = static_cast<T>(static_cast<T>(*this) / v); }
  template <class U> SharedRef& operator%=(const U& v) { return *this = static_cast<T>(static_cast<T>(*this) % v); }
  template <class U> SharedRef& operator&=(const U& v) { return *this = static_cast<T>(static_cast<T>(*this) & v); }
  template <class U> SharedRef& operator|=(const U& v) { return *this = static_cast<T>(static_cast<T>(*this) | v); }
  template <class U> SharedRef& operator^=(const U& v) { return *this = static_cast<T>(static_cast<T>(*this) ^ v); }
  template <class U> SharedRef& operator<<=(const U& v) { return *this = static_cast<T>(static_cast<T>(*this) << v); }
  template <class U> SharedRef& operator>>=(const U& v) { return *this = static_cast<T>(static_cast<T>(*this) >> v); }
  SharedRef& operator++() { return *this += 1; }
  SharedRef& operator--() { return *this -= 1; }
  T operator++(int) {
    const T old = *this;
    *this = static_cast<T>(old + 1);
    return old;
  }
  T operator--(int) {
    const T old = *this;
    *this = static_cast<T>(old - 1);
    return old;
  }

  SharedPtr<T> operator&() const {
    const unsigned char *lo, *hi;
    detail::shared_region_of(p_, &lo, &hi);
    return SharedPtr<T>(p_, lo, hi);
  }

 private:
  T* p_;
};

template <class T>
class SharedPtr {
 public:
  using value_type = T;
  SharedPtr() = default;
  SharedPtr(std::nullptr_t) {}
  SharedPtr(T* p, const unsigned char* lo, const unsigned char* hi) : p_(p), lo_(lo), hi_(hi) {}
  template <class U>
    requires std::is_convertible_v<U*, T*>
  SharedPtr(const SharedPtr<U>& other) : p_(other.p_), lo_(other.lo_), hi_(other.hi_) {}

  SharedRef<T>& operator*() const { return (*this)[0]; }
  SharedRef<T>& operator[](ptrdiff_t i) const {
    T* q = p_ + i;
    check(q);
    return detail::make_ref(q);
  }

  SharedPtr operator+(ptrdiff_t k) const { return SharedPtr(p_ + k, lo_, hi_); }
  SharedPtr operator-(ptrdiff_t k) const { return SharedPtr(p_ - k, lo_, hi_); }
  friend SharedPtr operator+(ptrdiff_t k, const SharedPtr& p) { return p + k; }
  ptrdiff_t operator-(const SharedPtr& o) const { return p_ - o.p_; }
  SharedPtr& operator+=(ptrdiff_t k) { p_ += k; return *this; }
  SharedPtr& operator-=(ptrdiff_t k) { p_ -= k; return *this; }
  SharedPtr& operator++() { ++p_; return *this; }
  SharedPtr& operator--() { --p_; return *this; }
  SharedPtr operator++(int) { SharedPtr old = *this; ++p_; return old; }
  SharedPtr operator--(int) { SharedPtr old = *this; --p_; return old; }
  bool operator==(const SharedPtr& o) const { return p_ == o.p_; }
  std::strong_ordering operator<=>(const SharedPtr& o) const { return p_ <=> o.p_; }
  explicit operator bool() const { return p_ != nullptr; }
  // The unchecked way out: static_cast<T*>(p), which also compiles under nvcc where p is a T*.
  explicit operator T*() const { return p_; }

  // A view of the same bytes as another type (BW_SHARED_CAST), keeping the allocation's bounds.
  template <class U>
  SharedPtr<U> cast() const { return SharedPtr<U>(reinterpret_cast<U*>(p_), lo_, hi_); }

 private:
  template <class> friend class SharedPtr;
  friend T* detail::atomic_address<T>(const SharedPtr<T>& p);

  void check(const T* q) const {
    const auto a = reinterpret_cast<uintptr_t>(q);
    if (a < reinterpret_cast<uintptr_t>(lo_) || a + sizeof(T) > reinterpret_cast<uintptr_t>(hi_))
      detail::shared_pointer_out_of_bounds(q, sizeof(T), lo_, hi_);
  }

  T* p_ = nullptr;
  const unsigned char* lo_ = nullptr;
  const unsigned char* hi_ = nullptr;
};

// A BW_SHARED array of N elements of E (E itself an array type for the inner dimensions).
template <class E, size_t N>
class SharedArray<E[N]> {
 public:
  SharedArray(E* p, const unsigned char* lo, const unsigned char* hi) : p_(p), lo_(lo), hi_(hi) {}

  template <class I>
    requires std::is_integral_v<I> || std::is_enum_v<I>
  decltype(auto) operator[](I i) const {
    if constexpr (std::is_signed_v<I>) {
      if (i < 0) detail::shared_index_out_of_bounds(p_, static_cast<long long>(i), N);
    }
    if (static_cast<unsigned long long>(i) >= N) detail::shared_index_out_of_bounds(p_, static_cast<long long>(i), N);
    if constexpr (std::is_array_v<E>) {
      return SharedArray<E>(p_[i], lo_, hi_);
    } else {
      return detail::make_ref(p_ + i);
    }
  }

  // Array-to-pointer decay, as when a __shared__ array is passed to a device function.
  operator SharedPtr<E>() const
    requires(!std::is_array_v<E>)
  {
    return SharedPtr<E>(p_, lo_, hi_);
  }
  SharedPtr<E> operator+(ptrdiff_t k) const
    requires(!std::is_array_v<E>)
  {
    return SharedPtr<E>(p_ + k, lo_, hi_);
  }
  static constexpr size_t size() { return N; }

 private:
  E* p_;
  const unsigned char* lo_;
  const unsigned char* hi_;
};

namespace detail {

template <class T>
T* atomic_address(const SharedPtr<T>& p) {
  p.check(p.p_);
  on_access(Access::atomic, p.p_, sizeof(T));
  return p.p_;
}

// `min_align`: BW_SHARED_ALIGNED's alignment (the default 16 is what the emulator always gives).
template <class A, size_t min_align = 16>
SharedArray<A> shared_static(SharedSite& site, const char* name, Site where) {
  static_assert(std::is_array_v<A> && std::extent_v<A> > 0, "BW_SHARED needs array dimensions, e.g. [32][33]");
  using Element = std::remove_all_extents_t<A>;
  constexpr size_t align = alignof(A) > min_align ? alignof(A) : min_align;
  unsigned char* p = shared_static_allocate(site, sizeof(A), align, sizeof(Element), name, where);
  return SharedArray<A>(reinterpret_cast<std::remove_extent_t<A>*>(p), p, p + sizeof(A));
}

template <class T>
SharedPtr<T> dynamic_shared() {
  unsigned char* base = dynamic_shared_base();
  return SharedPtr<T>(reinterpret_cast<T*>(base), base, base + dynamic_shared_bytes());
}

}  // namespace detail
}  // namespace bulwark::emu

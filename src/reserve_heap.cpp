// The reserve for the server's own allocations, and the operator new and delete that fall
// back to it; see reserve_heap.h. These replace the global ones in every binary this file is
// linked into (the plugin exports them, so the libstdc++ it loads allocates through them
// too): malloc first, the reserve only when malloc fails. Under a sanitizer the runtime's
// own operators, preloaded, come first, and these are not called.
#include "loopdio/reserve_heap.h"

#include <sys/mman.h>

#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <memory_resource>
#include <mutex>
#include <new>

namespace loopdio {
namespace {

// In front of every block handed out: where the pool's block starts, and its size.
struct Header {
  void* block;
  std::size_t total;
};

class Reserve {
 public:
  Reserve(void* base, std::size_t size)
      : base_(static_cast<char*>(base)), size_(size),
        arena_(base, size, std::pmr::null_memory_resource()), pool_(options(), &arena_) {}

  void* allocate(std::size_t size, std::size_t align) noexcept {
    if (align < alignof(Header)) align = alignof(Header);
    if (size > size_) return nullptr;
    const std::size_t total = size + sizeof(Header) + align;
    void* block = nullptr;
    try {
      block = pool_.allocate(total, alignof(std::max_align_t));
    } catch (...) {  // full: std::bad_alloc from the null upstream
      return nullptr;
    }
    auto user = reinterpret_cast<std::uintptr_t>(block) + sizeof(Header);
    user = (user + align - 1) & ~(std::uintptr_t{align} - 1);
    auto* h = reinterpret_cast<Header*>(user - sizeof(Header));
    h->block = block;
    h->total = total;
    const std::uint64_t used = used_.fetch_add(total, std::memory_order_relaxed) + total;
    std::uint64_t peak = peak_.load(std::memory_order_relaxed);
    while (used > peak && !peak_.compare_exchange_weak(peak, used, std::memory_order_relaxed)) {
    }
    return reinterpret_cast<void*>(user);
  }

  bool owns(const void* p) const noexcept {
    auto* c = static_cast<const char*>(p);
    return c >= base_ && c < base_ + size_;
  }

  void free(void* p) noexcept {
    auto* h = reinterpret_cast<Header*>(static_cast<char*>(p) - sizeof(Header));
    const std::size_t total = h->total;
    pool_.deallocate(h->block, total, alignof(std::max_align_t));
    used_.fetch_sub(total, std::memory_order_relaxed);
  }

  ReserveStats stats() const noexcept {
    ReserveStats s;
    s.size = size_;
    s.used = used_.load(std::memory_order_relaxed);
    s.peak = peak_.load(std::memory_order_relaxed);
    return s;
  }

 private:
  static std::pmr::pool_options options() {
    std::pmr::pool_options o;
    o.largest_required_pool_block = 1u << 20;
    return o;
  }

  char* base_;
  std::size_t size_;
  std::pmr::monotonic_buffer_resource arena_;  // the mapping, carved once
  std::pmr::synchronized_pool_resource pool_;  // its blocks, reused
  std::atomic<std::uint64_t> used_{0};
  std::atomic<std::uint64_t> peak_{0};
};

// Never destroyed: blocks may be freed by threads that outlive static destruction.
alignas(Reserve) unsigned char g_storage[sizeof(Reserve)];
std::atomic<Reserve*> g_reserve{nullptr};
std::atomic<std::uint64_t> g_fallbacks{0};
std::atomic<std::uint64_t> g_refused{0};

void* fallback(std::size_t size, std::size_t align) noexcept {
  void* p = reserve_allocate(size, align);
  (p ? g_fallbacks : g_refused).fetch_add(1, std::memory_order_relaxed);
  return p;
}

void* allocate(std::size_t size, std::size_t align) noexcept {
  if (size == 0) size = 1;
  void* p = nullptr;
  if (align <= alignof(std::max_align_t)) {
    p = std::malloc(size);
  } else if (::posix_memalign(&p, align, size) != 0) {
    p = nullptr;
  }
  return p ? p : fallback(size, align);
}

void release(void* p) noexcept {
  if (p && !reserve_free(p)) std::free(p);
}

void* allocate_or_throw(std::size_t size, std::size_t align) {
  if (void* p = allocate(size, align)) return p;
  throw std::bad_alloc();
}

}  // namespace

bool arm_reserve_heap(std::size_t size) noexcept {
  static std::mutex mu;
  std::lock_guard lock(mu);
  if (g_reserve.load(std::memory_order_acquire)) return true;
  // Writable and private, so that RLIMIT_DATA counts it from now on; untouched, so that it
  // is not resident until used.
  void* base = ::mmap(nullptr, size, PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (base == MAP_FAILED) return false;
  g_reserve.store(new (g_storage) Reserve(base, size), std::memory_order_release);
  return true;
}

ReserveStats reserve_heap_stats() noexcept {
  ReserveStats s;
  if (Reserve* r = g_reserve.load(std::memory_order_acquire)) s = r->stats();
  s.fallbacks = g_fallbacks.load(std::memory_order_relaxed);
  s.refused = g_refused.load(std::memory_order_relaxed);
  return s;
}

void* reserve_allocate(std::size_t size, std::size_t align) noexcept {
  Reserve* r = g_reserve.load(std::memory_order_acquire);
  return r ? r->allocate(size, align) : nullptr;
}

bool reserve_free(void* p) noexcept {
  Reserve* r = g_reserve.load(std::memory_order_acquire);
  if (!r || !r->owns(p)) return false;
  r->free(p);
  return true;
}

}  // namespace loopdio

// ---- The replaceable global allocation functions ----

namespace {
constexpr std::size_t kPlain = alignof(std::max_align_t);
std::size_t al(std::align_val_t a) { return static_cast<std::size_t>(a); }
}  // namespace

void* operator new(std::size_t n) { return loopdio::allocate_or_throw(n, kPlain); }
void* operator new[](std::size_t n) { return loopdio::allocate_or_throw(n, kPlain); }
void* operator new(std::size_t n, const std::nothrow_t&) noexcept {
  return loopdio::allocate(n, kPlain);
}
void* operator new[](std::size_t n, const std::nothrow_t&) noexcept {
  return loopdio::allocate(n, kPlain);
}
void* operator new(std::size_t n, std::align_val_t a) {
  return loopdio::allocate_or_throw(n, al(a));
}
void* operator new[](std::size_t n, std::align_val_t a) {
  return loopdio::allocate_or_throw(n, al(a));
}
void* operator new(std::size_t n, std::align_val_t a, const std::nothrow_t&) noexcept {
  return loopdio::allocate(n, al(a));
}
void* operator new[](std::size_t n, std::align_val_t a, const std::nothrow_t&) noexcept {
  return loopdio::allocate(n, al(a));
}

void operator delete(void* p) noexcept { loopdio::release(p); }
void operator delete[](void* p) noexcept { loopdio::release(p); }
void operator delete(void* p, std::size_t) noexcept { loopdio::release(p); }
void operator delete[](void* p, std::size_t) noexcept { loopdio::release(p); }
void operator delete(void* p, const std::nothrow_t&) noexcept { loopdio::release(p); }
void operator delete[](void* p, const std::nothrow_t&) noexcept { loopdio::release(p); }
void operator delete(void* p, std::align_val_t) noexcept { loopdio::release(p); }
void operator delete[](void* p, std::align_val_t) noexcept { loopdio::release(p); }
void operator delete(void* p, std::size_t, std::align_val_t) noexcept { loopdio::release(p); }
void operator delete[](void* p, std::size_t, std::align_val_t) noexcept {
  loopdio::release(p);
}
void operator delete(void* p, std::align_val_t, const std::nothrow_t&) noexcept {
  loopdio::release(p);
}
void operator delete[](void* p, std::align_val_t, const std::nothrow_t&) noexcept {
  loopdio::release(p);
}

// Memory kept apart for the server's own work once clients have filled memory-max.
// nbdkit allocates every request's buffer with malloc, before any plugin sees the request,
// and memory-max (RLIMIT_DATA) stops those allocations with ENOMEM; but once clients' buffers
// fill it, every other allocation of the process fails with them: a control command's answer
// (`metrics` answered std::bad_alloc), a newcomer's export. loopdio's C++ allocations
// (operator new, for the plugin and the libstdc++ it loads) therefore fall back, when malloc
// fails, to a reserve mapped when the limit is applied: counted inside memory-max from the
// start (so no client can take it), resident only as it is used. Blocks of up to 1 MiB
// freed there are reused; larger ones are not, so the reserve serves small work (answers,
// per-connection state), not bulk.
#pragma once

#include <cstddef>
#include <cstdint>

namespace loopdio {

inline constexpr std::size_t kReserveHeap = 32u << 20;

struct ReserveStats {
  std::uint64_t size = 0;       // mapped (0: none)
  std::uint64_t used = 0;       // bytes of live blocks taken from it
  std::uint64_t peak = 0;
  std::uint64_t fallbacks = 0;  // allocations malloc refused that it served
  std::uint64_t refused = 0;    // ... that it could not serve either
};

// Maps `size` bytes as the reserve (once; later calls do nothing). False, with errno, when
// the mapping fails.
bool arm_reserve_heap(std::size_t size = kReserveHeap) noexcept;
ReserveStats reserve_heap_stats() noexcept;

// The fallback itself (what operator new uses): a block of `size` bytes aligned to `align`
// (a power of two) from the reserve, or nullptr when it is not armed or is full.
void* reserve_allocate(std::size_t size, std::size_t align) noexcept;
// Whether `p` came from reserve_allocate; if so, gives it back.
bool reserve_free(void* p) noexcept;

}  // namespace loopdio

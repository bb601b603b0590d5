// Alignment arithmetic for direct I/O: every offset, length and buffer address handed to
// the kernel under O_DIRECT must be a multiple of the backing's alignment, always a power
// of two. These helpers are constexpr so the unit tests can loop over every power of two.
#pragma once

#include <cstdint>
#include <type_traits>

namespace loopdio {

template <typename T>
constexpr bool is_power_of_2(T v) {
  static_assert(std::is_unsigned_v<T>);
  return v != 0 && (v & (v - 1)) == 0;
}

// round_down(1000, 512) == 512, round_down(1024, 512) == 1024. `a` must be a power of two.
template <typename T>
constexpr T round_down(T v, T a) {
  return v & ~(a - 1);
}

// round_up(1000, 512) == 1024, round_up(1024, 512) == 1024. `a` must be a power of two and
// `v + a - 1` must not overflow T.
template <typename T>
constexpr T round_up(T v, T a) {
  return (v + a - 1) & ~(a - 1);
}

template <typename T>
constexpr bool is_aligned(T v, T a) {
  return (v & (a - 1)) == 0;
}

inline bool is_aligned_ptr(const void* p, std::uint64_t a) {
  return is_aligned(static_cast<std::uint64_t>(reinterpret_cast<std::uintptr_t>(p)), a);
}

}  // namespace loopdio

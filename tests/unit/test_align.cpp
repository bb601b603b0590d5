// Alignment arithmetic, checked over every power of two a 64-bit value can hold.
#include <gtest/gtest.h>

#include "loopdio/align.h"

using namespace loopdio;

TEST(Align, PowersOfTwo) {
  EXPECT_FALSE(is_power_of_2(0u));
  for (unsigned i = 0; i < 64; ++i) {
    std::uint64_t p = std::uint64_t{1} << i;
    EXPECT_TRUE(is_power_of_2(p)) << p;
    if (i > 1) {
      EXPECT_FALSE(is_power_of_2(p + 1)) << p;
      EXPECT_FALSE(is_power_of_2(p - 1)) << p;
      EXPECT_FALSE(is_power_of_2(p | 1u)) << p;
    }
  }
}

TEST(Align, RoundingOverEveryPowerOfTwo) {
  for (unsigned i = 0; i < 63; ++i) {
    const std::uint64_t a = std::uint64_t{1} << i;
    for (std::uint64_t k : {std::uint64_t{0}, std::uint64_t{1}, std::uint64_t{3}, std::uint64_t{1000}}) {
      if (k > (std::uint64_t{1} << (62 - i))) continue;
      const std::uint64_t v = k * a;  // aligned value
      EXPECT_EQ(round_down(v, a), v);
      EXPECT_EQ(round_up(v, a), v);
      EXPECT_TRUE(is_aligned(v, a));
      if (a > 1) {
        EXPECT_EQ(round_down(v + 1, a), v) << "a=" << a << " v=" << v;
        EXPECT_EQ(round_up(v + 1, a), v + a) << "a=" << a << " v=" << v;
        EXPECT_EQ(round_down(v + a - 1, a), v);
        EXPECT_EQ(round_up(v + a - 1, a), v + a);
        EXPECT_FALSE(is_aligned(v + 1, a));
        EXPECT_FALSE(is_aligned(v + a / 2 + (a == 2 ? 0 : 1), a));
      }
    }
  }
}

TEST(Align, WorkedExamples) {
  static_assert(round_down(1000u, 512u) == 512u);
  static_assert(round_up(1000u, 512u) == 1024u);
  static_assert(round_up(1024u, 512u) == 1024u);
  static_assert(round_up(0u, 4096u) == 0u);
  static_assert(is_aligned(8192u, 4096u) && !is_aligned(8193u, 4096u));
  alignas(4096) char buf[8192];
  EXPECT_TRUE(is_aligned_ptr(buf, 4096));
  EXPECT_FALSE(is_aligned_ptr(buf + 16, 512));
  EXPECT_TRUE(is_aligned_ptr(buf + 16, 16));
}

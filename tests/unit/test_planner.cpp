// The request planner: which requests go straight from the client's buffer, which through a
// bounce buffer, which blocks a write must read first, and which lock it takes.
#include <gtest/gtest.h>

#include "loopdio/aligned_io.h"

using namespace loopdio;

namespace {

IoMode direct_mode(std::uint32_t a, std::uint32_t mem) { return {3, true, a, mem}; }

alignas(65536) char g_buf[4 * 65536];

}  // namespace

TEST(Planner, AlignedReadGoesStraightToTheClientBuffer) {
  for (std::uint32_t a = 512; a <= 65536; a *= 2) {
    ReadPlan p = plan_read(direct_mode(a, a), g_buf, 2 * a, 3 * a);
    EXPECT_FALSE(p.bounce) << a;
    EXPECT_EQ(p.io, (Extent{3ull * a, 5ull * a}));
  }
}

TEST(Planner, UnalignedBufferBouncesWithoutWideningTheRange) {
  for (std::uint32_t a = 512; a <= 65536; a *= 2) {
    ReadPlan p = plan_read(direct_mode(a, 512), g_buf + 16, a, a);
    EXPECT_TRUE(p.bounce);
    EXPECT_EQ(p.io, (Extent{a, 2ull * a}));
    WritePlan w = plan_write(direct_mode(a, 512), g_buf + 16, a, a);
    EXPECT_TRUE(w.bounce);
    EXPECT_FALSE(w.exclusive) << "whole blocks need no read-modify-write";
    EXPECT_TRUE(w.head.empty() && w.tail.empty());
    EXPECT_TRUE(w.lock);
  }
}

TEST(Planner, MemoryAlignmentSmallerThanOffsetAlignment) {
  // ext4 on NVMe: offsets in 512s, buffers only in 4s.
  ReadPlan p = plan_read(direct_mode(512, 4), g_buf + 4, 4096, 8192);
  EXPECT_FALSE(p.bounce);
  p = plan_read(direct_mode(512, 4), g_buf + 2, 4096, 8192);
  EXPECT_TRUE(p.bounce);
}

TEST(Planner, UnalignedReadWidensToWholeBlocks) {
  for (std::uint32_t a = 512; a <= 65536; a *= 2) {
    ReadPlan p = plan_read(direct_mode(a, a), g_buf, 100, a + 7);
    EXPECT_TRUE(p.bounce);
    EXPECT_EQ(p.io, (Extent{a, 2ull * a}));
    p = plan_read(direct_mode(a, a), g_buf, a, a + 1);
    EXPECT_EQ(p.io, (Extent{a, 3ull * a}));
  }
}

TEST(Planner, WriteSplitsIntoHeadBodyTail) {
  for (std::uint32_t a = 512; a <= 65536; a *= 2) {
    // From the middle of block 1 to the middle of block 4: read blocks 1 and 4 first.
    const std::uint64_t off = a + a / 2, len = 3ull * a;
    WritePlan p = plan_write(direct_mode(a, a), g_buf, len, off);
    EXPECT_TRUE(p.lock && p.exclusive && p.bounce);
    EXPECT_EQ(p.io, (Extent{a, 5ull * a}));
    EXPECT_EQ(p.head, (Extent{a, 2ull * a}));
    EXPECT_EQ(p.tail, (Extent{4ull * a, 5ull * a}));
  }
}

TEST(Planner, WriteInsideOneBlockReadsItOnce) {
  for (std::uint32_t a = 512; a <= 65536; a *= 2) {
    WritePlan p = plan_write(direct_mode(a, a), g_buf, 10, 2ull * a + 5);
    EXPECT_EQ(p.io, (Extent{2ull * a, 3ull * a}));
    EXPECT_EQ(p.head, (Extent{2ull * a, 3ull * a}));
    EXPECT_TRUE(p.tail.empty());
    EXPECT_TRUE(p.exclusive);
  }
}

TEST(Planner, WriteWithOnlyAnUnalignedEnd) {
  WritePlan p = plan_write(direct_mode(4096, 4096), g_buf, 4096 + 100, 8192);
  EXPECT_TRUE(p.head.empty());
  EXPECT_EQ(p.tail, (Extent{12288, 16384}));
  EXPECT_TRUE(p.exclusive);
}

TEST(Planner, AlignedWriteIsSharedAndDirect) {
  WritePlan p = plan_write(direct_mode(4096, 4096), g_buf, 8192, 4096);
  EXPECT_TRUE(p.lock);
  EXPECT_FALSE(p.exclusive);
  EXPECT_FALSE(p.bounce);
  EXPECT_EQ(p.io, (Extent{4096, 12288}));
}

TEST(Planner, BufferedNeedsNeitherLockNorBounce) {
  IoMode m{3, false, 1, 1};
  WritePlan w = plan_write(m, g_buf + 1, 7, 13);
  EXPECT_FALSE(w.lock || w.bounce || w.exclusive);
  EXPECT_EQ(w.io, (Extent{13, 20}));
  ReadPlan r = plan_read(m, g_buf + 1, 7, 13);
  EXPECT_FALSE(r.bounce);
  EXPECT_EQ(r.io, (Extent{13, 20}));
}

TEST(Planner, ZeroLengthRequests) {
  ReadPlan r = plan_read(direct_mode(512, 512), g_buf, 0, 1024);
  EXPECT_TRUE(r.io.empty());
  WritePlan w = plan_write(direct_mode(512, 512), g_buf, 0, 1024);
  EXPECT_TRUE(w.io.empty());
  EXPECT_FALSE(w.exclusive);
}

TEST(Planner, LargeAlignedReadsIntoAnUnalignedBufferAreReadInPlace) {
  for (std::uint32_t a : {512u, 4096u}) {
    // nbdkit's buffers: 16 bytes past an aligned address.
    ReadPlan p = plan_read(direct_mode(a, 512), g_buf + 16, kInPlaceMin, 4ull * a);
    EXPECT_TRUE(p.bounce && p.in_place) << a;
    EXPECT_EQ(p.shift, 512u - 16) << "to the next 512-byte boundary";
    // Small reads, unaligned ranges and shifts beyond a block take the bounce buffer.
    EXPECT_FALSE(plan_read(direct_mode(a, 512), g_buf + 16, 65536, 4ull * a).in_place);
    EXPECT_FALSE(plan_read(direct_mode(a, 512), g_buf + 16, kInPlaceMin, 4ull * a + 1).in_place);
    EXPECT_FALSE(plan_read(direct_mode(a, 512), g_buf + 16, kInPlaceMin + 1, 4ull * a).in_place);
    EXPECT_FALSE(plan_read(direct_mode(a, a), g_buf, kInPlaceMin, 4ull * a).bounce);
  }
  EXPECT_FALSE(plan_read(direct_mode(512, 4096), g_buf + 16, kInPlaceMin, 4096).in_place)
      << "a shift larger than a block would not fit the client's buffer";
}

// Trim and zero against FakeEngine: the kernel gets only the aligned interior, unaligned
// edges of a zero are written as zeroes, edges of a trim are left alone, and a refused
// capability is switched off once and falls back to writing (or, for a fast zero, ENOTSUP).
#include <linux/falloc.h>

#include <gtest/gtest.h>

#include "fake_engine.h"
#include "loopdio/space_ops.h"

using namespace loopdio;
using loopdio::test::FakeEngine;

namespace {

struct Fixture {
  explicit Fixture(std::uint32_t a) : engine(a, a, 1 << 20) {
    engine.set_data(std::vector<char>(1 << 20, 'd'));
    geo.size = geo.backing_size = 1 << 20;
    mode = {7, true, a, a};
    io = std::make_unique<AlignedIo>(geo, locks);
    space = std::make_unique<SpaceOps>(*io, locks, SpaceSupport{});
  }
  FakeEngine engine;
  Geometry geo;
  IoMode mode;
  RangeLock locks;
  std::unique_ptr<AlignedIo> io;
  std::unique_ptr<SpaceOps> space;

  std::size_t count(char c, std::size_t from, std::size_t to) {
    auto d = engine.data();
    return static_cast<std::size_t>(std::count(d.begin() + from, d.begin() + to, c));
  }
};

}  // namespace

TEST(SpaceOps, TrimPunchesOnlyTheAlignedInterior) {
  Fixture f(4096);
  ASSERT_EQ(f.space->trim(f.engine, f.mode, 20000, 1000, false), 0);
  auto calls = f.engine.falloc_calls();
  ASSERT_EQ(calls.size(), 1u);
  EXPECT_EQ(calls[0].mode, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE);
  EXPECT_EQ(calls[0].off, 4096u);
  EXPECT_EQ(calls[0].len, 16384u);
  EXPECT_EQ(f.count('d', 0, 4096), 4096u) << "the head edge keeps its data";
  EXPECT_EQ(f.count('d', 20480, 24576), 4096u) << "the tail edge keeps its data";
  EXPECT_TRUE(f.engine.calls().empty()) << "a trim writes nothing";
}

TEST(SpaceOps, TrimSmallerThanABlockDoesNothing) {
  Fixture f(4096);
  ASSERT_EQ(f.space->trim(f.engine, f.mode, 4000, 10, false), 0);
  EXPECT_TRUE(f.engine.falloc_calls().empty());
}

TEST(SpaceOps, ZeroWritesItsUnalignedEdges) {
  for (std::uint32_t a : {512u, 4096u}) {
    Fixture f(a);
    ASSERT_EQ(f.space->zero(f.engine, f.mode, 3 * a, a / 2, {}), 0);
    EXPECT_EQ(f.count('d', 0, a / 2), a / 2);
    EXPECT_EQ(f.count(0, a / 2, a / 2 + 3 * a), 3u * a) << "all of it reads as zeroes";
    EXPECT_EQ(f.count('d', a / 2 + 3 * a, 5 * a), 5 * a - (a / 2 + 3 * a));
    auto calls = f.engine.falloc_calls();
    ASSERT_EQ(calls.size(), 1u);
    EXPECT_EQ(calls[0].mode, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE) << "no hole allowed";
    EXPECT_EQ(calls[0].off, a);
    EXPECT_EQ(calls[0].len, 2u * a);
  }
}

TEST(SpaceOps, ZeroAllowingHolesPunches) {
  Fixture f(512);
  ZeroFlags fl;
  fl.may_trim = true;
  ASSERT_EQ(f.space->zero(f.engine, f.mode, 8192, 0, fl), 0);
  ASSERT_EQ(f.engine.falloc_calls().size(), 1u);
  EXPECT_EQ(f.engine.falloc_calls()[0].mode, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE);
}

TEST(SpaceOps, RefusedZeroRangeFallsBackToWritingOnce) {
  Fixture f(512);
  f.engine.refuse_fallocate_mode = FALLOC_FL_ZERO_RANGE;
  ASSERT_EQ(f.space->zero(f.engine, f.mode, 65536, 0, {}), 0);
  EXPECT_EQ(f.count(0, 0, 65536), 65536u);
  ASSERT_EQ(f.space->zero(f.engine, f.mode, 65536, 65536, {}), 0);
  EXPECT_EQ(f.engine.falloc_calls().size(), 1u) << "asked the kernel once, then stopped asking";
  EXPECT_EQ(f.count(0, 65536, 131072), 65536u);
}

TEST(SpaceOps, FastZeroThatCannotBeCheapFailsAtOnce) {
  Fixture f(512);
  f.engine.refuse_fallocate_mode = FALLOC_FL_ZERO_RANGE;
  ZeroFlags fast;
  fast.fast = true;
  EXPECT_EQ(f.space->zero(f.engine, f.mode, 65536, 0, fast), -ENOTSUP);
  EXPECT_EQ(f.count('d', 0, 65536), 65536u) << "a refused fast zero changes nothing";
  EXPECT_EQ(f.space->zero(f.engine, f.mode, 65536, 0, fast), -ENOTSUP);
  EXPECT_EQ(f.engine.falloc_calls().size(), 1u) << "the second is refused without asking";
  fast.may_trim = true;  // punching is still cheap
  EXPECT_EQ(f.space->zero(f.engine, f.mode, 65536, 0, fast), 0);
  EXPECT_EQ(f.count(0, 0, 65536), 65536u);
}

TEST(SpaceOps, ZeroWithFuaSyncs) {
  Fixture f(512);
  ZeroFlags fl;
  fl.fua = true;
  ASSERT_EQ(f.space->zero(f.engine, f.mode, 4096, 0, fl), 0);
  EXPECT_EQ(f.engine.syncs(), 1);
}

// Regression: a fast zero too small to hold one aligned block (say 100 bytes inside a 4 KiB
// block) has nothing the kernel could zero cheaply; it was written by read-modify-write,
// where the protocol wants it refused at once with ENOTSUP (the client then writes zeroes
// itself, or skips them).
TEST(SpaceOps, AFastZeroWithNoAlignedInteriorFailsAtOnce) {
  Fixture f(4096);
  ZeroFlags fast;
  fast.fast = true;
  fast.may_trim = true;
  std::size_t calls = f.engine.calls().size();
  EXPECT_EQ(f.space->zero(f.engine, f.mode, 100, 4096 + 10, fast), -ENOTSUP);
  EXPECT_EQ(f.engine.calls().size(), calls) << "the kernel was asked to do something";
  EXPECT_EQ(f.count('d', 4096, 8192), 4096u) << "a refused fast zero changes nothing";
  // Across a block boundary but still without a whole block: refused too.
  EXPECT_EQ(f.space->zero(f.engine, f.mode, 4096, 4096 + 10, fast), -ENOTSUP);
  // Not fast: written, edges and all.
  ZeroFlags slow;
  EXPECT_EQ(f.space->zero(f.engine, f.mode, 100, 4096 + 10, slow), 0);
  EXPECT_EQ(f.count(0, 4096 + 10, 4096 + 110), 100u);
}

// The alignment layer executed against FakeEngine, which refuses misaligned transfers as
// O_DIRECT does: every shape of request must come out right, and never as EINVAL.
#include <gtest/gtest.h>

#include <numeric>
#include <random>
#include <thread>

#include "fake_engine.h"
#include "loopdio/aligned_buffer.h"
#include "loopdio/aligned_io.h"

using namespace loopdio;
using loopdio::test::FakeEngine;

namespace {

std::vector<char> pattern(std::size_t n, unsigned seed) {
  std::vector<char> v(n);
  std::mt19937 rng(seed);
  for (char& c : v) c = static_cast<char>(rng());
  return v;
}

struct Fixture {
  Fixture(std::uint32_t a, std::size_t file_size, std::size_t export_size = 0)
      : engine(a, a, file_size) {
    engine.set_data(pattern(file_size, 1));
    geo.size = export_size ? export_size : file_size;
    geo.backing_size = file_size;
    mode = {7, true, a, a};
    io = std::make_unique<AlignedIo>(geo, locks);
  }
  FakeEngine engine;
  Geometry geo;
  IoMode mode;
  RangeLock locks;
  std::unique_ptr<AlignedIo> io;
};

}  // namespace

TEST(AlignedIo, RandomUnalignedRequestsMatchAShadowCopy) {
  for (std::uint32_t a : {512u, 4096u}) {
    const std::size_t size = 256 * 1024 + 100;  // a tail that is not a whole block
    Fixture f(a, size);
    std::vector<char> shadow = f.engine.data();
    std::mt19937 rng(a);
    AlignedBuffer mem(4096, 3 * 65536);
    for (int i = 0; i < 2000; ++i) {
      std::size_t off = rng() % size;
      std::size_t len = 1 + rng() % std::min<std::size_t>(size - off, 70000);
      char* buf = mem.data() + rng() % 64;  // any buffer address
      if (rng() % 2) {
        auto src = pattern(len, static_cast<unsigned>(i));
        std::memcpy(buf, src.data(), len);
        ASSERT_EQ(f.io->write(f.engine, f.mode, buf, len, off, rng() % 4 == 0), 0);
        std::memcpy(shadow.data() + off, src.data(), len);
      } else {
        ASSERT_EQ(f.io->read(f.engine, f.mode, buf, len, off), 0);
        ASSERT_EQ(std::memcmp(buf, shadow.data() + off, len), 0) << "read " << len << "@" << off;
      }
    }
    EXPECT_EQ(f.engine.data(), shadow) << "the file must never change size";
  }
}

TEST(AlignedIo, AlignedRequestsUseTheClientBufferAndNoPreRead) {
  Fixture f(4096, 1 << 20);
  AlignedBuffer buf(4096, 65536);
  std::memset(buf.data(), 'x', 65536);
  ASSERT_EQ(f.io->write(f.engine, f.mode, buf.data(), 65536, 8192, false), 0);
  auto calls = f.engine.calls();
  ASSERT_EQ(calls.size(), 1u);
  EXPECT_EQ(calls[0].kind, IoKind::kWrite);
  EXPECT_EQ(calls[0].off, 8192u);
}

TEST(AlignedIo, PartialBlockWriteReadsHeadAndTailFirst) {
  Fixture f(4096, 1 << 20);
  std::vector<char> src(10000, 'y');
  ASSERT_EQ(f.io->write(f.engine, f.mode, src.data(), src.size(), 5000, false), 0);
  auto calls = f.engine.calls();
  ASSERT_EQ(calls.size(), 3u);
  EXPECT_EQ(calls[0].kind, IoKind::kRead);
  EXPECT_EQ(calls[0].off, 4096u);
  EXPECT_EQ(calls[1].kind, IoKind::kRead);
  EXPECT_EQ(calls[1].off, 12288u);
  EXPECT_EQ(calls[2].kind, IoKind::kWrite);
  EXPECT_EQ(calls[2].off, 4096u);
  EXPECT_EQ(calls[2].len, 12288u);
}

TEST(AlignedIo, TailOfAnUnalignedImageKeepsTheFileSize) {
  const std::size_t size = (1 << 20) + 100;
  Fixture f(4096, size);
  auto before = f.engine.data();
  std::vector<char> src(60, 'z');
  ASSERT_EQ(f.io->write(f.engine, f.mode, src.data(), src.size(), size - 60, true), 0);
  auto after = f.engine.data();
  ASSERT_EQ(after.size(), size) << "the padded write must be cut back";
  EXPECT_EQ(f.engine.truncations(), 1);
  EXPECT_EQ(f.engine.syncs(), 1) << "FUA after a truncate needs fdatasync";
  EXPECT_EQ(std::memcmp(after.data(), before.data(), size - 60), 0);
  EXPECT_EQ(std::memcmp(after.data() + size - 60, src.data(), 60), 0);
  std::vector<char> back(100);
  ASSERT_EQ(f.io->read(f.engine, f.mode, back.data(), 100, size - 100), 0);
  EXPECT_EQ(std::memcmp(back.data(), after.data() + size - 100, 100), 0);
}

TEST(AlignedIo, ReadsPastTheEndOfTheBackingAreZero) {
  // The backing shrank under the export (or never held it all): the rest reads as zeroes.
  Fixture f(512, 4096, 16384);
  std::vector<char> back(16384, 'q');
  ASSERT_EQ(f.io->read(f.engine, f.mode, back.data() + 1, 8000, 1000), 0);
  auto data = f.engine.data();
  EXPECT_EQ(std::memcmp(back.data() + 1, data.data() + 1000, 3096), 0);
  for (std::size_t i = 3096; i < 8000; ++i) ASSERT_EQ(back[1 + i], 0) << i;
}

TEST(AlignedIo, LargeRequestsAreSplitAndWindowed) {
  const std::size_t size = 32u << 20;
  Fixture f(512, size);
  std::vector<char> buf(size - 1000);
  ASSERT_EQ(f.io->read(f.engine, f.mode, buf.data() + 1, buf.size() - 1, 999), 0);
  for (const auto& c : f.engine.calls()) EXPECT_LE(c.len, kMaxOpBytes);
  EXPECT_GE(f.engine.calls().size(), size / kMaxOpBytes);
  auto data = f.engine.data();
  EXPECT_EQ(std::memcmp(buf.data() + 1, data.data() + 999, buf.size() - 1), 0);
}

TEST(AlignedIo, FuaRidesOnTheWriteAsDsync) {
  Fixture f(512, 1 << 20);
  AlignedBuffer buf(512, 4096);
  ASSERT_EQ(f.io->write(f.engine, f.mode, buf.data(), 4096, 0, true), 0);
  ASSERT_EQ(f.engine.calls().size(), 1u);
  EXPECT_TRUE(f.engine.calls()[0].dsync);
  EXPECT_EQ(f.engine.syncs(), 0);
}

TEST(AlignedIo, RefusedDsyncFallsBackToFdatasyncOnce) {
  Fixture f(512, 1 << 20);
  f.engine.inject = [](const IoOp& op) -> std::optional<std::int64_t> {
    if (op.dsync) return -EOPNOTSUPP;
    return std::nullopt;
  };
  AlignedBuffer buf(512, 4096);
  ASSERT_EQ(f.io->write(f.engine, f.mode, buf.data(), 4096, 0, true), 0);
  EXPECT_EQ(f.engine.syncs(), 1);
  f.engine.clear_calls();
  ASSERT_EQ(f.io->write(f.engine, f.mode, buf.data(), 4096, 0, true), 0);
  ASSERT_EQ(f.engine.calls().size(), 1u);
  EXPECT_FALSE(f.engine.calls()[0].dsync) << "switched off after the first refusal";
  EXPECT_EQ(f.engine.syncs(), 2);
}

TEST(AlignedIo, KernelErrorsReachTheCaller) {
  Fixture f(512, 1 << 20);
  f.engine.inject = [](const IoOp& op) -> std::optional<std::int64_t> {
    if (op.off <= 65536 && 65536 < op.off + op.len) return -EIO;
    return std::nullopt;
  };
  std::vector<char> buf(8192);
  EXPECT_EQ(f.io->read(f.engine, f.mode, buf.data(), 8192, 65536 - 100), -EIO);
  EXPECT_EQ(f.io->write(f.engine, f.mode, buf.data(), 8192, 65536 - 100, false), -EIO);
  EXPECT_EQ(f.io->read(f.engine, f.mode, buf.data(), 8192, 0), 0) << "other ranges still work";
  f.engine.inject = [](const IoOp& op) -> std::optional<std::int64_t> {
    if (op.kind == IoKind::kWrite) return -ENOSPC;
    return std::nullopt;
  };
  EXPECT_EQ(f.io->write(f.engine, f.mode, buf.data(), 100, 1, false), -ENOSPC);
}

TEST(AlignedIo, ShortTransfersOnABlockBoundaryAreContinued) {
  Fixture f(512, 1 << 20);
  int shorts = 0;
  f.engine.inject = [&](const IoOp& op) -> std::optional<std::int64_t> {
    if (op.len > 1024 && shorts++ < 3) {
      std::vector<char> d = f.engine.data();
      std::memcpy(op.buf, d.data() + op.off, 1024);
      return 1024;
    }
    return std::nullopt;
  };
  std::vector<char> buf(65536);
  ASSERT_EQ(f.io->read(f.engine, f.mode, buf.data(), 65536, 0), 0);
  auto d = f.engine.data();
  EXPECT_EQ(std::memcmp(buf.data(), d.data(), 65536), 0);
  EXPECT_EQ(shorts, 4);
}

TEST(AlignedIo, ConcurrentWritesToDifferentBytesOfOneBlockLoseNothing) {
  // Timeline without the range lock: A reads block 0, B reads block 0, A writes it with its
  // byte, B writes it with its byte and A's stale one: A's update is lost.
  for (std::uint32_t a : {512u, 4096u}) {
    Fixture f(a, 4 * a);
    f.engine.set_data(std::vector<char>(4 * a, 0));
    f.engine.yield_between = true;
    constexpr int kThreads = 8, kRounds = 200;
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
      threads.emplace_back([&, t] {
        for (int r = 0; r < kRounds; ++r) {
          char v = static_cast<char>(1 + r % 100);
          for (std::uint64_t blk = 0; blk < 4; ++blk) {
            // Thread t owns bytes t, t+8, ..., t+120 of each block.
            std::uint64_t off = blk * a + static_cast<std::uint64_t>(t) + 8 * (r % 16);
            ASSERT_EQ(f.io->write(f.engine, f.mode, &v, 1, off, false), 0);
          }
        }
      });
    }
    for (auto& th : threads) th.join();
    auto d = f.engine.data();
    for (std::uint64_t blk = 0; blk < 4; ++blk)
      for (int t = 0; t < kThreads; ++t)
        for (int k = 0; k < 16; ++k) {
          // The last round to write slot k (rounds r with r % 16 == k).
          int last = k + 16 * ((kRounds - 1 - k) / 16);
          char expect = static_cast<char>(1 + last % 100);
          ASSERT_EQ(d[blk * a + t + 8 * k], expect) << "block " << blk << " thread " << t;
        }
  }
}

TEST(AlignedIo, BufferedModePassesRequestsThrough) {
  Fixture f(512, 1 << 20);
  IoMode buffered{7, false, 1, 1};
  // FakeEngine only refuses misalignment; with align 1 in the mode the layer must not pad.
  FakeEngine loose(1, 1, 1 << 20);
  AlignedIo io(f.geo, f.locks);
  char v[3] = {'a', 'b', 'c'};
  ASSERT_EQ(io.write(loose, buffered, v, 3, 1001, false), 0);
  auto calls = loose.calls();
  ASSERT_EQ(calls.size(), 1u);
  EXPECT_EQ(calls[0].off, 1001u);
  EXPECT_EQ(calls[0].len, 3u);
}

// A large read into a buffer that is not aligned (nbdkit's are 16-byte aligned) is read into
// that buffer itself and moved down, with one block through a bounce buffer: every byte
// right, the fake engine (which refuses what O_DIRECT refuses) never sees a misaligned
// transfer, and the bounce pool never lends more than one small buffer.
TEST(AlignedIo, LargeReadsIntoUnalignedBuffersAreReadInPlace) {
  for (std::uint32_t a : {512u, 4096u}) {
    const std::size_t size = 8 << 20;
    Fixture f(a, size);
    f.engine.set_data(pattern(size, 7));
    AlignedBuffer mem(4096, (4 << 20) + 8192);
    for (std::size_t skew : {16u, 8u, 500u % a, 4000u % a}) {
      for (std::size_t len : {kInPlaceMin, std::size_t{1} << 20, (std::size_t{3} << 20) + a}) {
        const std::uint64_t off = 5ull * a;
        char* buf = mem.data() + skew;
        std::memset(buf, 0x55, len);
        ASSERT_EQ(f.io->read(f.engine, f.mode, buf, len, off), 0) << a << " " << skew << " " << len;
        ASSERT_EQ(std::memcmp(buf, f.engine.data().data() + off, len), 0) << a << " " << skew << " " << len;
      }
    }
    EXPECT_LE(f.io->bounce_pool().stats().peak, BouncePool::kMinBuffer) << "a large bounce buffer";
  }
}

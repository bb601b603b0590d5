// Range locks: shared ranges overlap freely, exclusive ones wait for every overlapping range,
// and an exclusive waiter is not starved by a stream of later shared ones.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <thread>

#include "loopdio/range_lock.h"

using namespace loopdio;
using namespace std::chrono_literals;

namespace {

// Runs `f` in a thread and reports whether it finished within `wait`.
bool finishes_within(std::thread& t, std::atomic<bool>& done, std::chrono::milliseconds wait) {
  auto until = std::chrono::steady_clock::now() + wait;
  while (!done && std::chrono::steady_clock::now() < until) std::this_thread::sleep_for(1ms);
  (void)t;
  return done;
}

}  // namespace

TEST(RangeLock, SharedRangesOverlap) {
  RangeLock l;
  RangeLock::Guard a(l, 0, 4096, false);
  std::atomic<bool> done{false};
  std::thread t([&] {
    RangeLock::Guard b(l, 0, 4096, false);
    done = true;
  });
  EXPECT_TRUE(finishes_within(t, done, 2000ms));
  t.join();
}

TEST(RangeLock, ExclusiveWaitsForOverlapOnly) {
  RangeLock l;
  std::atomic<bool> done{false}, other{false};
  std::optional<RangeLock::Guard> a;
  a.emplace(l, 4096, 8192, false);
  std::thread t([&] {
    RangeLock::Guard b(l, 8191, 8192 + 512, true);
    done = true;
  });
  std::thread u([&] {
    RangeLock::Guard c(l, 8704, 16384, true);  // overlaps neither range
    other = true;
  });
  EXPECT_TRUE(finishes_within(u, other, 2000ms));
  u.join();
  EXPECT_FALSE(finishes_within(t, done, 100ms)) << "overlaps a held shared range";
  a.reset();
  EXPECT_TRUE(finishes_within(t, done, 2000ms));
  t.join();
  EXPECT_EQ(l.size(), 0u);
}

TEST(RangeLock, ExclusiveWaiterIsNotStarvedByLaterSharedRanges) {
  RangeLock l;
  std::optional<RangeLock::Guard> first;
  first.emplace(l, 0, 4096, false);
  std::atomic<bool> excl{false}, late{false};
  std::thread t([&] {
    RangeLock::Guard b(l, 0, 4096, true);
    excl = true;
    std::this_thread::sleep_for(50ms);
  });
  while (l.size() < 2) std::this_thread::sleep_for(1ms);
  std::thread u([&] {
    RangeLock::Guard c(l, 0, 4096, false);  // arrives after the exclusive waiter
    late = true;
  });
  EXPECT_FALSE(finishes_within(u, late, 100ms)) << "must queue behind the exclusive waiter";
  first.reset();
  t.join();
  u.join();
  EXPECT_TRUE(excl && late);
}

TEST(RangeLock, ManyThreadsKeepExclusionCounts) {
  RangeLock l;
  int counter[4] = {0, 0, 0, 0};  // one per 4 KiB block, protected by the lock
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t)
    threads.emplace_back([&, t] {
      for (int i = 0; i < 2000; ++i) {
        std::uint64_t blk = static_cast<std::uint64_t>((t + i) % 4);
        RangeLock::Guard g(l, blk * 4096, blk * 4096 + 4096, true);
        int v = counter[blk];
        std::this_thread::yield();
        counter[blk] = v + 1;
      }
    });
  for (auto& th : threads) th.join();
  EXPECT_EQ(counter[0] + counter[1] + counter[2] + counter[3], 8 * 2000);
}

// The bounce pool: however many requests ask at once, the server never holds more than its
// total, a connection and an export never more than their shares; requests wait rather than
// fail, a request held back by its own share never holds up another's, those that wait for
// the total are served in arrival order, and memory is reused rather than grown.
#include <gtest/gtest.h>
#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <future>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "loopdio/bounce_pool.h"

using namespace loopdio;
using namespace std::chrono_literals;

TEST(BouncePool, WindowIsThePerClientShareUpTo4MiB) {
  EXPECT_EQ(BouncePool(64 << 20, 16 << 20).window(), 4u << 20);
  EXPECT_EQ(BouncePool(64 << 20, 3 << 20).window(), 2u << 20);
  EXPECT_EQ(BouncePool(1 << 20, 16 << 20).window(), 1u << 20);  // a share is at most the total
}

TEST(BouncePool, ManyRequestsNeverExceedTheBounds) {
  BouncePool pool(8 << 20, 4 << 20);
  BouncePool::Client clients[4];
  std::atomic<std::size_t> held[4] = {};
  std::atomic<std::size_t> total{0}, max_total{0}, max_client{0};
  // Client 0 at its share before anyone starts: its threads must wait (not only when the
  // scheduler happens to run them together), until the first one has.
  BouncePool::Lease block = pool.acquire(&clients[0], 4 << 20);
  std::vector<std::thread> threads;
  for (int t = 0; t < 16; ++t)
    threads.emplace_back([&, t] {
      int c = t % 4;
      for (int i = 0; i < 200; ++i) {
        std::size_t want = std::size_t{64 << 10} << ((t + i) % 7);  // 64 KiB .. 4 MiB
        BouncePool::Lease l = pool.acquire(&clients[c], want);
        ASSERT_GE(l.size(), want);
        ASSERT_EQ(reinterpret_cast<std::uintptr_t>(l.data()) % BouncePool::kAlign, 0u);
        l.data()[0] = 1;
        l.data()[l.size() - 1] = 1;
        std::size_t now = total += l.size(), mine = held[c] += l.size();
        for (std::size_t m = max_total; now > m && !max_total.compare_exchange_weak(m, now);) {}
        for (std::size_t m = max_client; mine > m && !max_client.compare_exchange_weak(m, mine);) {}
        std::this_thread::yield();
        total -= l.size();
        held[c] -= l.size();
      }
    });
  for (auto deadline = std::chrono::steady_clock::now() + 30s;
       pool.stats().waits == 0 && std::chrono::steady_clock::now() < deadline;)
    std::this_thread::yield();
  block.reset();
  for (auto& th : threads) th.join();
  EXPECT_LE(max_total.load(), std::size_t{8} << 20);
  EXPECT_LE(max_client.load(), std::size_t{4} << 20);
  BouncePool::Stats s = pool.stats();
  EXPECT_EQ(s.leased, 0u);
  EXPECT_LE(s.peak, std::size_t{8} << 20) << "allocated beyond the bound";
  EXPECT_GT(s.waits, 0u) << "16 threads asking for up to 4 MiB each never had to wait";
}

// Waits (generously: a loaded machine) until `n` leases have had to wait.
static void wait_for_waits(BouncePool& pool, std::uint64_t n) {
  auto deadline = std::chrono::steady_clock::now() + 30s;
  while (pool.stats().waits < n) {
    ASSERT_LT(std::chrono::steady_clock::now(), deadline) << "no request started waiting";
    std::this_thread::yield();
  }
}

// A lease asked for on another thread; fails the test when it is not granted within 10 s
// (rather than hanging it).
static BouncePool::Lease acquire_within(BouncePool& pool, BouncePool::Client* c, std::size_t n) {
  auto f = std::async(std::launch::async, [&] { return pool.acquire(c, n); });
  if (f.wait_for(10s) != std::future_status::ready) {
    ADD_FAILURE() << "a request that fits waited behind another connection's share";
    std::abort();  // the waiting thread cannot be cancelled
  }
  return f.get();
}

// The timeline of the bug: the greedy connection holds its whole share and asks for more;
// its request waits (right), first in line; then another connection, holding nothing, asks
// for memory the total has room for, and waited behind the greedy request until the greedy
// connection gave memory back (wrong): one connection's cap held up everyone.
TEST(BouncePool, AClientAtItsShareWaitsWhileOthersGoOn) {
  BouncePool pool(16 << 20, 4 << 20);
  BouncePool::Client greedy, other;
  BouncePool::Lease a = pool.acquire(&greedy, 4 << 20);
  std::atomic<bool> got{false};
  std::thread waiter([&] {
    BouncePool::Lease b = pool.acquire(&greedy, 64 << 10);
    got = true;
  });
  wait_for_waits(pool, 1);
  BouncePool::Lease c = acquire_within(pool, &other, 4 << 20);
  EXPECT_EQ(c.size(), 4u << 20);
  EXPECT_FALSE(got) << "a connection went beyond its share";
  a.reset();
  waiter.join();
  EXPECT_TRUE(got);
}

// One export's connections (a slow disk's, holding their buffers for seconds) cannot take
// the memory another export needs: in a directory, the first export may hold half, and each
// of n open exports 1/n.
TEST(BouncePool, OneExportCannotTakeWhatAnotherNeeds) {
  BouncePool pool(16 << 20, 4 << 20, 2);
  BouncePool::Group slow(pool), quick(pool);
  BouncePool::Client s1(&slow), s2(&slow), s3(&slow), q(&quick), q2(&quick);
  BouncePool::Lease a = pool.acquire(&s1, 4 << 20), b = pool.acquire(&s2, 4 << 20);
  std::atomic<bool> got{false};
  std::thread third([&] {
    BouncePool::Lease c = pool.acquire(&s3, 4 << 20);  // beyond the export's half
    got = true;
  });
  wait_for_waits(pool, 1);
  BouncePool::Lease mine = acquire_within(pool, &q, 4 << 20);
  BouncePool::Lease more = acquire_within(pool, &q2, 64 << 10);
  EXPECT_FALSE(got) << "an export went beyond its share";
  a.reset();
  third.join();
  EXPECT_TRUE(got);
}

// When an export closes, the others' shares grow at once: a request held back only by its
// export's share is granted.
TEST(BouncePool, AClosingExportGivesItsShareToTheOthers) {
  BouncePool pool(16 << 20, 16 << 20, 1);
  BouncePool::Group g1(pool);
  BouncePool::Client c1(&g1);
  auto g2 = std::make_unique<BouncePool::Group>(pool);
  BouncePool::Lease a = pool.acquire(&c1, 4 << 20), b = pool.acquire(&c1, 4 << 20);
  std::thread more([&] { BouncePool::Lease c = pool.acquire(&c1, 4 << 20); });
  wait_for_waits(pool, 1);
  g2.reset();
  more.join();  // hangs (ctest's timeout) if the closing did not wake it
}

// Blocks of every size come back together: after any mix of leases, the whole pool can be
// leased as windows again.
TEST(BouncePool, FreedBlocksMergeBackIntoWindows) {
  BouncePool pool(12 << 20, 12 << 20);
  {
    std::vector<BouncePool::Lease> v;
    for (int i = 0; i < 40; ++i) v.push_back(pool.acquire(nullptr, std::size_t{64 << 10} << (i % 3)));
    for (std::size_t i = 0; i < v.size(); i += 2) v[i].reset();
  }
  std::vector<BouncePool::Lease> windows;
  for (int i = 0; i < 3; ++i) windows.push_back(acquire_within(pool, nullptr, 4 << 20));
  EXPECT_EQ(pool.stats().leased, std::size_t{12} << 20);
}

TEST(BouncePool, WaitersAreServedInArrivalOrder) {
  BouncePool pool(4 << 20, 4 << 20);
  BouncePool::Lease all = pool.acquire(nullptr, 4 << 20);
  std::vector<int> order;
  std::mutex mu;
  std::thread big([&] {
    BouncePool::Lease l = pool.acquire(nullptr, 4 << 20);
    std::lock_guard g(mu);
    order.push_back(1);
  });
  wait_for_waits(pool, 1);
  std::thread small([&] {
    BouncePool::Lease l = pool.acquire(nullptr, 64 << 10);
    std::lock_guard g(mu);
    order.push_back(2);
  });
  wait_for_waits(pool, 2);
  all.reset();
  big.join();
  small.join();
  ASSERT_EQ(order.size(), 2u);
  EXPECT_EQ(order[0], 1) << "a small request overtook a large one that waited first";
}

TEST(BouncePool, MemoryIsReusedNotGrown) {
  BouncePool pool(64 << 20, 16 << 20);
  for (int i = 0; i < 1000; ++i) {
    BouncePool::Lease l = pool.acquire(nullptr, 1 << 20);
    l.data()[0] = 0;
  }
  EXPECT_EQ(pool.stats().peak, std::size_t{1} << 20);
  EXPECT_EQ(pool.stats().resident, std::size_t{1} << 20) << "a new block each time";
  EXPECT_EQ(pool.stats().cached, std::size_t{1} << 20);
}

// After a burst, trim gives back the pages of the free blocks (what RSS shows), keeps those
// on loan, and the blocks serve again.
TEST(BouncePool, TrimGivesFreePagesBack) {
  BouncePool pool(64 << 20, 16 << 20);
  auto rss_of = [](const char* p, std::size_t n) {  // resident pages of [p, p + n)
    std::vector<unsigned char> v((n + 4095) / 4096);
    EXPECT_EQ(::mincore(const_cast<char*>(p), n, v.data()), 0);
    return static_cast<std::size_t>(std::count_if(v.begin(), v.end(), [](unsigned char c) { return c & 1; })) * 4096;
  };
  std::vector<BouncePool::Lease> burst;
  for (int i = 0; i < 8; ++i) {
    burst.push_back(pool.acquire(nullptr, 4 << 20));
    std::memset(burst.back().data(), 1, 4 << 20);
  }
  const char* kept = burst[0].data();
  const char* freed = burst[1].data();
  BouncePool::Lease keep = std::move(burst[0]);
  burst.clear();
  EXPECT_EQ(pool.stats().resident, std::size_t{32} << 20);
  pool.trim(std::size_t{28} << 20);
  EXPECT_EQ(pool.stats().resident, std::size_t{32} << 20) << "28 MiB free: no more than kept";
  pool.trim();
  EXPECT_EQ(pool.stats().resident, std::size_t{4} << 20) << "only the block on loan";
  EXPECT_EQ(rss_of(freed, 4 << 20), 0u) << "a free block's pages are still resident";
  EXPECT_EQ(rss_of(kept, 4 << 20), std::size_t{4} << 20);
  EXPECT_EQ(kept[12345], 1) << "the block on loan lost its data";
  BouncePool::Lease again = pool.acquire(nullptr, 4 << 20);
  std::memset(again.data(), 2, 4 << 20);
  EXPECT_EQ(pool.stats().resident, std::size_t{8} << 20);
}

// The bounce pool: however many requests ask at once, the server never holds more than its
// total and a connection never more than its share; requests wait rather than fail, in
// arrival order, and memory is reused rather than grown.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
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
  for (auto& th : threads) th.join();
  EXPECT_LE(max_total.load(), std::size_t{8} << 20);
  EXPECT_LE(max_client.load(), std::size_t{4} << 20);
  BouncePool::Stats s = pool.stats();
  EXPECT_EQ(s.leased, 0u);
  EXPECT_LE(s.peak, std::size_t{8} << 20) << "allocated beyond the bound";
  EXPECT_GT(s.waits, 0u) << "16 threads asking for up to 4 MiB each never had to wait";
}

TEST(BouncePool, AClientAtItsShareWaitsWhileOthersGoOn) {
  BouncePool pool(16 << 20, 4 << 20);
  BouncePool::Client greedy, other;
  BouncePool::Lease a = pool.acquire(&greedy, 4 << 20);
  std::atomic<bool> got{false};
  std::thread waiter([&] {
    BouncePool::Lease b = pool.acquire(&greedy, 64 << 10);
    got = true;
  });
  std::this_thread::sleep_for(50ms);
  EXPECT_FALSE(got) << "a connection went beyond its share";
  // Another connection is not held up by it... once the waiter is not first in line.
  a.reset();
  waiter.join();
  EXPECT_TRUE(got);
  BouncePool::Lease c = pool.acquire(&other, 4 << 20);
  EXPECT_EQ(c.size(), 4u << 20);
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
  std::this_thread::sleep_for(50ms);
  std::thread small([&] {
    BouncePool::Lease l = pool.acquire(nullptr, 64 << 10);
    std::lock_guard g(mu);
    order.push_back(2);
  });
  std::this_thread::sleep_for(50ms);
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
  EXPECT_EQ(pool.stats().cached, std::size_t{1} << 20);
}

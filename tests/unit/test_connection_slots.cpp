// The server's connection slots: a connection holds a handshake slot until it opens an
// export, then an open slot; neither kind can be taken beyond its bound, whatever the
// threads racing for them, and every slot comes back.
#include <gtest/gtest.h>

#include <atomic>
#include <thread>
#include <vector>

#include "loopdio/connection_slots.h"

using namespace loopdio;

TEST(ConnectionSlots, HandshakesAndOpenConnectionsAreBoundedApart) {
  ConnectionSlots s;
  s.set_limits(2, 3);
  EXPECT_TRUE(s.arrive());
  EXPECT_TRUE(s.arrive());
  EXPECT_TRUE(s.arrive());
  EXPECT_FALSE(s.arrive()) << "a fourth connection in the handshake";
  EXPECT_TRUE(s.open());
  EXPECT_TRUE(s.open());
  EXPECT_FALSE(s.open()) << "a third connection serving an export";
  EXPECT_EQ(s.handshaking(), 1u);
  EXPECT_EQ(s.open_now(), 2u);
  // Idle served connections do not keep newcomers from handshaking.
  EXPECT_TRUE(s.arrive());
  EXPECT_TRUE(s.arrive());
  EXPECT_FALSE(s.arrive());
  s.close();  // back to the handshake: always granted, it held a slot before
  EXPECT_EQ(s.handshaking(), 4u);
  for (int i = 0; i < 4; ++i) s.depart();
  s.close();
  s.depart();
  EXPECT_EQ(s.handshaking(), 0u);
  EXPECT_EQ(s.open_now(), 0u);
}

TEST(ConnectionSlots, RacingConnectionsNeverExceedTheBounds) {
  ConnectionSlots s;
  s.set_limits(4, 8);
  std::atomic<unsigned> max_open{0}, max_hs{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 16; ++t)
    threads.emplace_back([&] {
      for (int i = 0; i < 20000; ++i) {
        if (!s.arrive()) continue;
        for (unsigned v = s.handshaking(), m = max_hs; v > m && !max_hs.compare_exchange_weak(m, v);) {}
        if (s.open()) {
          for (unsigned v = s.open_now(), m = max_open; v > m && !max_open.compare_exchange_weak(m, v);) {}
          s.close();
        }
        s.depart();
      }
    });
  for (auto& t : threads) t.join();
  EXPECT_LE(max_open.load(), 4u);
  EXPECT_LE(max_hs.load(), 8u + 4u) << "closes return to the handshake without a check";
  EXPECT_EQ(s.handshaking(), 0u);
  EXPECT_EQ(s.open_now(), 0u);
}

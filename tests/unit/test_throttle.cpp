// Throttling: limits are parsed and checked as a whole (a bad one changes nothing); a
// throttle never lets more through than its rate (plus its depth) allows, whatever the
// threads asking; connections waiting at once share it round-robin; a burst runs at its
// rate for its length, then the rate holds; a change of limits takes effect at once; an
// export without limits touches nothing shared. Upper bounds are exact (the buckets'
// arithmetic); lower bounds are loose, for a loaded machine.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <thread>
#include <vector>

#include "loopdio/error.h"
#include "loopdio/throttle.h"

using namespace loopdio;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

TEST(ThrottleLimits, ParsedAndCheckedAsAWhole) {
  ThrottleLimits l = parse_limits({}, {"iops=2000", "bps=50M", "iops-max=4000",
                                       "iops-max-length=5", "iops-size=64k"});
  EXPECT_EQ(l.bucket[kIopsTotal].rate, 2000);
  EXPECT_EQ(l.bucket[kIopsTotal].max, 4000);
  EXPECT_EQ(l.bucket[kIopsTotal].max_length, 5);
  EXPECT_EQ(l.bucket[kBpsTotal].rate, 50 << 20);
  EXPECT_EQ(l.iops_size, 65536u);
  EXPECT_EQ(l.text(), "iops=2000 iops-max=4000 iops-max-length=5 bps=52428800 iops-size=65536");
  EXPECT_EQ(parse_limits(l, {"iops=500"}).bucket[kIopsTotal].rate, 500) << "one key changes";
  EXPECT_FALSE(parse_limits(l, {"none"}).any());

  auto refused = [&](std::vector<std::string> words, const char* why) {
    try {
      parse_limits(l, words);
      ADD_FAILURE() << words[0] << " was accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(why), std::string::npos) << e.what();
    }
  };
  refused({"iops=-5"}, "iops=-5: a rate cannot be negative");
  refused({"bps=fast"}, "bps=fast: not a size");
  refused({"iops-max=1000"}, "iops-max=1000 is below iops=2000");
  refused({"bps-read-max=10M"}, "a burst needs a rate to return to (bps-read=)");
  refused({"bps-max-length=3"}, "a burst length needs a burst (bps-max=)");
  refused({"iops-max-length=0"}, "expected more than 0");
  refused({"iops-read=100"}, "iops= together with iops-read= or iops-write=");
  refused({"iops-size=100"}, "expected 512 bytes or more");
  refused({"iopz=5"}, "unknown limit \"iopz\"");
  refused({"group=a b"}, "a group name holds letters");
  refused({"iops"}, "expected KEY=VALUE");
}

TEST(ThrottleLimits, FromJson) {
  ThrottleLimits l = limits_from_json(Json::parse(R"({"iops": 2000, "bps": "50M",
      "iops-max": 4000, "iops-max-length": 2.5, "group": "vm1"})"), "x");
  EXPECT_EQ(l.bucket[kIopsTotal].max_length, 2.5);
  EXPECT_EQ(l.group, "vm1");
  EXPECT_EQ(limits_from_json(l.json(), "x"), l);
  EXPECT_THROW(limits_from_json(Json::parse(R"({"iops": 1.5})"), "x"), Error);
  EXPECT_THROW(limits_from_json(Json::parse(R"({"iops": [1]})"), "x"), Error);
}

namespace {

struct Counts {
  std::vector<std::uint64_t> per_conn;
  double seconds;
  std::uint64_t total() const {
    std::uint64_t t = 0;
    for (auto n : per_conn) t += n;
    return t;
  }
};

// `conns` connections of `depth` threads each ask as fast as they can for `d`.
Counts hammer(Throttle& t, int conns, int depth, std::chrono::milliseconds d,
           Throttle::Kind kind = Throttle::Kind::kRead, std::uint64_t bytes = 4096) {
  std::vector<std::atomic<std::uint64_t>> counts(static_cast<std::size_t>(conns));
  std::atomic<bool> stop{false};
  std::vector<std::thread> threads;
  const auto t0 = Clock::now();
  for (int c = 0; c < conns; ++c)
    for (int k = 0; k < depth; ++k)
      threads.emplace_back([&, c] {
        while (!stop.load()) {
          t.admit(&counts[static_cast<std::size_t>(c)], kind, bytes);
          if (!stop.load()) ++counts[static_cast<std::size_t>(c)];
        }
      });
  std::this_thread::sleep_for(d);
  stop = true;
  const double secs = std::chrono::duration<double>(Clock::now() - t0).count();
  // The rest are let through by a lifted limit, and not counted.
  t.set({});
  for (auto& th : threads) th.join();
  Counts r{{}, secs};
  for (auto& n : counts) r.per_conn.push_back(n.load());
  return r;
}

// `threads` requests of one connection asked again as soon as granted, on a clock of the
// test's own moved on `step` at a time for `steps` steps. After each step, once every thread
// waits again, exactly what the limits allow by then has been granted, however loaded the
// machine: the count after each step.
std::vector<std::uint64_t> on_own_clock(const std::vector<std::string>& limits, int threads,
                                        std::chrono::milliseconds step, int steps) {
  ThrottleClock clock;  // not started: the test dispatches
  auto ms = std::make_shared<std::atomic<std::int64_t>>(0);
  auto now = [ms] { return Throttle::Clock::time_point(std::chrono::milliseconds(ms->load())); };
  auto t = std::make_shared<Throttle>(clock, parse_limits({}, limits), now);
  std::atomic<std::uint64_t> n{0};
  std::atomic<bool> stop{false};
  std::vector<std::thread> th;
  int conn;
  for (int k = 0; k < threads; ++k)
    th.emplace_back([&] {
      while (!stop) {
        t->admit(&conn, Throttle::Kind::kRead, 0);
        if (!stop) ++n;
      }
    });
  std::vector<std::uint64_t> counts;
  auto settled = [&] {
    for (auto deadline = Clock::now() + 30s; Clock::now() < deadline;)
      if (t->waiting() == static_cast<std::size_t>(threads)) return true;
      else std::this_thread::yield();
    return false;
  };
  for (int i = 0; i <= steps; ++i) {
    if (i > 0) {
      *ms += step.count();
      t->dispatch(now());
    }
    if (!settled()) {
      ADD_FAILURE() << "the threads did not all wait again at step " << i;
      break;
    }
    counts.push_back(n);
  }
  stop = true;
  t->set({});  // lets the last ones through
  for (auto& x : th) x.join();
  return counts;
}

}  // namespace

TEST(Throttle, GrantsExactlyTheRateOnItsOwnClock) {
  // iops=1000: a bucket of 100 (a tenth of a second), one more at zero, then 10 per 10 ms.
  auto n = on_own_clock({"iops=1000"}, 8, 10ms, 150);
  ASSERT_EQ(n.size(), 151u);
  for (std::size_t i = 0; i < n.size(); ++i)
    EXPECT_NEAR(static_cast<double>(n[i]), 101 + 10.0 * static_cast<double>(i), 1) << "step " << i;
}

TEST(Throttle, NeverMoreThanTheRate) {
  ThrottleClock clock;
  clock.start();
  auto t = std::make_shared<Throttle>(clock, parse_limits({}, {"iops=1000"}));
  Counts r = hammer(*t, 4, 8, 1500ms);
  const double allowed = 1000 * r.seconds + 1000 * 0.1 + 1;  // the rate, and a full bucket
  EXPECT_LE(r.total(), allowed);
  EXPECT_GT(t->throttled_requests(), 0u);
}

// The timeline, on a clock of the test's own: one token every 0.1 s (iops=10, a bucket of
// one). Connection A queues three requests, then B one. Each token goes to the next
// connection in turn: A, B, A, A, not A, A, A, B as in arrival order.
TEST(Throttle, WaitingConnectionsAreServedInTurn) {
  ThrottleClock clock;  // not started: the test dispatches
  auto fake = std::make_shared<std::atomic<std::int64_t>>(0);
  auto now = [fake] { return Throttle::Clock::time_point(std::chrono::milliseconds(fake->load())); };
  auto t = std::make_shared<Throttle>(clock, parse_limits({}, {"iops=10"}), now);
  int conn_a, conn_b;
  EXPECT_EQ(t->admit(&conn_a, Throttle::Kind::kRead, 0), 0u) << "the full bucket's token";
  EXPECT_EQ(t->admit(&conn_a, Throttle::Kind::kRead, 0), 0u) << "an empty bucket is not in debt";
  std::atomic<int> done[4] = {};
  std::vector<std::thread> threads;
  auto queue = [&](int id, int* conn) {
    const std::size_t before = t->waiting();
    threads.emplace_back([&, id, conn] {
      t->admit(conn, Throttle::Kind::kRead, 0);
      done[id] = 1;
    });
    const auto deadline = Clock::now() + 30s;  // queued: the arrival order is known
    while (t->waiting() == before && Clock::now() < deadline) std::this_thread::yield();
    EXPECT_EQ(t->waiting(), before + 1) << "request " << id << " did not wait";
  };
  queue(0, &conn_a);
  queue(1, &conn_a);
  queue(2, &conn_a);
  queue(3, &conn_b);
  auto next_granted = [&] {
    *fake += 100;
    t->dispatch(now());
    for (auto deadline = Clock::now() + 30s; Clock::now() < deadline;) {
      for (int id = 0; id < 4; ++id)
        if (done[id] == 1) {
          done[id] = 2;
          return id;
        }
      std::this_thread::yield();
    }
    return -1;
  };
  EXPECT_EQ(next_granted(), 0);
  EXPECT_EQ(next_granted(), 3) << "B waited behind all of A's requests";
  EXPECT_EQ(next_granted(), 1);
  EXPECT_EQ(next_granted(), 2);
  for (auto& th : threads) th.join();
}

// Many waiting requests ask the clock for one wake-up, not one each: the clock's work is per
// throttle, whatever the queue depth.
TEST(Throttle, ManyWaitersOneWakeUp) {
  ThrottleClock clock;  // not started: its queue is looked at
  auto ms = std::make_shared<std::atomic<std::int64_t>>(0);
  auto now = [ms] { return Throttle::Clock::time_point(std::chrono::milliseconds(ms->load())); };
  auto t = std::make_shared<Throttle>(clock, parse_limits({}, {"iops=10"}), now);
  int conn;
  t->admit(&conn, Throttle::Kind::kRead, 0);
  t->admit(&conn, Throttle::Kind::kRead, 0);  // the bucket is in debt now
  std::vector<std::thread> th;
  for (int k = 0; k < 64; ++k) th.emplace_back([&] { t->admit(&conn, Throttle::Kind::kRead, 0); });
  for (auto deadline = Clock::now() + 30s; t->waiting() < 64 && Clock::now() < deadline;)
    std::this_thread::yield();
  ASSERT_EQ(t->waiting(), 64u);
  EXPECT_EQ(clock.pending(), 1u);
  *ms += 100;
  EXPECT_EQ(t->on_clock(now()), Throttle::Clock::time_point(200ms)) << "the next one";
  EXPECT_EQ(t->waiting(), 63u);
  EXPECT_FALSE(t->on_clock(now()).has_value()) << "asked for already";
  t->set({});
  for (auto& x : th) x.join();
}

TEST(Throttle, BytesPerSecondAndIopsSize) {
  ThrottleClock clock;
  clock.start();
  auto t = std::make_shared<Throttle>(clock, parse_limits({}, {"bps=4M"}));
  Counts r = hammer(*t, 2, 4, 1200ms, Throttle::Kind::kWrite, 64 << 10);
  const double allowed = (4 << 20) * (r.seconds + 0.1) / (64 << 10) + 2;
  EXPECT_LE(r.total(), allowed);
  // iops-size: a 256 KiB request counts as 4 I/Os of 64 KiB.
  auto u = std::make_shared<Throttle>(clock, parse_limits({}, {"iops=400", "iops-size=64k"}));
  Counts s = hammer(*u, 1, 4, 1200ms, Throttle::Kind::kRead, 256 << 10);
  EXPECT_LE(s.total(), (400 * (s.seconds + 0.1)) / 4 + 2);
}

TEST(Throttle, ABurstRunsForItsLengthThenTheRateHolds) {
  // iops=200 with bursts to 1000 for 0.5 s: the rate's bucket holds 20 + (1000 - 200) x 0.5
  // = 420, the burst's 100. At first the burst's bucket decides: 101 at once, then 10 per
  // 10 ms, while the rate's bucket drains by 8 per step, until it is in debt after ~0.4 s
  // (about 500 requests: 1000 x 0.5). From then on the rate holds: 2 per 10 ms.
  auto n = on_own_clock({"iops=200", "iops-max=1000", "iops-max-length=0.5"}, 8, 10ms, 200);
  ASSERT_EQ(n.size(), 201u);
  EXPECT_NEAR(static_cast<double>(n[0]), 101, 1);
  EXPECT_NEAR(static_cast<double>(n[30]), 101 + 300, 2) << "the burst rate";
  EXPECT_NEAR(static_cast<double>(n[200] - n[100]), 200, 2) << "the rate, after the burst";
  EXPECT_NEAR(static_cast<double>(n[200]), 421 + 200 * 2.0, 2) << "the bucket, and the rate";
}

TEST(Throttle, AChangeTakesEffectAtOnce) {
  ThrottleClock clock;
  clock.start();
  auto t = std::make_shared<Throttle>(clock, parse_limits({}, {"iops=2000"}));
  std::atomic<std::uint64_t> n{0};
  std::atomic<bool> stop{false};
  std::vector<std::thread> threads;
  for (int k = 0; k < 8; ++k)
    threads.emplace_back([&] { while (!stop) { t->admit(&n, Throttle::Kind::kRead, 0); ++n; } });
  std::this_thread::sleep_for(300ms);
  t->set(parse_limits({}, {"iops=100"}));
  const auto t1 = Clock::now();
  const std::uint64_t at_change = n;
  std::this_thread::sleep_for(1000ms);
  const double secs = std::chrono::duration<double>(Clock::now() - t1).count();
  const std::uint64_t after = n - at_change;
  stop = true;
  t->set({});
  for (auto& th : threads) th.join();
  // The old bucket is cut to the new depth at once: 100/s from the change on (plus the
  // requests already granted and counting, one per thread).
  EXPECT_LE(after, 100 * secs + 10 + 8 + 1);
}

TEST(Throttle, WithoutLimitsNothingWaits) {
  ThrottleClock clock;  // never started: nothing may need it
  auto t = std::make_shared<Throttle>(clock, ThrottleLimits{});
  int c;
  for (int i = 0; i < 100000; ++i) EXPECT_EQ(t->admit(&c, Throttle::Kind::kWrite, 1 << 20), 0u);
  EXPECT_EQ(t->throttled_requests(), 0u);
}

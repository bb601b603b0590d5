// Throttling of one export, or of a group of exports sharing one budget: IOPS and bytes per
// second, read, write and total, each a token bucket refilled at its rate, with an optional
// burst (a second bucket refilled at the burst rate, the first one deep enough to last the
// burst's length). A request that finds its buckets empty waits its turn: the connections
// with waiting requests are served round-robin, one request each, so four connections share
// the budget whatever each one's queue depth. A throttled request waits before it touches
// anything another request needs (bounce memory, range locks, AIO slots, the drain gate),
// in its own nbdkit worker thread: throttling one export never slows another. One clock
// thread per server wakes the throttles whose next request can go.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <queue>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "loopdio/throttle_limits.h"

namespace loopdio {

class ThrottleClock;

class Throttle : public std::enable_shared_from_this<Throttle> {
 public:
  using Clock = std::chrono::steady_clock;
  enum class Kind { kRead, kWrite };

  // `now` is the clock it reads (tests give their own, and dispatch by hand).
  Throttle(ThrottleClock& clock, const ThrottleLimits& limits,
           std::function<Clock::time_point()> now = &Clock::now);

  // Changes the limits now: waiting requests are looked at again at once.
  void set(const ThrottleLimits& limits);
  ThrottleLimits limits() const;

  // Waits until a request of connection `conn` (any address that tells connections apart)
  // of `kind`, moving `bytes`, may go (trim and zero pass 0 bytes: one write I/O). Returns
  // the nanoseconds it waited. Without limits it returns at once, touching nothing shared.
  std::uint64_t admit(const void* conn, Kind kind, std::uint64_t bytes) {
    if (!active_.load(std::memory_order_acquire)) return 0;
    return admit_slow(conn, kind, bytes);
  }

  // For the clock: grants every request that can go at `now`, in turn; the time the next
  // one can, if one waits.
  std::optional<Clock::time_point> dispatch(Clock::time_point now);
  // For the clock, at a wake-up it was asked for: dispatches; the time to wake this throttle
  // next, when no wake-up as early is asked for already (one per throttle, not one per
  // waiting request).
  std::optional<Clock::time_point> on_clock(Clock::time_point now);

  std::size_t waiting() const {
    std::lock_guard lock(mu_);
    return waiting_;
  }
  std::uint64_t throttled_ns() const { return throttled_ns_.load(std::memory_order_relaxed); }
  std::uint64_t throttled_requests() const { return throttled_.load(std::memory_order_relaxed); }

 private:
  struct Waiter;
  struct Queue {  // one connection's waiting requests, oldest first
    std::deque<Waiter*> waiting;
  };
  std::uint64_t admit_slow(const void* conn, Kind kind, std::uint64_t bytes);
  struct State {
    double level = 0;  // tokens of the rate bucket (negative: owed)
    double burst = 0;  // tokens of the burst bucket
  };
  void configure(const ThrottleLimits& l, Clock::time_point now);  // under mu_
  void refill(Clock::time_point now);
  double wait_seconds(Kind kind, std::uint64_t bytes) const;  // 0: may go now
  void consume(Kind kind, std::uint64_t bytes);
  std::optional<Clock::time_point> dispatch_locked(Clock::time_point now);
  // Under mu_: whether the clock is to be asked to wake this throttle at `next`.
  bool schedule(std::optional<Clock::time_point> next);

  ThrottleClock& clock_;
  const std::function<Clock::time_point()> now_;
  mutable std::mutex mu_;  // protects everything below
  ThrottleLimits limits_;
  std::array<State, kBuckets> state_{};
  Clock::time_point last_;
  std::unordered_map<const void*, Queue> queues_;  // connections with waiting requests
  std::list<const void*> ring_;                     // those connections, in turn
  std::size_t waiting_ = 0;
  std::optional<Clock::time_point> scheduled_;      // the clock's next wake-up asked for
  std::atomic<bool> active_{false};  // limited, or requests wait: admit looks at the buckets
  std::atomic<std::uint64_t> throttled_ns_{0}, throttled_{0};
};

// The server's one thread that wakes throttles when their next request can go.
class ThrottleClock {
 public:
  ThrottleClock() = default;
  ThrottleClock(const ThrottleClock&) = delete;
  ThrottleClock& operator=(const ThrottleClock&) = delete;
  ~ThrottleClock();

  // Starts the thread (after nbdkit has forked). Throws std::system_error.
  void start();
  // `t` is to be dispatched at `when`.
  void wake_at(const std::shared_ptr<Throttle>& t, Throttle::Clock::time_point when);
  // Wake-ups waiting to happen.
  std::size_t pending() {
    std::lock_guard lock(mu_);
    return due_.size();
  }

 private:
  void run();
  struct Entry {
    Throttle::Clock::time_point when;
    std::weak_ptr<Throttle> throttle;
    bool operator>(const Entry& o) const { return when > o.when; }
  };
  std::mutex mu_;  // protects what follows
  std::condition_variable cv_;
  std::priority_queue<Entry, std::vector<Entry>, std::greater<Entry>> due_;
  bool stop_ = false;
  std::thread thread_;
};

// The server's named groups of exports that share one budget (a VM's several disks): made
// by the limits file or `set limits group:NAME ...`, never removed (an export may name one
// at any time).
class ThrottleGroups {
 public:
  explicit ThrottleGroups(ThrottleClock& clock) : clock_(clock) {}
  // Makes group `name` with `limits`, or changes its limits. Throws loopdio::Error for a
  // name that cannot name a group.
  void set(const std::string& name, const ThrottleLimits& limits);
  // The group, or null.
  std::shared_ptr<Throttle> find(const std::string& name) const;
  // The group, or a loopdio::Error naming it when there is none.
  std::shared_ptr<Throttle> get(const std::string& name) const;
  std::vector<std::pair<std::string, std::shared_ptr<Throttle>>> all() const;

 private:
  ThrottleClock& clock_;
  mutable std::mutex mu_;  // protects groups_
  std::map<std::string, std::shared_ptr<Throttle>> groups_;
};

}  // namespace loopdio

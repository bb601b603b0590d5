// A gate every request passes through, so that a run-time switch (direct I/O on or off) can
// stop new requests, wait until none is in flight on any connection, act, and reopen. The
// request side is two atomic operations when no switch is under way.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>

namespace loopdio {

class DrainGate {
 public:
  // Held by a request from before it looks at the I/O mode until its I/O is done.
  class Pass {
   public:
    explicit Pass(DrainGate& g) : g_(g) { g_.enter(); }
    Pass(const Pass&) = delete;
    Pass& operator=(const Pass&) = delete;
    ~Pass() { g_.leave(); }

   private:
    DrainGate& g_;
  };

  // Closes the gate, waits for every request in flight, runs `fn`, reopens (also when `fn`
  // throws). One at a time. Returns how long the gate was closed: the pause clients saw.
  std::chrono::nanoseconds drained(const std::function<void()>& fn);

  unsigned in_flight() const { return inflight_.load(); }
  // How many times the gate has been closed, and for how long in all: what `status` shows,
  // so that a command that must not pause the export can be seen not to have.
  std::uint64_t drains() const { return drains_.load(std::memory_order_relaxed); }
  std::uint64_t closed_ns() const { return closed_ns_.load(std::memory_order_relaxed); }

 private:
  void enter();
  void leave();

  std::atomic<unsigned> inflight_{0};
  std::atomic<bool> closing_{false};
  std::mutex mu_;               // pairs with cv_; guards the sleeps on both sides
  std::condition_variable cv_;  // signalled when the last request leaves, and on reopening
  std::mutex switch_mu_;        // one drained() at a time
  std::atomic<std::uint64_t> drains_{0}, closed_ns_{0};
};

}  // namespace loopdio

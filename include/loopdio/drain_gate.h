// A gate every request passes through, so that a run-time switch (direct I/O on or off) can
// stop new requests, wait until none is in flight on any connection, act, and reopen. The
// request side is two atomic operations when no switch is under way.
#pragma once

#include <atomic>
#include <condition_variable>
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

  // Closes the gate, waits for every request in flight, runs `fn`, reopens. One at a time.
  void drained(const std::function<void()>& fn);

  unsigned in_flight() const { return inflight_.load(); }

 private:
  void enter();
  void leave();

  std::atomic<unsigned> inflight_{0};
  std::atomic<bool> closing_{false};
  std::mutex mu_;               // pairs with cv_; guards the sleeps on both sides
  std::condition_variable cv_;  // signalled when the last request leaves, and on reopening
  std::mutex switch_mu_;        // one drained() at a time
};

}  // namespace loopdio

// The drain gate; see drain_gate.h. Requests and the switch order themselves Dekker-style:
// a request announces itself (inflight_) and then looks at closing_; the switch raises
// closing_ and then looks at inflight_. With sequentially consistent operations at least
// one of the two sees the other, so no request slips past a closing gate.
#include "loopdio/drain_gate.h"

namespace loopdio {

void DrainGate::enter() {
  for (;;) {
    inflight_.fetch_add(1);
    if (!closing_.load()) return;
    leave();  // a switch is under way: step back until it is over
    std::unique_lock lk(mu_);
    cv_.wait(lk, [&] { return !closing_.load(); });
  }
}

void DrainGate::leave() {
  if (inflight_.fetch_sub(1) == 1 && closing_.load()) {
    std::lock_guard lk(mu_);
    cv_.notify_all();
  }
}

std::chrono::nanoseconds DrainGate::drained(const std::function<void()>& fn) {
  using Clock = std::chrono::steady_clock;
  std::lock_guard one(switch_mu_);
  // Reopens once: after fn, or on the way out when the wait or fn throws.
  struct Reopen {
    DrainGate& g;
    Clock::time_point closed = Clock::now();
    bool open = false;
    std::chrono::nanoseconds now() {
      {
        std::lock_guard lk(g.mu_);
        g.closing_.store(false);
      }
      g.cv_.notify_all();
      open = true;
      auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - closed);
      g.drains_.fetch_add(1, std::memory_order_relaxed);
      g.closed_ns_.fetch_add(static_cast<std::uint64_t>(ns.count()), std::memory_order_relaxed);
      return ns;
    }
    ~Reopen() {
      if (!open) now();
    }
  } reopen{*this};
  closing_.store(true);
  {
    std::unique_lock lk(mu_);
    cv_.wait(lk, [&] { return inflight_.load() == 0; });
  }
  fn();
  return reopen.now();
}

}  // namespace loopdio

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

void DrainGate::drained(const std::function<void()>& fn) {
  std::lock_guard one(switch_mu_);
  closing_.store(true);
  struct Reopen {
    DrainGate& g;
    ~Reopen() {
      {
        std::lock_guard lk(g.mu_);
        g.closing_.store(false);
      }
      g.cv_.notify_all();
    }
  } reopen{*this};
  {
    std::unique_lock lk(mu_);
    cv_.wait(lk, [&] { return inflight_.load() == 0; });
  }
  fn();
}

}  // namespace loopdio

// Token-bucket throttling with bursts and round-robin between connections; see throttle.h.
//
// Each limited bucket holds `level` tokens, refilled at its rate up to a depth of a tenth of
// a second of it (plus, with a burst, (burst - rate) x burst length: what running at the
// burst rate for that long draws beyond the rate), and with a burst a second bucket refilled
// at the burst rate, a tenth of a second deep, that holds the burst itself. A request may go
// when every bucket it draws from is not in debt; it then takes its cost, which may leave a
// bucket in debt (a 1 MiB request under a 100 KiB-deep bucket), repaid before the next one.
#include "loopdio/throttle.h"

#include <algorithm>
#include <cmath>

#include "loopdio/error.h"

namespace loopdio {
namespace {

constexpr double kGranule = 0.1;  // seconds of the rate a bucket holds when full
// The clock's shortest step, in seconds: at 2,000 IOPS it grants 20 requests every 10 ms,
// not one every 0.5 ms, so a throttled export costs the host a hundred wake-ups a second,
// not thousands. A tenth of the bucket's depth: the rate holds exactly.
constexpr double kTick = 0.01;

double depth(const BucketLimit& b) {
  return b.rate * kGranule + (b.max > 0 ? (b.max - b.rate) * b.max_length : 0);
}

}  // namespace

struct Throttle::Waiter {
  Kind kind;
  std::uint64_t bytes;
  std::condition_variable cv;
  bool granted = false;  // under the throttle's mutex
};

Throttle::Throttle(ThrottleClock& clock, const ThrottleLimits& limits,
                   std::function<Clock::time_point()> now)
    : clock_(clock), now_(std::move(now)) {
  last_ = now_();
  configure(limits, last_);
}

void Throttle::configure(const ThrottleLimits& l, Clock::time_point now) {
  refill(now);
  for (int i = 0; i < kBuckets; ++i) {
    const BucketLimit& was = limits_.bucket[static_cast<std::size_t>(i)];
    const BucketLimit& b = l.bucket[static_cast<std::size_t>(i)];
    State& s = state_[static_cast<std::size_t>(i)];
    if (was.rate == 0) s = {depth(b), b.max * kGranule};  // newly limited: a full bucket
    s.level = std::min(s.level, depth(b));
    s.burst = std::min(s.burst, b.max * kGranule);
  }
  limits_ = l;
  active_.store(l.any() || waiting_ > 0, std::memory_order_release);
}

void Throttle::refill(Clock::time_point now) {
  const double dt = std::chrono::duration<double>(now - last_).count();
  if (dt <= 0) return;
  last_ = now;
  for (int i = 0; i < kBuckets; ++i) {
    const BucketLimit& b = limits_.bucket[static_cast<std::size_t>(i)];
    State& s = state_[static_cast<std::size_t>(i)];
    if (b.rate == 0) continue;
    s.level = std::min(depth(b), s.level + b.rate * dt);
    if (b.max > 0) s.burst = std::min(b.max * kGranule, s.burst + b.max * dt);
  }
}

// The buckets a request draws from, and what it costs in each.
template <typename F>
void for_each_draw(const ThrottleLimits& l, Throttle::Kind kind, std::uint64_t bytes, F&& f) {
  const bool read = kind == Throttle::Kind::kRead;
  double ios = 1;
  if (l.iops_size && bytes > l.iops_size)
    ios = std::ceil(static_cast<double>(bytes) / static_cast<double>(l.iops_size));
  const auto n = static_cast<double>(bytes);
  f(kIopsTotal, ios);
  f(read ? kIopsRead : kIopsWrite, ios);
  f(kBpsTotal, n);
  f(read ? kBpsRead : kBpsWrite, n);
}

double Throttle::wait_seconds(Kind kind, std::uint64_t bytes) const {
  double wait = 0;
  for_each_draw(limits_, kind, bytes, [&](int i, double) {
    const BucketLimit& b = limits_.bucket[static_cast<std::size_t>(i)];
    const State& s = state_[static_cast<std::size_t>(i)];
    if (b.rate == 0) return;
    if (s.level < 0) wait = std::max(wait, -s.level / b.rate);
    if (b.max > 0 && s.burst < 0) wait = std::max(wait, -s.burst / b.max);
  });
  return wait;
}

void Throttle::consume(Kind kind, std::uint64_t bytes) {
  for_each_draw(limits_, kind, bytes, [&](int i, double cost) {
    const BucketLimit& b = limits_.bucket[static_cast<std::size_t>(i)];
    State& s = state_[static_cast<std::size_t>(i)];
    if (b.rate == 0) return;
    s.level -= cost;
    if (b.max > 0) s.burst -= cost;
  });
}

void Throttle::set(const ThrottleLimits& limits) {
  std::optional<Clock::time_point> next;
  {
    std::lock_guard lock(mu_);
    const auto now = now_();
    configure(limits, now);
    next = dispatch_locked(now);
    if (!schedule(next)) next.reset();
  }
  if (next) clock_.wake_at(shared_from_this(), *next);
}

bool Throttle::schedule(std::optional<Clock::time_point> next) {
  if (!next || (scheduled_ && *scheduled_ <= *next)) return false;
  scheduled_ = next;
  return true;
}

std::optional<Throttle::Clock::time_point> Throttle::on_clock(Clock::time_point now) {
  std::lock_guard lock(mu_);
  if (scheduled_ && *scheduled_ <= now) scheduled_.reset();  // this is that wake-up
  std::optional<Clock::time_point> next = dispatch_locked(now);
  return schedule(next) ? next : std::nullopt;
}

ThrottleLimits Throttle::limits() const {
  std::lock_guard lock(mu_);
  return limits_;
}

std::optional<Throttle::Clock::time_point> Throttle::dispatch_locked(Clock::time_point now) {
  refill(now);
  while (!ring_.empty()) {
    const void* conn = ring_.front();
    Queue& q = queues_[conn];
    Waiter* w = q.waiting.front();
    const double wait = wait_seconds(w->kind, w->bytes);
    if (wait > 0)  // no sooner than a tick from now: the tokens of a tick go out together
      return now + std::chrono::duration_cast<Clock::duration>(
                       std::chrono::duration<double>(std::max(wait, kTick)));
    consume(w->kind, w->bytes);
    w->granted = true;
    w->cv.notify_one();  // under the mutex: the waiter cannot leave before this returns
    q.waiting.pop_front();
    --waiting_;
    ring_.pop_front();  // its turn is over: to the back of the round, if it waits again
    if (q.waiting.empty())
      queues_.erase(conn);
    else
      ring_.push_back(conn);
  }
  active_.store(limits_.any(), std::memory_order_release);
  return std::nullopt;
}

std::optional<Throttle::Clock::time_point> Throttle::dispatch(Clock::time_point now) {
  std::lock_guard lock(mu_);
  return dispatch_locked(now);
}

std::uint64_t Throttle::admit_slow(const void* conn, Kind kind, std::uint64_t bytes) {
  std::unique_lock lock(mu_);
  auto now = now_();
  refill(now);
  if (waiting_ == 0 && wait_seconds(kind, bytes) == 0) {
    consume(kind, bytes);
    return 0;
  }
  Waiter w{kind, bytes, {}};
  Queue& q = queues_[conn];  // may throw: nothing changed yet
  q.waiting.push_back(&w);
  if (q.waiting.size() == 1) {
    try {
      ring_.push_back(conn);
    } catch (...) {
      queues_.erase(conn);
      throw;
    }
  }
  ++waiting_;
  active_.store(true, std::memory_order_release);
  std::optional<Clock::time_point> next = dispatch_locked(now);
  // From here on nothing may throw: the waiter is queued. Should the clock fail to take
  // the wake-up (out of memory), this thread dispatches for itself every 10 ms.
  bool woken = true;
  if (!w.granted && schedule(next)) {
    lock.unlock();
    try {
      clock_.wake_at(shared_from_this(), *next);
    } catch (...) {
      woken = false;
    }
    lock.lock();
    if (!woken) scheduled_.reset();
  }
  while (!w.granted) {
    if (woken) {
      w.cv.wait(lock, [&] { return w.granted; });
    } else {
      w.cv.wait_for(lock, std::chrono::milliseconds(10));
      dispatch_locked(now_());
    }
  }
  const auto ns = static_cast<std::uint64_t>(
      std::chrono::duration_cast<std::chrono::nanoseconds>(now_() - now).count());
  throttled_ns_.fetch_add(ns, std::memory_order_relaxed);
  throttled_.fetch_add(1, std::memory_order_relaxed);
  return ns;
}

ThrottleClock::~ThrottleClock() {
  {
    std::lock_guard lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void ThrottleClock::start() { thread_ = std::thread([this] { run(); }); }

void ThrottleClock::wake_at(const std::shared_ptr<Throttle>& t, Throttle::Clock::time_point when) {
  bool sooner;
  {
    std::lock_guard lock(mu_);
    sooner = due_.empty() || when < due_.top().when;
    due_.push({when, t});
  }
  if (sooner) cv_.notify_one();
}

void ThrottleClock::run() {
  std::unique_lock lock(mu_);
  while (!stop_) {
    if (due_.empty()) {
      cv_.wait(lock);
      continue;
    }
    const auto when = due_.top().when;
    if (Throttle::Clock::now() < when) {
      cv_.wait_until(lock, when);
      continue;
    }
    std::vector<std::weak_ptr<Throttle>> ready;
    const auto now = Throttle::Clock::now();
    try {
      while (!due_.empty() && due_.top().when <= now) {
        ready.push_back(due_.top().throttle);
        due_.pop();
      }
    } catch (...) {  // out of memory: what was taken is dispatched, the rest next round
    }
    lock.unlock();
    for (const std::weak_ptr<Throttle>& w : ready) {
      auto t = w.lock();
      if (!t) continue;
      for (auto next = t->on_clock(now); next;) {
        try {
          wake_at(t, *next);
          break;
        } catch (...) {  // out of memory: the wake-up is taken again shortly
          std::this_thread::sleep_for(std::chrono::milliseconds(10));
        }
      }
    }
    lock.lock();
  }
}

void ThrottleGroups::set(const std::string& name, const ThrottleLimits& limits) {
  check_group_name(name);
  if (!limits.group.empty()) throw Error("group:" + name + ": a group cannot be in a group");
  std::shared_ptr<Throttle> t;
  {
    std::lock_guard lock(mu_);
    auto& g = groups_[name];
    if (!g) {
      g = std::make_shared<Throttle>(clock_, limits);
      return;
    }
    t = g;
  }
  t->set(limits);
}

std::shared_ptr<Throttle> ThrottleGroups::find(const std::string& name) const {
  std::lock_guard lock(mu_);
  auto it = groups_.find(name);
  return it != groups_.end() ? it->second : nullptr;
}

std::shared_ptr<Throttle> ThrottleGroups::get(const std::string& name) const {
  std::shared_ptr<Throttle> t = find(name);
  if (!t)
    throw Error("group=" + name + ": no such group (make it first: set limits group:" + name +
                " iops=... bps=..., or in the limits file)");
  return t;
}

std::vector<std::pair<std::string, std::shared_ptr<Throttle>>> ThrottleGroups::all() const {
  std::lock_guard lock(mu_);
  return {groups_.begin(), groups_.end()};
}

}  // namespace loopdio

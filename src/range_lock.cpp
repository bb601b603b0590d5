// Range locks: a list of held and waiting ranges in arrival order under one mutex. The list
// is short (at most the requests in flight), so a linear scan beats any tree.
#include "loopdio/range_lock.h"

namespace loopdio {

RangeLock::Guard::Guard(RangeLock& lock, std::uint64_t start, std::uint64_t end, bool exclusive)
    : lock_(lock), start_(start), end_(end), exclusive_(exclusive) {
  std::unique_lock lk(lock_.mu_);
  prev_ = lock_.tail_;
  if (lock_.tail_)
    lock_.tail_->next_ = this;
  else
    lock_.head_ = this;
  lock_.tail_ = this;
  lock_.cv_.wait(lk, [&] { return !lock_.blocked(*this); });
}

RangeLock::Guard::~Guard() {
  {
    std::lock_guard lk(lock_.mu_);
    (prev_ ? prev_->next_ : lock_.head_) = next_;
    (next_ ? next_->prev_ : lock_.tail_) = prev_;
  }
  lock_.cv_.notify_all();
}

// Blocked while any older range overlaps it and either of the two is exclusive.
bool RangeLock::blocked(const Guard& g) const {
  for (const Guard* o = head_; o != &g; o = o->next_) {
    if ((g.exclusive_ || o->exclusive_) && o->start_ < g.end_ && g.start_ < o->end_) return true;
  }
  return false;
}

std::size_t RangeLock::size() {
  std::lock_guard lk(mu_);
  std::size_t n = 0;
  for (const Guard* o = head_; o; o = o->next_) ++n;
  return n;
}

}  // namespace loopdio

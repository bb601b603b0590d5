// The server's bounded, fairly shared bounce memory; see bounce_pool.h.
//
// Who is served when memory comes back: waiters in arrival order, skipping those held back
// only by their own connection's or export's share (they wait for their own leases, and
// keep nobody else waiting). The first waiter that is not held back but finds no block large
// enough stops the round: later, smaller requests do not overtake it, so none starves.
#include "loopdio/bounce_pool.h"

#include <sys/mman.h>

#include <algorithm>
#include <bit>
#include <new>
#include <utility>

namespace loopdio {

struct BouncePool::Waiter {
  Client* client;
  std::size_t size;
  int order;
  std::condition_variable cv;
  char* data = nullptr;  // set, under the pool's mutex, when granted
};

BouncePool::Lease::Lease(Lease&& o) noexcept
    : pool_(std::exchange(o.pool_, nullptr)),
      client_(std::exchange(o.client_, nullptr)),
      data_(std::exchange(o.data_, nullptr)),
      size_(std::exchange(o.size_, 0)) {}

BouncePool::Lease& BouncePool::Lease::operator=(Lease&& o) noexcept {
  if (this != &o) {
    reset();
    pool_ = std::exchange(o.pool_, nullptr);
    client_ = std::exchange(o.client_, nullptr);
    data_ = std::exchange(o.data_, nullptr);
    size_ = std::exchange(o.size_, 0);
  }
  return *this;
}

void BouncePool::Lease::reset() {
  if (pool_) pool_->give_back(client_, data_, size_);
  pool_ = nullptr;
  client_ = nullptr;
  data_ = nullptr;
  size_ = 0;
}

BouncePool::Group::Group(BouncePool& pool) : pool_(pool) {
  std::lock_guard lock(pool_.mu_);
  ++pool_.groups_;
}

BouncePool::Group::~Group() {
  std::lock_guard lock(pool_.mu_);
  --pool_.groups_;
  pool_.dispatch();  // every other export's share just grew
}

BouncePool::BouncePool(std::size_t total, std::size_t per_client, unsigned min_groups)
    : total_(std::max(total / kMinBuffer * kMinBuffer, kMinBuffer)),
      per_client_(std::min(std::max(per_client, kMinBuffer), total_)),
      window_(std::min(kMaxWindow, std::bit_floor(per_client_))),
      min_groups_(std::max(min_groups, 1u)),
      max_order_(std::countr_zero(window_) - std::countr_zero(kMinBuffer)) {
  // Reserved now, untouched until used: it counts against RLIMIT_DATA from the start (so
  // a memory limit can never take it away later), and costs RSS only as it is used.
  mapped_ = total_ + kAlign;
  void* p = ::mmap(nullptr, mapped_, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) throw std::bad_alloc();
  region_ = static_cast<char*>(p);
  auto addr = reinterpret_cast<std::uintptr_t>(region_);
  base_ = region_ + ((kAlign - addr % kAlign) % kAlign);
  const auto units = static_cast<std::uint32_t>(total_ / kMinBuffer);
  heads_.assign(static_cast<std::size_t>(max_order_) + 1, kNone);
  next_.assign(units, kNone);
  prev_.assign(units, kNone);
  free_order_.assign(units, -1);
  touched_.assign(units, false);
  // The largest aligned blocks that fit, from the start of the region.
  for (std::uint32_t u = 0; u < units;) {
    int o = max_order_;
    while (o > 0 && ((u & ((1u << o) - 1)) != 0 || u + (1u << o) > units)) --o;
    push_free(u, o);
    u += 1u << o;
  }
}

BouncePool::~BouncePool() { ::munmap(region_, mapped_); }

void BouncePool::push_free(std::uint32_t u, int o) {
  auto& head = heads_[static_cast<std::size_t>(o)];
  free_order_[u] = static_cast<std::int8_t>(o);
  prev_[u] = kNone;
  next_[u] = head;
  if (head != kNone) prev_[head] = u;
  head = u;
}

void BouncePool::unlink_free(std::uint32_t u, int o) {
  if (prev_[u] != kNone)
    next_[prev_[u]] = next_[u];
  else
    heads_[static_cast<std::size_t>(o)] = next_[u];
  if (next_[u] != kNone) prev_[next_[u]] = prev_[u];
  free_order_[u] = -1;
}

char* BouncePool::take(int order) {
  int o = order;
  while (o <= max_order_ && heads_[static_cast<std::size_t>(o)] == kNone) ++o;
  if (o > max_order_) return nullptr;
  std::uint32_t u = heads_[static_cast<std::size_t>(o)];
  unlink_free(u, o);
  while (o > order) {  // split, keeping the lower half
    --o;
    push_free(u + (1u << o), o);
  }
  for (std::uint32_t i = u; i < u + (1u << order); ++i)
    if (!touched_[i]) {
      touched_[i] = true;
      resident_ += kMinBuffer;
    }
  return base_ + std::size_t{u} * kMinBuffer;
}

void BouncePool::put(std::uint32_t u, int o) {
  const auto units = static_cast<std::uint32_t>(free_order_.size());
  while (o < max_order_) {  // merge with the buddy while it is free and whole
    std::uint32_t buddy = u ^ (1u << o);
    if (buddy >= units || free_order_[buddy] != o) break;
    unlink_free(buddy, o);
    u = std::min(u, buddy);
    ++o;
  }
  push_free(u, o);
}

std::size_t BouncePool::group_cap() const {
  return std::max(window_, total_ / std::max(groups_, min_groups_));
}

bool BouncePool::held_back(const Client* c, std::size_t size) const {
  if (!c) return false;
  if (c->held_ + size > per_client_) return true;
  return c->group_ && c->group_->held_ + size > group_cap();
}

void BouncePool::charge(Client* c, std::size_t size, int sign) {
  if (sign > 0) {
    leased_ += size;
    peak_ = std::max(peak_, leased_);
  } else {
    leased_ -= size;
  }
  if (!c) return;
  c->held_ = sign > 0 ? c->held_ + size : c->held_ - size;
  if (c->group_) c->group_->held_ = sign > 0 ? c->group_->held_ + size : c->group_->held_ - size;
}

void BouncePool::dispatch() {
  for (std::size_t i = 0; i < waiters_.size();) {
    Waiter* w = waiters_[i];
    if (held_back(w->client, w->size)) {
      ++i;
      continue;
    }
    char* p = take(w->order);
    if (!p) break;  // it waits for the total: nobody behind it may pass
    charge(w->client, w->size, +1);
    w->data = p;
    waiters_.erase(waiters_.begin() + static_cast<std::ptrdiff_t>(i));
    w->cv.notify_one();  // under the mutex: the waiter cannot leave before this returns
  }
}

BouncePool::Lease BouncePool::acquire(Client* client, std::size_t bytes) {
  const std::size_t size = std::bit_ceil(std::max(bytes, kMinBuffer));
  if (size > window_) throw std::bad_alloc();  // a caller bug: requests are windowed
  const int order = std::countr_zero(size) - std::countr_zero(kMinBuffer);
  std::unique_lock lock(mu_);
  const bool someone_first = std::any_of(waiters_.begin(), waiters_.end(), [&](Waiter* w) {
    return !held_back(w->client, w->size);
  });
  char* data = someone_first || held_back(client, size) ? nullptr : take(order);
  if (data) {
    charge(client, size, +1);
  } else {
    Waiter w{client, size, order, {}};
    waiters_.push_back(&w);
    ++waits_;
    w.cv.wait(lock, [&] { return w.data != nullptr; });
    data = w.data;
  }
  Lease l;
  l.pool_ = this;
  l.client_ = client;
  l.data_ = data;
  l.size_ = size;
  return l;
}

void BouncePool::give_back(Client* client, char* data, std::size_t size) noexcept {
  std::lock_guard lock(mu_);
  charge(client, size, -1);
  put(static_cast<std::uint32_t>((data - base_) / kMinBuffer),
      std::countr_zero(size) - std::countr_zero(kMinBuffer));
  dispatch();
}

void BouncePool::trim(std::size_t keep) noexcept {
  std::lock_guard lock(mu_);
  if (resident_ - leased_ <= keep) return;  // (leased blocks are all resident)
  for (int o = 0; o <= max_order_; ++o)
    for (std::uint32_t u = heads_[static_cast<std::size_t>(o)]; u != kNone; u = next_[u]) {
      const std::uint32_t end = u + (1u << o);
      if (std::none_of(touched_.begin() + u, touched_.begin() + end, [](bool t) { return t; }))
        continue;
      if (::madvise(base_ + std::size_t{u} * kMinBuffer, std::size_t{1u << o} * kMinBuffer,
                    MADV_DONTNEED) != 0)
        continue;  // kept resident, and counted so
      for (std::uint32_t i = u; i < end; ++i)
        if (touched_[i]) {
          touched_[i] = false;
          resident_ -= kMinBuffer;
        }
    }
}

BouncePool::Stats BouncePool::stats() {
  std::lock_guard lock(mu_);
  return {leased_, resident_ - leased_, peak_, resident_, waits_};
}

}  // namespace loopdio

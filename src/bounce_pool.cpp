// The bounded pool of bounce buffers; see bounce_pool.h.
#include "loopdio/bounce_pool.h"

#include <bit>
#include <cstdlib>
#include <new>
#include <utility>

namespace loopdio {

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

BouncePool::BouncePool(std::size_t total, std::size_t per_client)
    : total_(std::max(total, kMinBuffer)),
      per_client_(std::min(std::max(per_client, kMinBuffer), total_)),
      window_(std::min(kMaxWindow, std::bit_floor(per_client_))) {
  free_.resize(static_cast<std::size_t>(size_class(window_)) + 1);
}

BouncePool::~BouncePool() {
  for (auto& list : free_)
    for (char* p : list) std::free(p);
}

int BouncePool::size_class(std::size_t size) {
  return std::countr_zero(size) - std::countr_zero(kMinBuffer);
}

char* BouncePool::take_buffer(std::size_t size) {
  std::vector<char*>& same = free_[static_cast<std::size_t>(size_class(size))];
  if (!same.empty()) {
    char* p = same.back();
    same.pop_back();
    cached_ -= size;
    return p;
  }
  // Room for a new one: drop cached buffers of other sizes until it fits.
  for (std::size_t c = free_.size(); c-- > 0 && leased_ + cached_ + size > total_;) {
    while (!free_[c].empty() && leased_ + cached_ + size > total_) {
      std::free(free_[c].back());
      free_[c].pop_back();
      cached_ -= kMinBuffer << c;
    }
  }
  void* p = nullptr;
  if (posix_memalign(&p, kAlign, size) != 0) throw std::bad_alloc();
  return static_cast<char*>(p);
}

BouncePool::Lease BouncePool::acquire(Client* client, std::size_t bytes) {
  const std::size_t size = std::bit_ceil(std::max(bytes, kMinBuffer));
  if (size > window_) throw std::bad_alloc();  // a caller bug: requests are windowed
  std::unique_lock lock(mu_);
  auto fits = [&] {
    return (!client || client->held + size <= per_client_) && leased_ + size <= total_;
  };
  if (!fits() || serving_ != next_ticket_) {
    ++waits_;
    const std::uint64_t ticket = next_ticket_++;
    cv_.wait(lock, [&] { return serving_ == ticket && fits(); });
    ++serving_;
    cv_.notify_all();  // the next in line may fit too
  }
  char* p = take_buffer(size);
  leased_ += size;
  peak_ = std::max(peak_, leased_ + cached_);
  if (client) client->held += size;
  Lease l;
  l.pool_ = this;
  l.client_ = client;
  l.data_ = p;
  l.size_ = size;
  return l;
}

void BouncePool::give_back(Client* client, char* data, std::size_t size) noexcept {
  bool wake;
  {
    std::lock_guard lock(mu_);
    leased_ -= size;
    if (client) client->held -= size;
    try {
      free_[static_cast<std::size_t>(size_class(size))].push_back(data);
      cached_ += size;
    } catch (const std::bad_alloc&) {
      std::free(data);
    }
    wake = serving_ != next_ticket_;
  }
  if (wake) cv_.notify_all();
}

BouncePool::Stats BouncePool::stats() {
  std::lock_guard lock(mu_);
  return {leased_, cached_, peak_, waits_};
}

}  // namespace loopdio

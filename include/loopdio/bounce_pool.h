// The bounce buffers of one export: aligned memory that unaligned requests (and requests in
// nbdkit's unaligned buffers) go through under O_DIRECT. Bounded twice: the whole server
// holds at most `total` bytes of them, and one connection at most `per_client` at a time; a
// request that would exceed either waits for memory to come back (in arrival order), so no
// client can make the server's memory grow, and none fails for want of a buffer. Freed
// buffers are kept for reuse within the same bound, so memory stays flat.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <vector>

namespace loopdio {

class BouncePool {
 public:
  static constexpr std::size_t kMinBuffer = 64 * 1024;   // the smallest buffer handed out
  static constexpr std::size_t kMaxWindow = 4u << 20;    // the largest (one bounce round)
  static constexpr std::size_t kAlign = 64 * 1024;       // alignment of every buffer

  // One connection's share. Must outlive its leases; not movable.
  class Client {
   public:
    Client() = default;
    Client(const Client&) = delete;
    Client& operator=(const Client&) = delete;

   private:
    friend class BouncePool;
    std::size_t held = 0;  // bytes leased or reserved; guarded by the pool's mutex
  };

  // A buffer on loan; returned to the pool when destroyed. Move-only.
  class Lease {
   public:
    Lease() = default;
    Lease(Lease&& o) noexcept;
    Lease& operator=(Lease&& o) noexcept;
    Lease(const Lease&) = delete;
    Lease& operator=(const Lease&) = delete;
    ~Lease() { reset(); }

    char* data() const { return data_; }
    std::size_t size() const { return size_; }
    void reset();

   private:
    friend class BouncePool;
    BouncePool* pool_ = nullptr;
    Client* client_ = nullptr;
    char* data_ = nullptr;
    std::size_t size_ = 0;
  };

  // `per_client` <= `total`; both at least kMinBuffer.
  BouncePool(std::size_t total, std::size_t per_client);
  BouncePool(const BouncePool&) = delete;
  BouncePool& operator=(const BouncePool&) = delete;
  ~BouncePool();

  // The largest lease one request takes at a time: a power of two.
  std::size_t window() const { return window_; }

  // A buffer of at least `bytes` (<= window()), aligned to kAlign, charged to `client` (or
  // to the server alone when null). Waits while it would exceed a bound. Throws
  // std::bad_alloc when the memory cannot be had.
  Lease acquire(Client* client, std::size_t bytes);

  struct Stats {
    std::size_t leased = 0;  // bytes on loan now
    std::size_t cached = 0;  // bytes kept for reuse
    std::size_t peak = 0;    // most bytes ever allocated at once (leased + cached)
    std::uint64_t waits = 0; // leases that had to wait for memory
  };
  Stats stats();

 private:
  void give_back(Client* client, char* data, std::size_t size) noexcept;
  char* take_buffer(std::size_t size);  // under mu_: a cached one, or a new one
  static int size_class(std::size_t size);

  const std::size_t total_, per_client_, window_;
  std::mutex mu_;  // protects everything below, and every Client's `held`
  std::condition_variable cv_;
  std::vector<std::vector<char*>> free_;  // cached buffers by size class
  std::size_t leased_ = 0, cached_ = 0, peak_ = 0;
  std::uint64_t waits_ = 0;
  std::uint64_t next_ticket_ = 0, serving_ = 0;  // arrival order among those that wait
};

}  // namespace loopdio

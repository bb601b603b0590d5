// The server's bounce buffers: aligned memory that unaligned requests (and requests in
// nbdkit's unaligned buffers) go through under O_DIRECT, shared by every export. The memory
// is one region reserved when the pool is made (so it counts against the process's memory
// limit from the start and can never fail to be had later) and handed out in power-of-two
// blocks by a buddy allocator. Bounded three ways: the region (`total`), one connection's
// share (`per_client`), and one export's share (the total split between the exports that
// are open, never below one window). A request that would exceed a bound waits; requests
// held back only by their own connection's or export's share never hold up anyone else.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <vector>

namespace loopdio {

class BouncePool {
 public:
  static constexpr std::size_t kMinBuffer = 64 * 1024;  // the smallest block handed out
  static constexpr std::size_t kMaxWindow = 4u << 20;   // the largest (one bounce round)
  static constexpr std::size_t kAlign = 64 * 1024;      // alignment of every block

  // One export's share: registered with the pool while it lives. Not movable.
  class Group {
   public:
    explicit Group(BouncePool& pool);
    Group(const Group&) = delete;
    Group& operator=(const Group&) = delete;
    ~Group();

   private:
    friend class BouncePool;
    BouncePool& pool_;
    std::size_t held_ = 0;  // guarded by the pool's mutex
  };

  // One connection's share, of an export's (or of none). Must outlive its leases.
  class Client {
   public:
    explicit Client(Group* group = nullptr) : group_(group) {}
    Client(const Client&) = delete;
    Client& operator=(const Client&) = delete;

   private:
    friend class BouncePool;
    Group* group_;
    std::size_t held_ = 0;  // bytes leased; guarded by the pool's mutex
  };

  // A block on loan; returned to the pool when destroyed. Move-only.
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

  // `total` bytes in all (rounded down to kMinBuffer, at least one), `per_client` for one
  // connection (at most the total). An export may hold total / max(open exports,
  // `min_groups`), and at least one window: a server of one image passes 1, a directory 2,
  // so that the first export of a directory leaves room for the next. Throws std::bad_alloc
  // when the region cannot be reserved.
  BouncePool(std::size_t total, std::size_t per_client, unsigned min_groups = 1);
  BouncePool(const BouncePool&) = delete;
  BouncePool& operator=(const BouncePool&) = delete;
  ~BouncePool();

  // The largest lease one request takes at a time: a power of two.
  std::size_t window() const { return window_; }

  // A block of at least `bytes` (<= window()), aligned to kAlign, charged to `client` and
  // its group (or to the pool alone when null). Waits while a bound would be exceeded.
  // Throws std::bad_alloc only for a size above the window (a caller's bug) or when the
  // waiting list cannot grow.
  Lease acquire(Client* client, std::size_t bytes);

  struct Stats {
    std::size_t leased = 0;    // bytes on loan now
    std::size_t cached = 0;    // bytes once used, free now (resident, kept for reuse)
    std::size_t peak = 0;      // most bytes ever on loan at once
    std::size_t resident = 0;  // bytes of the region ever used (what it costs in RSS)
    std::uint64_t waits = 0;   // leases that had to wait
  };
  Stats stats();
  // Gives the pages of every free block back to the system (the region stays reserved),
  // when more than `keep` bytes of them are resident: after a burst, the RSS falls back.
  void trim(std::size_t keep = 0) noexcept;

 private:
  struct Waiter;
  static constexpr std::uint32_t kNone = ~std::uint32_t{0};

  void give_back(Client* client, char* data, std::size_t size) noexcept;
  bool held_back(const Client* client, std::size_t size) const;  // by its own shares
  std::size_t group_cap() const;
  void charge(Client* client, std::size_t size, int sign);
  void dispatch();  // grants what waiters it can, in arrival order

  // The buddy allocator over the region, in units of kMinBuffer; under mu_.
  char* take(int order);
  void put(std::uint32_t unit, int order);
  void push_free(std::uint32_t unit, int order);
  void unlink_free(std::uint32_t unit, int order);

  std::size_t total_, per_client_, window_;
  unsigned min_groups_;
  int max_order_;          // window_ == kMinBuffer << max_order_
  char* region_ = nullptr;
  std::size_t mapped_ = 0;
  char* base_ = nullptr;   // region_ aligned up to kAlign

  std::mutex mu_;  // protects everything below, and every Group's and Client's held_
  std::vector<std::uint32_t> heads_;    // first free block of each order, or kNone
  std::vector<std::uint32_t> next_, prev_;  // free-list links, by unit
  std::vector<std::int8_t> free_order_;     // the order of the free block starting here, or -1
  std::vector<bool> touched_;               // units ever leased
  std::vector<Waiter*> waiters_;            // arrival order
  unsigned groups_ = 0;
  std::size_t leased_ = 0, peak_ = 0, resident_ = 0;
  std::uint64_t waits_ = 0;
};

}  // namespace loopdio

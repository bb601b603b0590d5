// The engine one export's connections share. An AIO context reserves its slots from the
// host-wide fs.aio-max-nr, so one per export (not one per connection) keeps what clients can
// take bounded however many connect: it is made when the first connection opens and freed
// when the last one closes, and every context of the server is charged to its AioBudget
// (aio-events=), so a directory of many exports cannot take the host's AIO either. A kernel
// that refuses the engine asked for, or a budget used up, gets the next one (io_uring ->
// libaio -> sync), with a notice; a refused AIO context is asked for again by the next
// connection.
#pragma once

#include <atomic>
#include <memory>
#include <mutex>

#include "loopdio/engine.h"
#include "loopdio/options.h"

namespace loopdio {

// The AIO events (fs.aio-nr) the whole server may hold. Must outlive every engine.
class AioBudget {
 public:
  explicit AioBudget(unsigned total) : total_(total) {}
  bool take(unsigned n) {
    unsigned used = used_.load();
    do {
      if (used + n > total_) return false;
    } while (!used_.compare_exchange_weak(used, used + n));
    return true;
  }
  void give(unsigned n) { used_.fetch_sub(n); }
  unsigned used() const { return used_.load(); }
  unsigned total() const { return total_; }

 private:
  const unsigned total_;
  std::atomic<unsigned> used_{0};
};

class EngineShare {
 public:
  // Slots of an export's libaio context: 64 exports fit the default aio-events=4096.
  static constexpr unsigned kAioDepth = 64;
  static constexpr unsigned kAioDepthLow = 16;  // asked for when the host or budget is short
  static constexpr unsigned kRingDepth = 128;   // entries of each worker thread's io_uring

  // kSyncLibaio and kSyncIoUring wrap the AIO engine in make_split_engine: requests of one
  // op run in the calling thread, and only batches use the AIO engine.
  EngineShare(EngineKind kind, int fd, AioBudget& budget)
      : kind_(kind), fd_(fd), budget_(budget) {}

  // The engine for a connection that opens now. Never null; throws only std::bad_alloc.
  std::shared_ptr<Engine> acquire();

 private:
  std::shared_ptr<Engine> make();
  std::shared_ptr<Engine> make_aio();

  std::shared_ptr<Engine> make_libaio(unsigned depth);

  const EngineKind kind_;
  const int fd_;
  AioBudget& budget_;
  std::mutex mu_;                 // protects what follows
  std::weak_ptr<Engine> shared_;  // alive while a connection holds it
  bool uring_refusal_told_ = false;  // each fallback is told once, not at every connection
  bool aio_refusal_told_ = false;
};

}  // namespace loopdio

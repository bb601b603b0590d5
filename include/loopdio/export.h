// One export: an image and everything its connections share: the backing and what was
// decided about it, the alignment layer with its range locks and bounce pool, trim and zero,
// the drain gate of its run-time switches, its engine, its live statistics, and its
// connections counted by the engine each one uses.
#pragma once

#include <atomic>
#include <memory>
#include <mutex>
#include <string>

#include "loopdio/aligned_io.h"
#include "loopdio/backing.h"
#include "loopdio/drain_gate.h"
#include "loopdio/engine_share.h"
#include "loopdio/json.h"
#include "loopdio/options.h"
#include "loopdio/range_lock.h"
#include "loopdio/space_ops.h"
#include "loopdio/stats.h"
#include "loopdio/throttle.h"

namespace loopdio {

// What every export of a server shares, owned by the server and outliving its exports.
struct ServerShared {
  BouncePool& pool;
  AioBudget& aio;
  ThrottleClock& clock;
  ThrottleGroups& groups;
};

class Export {
 public:
  static constexpr int kEngineKinds = static_cast<int>(EngineKind::kSyncIoUring) + 1;

  // Opens and probes o.file (or `name` in the directory `dirfd`, following no symbolic
  // link) and says what it decided (notices). Bounce buffers, AIO contexts and throttle
  // groups come from `shared`, the server's; o.limits are its limits; `stats` outlive the export (they count for the server's life). Throws
  // loopdio::Error.
  static std::unique_ptr<Export> open(const Options& o, ServerShared& shared,
                                      std::shared_ptr<Stats> stats, const std::string& name = "",
                                      int dirfd = -1);
  Export(const Export&) = delete;
  Export& operator=(const Export&) = delete;

  const std::string& name() const { return name_; }
  const Options& options() const { return backing_->options(); }
  Backing& backing() { return *backing_; }
  const Backing& backing() const { return *backing_; }
  AlignedIo& io() { return *io_; }
  SpaceOps& space() { return *space_; }
  DrainGate& gate() { return gate_; }
  Stats& stats() { return *stats_; }
  // This export's share of the server's bounce memory; each connection's is a Client of it.
  BouncePool::Group& bounce_group() { return *bounce_group_; }

  // A connection starts and ends: the engine it uses (shared with the export's other
  // connections), counted until release(). Throws loopdio::Error (EBUSY) when `limit`
  // connections are already attached.
  std::shared_ptr<Engine> attach(unsigned limit);
  void release(const Engine& e);
  // A connection was opened read-only by nbdkit (-r); says once if the image is writable.
  void note_readonly_client();

  // Waits while a request of connection `conn` would exceed the export's limits or its
  // group's; counts the wait. Call before the request takes anything another needs.
  // Never throws: out of memory to queue it, a request goes unthrottled.
  void throttle(const void* conn, Throttle::Kind kind, std::uint64_t bytes) noexcept {
    try {
      std::uint64_t ns = throttle_->admit(conn, kind, bytes);
      if (grouped_.load(std::memory_order_acquire))
        if (std::shared_ptr<Throttle> g = group_.load()) ns += g->admit(conn, kind, bytes);
      if (ns) stats_->throttled(ns);
    } catch (...) {
    }
  }
  // The limits now, and new ones (effective at once). set_limits throws loopdio::Error,
  // changing nothing, when the group they name does not exist.
  ThrottleLimits limits() const;
  void set_limits(const ThrottleLimits& l);

  unsigned connections() const { return connections_.load(); }
  // "libaio", "libaio+sync" after a fallback; the engine asked for while idle.
  std::string engines_in_use() const;
  // The export description: file, direct I/O, alignment, engines, sector size.
  std::string describe() const;
  // Everything `loopdio list` and `stat` show, as JSON members of `j`.
  void status(Json& j);

 private:
  Export() = default;
  static int engine_index(const Engine& e);

  std::string name_;
  std::unique_ptr<BouncePool::Group> bounce_group_;  // outlives every connection's Client
  std::unique_ptr<Backing> backing_;
  RangeLock locks_;  // before io_ and space_, which hold references to it
  std::unique_ptr<AlignedIo> io_;
  std::unique_ptr<SpaceOps> space_;
  std::unique_ptr<EngineShare> engines_;
  DrainGate gate_;
  std::shared_ptr<Stats> stats_;
  ThrottleGroups* groups_ = nullptr;
  std::shared_ptr<Throttle> throttle_;             // its own limits
  std::atomic<std::shared_ptr<Throttle>> group_;   // its group's, or null
  std::atomic<bool> grouped_{false};               // group_ is set: look it up
  mutable std::mutex limits_mu_;                   // one change of limits at a time
  std::atomic<unsigned> connections_{0};
  std::atomic<int> by_engine_[kEngineKinds] = {};  // connections by engine name
  std::atomic<bool> readonly_client_{false};
};

}  // namespace loopdio

// The alignment layer: turns any NBD read or write (any offset, length and buffer address)
// into kernel transfers that obey the backing's direct-I/O alignment. Aligned requests go
// straight to the engine from the client's buffer; the rest go through aligned bounce
// buffers from the server's bounded pool, one window at a time, and writes that cover part
// of a block read that block first
// (read-modify-write) under an exclusive range lock. The planning is pure and unit-tested;
// AlignedIo executes a plan against any Engine.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>

#include "loopdio/bounce_pool.h"
#include "loopdio/engine.h"
#include "loopdio/range_lock.h"
#include "loopdio/stats.h"

namespace loopdio {

// How the backing is accessed right now.
struct IoMode {
  int fd = -1;
  bool direct = false;
  std::uint32_t align = 1;      // offset and length alignment; 1 when buffered
  std::uint32_t mem_align = 1;  // buffer address alignment; 1 when buffered
};

// Where the export lies in the backing.
struct Geometry {
  std::uint64_t base = 0;          // offset= : first byte of the export in the backing
  std::uint64_t size = 0;          // bytes exported
  std::uint64_t backing_size = 0;  // bytes in the backing
  // A regular file: a padded write that reached past backing_size is cut back to it, so the
  // file never changes size. (A block device's size is always a multiple of its sector.)
  bool is_file = true;
};

constexpr std::size_t kMaxOpBytes = std::size_t{1} << 20;  // largest single kernel transfer

struct Extent {
  std::uint64_t start = 0;
  std::uint64_t end = 0;  // exclusive
  bool empty() const { return start == end; }
  std::uint64_t size() const { return end - start; }
  bool operator==(const Extent&) const = default;
};

// Reads at least this long whose range is aligned but whose buffer is not are read into the
// client's own buffer (see ReadPlan::in_place) rather than through a bounce buffer as large.
constexpr std::size_t kInPlaceMin = std::size_t{128} << 10;

struct ReadPlan {
  bool bounce = false;  // read `io` into a bounce buffer, then copy the requested bytes out
  Extent io;            // the file range the kernel reads
  // Instead of a bounce buffer as large as the request: all but the last block is read into
  // the client's buffer at `shift` bytes in (the first aligned address) and moved down by
  // `shift`, and the last block through a bounce buffer of one block. One small transfer
  // more, no memory more: nbdkit's request buffers are only 16-byte aligned.
  bool in_place = false;
  std::size_t shift = 0;
};

struct WritePlan {
  bool lock = false;       // take a range lock on `io` (direct I/O only)
  bool exclusive = false;  // read-modify-write: the lock is exclusive
  bool bounce = false;     // copy the data into a bounce buffer before writing
  Extent io;               // the file range the kernel writes
  Extent head;             // partial first block to read before writing, or empty
  Extent tail;             // partial last block to read before writing, or empty
};

ReadPlan plan_read(const IoMode& m, const void* buf, std::size_t len, std::uint64_t file_off);
WritePlan plan_write(const IoMode& m, const void* buf, std::size_t len, std::uint64_t file_off);

class AlignedIo {
 public:
  // Bounce buffers come from `pool` (the server's, shared by every export).
  AlignedIo(const Geometry& g, RangeLock& locks, BouncePool& pool)
      : geo_(g), locks_(locks), bounce_(pool) {}
  // With a pool of its own: at most `bounce_total` bytes, `bounce_per_client` per client.
  AlignedIo(const Geometry& g, RangeLock& locks, std::size_t bounce_total = 64u << 20,
            std::size_t bounce_per_client = 16u << 20)
      : geo_(g), locks_(locks),
        own_pool_(std::make_unique<BouncePool>(bounce_total, bounce_per_client)),
        bounce_(*own_pool_) {}

  const Geometry& geometry() const { return geo_; }
  BouncePool& bounce_pool() { return bounce_; }
  // Where read-modify-writes, bounced bytes and fallbacks are counted (none: not counted).
  void set_stats(Stats* s) { stats_ = s; }

  // `off` is relative to the export; `client` is charged for the bounce buffers (null: the
  // server's bound alone). Each returns 0 or -errno and never throws.
  int read(Engine& e, const IoMode& m, void* buf, std::size_t len, std::uint64_t off,
           BouncePool::Client* client = nullptr) noexcept;
  int write(Engine& e, const IoMode& m, const void* buf, std::size_t len, std::uint64_t off,
            bool fua, BouncePool::Client* client = nullptr) noexcept;
  int flush(Engine& e, const IoMode& m) noexcept;

  // Makes FUA a write followed by fdatasync instead of RWF_DSYNC, for backings that do not
  // honour the flag (a FUSE server may ignore O_DSYNC).
  void use_fdatasync_for_fua() { dsync_ok_.store(false); }

 private:
  int read_in_place(Engine& e, const IoMode& m, char* out, std::size_t len, std::uint64_t foff,
                    std::size_t shift, BouncePool::Client* client);
  int write_locked(Engine& e, const IoMode& m, const WritePlan& p, const char* buf,
                   std::size_t len, std::uint64_t foff, bool fua, BouncePool::Client* client);
  int write_bounced(Engine& e, const IoMode& m, const WritePlan& p, const char* buf,
                    std::size_t len, std::uint64_t foff, bool dsync, BouncePool::Client* client);
  int write_dsync_fallback(Engine& e, const IoMode& m, char* src, Extent ext);

  Geometry geo_;
  RangeLock& locks_;
  std::unique_ptr<BouncePool> own_pool_;
  BouncePool& bounce_;
  Stats* stats_ = nullptr;
  std::atomic<bool> dsync_ok_{true};  // the kernel takes RWF_DSYNC; off at its first refusal
};

// Runs `ops` until each is done, failed or at end of file: a short transfer that stops on an
// `align` boundary is continued. Returns 0 or the first -errno; each op's result is then the
// bytes it moved in all. Exposed for the unit tests.
int run_to_completion(Engine& e, std::span<IoOp> ops, std::uint32_t align);

}  // namespace loopdio

// Trim, write zeroes and cache: the NBD commands that change or hint at allocation rather
// than move data. The kernel does the work where it can (fallocate on files, BLKDISCARD and
// BLKZEROOUT on block devices) on the aligned interior of a range; unaligned edges of a zero
// are written as zeroes through the alignment layer's read-modify-write, and unaligned edges
// of a trim are left alone (trims are advisory). A capability the kernel refuses is switched
// off once, with a notice.
#pragma once

#include <atomic>
#include <cstdint>

#include "loopdio/aligned_io.h"

namespace loopdio {

struct SpaceSupport {
  bool block_device = false;
  std::uint32_t device_block = 512;  // block devices: fallocate/ioctl granularity
  bool discard = true;               // block devices: the device takes discards
  bool zero_offload = true;          // block devices: zeroing is offloaded, not written
};

struct ZeroFlags {
  bool may_trim = false;  // the client allows a hole (no NBD_CMD_FLAG_NO_HOLE)
  bool fua = false;
  bool fast = false;      // NBD_CMD_FLAG_FAST_ZERO: fail at once unless it is cheap
};

class SpaceOps {
 public:
  SpaceOps(AlignedIo& io, RangeLock& locks, const SpaceSupport& s) : io_(io), locks_(locks), s_(s) {}

  bool can_trim() const { return !s_.block_device || s_.discard; }
  // Where capabilities switched off are counted as fallbacks (none: not counted).
  void set_stats(Stats* s) { stats_ = s; }

  // `off` is relative to the export. Each returns 0 or -errno and never throws. A fast zero
  // that cannot be cheap returns -ENOTSUP before touching anything.
  // The unaligned edges of a zero are written through `client`'s share of bounce memory.
  int trim(Engine& e, const IoMode& m, std::uint64_t len, std::uint64_t off, bool fua) noexcept;
  int zero(Engine& e, const IoMode& m, std::uint64_t len, std::uint64_t off, ZeroFlags f,
           BouncePool::Client* client = nullptr) noexcept;
  // With direct I/O there is no page cache to fill: a cache request is a no-op. Buffered, it
  // is readahead (POSIX_FADV_WILLNEED).
  int cache(const IoMode& m, std::uint64_t len, std::uint64_t off) noexcept;

 private:
  std::uint64_t granularity(const IoMode& m) const;
  bool cheap_zero(bool may_trim) const;
  int zero_interior(Engine& e, const IoMode& m, Extent x, bool may_trim);
  int write_zeroes(Engine& e, const IoMode& m, Extent x, BouncePool::Client* client);
  int switch_off(std::atomic<bool>& cap, const char* what);

  AlignedIo& io_;
  RangeLock& locks_;
  SpaceSupport s_;
  Stats* stats_ = nullptr;
  // Kernel capabilities, on until the first EOPNOTSUPP.
  std::atomic<bool> punch_{true};       // fallocate(PUNCH_HOLE|KEEP_SIZE)
  std::atomic<bool> zero_range_{true};  // fallocate(ZERO_RANGE|KEEP_SIZE) on files
  std::atomic<bool> discard_{true};     // BLKDISCARD
  std::atomic<bool> zeroout_{true};     // BLKZEROOUT
};

}  // namespace loopdio

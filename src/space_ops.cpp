// Trim, zero and cache; see space_ops.h.
#include "loopdio/space_ops.h"

#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/fs.h>

#include <algorithm>
#include <cerrno>
#include <new>
#include <optional>

#include "loopdio/align.h"
#include "loopdio/aligned_buffer.h"
#include "loopdio/log.h"

namespace loopdio {
namespace {

constexpr std::size_t kZeroBuf = std::size_t{1} << 20;

// Shared, never written: every write of zeroes reads from it.
const char* zero_buffer() {
  static const AlignedBuffer buf = [] {
    AlignedBuffer b(4096, kZeroBuf);
    std::fill(b.data(), b.data() + kZeroBuf, 0);
    return b;
  }();
  return buf.data();
}

bool unsupported(int r) { return r == -EOPNOTSUPP || r == -ENOTTY || r == -ENOSYS; }

}  // namespace

std::uint64_t SpaceOps::granularity(const IoMode& m) const {
  return s_.block_device ? std::max<std::uint64_t>(m.align, s_.device_block) : m.align;
}

int SpaceOps::switch_off(std::atomic<bool>& cap, const char* what) {
  if (cap.exchange(false)) {
    notice(std::string(what) + " is not supported by the backing: switched off");
    if (stats_) stats_->fallback();
  }
  return -EOPNOTSUPP;
}

int SpaceOps::trim(Engine& e, const IoMode& m, std::uint64_t len, std::uint64_t off,
                   bool fua) noexcept {
  try {
    const std::uint64_t foff = io_.geometry().base + off, gr = granularity(m);
    const Extent x{round_up(foff, gr), round_down(foff + len, gr)};
    if (x.start < x.end) {
      std::optional<RangeLock::Guard> lock;
      if (m.direct) lock.emplace(locks_, x.start, x.end, false);
      int r = 0;
      if (s_.block_device && discard_) {
        r = e.block_range(m.fd, BLKDISCARD, x.start, x.size());
        if (unsupported(r)) switch_off(discard_, "discard (BLKDISCARD)");
      } else if (!s_.block_device && punch_) {
        r = e.fallocate(m.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, x.start, x.size());
        if (unsupported(r)) switch_off(punch_, "punching holes (fallocate)");
      }
      if (r && !unsupported(r)) return r;  // a refused trim is no error: trims are advisory
    }
    return fua ? e.datasync(m.fd) : 0;
  } catch (const std::bad_alloc&) {
    return -ENOMEM;
  }
}

bool SpaceOps::cheap_zero(bool may_trim) const {
  if (s_.block_device) return s_.zero_offload && (zeroout_ || (may_trim && punch_));
  return (may_trim && punch_) || zero_range_;
}

int SpaceOps::zero(Engine& e, const IoMode& m, std::uint64_t len, std::uint64_t off,
                   ZeroFlags f, BouncePool::Client* client) noexcept {
  try {
    const std::uint64_t foff = io_.geometry().base + off, end = foff + len, gr = granularity(m);
    Extent x{round_up(foff, gr), round_down(end, gr)};
    if (x.start >= x.end) x = {end, end};  // no whole block: all of it is an edge
    // Edges are written by read-modify-write, which is never cheap: with nothing the kernel
    // could zero, a fast zero fails at once.
    if (f.fast && x.empty() && len > 0) return -ENOTSUP;
    if (!x.empty()) {
      if (f.fast && !cheap_zero(f.may_trim)) return -ENOTSUP;
      int r = zero_interior(e, m, x, f.may_trim);
      if (unsupported(r)) {
        if (f.fast) return -ENOTSUP;
        r = write_zeroes(e, m, x, client);
      }
      if (r) return r;
    }
    // The unaligned edges: zeroes written through the read-modify-write path.
    if (int r = write_zeroes(e, m, {foff, std::min(x.start, end)}, client)) return r;
    if (int r = write_zeroes(e, m, {std::max(x.end, foff), end}, client)) return r;
    return f.fua ? e.datasync(m.fd) : 0;
  } catch (const std::bad_alloc&) {
    return -ENOMEM;
  }
}

// Asks the kernel to zero whole blocks; -EOPNOTSUPP once nothing it offers is left.
int SpaceOps::zero_interior(Engine& e, const IoMode& m, Extent x, bool may_trim) {
  std::optional<RangeLock::Guard> lock;
  if (m.direct) lock.emplace(locks_, x.start, x.end, false);
  int r;
  if (may_trim && punch_) {
    // On a block device this is a zeroing discard; it never falls back to writing.
    r = e.fallocate(m.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, x.start, x.size());
    if (!unsupported(r)) return r;
    switch_off(punch_, "punching holes (fallocate)");
  }
  if (s_.block_device && zeroout_) {
    r = e.block_range(m.fd, BLKZEROOUT, x.start, x.size());
    if (!unsupported(r)) return r;
    switch_off(zeroout_, "zeroing (BLKZEROOUT)");
  }
  if (!s_.block_device && zero_range_) {
    r = e.fallocate(m.fd, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, x.start, x.size());
    if (!unsupported(r)) return r;
    switch_off(zero_range_, "zeroing ranges (fallocate ZERO_RANGE)");
  }
  return -EOPNOTSUPP;
}

int SpaceOps::write_zeroes(Engine& e, const IoMode& m, Extent x, BouncePool::Client* client) {
  const std::uint64_t base = io_.geometry().base;
  for (std::uint64_t s = x.start; s < x.end; s += kZeroBuf) {
    auto n = static_cast<std::size_t>(std::min<std::uint64_t>(kZeroBuf, x.end - s));
    if (int r = io_.write(e, m, zero_buffer(), n, s - base, false, client)) return r;
  }
  return 0;
}

int SpaceOps::cache(const IoMode& m, std::uint64_t len, std::uint64_t off) noexcept {
  if (m.direct) return 0;
  int r = ::posix_fadvise(m.fd, static_cast<off_t>(io_.geometry().base + off),
                          static_cast<off_t>(len), POSIX_FADV_WILLNEED);
  return -r;
}

}  // namespace loopdio

// The alignment layer's planner and executor; see aligned_io.h for the rules.
#include "loopdio/aligned_io.h"

#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <new>
#include <optional>
#include <system_error>
#include <vector>

#include "loopdio/align.h"
#include "loopdio/aligned_buffer.h"
#include "loopdio/log.h"

namespace loopdio {
namespace {

// This thread's op list, reused from request to request.
std::vector<IoOp>& thread_ops() {
  thread_local std::vector<IoOp> ops;
  ops.clear();
  return ops;
}

// Cuts `ext` into ops of at most kMaxOpBytes over the buffer `mem` (which maps ext.start).
std::span<IoOp> make_ops(IoKind kind, const IoMode& m, char* mem, Extent ext, bool dsync) {
  std::vector<IoOp>& ops = thread_ops();
  for (std::uint64_t s = ext.start; s < ext.end; s += kMaxOpBytes) {
    IoOp op;
    op.kind = kind;
    op.dsync = dsync;
    op.fd = m.fd;
    op.buf = mem + (s - ext.start);
    op.len = static_cast<std::size_t>(std::min<std::uint64_t>(kMaxOpBytes, ext.end - s));
    op.off = s;
    ops.push_back(op);
  }
  return ops;
}

// Runs read ops; whatever lies past the end of the backing reads as zeroes.
int run_reads(Engine& e, const IoMode& m, std::span<IoOp> ops) {
  if (int r = run_to_completion(e, ops, m.align)) return r;
  for (const IoOp& op : ops) {
    auto got = static_cast<std::size_t>(op.result);
    if (got < op.len) std::memset(op.buf + got, 0, op.len - got);
  }
  return 0;
}

// Reads `ext` into `mem`.
int read_into(Engine& e, const IoMode& m, char* mem, Extent ext) {
  return run_reads(e, m, make_ops(IoKind::kRead, m, mem, ext, false));
}

// Writes `ext` from `mem`. A write that stays short without an error is an I/O error.
int write_from(Engine& e, const IoMode& m, char* mem, Extent ext, bool dsync) {
  std::span<IoOp> ops = make_ops(IoKind::kWrite, m, mem, ext, dsync);
  if (int r = run_to_completion(e, ops, m.align)) return r;
  for (const IoOp& op : ops)
    if (static_cast<std::size_t>(op.result) != op.len) return -EIO;
  return 0;
}

}  // namespace

ReadPlan plan_read(const IoMode& m, const void* buf, std::size_t len, std::uint64_t foff) {
  const std::uint64_t a = m.align, end = foff + len;
  const bool range_aligned = is_aligned(foff, a) && is_aligned(end, a);
  if (!m.direct || (range_aligned && is_aligned_ptr(buf, m.mem_align))) return {false, {foff, end}};
  ReadPlan p{true, {round_down(foff, a), round_up(end, a)}};
  const auto addr = static_cast<std::uint64_t>(reinterpret_cast<std::uintptr_t>(buf));
  const std::uint64_t shift = round_up(addr, std::uint64_t{m.mem_align}) - addr;
  if (range_aligned && len >= kInPlaceMin && shift <= a && len > a) {
    p.in_place = true;
    p.shift = static_cast<std::size_t>(shift);
  }
  return p;
}

WritePlan plan_write(const IoMode& m, const void* buf, std::size_t len, std::uint64_t foff) {
  WritePlan p;
  const std::uint64_t a = m.align, end = foff + len;
  if (!m.direct) {
    p.io = {foff, end};
    return p;
  }
  p.lock = true;
  p.io = {round_down(foff, a), round_up(end, a)};
  if (foff != p.io.start) p.head = {p.io.start, p.io.start + a};
  if (end != p.io.end && (p.head.empty() || p.io.end - a != p.head.start))
    p.tail = {p.io.end - a, p.io.end};
  p.exclusive = foff != p.io.start || end != p.io.end;
  p.bounce = p.exclusive || !is_aligned_ptr(buf, m.mem_align);
  return p;
}

int run_to_completion(Engine& e, std::span<IoOp> ops, std::uint32_t align) {
  e.run(ops);
  for (const IoOp& op : ops)
    if (op.result < 0) return static_cast<int>(op.result);
  // Rare: continue short transfers that stopped on an aligned boundary. One that stopped
  // elsewhere (or moved nothing) met the end of the file.
  for (IoOp& op : ops) {
    while (op.result > 0 && static_cast<std::size_t>(op.result) < op.len &&
           is_aligned(op.off + static_cast<std::uint64_t>(op.result), std::uint64_t{align})) {
      auto done = static_cast<std::size_t>(op.result);
      IoOp rest = op;
      rest.buf += done;
      rest.off += done;
      rest.len -= done;
      e.run({&rest, 1});
      if (rest.result < 0) return static_cast<int>(rest.result);
      if (rest.result == 0) break;
      op.result += rest.result;
    }
  }
  return 0;
}

int AlignedIo::read(Engine& e, const IoMode& m, void* buf, std::size_t len,
                    std::uint64_t off, BouncePool::Client* client) noexcept {
  if (len == 0) return 0;
  try {
    const std::uint64_t foff = geo_.base + off;
    const ReadPlan p = plan_read(m, buf, len, foff);
    auto* out = static_cast<char*>(buf);
    if (!p.bounce) return read_into(e, m, out, p.io);
    if (p.in_place) return read_in_place(e, m, out, len, foff, p.shift, client);
    if (stats_) stats_->bounced(len);
    const std::size_t window = bounce_.window();
    for (std::uint64_t w = p.io.start; w < p.io.end; w += window) {
      const Extent win{w, std::min<std::uint64_t>(p.io.end, w + window)};
      BouncePool::Lease lease = bounce_.acquire(client, win.size());
      char* b = lease.data();
      if (int r = read_into(e, m, b, win)) return r;
      const std::uint64_t cs = std::max(foff, win.start), ce = std::min(foff + len, win.end);
      std::memcpy(out + (cs - foff), b + (cs - win.start), ce - cs);
    }
    return 0;
  } catch (const std::bad_alloc&) {
    return -ENOMEM;
  }
}

int AlignedIo::read_in_place(Engine& e, const IoMode& m, char* out, std::size_t len,
                             std::uint64_t foff, std::size_t shift, BouncePool::Client* client) {
  const std::size_t a = m.align, body = len - a;
  BouncePool::Lease tail = bounce_.acquire(client, a);
  std::vector<IoOp>& ops = thread_ops();
  make_ops(IoKind::kRead, m, out + shift, {foff, foff + body}, false);
  IoOp last;
  last.kind = IoKind::kRead;
  last.fd = m.fd;
  last.buf = tail.data();
  last.len = a;
  last.off = foff + body;
  ops.push_back(last);  // with the others: one batch, so the extra transfer costs no wait
  if (int r = run_reads(e, m, ops)) return r;
  std::memmove(out, out + shift, body);
  std::memcpy(out + body, tail.data(), a);
  if (stats_) stats_->bounced(a);
  return 0;
}

int AlignedIo::write(Engine& e, const IoMode& m, const void* buf, std::size_t len,
                     std::uint64_t off, bool fua, BouncePool::Client* client) noexcept {
  if (len == 0) return 0;
  try {
    const std::uint64_t foff = geo_.base + off;
    const WritePlan p = plan_write(m, buf, len, foff);
    std::optional<RangeLock::Guard> guard;
    if (p.lock) guard.emplace(locks_, p.io.start, p.io.end, p.exclusive);
    if (stats_ && p.bounce) stats_->bounced(len);
    if (stats_ && p.exclusive) stats_->rmw();
    return write_locked(e, m, p, static_cast<const char*>(buf), len, foff, fua, client);
  } catch (const std::bad_alloc&) {
    return -ENOMEM;
  } catch (const std::system_error& ex) {  // from the range lock's mutex
    return -ex.code().value();
  }
}

int AlignedIo::write_locked(Engine& e, const IoMode& m, const WritePlan& p, const char* buf,
                            std::size_t len, std::uint64_t foff, bool fua,
                            BouncePool::Client* client) {
  bool dsync = fua && dsync_ok_.load(std::memory_order_relaxed);
  int r = p.bounce ? write_bounced(e, m, p, buf, len, foff, dsync, client)
                   : write_from(e, m, const_cast<char*>(buf), p.io, dsync);
  if (dsync && (r == -EINVAL || r == -EOPNOTSUPP) && !p.bounce)
    r = write_dsync_fallback(e, m, const_cast<char*>(buf), p.io);
  if (r) return r;
  bool grew = geo_.is_file && p.io.end > geo_.backing_size;
  if (grew) {
    if (int t = e.truncate(m.fd, geo_.backing_size)) return t;
  }
  if (fua && (grew || !dsync_ok_.load(std::memory_order_relaxed) || !dsync)) return e.datasync(m.fd);
  return 0;
}

// A padded write: the partial head and tail blocks are read first, the client's bytes laid
// over them, and whole blocks written back, one bounce window at a time.
int AlignedIo::write_bounced(Engine& e, const IoMode& m, const WritePlan& p, const char* buf,
                             std::size_t len, std::uint64_t foff, bool dsync,
                             BouncePool::Client* client) {
  const std::size_t window = bounce_.window();
  for (std::uint64_t w = p.io.start; w < p.io.end; w += window) {
    const Extent win{w, std::min<std::uint64_t>(p.io.end, w + window)};
    BouncePool::Lease lease = bounce_.acquire(client, win.size());
    char* b = lease.data();
    IoOp pre[2];
    std::size_t n = 0;
    for (const Extent& blk : {p.head, p.tail}) {
      if (blk.empty() || blk.start < win.start || blk.end > win.end) continue;
      pre[n].kind = IoKind::kRead;
      pre[n].fd = m.fd;
      pre[n].buf = b + (blk.start - win.start);
      pre[n].len = static_cast<std::size_t>(blk.size());
      pre[n].off = blk.start;
      ++n;
    }
    if (n) {
      if (int r = run_to_completion(e, {pre, n}, m.align)) return r;
      for (std::size_t i = 0; i < n; ++i) {
        auto got = static_cast<std::size_t>(pre[i].result);
        if (got < pre[i].len) std::memset(pre[i].buf + got, 0, pre[i].len - got);
      }
    }
    const std::uint64_t cs = std::max(foff, win.start), ce = std::min(foff + len, win.end);
    std::memcpy(b + (cs - win.start), buf + (cs - foff), ce - cs);
    int r = write_from(e, m, b, win, dsync);
    if (dsync && (r == -EINVAL || r == -EOPNOTSUPP)) r = write_dsync_fallback(e, m, b, win);
    if (r) return r;
  }
  return 0;
}

// The kernel refused RWF_DSYNC: write again without it and, if that works, stop asking.
// The caller then makes the write durable with fdatasync.
int AlignedIo::write_dsync_fallback(Engine& e, const IoMode& m, char* src, Extent ext) {
  int r = write_from(e, m, src, ext, false);
  if (r == 0 && dsync_ok_.exchange(false)) {
    notice("the kernel refuses RWF_DSYNC writes: FUA is now a write followed by fdatasync");
    if (stats_) stats_->fallback();
  }
  return r;
}

int AlignedIo::flush(Engine& e, const IoMode& m) noexcept { return e.datasync(m.fd); }

}  // namespace loopdio

// The export's live statistics; see stats.h.
#include "loopdio/stats.h"

#include <bit>
#include <cmath>

namespace loopdio {

const char* to_string(Cmd c) {
  switch (c) {
    case Cmd::kRead: return "read";
    case Cmd::kWrite: return "write";
    case Cmd::kFlush: return "flush";
    case Cmd::kTrim: return "trim";
    case Cmd::kZero: return "zero";
    case Cmd::kCache: return "cache";
    case Cmd::kExtents: return "block_status";
  }
  return "?";
}

int Stats::bucket_of(std::uint64_t ns) {
  std::uint64_t us = ns / 1000;
  int b = us == 0 ? 0 : std::bit_width(us);  // us < 2^b
  return b < kLatencyBuckets ? b : kLatencyBuckets - 1;
}

Stats::Shard& Stats::shard() noexcept {
  static std::atomic<unsigned> next{0};
  thread_local unsigned mine = next.fetch_add(1, std::memory_order_relaxed) % kShards;
  return shards_[mine];
}

void Stats::request(Cmd c, std::uint64_t bytes, std::uint64_t ns, int result) noexcept {
  Shard& s = shard();
  Shard::PerCmd& p = s.cmd[static_cast<int>(c)];
  // The bucket is the request's one count (see snapshot); its error is counted after it,
  // with release, so that a snapshot that sees the error also sees the request.
  p.buckets[static_cast<std::size_t>(bucket_of(ns))].fetch_add(1, std::memory_order_relaxed);
  p.latency_ns.fetch_add(ns, std::memory_order_relaxed);
  if (result == 0) {
    p.bytes.fetch_add(bytes, std::memory_order_relaxed);
    return;
  }
  p.errors.fetch_add(1, std::memory_order_release);
  int e = -result;
  s.errors[e > 0 && e < kMaxErrno ? static_cast<std::size_t>(e) : 0].fetch_add(
      1, std::memory_order_relaxed);
}

StatsSnapshot Stats::snapshot() const {
  StatsSnapshot r;
  for (const Shard& s : shards_) {
    for (int c = 0; c < kCmds; ++c) {
      const Shard::PerCmd& p = s.cmd[c];
      StatsSnapshot::PerCmd& q = r.cmd[c];
      // Errors first (acquire), then the buckets: a counted error's request is in them.
      q.errors += p.errors.load(std::memory_order_acquire);
      q.bytes += p.bytes.load(std::memory_order_relaxed);
      q.latency_ns += p.latency_ns.load(std::memory_order_relaxed);
      for (int b = 0; b < kLatencyBuckets; ++b) {
        std::uint64_t n = p.buckets[b].load(std::memory_order_relaxed);
        q.buckets[b] += n;
        q.requests += n;
      }
    }
    for (int e = 0; e < kMaxErrno; ++e) r.errors[e] += s.errors[e].load(std::memory_order_relaxed);
    r.rmw += s.rmw.load(std::memory_order_relaxed);
    r.bounced_bytes += s.bounced.load(std::memory_order_relaxed);
    r.fallbacks += s.fallbacks.load(std::memory_order_relaxed);
    r.throttled += s.throttled.load(std::memory_order_relaxed);
    r.throttled_ns += s.throttled_ns.load(std::memory_order_relaxed);
  }
  return r;
}

double StatsSnapshot::PerCmd::quantile_us(double q) const {
  std::uint64_t total = 0;
  for (std::uint64_t n : buckets) total += n;
  if (total == 0) return 0;
  auto rank = static_cast<std::uint64_t>(std::ceil(q * static_cast<double>(total)));
  std::uint64_t seen = 0;
  for (int b = 0; b < kLatencyBuckets; ++b) {
    seen += buckets[b];
    if (seen >= rank) return std::ldexp(1.0, b);
  }
  return std::ldexp(1.0, kLatencyBuckets - 1);
}

}  // namespace loopdio

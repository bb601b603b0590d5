// Live statistics of one export, counted in the data path: requests and bytes by command,
// errors by errno, read-modify-writes, bounced bytes, fallbacks, and a latency histogram per
// command (log2 buckets of microseconds, from which p50/p99/p99.9 are read). Counters are
// spread over cache-line-sized shards picked per thread, so worker threads on different CPUs
// rarely touch the same line; a snapshot adds the shards up. A request is counted once, in
// its latency bucket, and a snapshot's request count is the sum of the buckets it read: a
// request counted between two loads cannot make the count and the histogram disagree.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <string>

namespace loopdio {

enum class Cmd : std::uint8_t { kRead, kWrite, kFlush, kTrim, kZero, kCache, kExtents };
constexpr int kCmds = 7;
const char* to_string(Cmd c);

// Bucket i counts requests that took less than 2^i microseconds (the last: the rest).
constexpr int kLatencyBuckets = 28;  // up to 2^27 µs, about 2 minutes
constexpr int kMaxErrno = 134;       // errno values counted one by one; larger ones in slot 0

struct StatsSnapshot {
  struct PerCmd {
    // requests is the sum of buckets; errors <= requests.
    std::uint64_t requests = 0, bytes = 0, errors = 0, latency_ns = 0;
    std::array<std::uint64_t, kLatencyBuckets> buckets{};
    // The latency below which a fraction q of the requests completed, in microseconds
    // (the upper bound of the bucket that holds it); 0 with no requests.
    double quantile_us(double q) const;
  };
  std::array<PerCmd, kCmds> cmd;
  std::array<std::uint64_t, kMaxErrno> errors{};  // by errno
  std::uint64_t rmw = 0, bounced_bytes = 0, fallbacks = 0;
  std::uint64_t throttled = 0, throttled_ns = 0;  // requests that waited for a limit, and how long
};

class Stats {
 public:
  // One request: bytes it moved, how long it took, its result (0 or -errno).
  void request(Cmd c, std::uint64_t bytes, std::uint64_t ns, int result) noexcept;
  void rmw() noexcept { shard().rmw.fetch_add(1, std::memory_order_relaxed); }
  void bounced(std::uint64_t bytes) noexcept {
    shard().bounced.fetch_add(bytes, std::memory_order_relaxed);
  }
  void fallback() noexcept { shard().fallbacks.fetch_add(1, std::memory_order_relaxed); }
  // A request waited `ns` for its export's or group's limits.
  void throttled(std::uint64_t ns) noexcept {
    Shard& s = shard();
    s.throttled.fetch_add(1, std::memory_order_relaxed);
    s.throttled_ns.fetch_add(ns, std::memory_order_relaxed);
  }

  StatsSnapshot snapshot() const;

  // The bucket a latency falls in.
  static int bucket_of(std::uint64_t ns);

 private:
  struct alignas(64) Shard {
    struct PerCmd {
      std::atomic<std::uint64_t> bytes{0}, errors{0}, latency_ns{0};
      std::array<std::atomic<std::uint64_t>, kLatencyBuckets> buckets{};
    };
    std::array<PerCmd, kCmds> cmd;
    std::array<std::atomic<std::uint64_t>, kMaxErrno> errors{};
    std::atomic<std::uint64_t> rmw{0}, bounced{0}, fallbacks{0}, throttled{0}, throttled_ns{0};
  };
  static constexpr int kShards = 8;
  Shard& shard() noexcept;

  std::array<Shard, kShards> shards_;
};

}  // namespace loopdio

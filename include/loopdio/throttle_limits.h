// What a throttled export (or group of exports) may do: read, write and total IOPS and
// bytes per second, each with an optional burst (a higher rate allowed for a bounded time,
// qemu's *-max and *-max-length), the size that counts as one I/O for IOPS (iops-size), and
// the group whose budget it shares. Parsed strictly from key=value words (plugin
// parameters, the control socket's `set limits`, the CLI), checked as a whole before
// anything applies, and written as JSON for status and the limits file.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "loopdio/json.h"

namespace loopdio {

enum Bucket : int { kIopsTotal, kIopsRead, kIopsWrite, kBpsTotal, kBpsRead, kBpsWrite };
constexpr int kBuckets = 6;
// "iops", "iops-read", "iops-write", "bps", "bps-read", "bps-write"
const char* bucket_key(int b);

struct BucketLimit {
  double rate = 0;        // per second; 0: no limit
  double max = 0;         // burst rate, >= rate; 0: none
  double max_length = 1;  // seconds the burst rate may last (from a full bucket)
  bool operator==(const BucketLimit&) const = default;
};

struct ThrottleLimits {
  std::array<BucketLimit, kBuckets> bucket{};
  std::uint64_t iops_size = 0;  // a request of n bytes counts ceil(n / iops_size) I/Os; 0: 1
  std::string group;            // the group whose budget it shares too; empty: none
  bool operator==(const ThrottleLimits&) const = default;

  bool any() const;  // some bucket has a rate
  // The keys as the user writes them: "iops=2000 bps=52428800 iops-max=4000 ...".
  std::string text() const;
  Json json() const;
};

// True when `key` is one of the limits' keys (iops, bps-read-max, iops-size, group, ...).
bool is_limit_key(std::string_view key);

// Sets one key of `l` (the plugin's parameters and `set limits` words). Throws
// loopdio::Error ("iops=-5: not a number ...") naming the key and value.
void apply_limit(ThrottleLimits& l, std::string_view key, std::string_view value);
// Throws loopdio::Error unless `name` can name a group (letters, digits, '-', '_', '.').
void check_group_name(std::string_view name);

// The limits `words` ("iops=500 bps=50M ...") make of `base`: each word replaces its key;
// a word "none" (alone) clears every limit but the group. Throws loopdio::Error.
ThrottleLimits parse_limits(const ThrottleLimits& base, const std::vector<std::string>& words);

// Checks the limits as a whole: a burst below its rate or without one, a length without a
// burst, a total together with read or write of the same kind. Throws loopdio::Error.
void check_limits(const ThrottleLimits& l);

// The limits of a JSON object (the limits file's entries: {"iops": 2000, "bps": "50M"}).
ThrottleLimits limits_from_json(const Json& j, const std::string& what);

}  // namespace loopdio

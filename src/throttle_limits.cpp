// Parsing and checking throttle limits; see throttle_limits.h.
#include "loopdio/throttle_limits.h"

#include <cmath>
#include <sstream>

#include "loopdio/error.h"
#include "loopdio/options.h"
#include "loopdio/safe_text.h"

namespace loopdio {
namespace {

const char* const kKeys[kBuckets] = {"iops", "iops-read", "iops-write",
                                     "bps",  "bps-read",  "bps-write"};

[[noreturn]] void bad(std::string_view key, std::string_view value, const std::string& why) {
  throw Error(std::string(key) + "=" + safe_encode(value) + ": " + why);
}

// "2000", "4k" (IOPS: 4096), "50M" (bytes), "none" or "0": no limit.
double parse_rate(std::string_view key, std::string_view value) {
  if (value == "none") return 0;
  if (!value.empty() && value[0] == '-') bad(key, value, "a rate cannot be negative");
  return static_cast<double>(parse_size(key, value));
}

double parse_seconds(std::string_view key, std::string_view value) {
  double v = 0;
  std::istringstream in{std::string(value)};
  in.imbue(std::locale::classic());
  if (!(in >> v) || !in.eof() || !std::isfinite(v))
    bad(key, value, "expected a number of seconds, such as 5 or 0.5");
  if (v <= 0 || v > 86400) bad(key, value, "expected more than 0 and at most 86400 seconds");
  return v;
}

// Which bucket and which of its fields `key` names; false when none.
bool locate(std::string_view key, int& bucket, int& field) {
  for (int b = 0; b < kBuckets; ++b) {
    std::string base = kKeys[b];
    if (key == base) { bucket = b; field = 0; return true; }
    if (key == base + "-max") { bucket = b; field = 1; return true; }
    if (key == base + "-max-length") { bucket = b; field = 2; return true; }
  }
  return false;
}

}  // namespace

const char* bucket_key(int b) { return kKeys[b]; }

bool ThrottleLimits::any() const {
  for (const BucketLimit& b : bucket)
    if (b.rate > 0) return true;
  return false;
}

bool is_limit_key(std::string_view key) {
  int b, f;
  return locate(key, b, f) || key == "iops-size" || key == "group";
}

void apply_limit(ThrottleLimits& l, std::string_view key, std::string_view value) {
  int b = 0, f = 0;
  if (key == "iops-size") {
    l.iops_size = value == "none" ? 0 : parse_size(key, value);
    if (l.iops_size && l.iops_size < 512) bad(key, value, "expected 512 bytes or more, or 0");
  } else if (key == "group") {
    check_group_name(value);
    l.group = value;
  } else if (locate(key, b, f)) {
    BucketLimit& x = l.bucket[static_cast<std::size_t>(b)];
    if (f == 0) x.rate = parse_rate(key, value);
    if (f == 1) x.max = parse_rate(key, value);
    if (f == 2) x.max_length = parse_seconds(key, value);
  } else {
    throw Error("unknown limit \"" + safe_encode(key) + "\" (iops, iops-read, iops-write, bps, " +
                "bps-read, bps-write, each with -max and -max-length; iops-size; group)");
  }
}

void check_group_name(std::string_view name) {
  if (name.size() > 64) bad("group", name, "a group name has at most 64 characters");
  for (char c : name)
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '_' && c != '.')
      bad("group", name, "a group name holds letters, digits, '-', '_' and '.' only");
}

void check_limits(const ThrottleLimits& l) {
  for (int b = 0; b < kBuckets; ++b) {
    const BucketLimit& x = l.bucket[static_cast<std::size_t>(b)];
    const std::string k = kKeys[b];
    if (x.max > 0 && x.rate == 0)
      throw Error(k + "-max=" + std::to_string(static_cast<std::uint64_t>(x.max)) +
                  ": a burst needs a rate to return to (" + k + "=)");
    if (x.max > 0 && x.max < x.rate)
      throw Error(k + "-max=" + std::to_string(static_cast<std::uint64_t>(x.max)) +
                  " is below " + k + "=" + std::to_string(static_cast<std::uint64_t>(x.rate)) +
                  ": a burst is a higher rate");
    if (x.max == 0 && x.max_length != 1)
      throw Error(k + "-max-length: a burst length needs a burst (" + k + "-max=)");
  }
  for (int total : {kIopsTotal, kBpsTotal})
    if (l.bucket[static_cast<std::size_t>(total)].rate > 0 &&
        (l.bucket[static_cast<std::size_t>(total) + 1].rate > 0 ||
         l.bucket[static_cast<std::size_t>(total) + 2].rate > 0))
      throw Error(std::string(kKeys[total]) + "= together with " + kKeys[total + 1] + "= or " +
                  kKeys[total + 2] + "=: limit the total, or reads and writes apart");
}

ThrottleLimits parse_limits(const ThrottleLimits& base, const std::vector<std::string>& words) {
  ThrottleLimits l = base;
  for (const std::string& w : words) {
    if (w == "none") {
      std::string group = l.group;
      l = ThrottleLimits{};
      l.group = group;
      continue;
    }
    auto eq = w.find('=');
    if (eq == std::string::npos || eq == 0)
      throw Error("\"" + safe_encode(w) + "\": expected KEY=VALUE, such as iops=2000 or bps=50M");
    apply_limit(l, std::string_view(w).substr(0, eq), std::string_view(w).substr(eq + 1));
  }
  check_limits(l);
  return l;
}

std::string ThrottleLimits::text() const {
  std::ostringstream out;
  auto num = [](double v) { return std::to_string(static_cast<std::uint64_t>(std::llround(v))); };
  for (int b = 0; b < kBuckets; ++b) {
    const BucketLimit& x = bucket[static_cast<std::size_t>(b)];
    if (x.rate == 0) continue;
    out << (out.tellp() ? " " : "") << kKeys[b] << "=" << num(x.rate);
    if (x.max > 0) out << " " << kKeys[b] << "-max=" << num(x.max) << " " << kKeys[b]
                       << "-max-length=" << x.max_length;
  }
  if (iops_size) out << (out.tellp() ? " " : "") << "iops-size=" << iops_size;
  if (!group.empty()) out << (out.tellp() ? " " : "") << "group=" << group;
  return out.str();
}

Json ThrottleLimits::json() const {
  Json j = Json::object();
  for (int b = 0; b < kBuckets; ++b) {
    const BucketLimit& x = bucket[static_cast<std::size_t>(b)];
    if (x.rate == 0) continue;
    j[kKeys[b]] = static_cast<std::uint64_t>(std::llround(x.rate));
    if (x.max > 0) {
      j[std::string(kKeys[b]) + "-max"] = static_cast<std::uint64_t>(std::llround(x.max));
      j[std::string(kKeys[b]) + "-max-length"] = x.max_length;
    }
  }
  if (iops_size) j["iops-size"] = iops_size;
  if (!group.empty()) j["group"] = group;
  return j;
}

ThrottleLimits limits_from_json(const Json& j, const std::string& what) {
  if (!j.is_object()) throw Error(what + ": expected an object of limits, such as {\"iops\": 2000}");
  std::vector<std::string> words;
  for (auto& [key, value] : j.items()) {
    std::string v;
    if (value.is_string())
      v = value.get<std::string>();
    else if (value.is_number())
      v = value.is_number_float() ? std::to_string(value.get<double>())
                                  : std::to_string(value.get<std::int64_t>());
    else
      throw Error(what + ": " + key + ": expected a number or a string such as \"50M\"");
    if (value.is_number_float() && !key.ends_with("-max-length"))
      throw Error(what + ": " + key + ": expected a whole number or a size such as \"50M\"");
    words.push_back(key + "=" + v);
  }
  try {
    return parse_limits(ThrottleLimits{}, words);
  } catch (const Error& e) {
    throw Error(what + ": " + e.what());
  }
}

}  // namespace loopdio

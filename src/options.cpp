// Strict parsing of loopdio's parameters; see options.h.
#include "loopdio/options.h"

#include <algorithm>
#include <cctype>
#include <limits>

#include "loopdio/align.h"
#include "loopdio/error.h"

namespace loopdio {
namespace {

[[noreturn]] void bad(std::string_view key, std::string_view value, const std::string& why) {
  throw Error(std::string(key) + "=" + std::string(value) + ": " + why);
}

std::string lower(std::string_view s) {
  std::string r(s);
  for (char& c : r) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return r;
}

DirectIo parse_direct_io(std::string_view key, std::string_view value) {
  std::string v = lower(value);
  if (v == "auto") return DirectIo::kAuto;
  if (v == "1" || v == "on" || v == "true" || v == "yes") return DirectIo::kOn;
  if (v == "0" || v == "off" || v == "false" || v == "no") return DirectIo::kOff;
  bad(key, value, "expected auto, 1 (on) or 0 (off)");
}

bool parse_bool(std::string_view key, std::string_view value) {
  std::string v = lower(value);
  if (v == "1" || v == "on" || v == "true" || v == "yes") return true;
  if (v == "0" || v == "off" || v == "false" || v == "no") return false;
  bad(key, value, "expected 1 (yes) or 0 (no)");
}

EngineKind parse_engine(std::string_view key, std::string_view value) {
  std::string v = lower(value);
  if (v == "libaio" || v == "native") return EngineKind::kLibaio;
  if (v == "io_uring" || v == "uring" || v == "io-uring") return EngineKind::kIoUring;
  if (v == "sync" || v == "threads") return EngineKind::kSync;
  if (v == "sync+libaio") return EngineKind::kSyncLibaio;
  if (v == "sync+io_uring") return EngineKind::kSyncIoUring;
  bad(key, value, "expected libaio, io_uring, sync, sync+libaio or sync+io_uring");
}

}  // namespace

const char* to_string(DirectIo d) {
  switch (d) {
    case DirectIo::kAuto: return "auto";
    case DirectIo::kOn: return "on";
    case DirectIo::kOff: return "off";
  }
  return "?";
}

const char* to_string(EngineKind e) {
  switch (e) {
    case EngineKind::kLibaio: return "libaio";
    case EngineKind::kIoUring: return "io_uring";
    case EngineKind::kSync: return "sync";
    case EngineKind::kSyncLibaio: return "sync+libaio";
    case EngineKind::kSyncIoUring: return "sync+io_uring";
  }
  return "?";
}

std::uint64_t parse_size(std::string_view key, std::string_view value) {
  if (value.empty()) bad(key, value, "empty value: expected a size such as 4096, 64k or 1G");
  std::size_t i = 0;
  std::uint64_t n = 0;
  while (i < value.size() && std::isdigit(static_cast<unsigned char>(value[i]))) {
    unsigned d = static_cast<unsigned>(value[i] - '0');
    if (n > (std::numeric_limits<std::uint64_t>::max() - d) / 10) bad(key, value, "too large");
    n = n * 10 + d;
    ++i;
  }
  if (i == 0) bad(key, value, "not a size: expected digits with an optional k, M, G or T");
  std::string suffix = lower(value.substr(i));
  unsigned shift = 0;
  if (!suffix.empty()) {
    const std::string units = "kmgtpe";
    auto pos = units.find(suffix[0]);
    std::string rest = suffix.substr(pos == std::string::npos ? 0 : 1);
    if (pos == std::string::npos ? suffix != "b" : !(rest.empty() || rest == "b" || rest == "ib"))
      bad(key, value, "not a size: unknown suffix \"" + std::string(value.substr(i)) + "\"");
    if (pos != std::string::npos) shift = 10 * static_cast<unsigned>(pos + 1);
  }
  if (shift && n > (std::numeric_limits<std::uint64_t>::max() >> shift)) bad(key, value, "too large");
  n <<= shift;
  // Offsets must fit off_t.
  if (n > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()))
    bad(key, value, "too large");
  return n;
}

void apply_option(Options& o, std::string_view key, std::string_view value) {
  if (key == "file") {
    if (value.empty()) bad(key, value, "empty path");
    o.file = value;
  } else if (key == "dir") {
    if (value.empty()) bad(key, value, "empty path");
    o.dir = value;
  } else if (key == "devices") {
    o.devices = parse_bool(key, value);
  } else if (key == "default-export" || key == "default_export") {
    o.default_export = value;
  } else if (key == "directio" || key == "direct-io" || key == "direct_io") {
    o.direct_io = parse_direct_io(key, value);
  } else if (key == "aio" || key == "engine") {
    o.engine = parse_engine(key, value);
  } else if (key == "offset") {
    o.offset = parse_size(key, value);
  } else if (key == "sizelimit") {
    o.sizelimit = parse_size(key, value);
    if (*o.sizelimit == 0) bad(key, value, "must be greater than zero");
  } else if (key == "sector-size" || key == "sector_size" || key == "logical-sector-size") {
    std::uint64_t v = parse_size(key, value);
    if (v < 512 || v > 4096 || !is_power_of_2(v)) bad(key, value, "expected 512, 1024, 2048 or 4096");
    o.sector_size = static_cast<std::uint32_t>(v);
  } else if (key == "control") {
    if (value.empty()) bad(key, value, "empty path");
    o.control = value;
  } else if (key == "readonly" || key == "read-only") {
    o.readonly = parse_bool(key, value);
  } else if (key == "max-connections" || key == "max_connections") {
    std::uint64_t v = parse_size(key, value);
    if (v < 1 || v > 4096) bad(key, value, "expected 1 to 4096 connections");
    o.max_connections = static_cast<unsigned>(v);
  } else if (key == "max-connections-per-export" || key == "max_connections_per_export") {
    std::uint64_t v = parse_size(key, value);
    if (v < 1 || v > 4096) bad(key, value, "expected 1 to 4096 connections");
    o.max_connections_per_export = static_cast<unsigned>(v);
  } else if (key == "max-handshakes" || key == "max_handshakes") {
    std::uint64_t v = parse_size(key, value);
    if (v < 1 || v > 4096) bad(key, value, "expected 1 to 4096 connections");
    o.max_handshakes = static_cast<unsigned>(v);
  } else if (key == "memory-max" || key == "memory_max") {
    std::string v = lower(value);
    o.memory_max = v == "none" || v == "0" ? 0 : parse_size(key, value);
    if (o.memory_max && o.memory_max < (std::uint64_t{512} << 20))
      bad(key, value, "must be at least 512M (nbdkit alone reserves about 200 MiB), or none");
  } else if (key == "aio-events" || key == "aio_events") {
    std::uint64_t v = parse_size(key, value);
    if (v < 16 || v > (1u << 20)) bad(key, value, "expected 16 to 1048576 events");
    o.aio_events = static_cast<unsigned>(v);
  } else if (key == "bounce-total" || key == "bounce_total") {
    o.bounce_total = parse_size(key, value);
    if (o.bounce_total < kMinBounce) bad(key, value, "must be at least 1M");
  } else if (key == "bounce-per-connection" || key == "bounce_per_connection") {
    o.bounce_per_connection = parse_size(key, value);
    if (o.bounce_per_connection < kMinBounce) bad(key, value, "must be at least 1M");
  } else if (key == "limits") {
    if (value.empty()) bad(key, value, "empty path");
    o.limits_file = value;
  } else if (key == "group") {
    throw Error("group=" + std::string(value) + ": a group is given per export, in limits=FILE " +
                "or with loopdio set --group");
  } else if (is_limit_key(key)) {
    apply_limit(o.limits, key, value);
  } else {
    throw Error("unknown parameter \"" + std::string(key) + "\" (see nbdkit loopdio --help)");
  }
}

unsigned connections_per_export(const Options& o) {
  if (o.max_connections_per_export) return o.max_connections_per_export;
  return o.dir.empty() ? o.max_connections : std::max(1u, o.max_connections / 2);
}

void check_options(const Options& o) {
  if (o.file.empty() && o.dir.empty())
    throw Error("file=PATH or dir=DIR is required: the image, or a directory of images, to serve");
  if (!o.file.empty() && !o.dir.empty())
    throw Error("file= and dir= exclude each other: serve one image, or a directory of them");
  if (!o.dir.empty() && (o.offset || o.sizelimit))
    throw Error("offset= and sizelimit= apply to one image (file=), not to dir=");
  if (o.dir.empty() && !o.default_export.empty())
    throw Error("default-export= applies to dir=");
  check_limits(o.limits);
  if (o.dir.empty() && !o.limits_file.empty())
    throw Error("limits= applies to dir=: with file=, give the limits themselves (iops=, bps=, ...)");
  if (o.dir.empty() && o.devices)
    throw Error("devices= applies to dir=: file= serves the block device it names");
  if (o.max_connections_per_export > o.max_connections)
    throw Error("max-connections-per-export=" + std::to_string(o.max_connections_per_export) +
                " is larger than max-connections=" + std::to_string(o.max_connections));
  if (o.memory_max && o.bounce_total > o.memory_max / 4)
    throw Error("bounce-total=" + std::to_string(o.bounce_total) + " is more than a quarter of " +
                "memory-max=" + std::to_string(o.memory_max) + ": nbdkit's request buffers " +
                "would have too little left");
  if (o.bounce_per_connection > o.bounce_total)
    throw Error("bounce-per-connection=" + std::to_string(o.bounce_per_connection) +
                " is larger than bounce-total=" + std::to_string(o.bounce_total));
}

}  // namespace loopdio

// The user's settings for one export, parsed from nbdkit's key=value parameters (and the
// CLI's options). Parsing is strict: every bad value is refused with a message that names
// the parameter and the value.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "loopdio/throttle_limits.h"

namespace loopdio {

enum class DirectIo { kAuto, kOn, kOff };
// kSyncLibaio, kSyncIoUring: a request of one transfer runs as kSync does, in the calling
// thread; only a request of several transfers goes to the AIO engine (make_split_engine).
// to_string(kind) is also the name an engine of that kind gives itself (Engine::name).
enum class EngineKind { kLibaio, kIoUring, kSync, kSyncLibaio, kSyncIoUring };

const char* to_string(DirectIo d);
const char* to_string(EngineKind e);

inline constexpr unsigned kDefaultMaxConnections = 64;
inline constexpr unsigned kDefaultMaxHandshakes = 16;
inline constexpr unsigned kDefaultAioEvents = 4096;
inline constexpr std::uint64_t kDefaultMemoryMax = std::uint64_t{2} << 30;
inline constexpr std::uint64_t kDefaultBounceTotal = std::uint64_t{64} << 20;
inline constexpr std::uint64_t kDefaultBouncePerConnection = std::uint64_t{16} << 20;
inline constexpr std::uint64_t kMinBounce = std::uint64_t{1} << 20;

struct Options {
  std::string file;                        // one image (file=), or
  std::string dir;                         // a directory of images, one export each (dir=)
  std::string default_export;              // dir=: what the empty export name serves
  bool devices = false;                    // dir=: block device nodes in it are exports too
  DirectIo direct_io = DirectIo::kAuto;
  EngineKind engine = EngineKind::kSyncLibaio;  // docs/design.md: why
  std::uint64_t offset = 0;                // losetup -o
  std::optional<std::uint64_t> sizelimit;  // losetup --sizelimit
  std::uint32_t sector_size = 0;           // 0: the backing's direct-I/O alignment
  std::string control;                     // control socket path, empty for none
  bool readonly = false;                   // open the backing read-only (nbdkit -r)
  // Limits on what clients can take (docs/loopdio.md, "Limits").
  unsigned max_connections = kDefaultMaxConnections;  // with an export open
  // With an export open, to one export; 0: max_connections (file=), half of it (dir=).
  unsigned max_connections_per_export = 0;
  unsigned max_handshakes = kDefaultMaxHandshakes;  // connected, no export open (yet)
  // The process's private memory (RLIMIT_DATA), nbdkit's request buffers included; 0: none.
  std::uint64_t memory_max = kDefaultMemoryMax;
  unsigned aio_events = kDefaultAioEvents;  // the server's share of fs.aio-max-nr
  // Throttling: the export's limits (each export's, with dir=, unless the limits file says
  // otherwise), and the file of per-export limits and groups (dir=).
  ThrottleLimits limits;
  std::string limits_file;
  std::uint64_t bounce_total = kDefaultBounceTotal;                  // whole server
  std::uint64_t bounce_per_connection = kDefaultBouncePerConnection;  // one connection
};

// max-connections-per-export as it applies: the value set, or its default.
unsigned connections_per_export(const Options& o);

// Sets one parameter. Throws loopdio::Error ("offset=12x: not a size ...") on a bad key or
// value. `file` and `control` are taken as given; the caller makes them absolute.
void apply_option(Options& o, std::string_view key, std::string_view value);

// Checks the options against each other once all are set (file= or dir=, offset= and
// sizelimit= only with file=, bounce-per-connection no larger than bounce-total). Throws
// loopdio::Error naming the parameters.
void check_options(const Options& o);

// "4096", "4k", "1M", "2G", "1T" (binary multiples, either case, optional "B"/"iB").
// Throws loopdio::Error naming `key` for empty, negative, non-numeric or overflowing values.
std::uint64_t parse_size(std::string_view key, std::string_view value);

}  // namespace loopdio

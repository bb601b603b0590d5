// The nbdkit glue: the only file that knows nbdkit. It parses parameters, opens the image
// (or the directory of images) before nbdkit forks, gives each connection its export and
// that export's engine, times and counts every request, and turns the core library's results
// (0 or -errno, loopdio::Error) into nbdkit errors. Ordered like the lifecycle:
// configuration, exports and connections, sizes and capabilities, the data path, the table.
#define NBDKIT_API_VERSION 2
#include <nbdkit-plugin.h>

#include <sys/stat.h>
#include <syslog.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <optional>
#include <string>

#include "loopdio/connection_slots.h"
#include "loopdio/control_server.h"
#include "loopdio/error.h"
#include "loopdio/export.h"
#include "loopdio/extents.h"
#include "loopdio/log.h"
#include "loopdio/options.h"
#include "loopdio/process_limits.h"
#include "loopdio/service.h"
#include "loopdio/version.h"

#define THREAD_MODEL NBDKIT_THREAD_MODEL_PARALLEL

namespace {

using namespace loopdio;
using Clock = std::chrono::steady_clock;

Options g_opts;
// Only atomics: a connection's thread may end after the plugin is cleaned up.
ConnectionSlots g_slots;
std::unique_ptr<Service> g_service;  // set in get_ready, before any connection
std::unique_ptr<ControlServer> g_control;

// A connection's hold on its slot, from .preconnect until its thread (nbdkit runs each
// connection's handshake and its end on one thread) ends: the only sign of the end of a
// connection that never opened an export, or stopped mid-handshake.
struct SlotHold {
  bool held = false;
  ~SlotHold() {
    if (held) g_slots.depart();
  }
};
thread_local SlotHold t_slot;

// A refusal a flood of clients repeats is logged once a second, with the count of those
// left out since: the reason stays visible, the log small. Atomics only, like g_slots.
class RefusalLog {
 public:
  // Whether to log this one; then `left_out` is how many were not logged since the last.
  bool due(std::uint64_t& left_out) noexcept {
    const std::int64_t now =
        std::chrono::duration_cast<std::chrono::seconds>(Clock::now().time_since_epoch()).count();
    std::int64_t last = last_.load(std::memory_order_relaxed);
    if (now != last && last_.compare_exchange_strong(last, now)) {
      left_out = left_out_.exchange(0);
      return true;
    }
    left_out_.fetch_add(1, std::memory_order_relaxed);
    return false;
  }

 private:
  std::atomic<std::int64_t> last_{-1};
  std::atomic<std::uint64_t> left_out_{0};
};
RefusalLog g_handshake_refusals;

struct Connection {
  std::shared_ptr<Export> exp;
  std::shared_ptr<Engine> engine;           // the export's, shared with its other connections
  std::optional<BouncePool::Client> bounce;  // this connection's share of the export's share
};

// Runs a callback body; no exception may cross into nbdkit.
template <typename F>
auto guarded(const char* what, F&& f, decltype(f()) failed) noexcept -> decltype(f()) {
  try {
    return f();
  } catch (const Error& e) {
    nbdkit_error("%s", e.what());
    if (e.code()) nbdkit_set_error(e.code());
  } catch (const std::bad_alloc&) {
    nbdkit_error("%s: out of memory", what);
    nbdkit_set_error(ENOMEM);
  } catch (const std::exception& e) {
    nbdkit_error("%s: %s", what, e.what());
    nbdkit_set_error(EIO);
  } catch (...) {
    nbdkit_error("%s: unexpected exception", what);
    nbdkit_set_error(EIO);
  }
  return failed;
}

// True when stderr leads nowhere: nbdkit in the background without -v points it at
// /dev/null, and then only syslog reaches the operator.
bool stderr_is_null() {
  struct stat st {}, null {};
  return ::fstat(STDERR_FILENO, &st) != 0 ||
         (S_ISCHR(st.st_mode) && ::stat("/dev/null", &null) == 0 && st.st_rdev == null.st_rdev);
}

// Notices (fallbacks, refusals, switches) must reach the operator in every mode: stderr in
// the foreground and under systemd (the journal), syslog in the background.
void loopdio_load() {
  set_notice_sink([](const std::string& m) {
    nbdkit_debug("%s", m.c_str());
    if (stderr_is_null())
      ::syslog(LOG_WARNING, "loopdio: %s", m.c_str());
    else
      std::fprintf(stderr, "nbdkit: loopdio: %s\n", m.c_str());
  });
}

int loopdio_config(const char* key, const char* value) {
  return guarded("config", [&] {
    apply_option(g_opts, key, value);
    // Paths are made absolute now: nbdkit changes to / when it forks into the background.
    std::string* path = std::strcmp(key, "file") == 0      ? &g_opts.file
                        : std::strcmp(key, "dir") == 0     ? &g_opts.dir
                        : std::strcmp(key, "control") == 0 ? &g_opts.control
                        : std::strcmp(key, "limits") == 0  ? &g_opts.limits_file
                                                           : nullptr;
    if (path && (*path)[0] != '/') {
      char* abs = nbdkit_absolute_path(value);
      if (!abs) return -1;
      *path = abs;
      std::free(abs);
    }
    return 0;
  }, -1);
}

int loopdio_config_complete() {
  return guarded("config", [] {
    check_options(g_opts);
    return 0;
  }, -1);
}

int loopdio_get_ready() {
  return guarded("get_ready", [] {
    g_service = std::make_unique<Service>(g_opts, g_slots);
    if (!g_opts.control.empty())
      g_control = std::make_unique<ControlServer>(
          g_opts.control, [](std::string_view line) { return g_service->control(line); },
          // What may wait on a disk (a drain, fdatasync, a clone) never takes the last free
          // worker.
          [](std::string_view line) {
            return line == "flush" || line.starts_with("set ") || line.starts_with("snapshot");
          });
    return 0;
  }, -1);
}

// True when nbdkit was started with --timeout (or --time-out, or an abbreviation of
// either, as getopt_long takes them).
bool handshake_timeout_given() {
  std::ifstream in("/proc/self/cmdline");
  std::string arg;
  while (std::getline(in, arg, '\0'))
    if (arg.size() > 3 && arg.starts_with("--ti")) return true;
  return false;
}

// The memory and descriptor limits, applied now that nbdkit has forked into the background
// and started --run's command (which must not inherit them). The descriptors bound the
// connections: past them nbdkit could not accept, and would spin on accept's EMFILE.
void apply_limits() {
  ProcessLimits pl = apply_process_limits(g_opts);
  for (const std::string& n : pl.notes) notice(n);
  const unsigned want = g_opts.max_connections + g_opts.max_handshakes;
  if (pl.fd_connections < want) {
    unsigned open = std::max(1u, pl.fd_connections * g_opts.max_connections / want);
    unsigned hs = std::max(1u, pl.fd_connections - std::min(pl.fd_connections, open));
    g_slots.set_limits(open, hs);
    notice("serving at most " + std::to_string(open) + " connections and " + std::to_string(hs) +
           " handshakes at once");
  }
  g_service->set_limits(pl);
  if (!handshake_timeout_given())
    notice("nbdkit runs without --timeout: a client that stalls in its handshake keeps one of "
           "the max-handshakes=" + std::to_string(g_slots.max_handshakes()) + " slots until "
           "it leaves (loopdio serve and the systemd units pass --timeout=10)");
}

// Threads may start only now: nbdkit has forked (or will not).
int loopdio_after_fork() {
  return guarded("after_fork", [] {
    apply_limits();
    g_service->start();
    if (g_control) g_control->start();
    return 0;
  }, -1);
}

// Every connection takes a handshake slot first: half-open connections are bounded too.
// Refused here, the client sees its connection closed (nothing can be said before the
// handshake).
int loopdio_preconnect(int) {
  if (!g_slots.arrive()) {
    std::uint64_t left_out = 0;
    if (g_handshake_refusals.due(left_out)) {  // else counted, for the next line
      if (left_out == 0)
        nbdkit_error("too many connections in the handshake: max-handshakes=%u; refused",
                     g_slots.max_handshakes());
      else
        nbdkit_error("too many connections in the handshake: max-handshakes=%u; refused, "
                     "and %" PRIu64 " more since the last such line",
                     g_slots.max_handshakes(), left_out);
    }
    return -1;
  }
  t_slot.held = true;
  return 0;
}

void loopdio_cleanup() { g_control.reset(); }

int loopdio_list_exports(int, int, struct nbdkit_exports* exports) {
  return guarded("list_exports", [&] {
    if (!g_service->serves_dir()) return nbdkit_use_default_export(exports);
    for (const ExportDir::Entry& e : g_service->exports())
      if (nbdkit_add_export(exports, e.name.c_str(), e.description.c_str()) == -1) return -1;
    return 0;
  }, -1);
}

const char* loopdio_default_export(int, int) {
  return nbdkit_strdup_intern(g_opts.default_export.c_str());
}

void* loopdio_open(int readonly) {
  return guarded("open", [&] {
    const char* name = nbdkit_export_name();
    auto c = std::make_unique<Connection>();
    c->exp = g_service->connect(name ? name : "");
    try {
      c->engine = c->exp->attach(connections_per_export(g_opts));
    } catch (...) {
      g_service->disconnect();
      throw;
    }
    c->bounce.emplace(&c->exp->bounce_group());
    if (readonly) c->exp->note_readonly_client();
    return static_cast<void*>(c.release());
  }, static_cast<void*>(nullptr));
}

void loopdio_close(void* handle) {
  auto* c = static_cast<Connection*>(handle);
  c->bounce.reset();
  c->exp->release(*c->engine);
  delete c;
  g_service->disconnect();
}

Connection& conn(void* handle) { return *static_cast<Connection*>(handle); }

int64_t loopdio_get_size(void* h) {
  return static_cast<int64_t>(conn(h).exp->backing().geometry().size);
}

int loopdio_block_size(void* h, uint32_t* minimum, uint32_t* preferred, uint32_t* maximum) {
  const Backing& b = conn(h).exp->backing();
  *minimum = b.min_block();
  *preferred = b.preferred_block();
  *maximum = b.max_block();
  return 0;
}

const char* loopdio_export_description(void* h) {
  return guarded("export_description", [&] {
    return nbdkit_strdup_intern(conn(h).exp->describe().c_str());
  }, static_cast<const char*>(nullptr));
}

int loopdio_can_write(void* h) { return conn(h).exp->backing().writable(); }
int loopdio_can_flush(void*) { return 1; }
int loopdio_can_fua(void*) { return NBDKIT_FUA_NATIVE; }
// Every connection to an export shares one fd, so a flush on any of them covers all.
int loopdio_can_multi_conn(void*) { return 1; }
int loopdio_can_trim(void* h) {
  Export& x = *conn(h).exp;
  return x.backing().writable() && x.space().can_trim();
}
// Zeroes are always possible: the kernel offloads them, or they are written.
int loopdio_can_zero(void* h) { return conn(h).exp->backing().writable(); }
// A fast zero that cannot be cheap fails at once with ENOTSUP, as the protocol asks.
int loopdio_can_fast_zero(void* h) { return conn(h).exp->backing().writable(); }
// Block devices have no holes to report: everything is data (nbdkit's default).
int loopdio_can_extents(void* h) { return !conn(h).exp->backing().probe().is_block_device; }
// Native: a no-op with direct I/O (no page cache to fill), readahead when buffered.
int loopdio_can_cache(void*) { return NBDKIT_CACHE_NATIVE; }

// Serves one request: through the export's drain gate (unless `gated` is false), timed and
// counted; returns 0, or -1 with the error set for nbdkit (a fast zero's ENOTSUP is the
// expected answer, not an error to log).
template <typename F>
int serve(void* h, Cmd cmd, const char* what, uint32_t count, uint64_t offset, F&& body,
          bool gated = true) {
  Connection& c = conn(h);
  // Limits first, before the request takes anything another request needs (the drain
  // gate, bounce memory, range locks, AIO slots); the wait is not part of its latency.
  // Trim and zero count as one write I/O each; flush, block status and cache are free.
  if (cmd == Cmd::kRead || cmd == Cmd::kWrite || cmd == Cmd::kTrim || cmd == Cmd::kZero)
    c.exp->throttle(&c, cmd == Cmd::kRead ? Throttle::Kind::kRead : Throttle::Kind::kWrite,
                    cmd == Cmd::kRead || cmd == Cmd::kWrite ? count : 0);
  const auto t0 = Clock::now();
  int r;
  if (gated) {
    DrainGate::Pass pass(c.exp->gate());
    r = body(c);
  } else {
    r = body(c);
  }
  auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - t0).count();
  c.exp->stats().request(cmd, count, static_cast<std::uint64_t>(ns), r);
  if (r == 0) return 0;
  if (!(cmd == Cmd::kZero && r == -ENOTSUP))
    nbdkit_error("%s: %s: %" PRIu32 " bytes at %" PRIu64 ": %s", what,
                 c.exp->options().file.c_str(), count, offset, std::strerror(-r));
  nbdkit_set_error(-r);
  return -1;
}

// A read or write beyond the advertised maximum: no client that honours the block sizes
// sends one (the kernel's nbd driver stops at 32 MiB), and nbdkit has already grown this
// worker's buffer to it, which it keeps while the connection lives. The connection is
// ended, so that its threads and their buffers go; the request fails.
bool oversized(void* h, const char* what, uint32_t count) {
  const uint32_t max = conn(h).exp->backing().max_block();
  if (count <= max) return false;
  nbdkit_error("%s of %" PRIu32 " bytes, beyond the advertised maximum of %" PRIu32 ": "
               "the client is disconnected", what, count, max);
  nbdkit_disconnect(1);
  nbdkit_set_error(EINVAL);
  return true;
}

int loopdio_pread(void* h, void* buf, uint32_t count, uint64_t offset, uint32_t) {
  if (oversized(h, "read", count)) return -1;
  return serve(h, Cmd::kRead, "read", count, offset, [&](Connection& c) {
    return c.exp->io().read(*c.engine, c.exp->backing().mode(), buf, count, offset, &*c.bounce);
  });
}

int loopdio_pwrite(void* h, const void* buf, uint32_t count, uint64_t offset, uint32_t flags) {
  if (oversized(h, "write", count)) return -1;
  return serve(h, Cmd::kWrite, "write", count, offset, [&](Connection& c) {
    return c.exp->io().write(*c.engine, c.exp->backing().mode(), buf, count, offset,
                             flags & NBDKIT_FLAG_FUA, &*c.bounce);
  });
}

int loopdio_flush(void* h, uint32_t) {
  return serve(h, Cmd::kFlush, "flush", 0, 0, [&](Connection& c) {
    return c.exp->io().flush(*c.engine, c.exp->backing().mode());
  });
}

int loopdio_trim(void* h, uint32_t count, uint64_t offset, uint32_t flags) {
  return serve(h, Cmd::kTrim, "trim", count, offset, [&](Connection& c) {
    return c.exp->space().trim(*c.engine, c.exp->backing().mode(), count, offset,
                               flags & NBDKIT_FLAG_FUA);
  });
}

int loopdio_zero(void* h, uint32_t count, uint64_t offset, uint32_t flags) {
  return serve(h, Cmd::kZero, "zero", count, offset, [&](Connection& c) {
    ZeroFlags f;
    f.may_trim = flags & NBDKIT_FLAG_MAY_TRIM;
    f.fua = flags & NBDKIT_FLAG_FUA;
    f.fast = flags & NBDKIT_FLAG_FAST_ZERO;
    return c.exp->space().zero(*c.engine, c.exp->backing().mode(), count, offset, f, &*c.bounce);
  });
}

int loopdio_extents(void* h, uint32_t count, uint64_t offset, uint32_t flags,
                    struct nbdkit_extents* extents) {
  return serve(h, Cmd::kExtents, "extents", count, offset, [&](Connection& c) {
    const Backing& b = c.exp->backing();
    const uint64_t base = b.geometry().base;
    return map_extents(b.fd(), base + offset, base + offset + count, flags & NBDKIT_FLAG_REQ_ONE,
                       [&](uint64_t off, uint64_t len, bool hole) {
                         uint32_t type = hole ? NBDKIT_EXTENT_HOLE | NBDKIT_EXTENT_ZERO : 0;
                         return nbdkit_add_extent(extents, off - base, len, type) == 0 ? 0 : -EIO;
                       });
  }, false);
}

int loopdio_cache(void* h, uint32_t count, uint64_t offset, uint32_t) {
  return serve(h, Cmd::kCache, "cache", count, offset, [&](Connection& c) {
    return c.exp->space().cache(c.exp->backing().mode(), count, offset);
  });
}

void loopdio_dump_plugin() {
  std::printf("loopdio_version=%s\n", kVersion);
  std::printf("loopdio_nbdkit_version=%s\n", kNbdkitVersion);
  std::printf("loopdio_nbdkit_origin=%s\n", kNbdkitOrigin);
  std::printf("loopdio_engines=libaio,%ssync,sync+libaio%s\n", kHaveUring ? "io_uring," : "",
              kHaveUring ? ",sync+io_uring" : "");
}

const char kHelp[] =
    "file=PATH            The image file or block device to serve, or\n"
    "dir=DIR              a directory of them: each file is an export named by its name.\n"
    "default-export=NAME  With dir=: what a client asking for no name gets.\n"
    "directio=auto|1|0    O_DIRECT: auto (default) when the backing allows it; 1 demands it;\n"
    "                     0 serves buffered through the same code path.\n"
    "aio=libaio|io_uring|sync|sync+libaio|sync+io_uring\n"
    "                     The I/O engine (default sync+libaio). sync = pread/pwrite; sync+X:\n"
    "                     pread/pwrite for a request of one transfer, X for several.\n"
    "offset=SIZE          Serve from this byte of the backing (losetup -o). k/M/G/T suffixes.\n"
    "sizelimit=SIZE       Serve at most this many bytes (losetup --sizelimit).\n"
    "sector-size=N        512, 1024, 2048 or 4096: the advertised minimum block size\n"
    "                     (a multiple of the direct-I/O alignment).\n"
    "control=PATH         A root-only Unix socket for status, statistics and switches.\n"
    "readonly=1           Open the image read-only (use with nbdkit -r).\n"
    "max-connections=N    Connections serving exports at once (default 64).\n"
    "max-connections-per-export=N\n"
    "                     Of them, to one export (default: all with file=, half with dir=).\n"
    "max-handshakes=N     Connections still negotiating or listing (default 16); use\n"
    "                     nbdkit --timeout so that stalled ones are dropped.\n"
    "aio-events=N         Kernel AIO events the server may hold (default 4096 of the\n"
    "                     host's fs.aio-max-nr); each open export takes 64.\n"
    "devices=1            dir=: block device nodes in DIR are exports too.\n"
    "iops=N, bps=SIZE     Throttle the export (each export, with dir=): total IOPS and\n"
    "                     bytes per second; iops-read=, iops-write=, bps-read=, bps-write=\n"
    "                     apart; each with -max= (a burst rate) and -max-length=SECONDS;\n"
    "                     iops-size=SIZE (a request counts as size/iops-size I/Os).\n"
    "limits=FILE          dir=: JSON of groups and per-export limits (docs/loopdio.md).\n"
    "memory-max=SIZE      The process's private memory, nbdkit's request buffers included\n"
    "                     (default 2G; none for no limit): past it requests fail with ENOMEM.\n"
    "bounce-total=SIZE    Bounce memory of the whole server (default 64M).\n"
    "bounce-per-connection=SIZE\n"
    "                     Bounce memory of one connection (default 16M).";

struct nbdkit_plugin make_plugin() {
  struct nbdkit_plugin p {};
  p.name = "loopdio";
  p.longname = "loopdio: serve an image with O_DIRECT and asynchronous kernel I/O";
  p.version = kVersion;
  p.description = "Serves a file or block device with direct I/O and libaio or io_uring.";
  p.load = loopdio_load;
  p.config = loopdio_config;
  p.config_complete = loopdio_config_complete;
  p.config_help = kHelp;
  p.magic_config_key = "file";
  p.get_ready = loopdio_get_ready;
  p.after_fork = loopdio_after_fork;
  p.preconnect = loopdio_preconnect;
  p.cleanup = loopdio_cleanup;
  p.unload = loopdio_cleanup;
  p.list_exports = loopdio_list_exports;
  p.default_export = loopdio_default_export;
  p.open = loopdio_open;
  p.close = loopdio_close;
  p.get_size = loopdio_get_size;
  p.block_size = loopdio_block_size;
  p.export_description = loopdio_export_description;
  p.can_write = loopdio_can_write;
  p.can_flush = loopdio_can_flush;
  p.can_fua = loopdio_can_fua;
  p.can_multi_conn = loopdio_can_multi_conn;
  p.can_trim = loopdio_can_trim;
  p.can_zero = loopdio_can_zero;
  p.can_fast_zero = loopdio_can_fast_zero;
  p.can_extents = loopdio_can_extents;
  p.can_cache = loopdio_can_cache;
  p.pread = loopdio_pread;
  p.pwrite = loopdio_pwrite;
  p.flush = loopdio_flush;
  p.trim = loopdio_trim;
  p.zero = loopdio_zero;
  p.extents = loopdio_extents;
  p.cache = loopdio_cache;
  p.dump_plugin = loopdio_dump_plugin;
  p.errno_is_preserved = 0;
  return p;
}

struct nbdkit_plugin plugin = make_plugin();

}  // namespace

NBDKIT_REGISTER_PLUGIN(plugin)

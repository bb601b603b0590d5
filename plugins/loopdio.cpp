// The nbdkit glue: the only file that knows nbdkit. It parses parameters, opens the backing
// before nbdkit forks, gives each connection its own engine, and turns the core library's
// results (0 or -errno, loopdio::Error) into nbdkit errors. Ordered like the lifecycle:
// configuration, connections, sizes and capabilities, the data path, the plugin table.
#define NBDKIT_API_VERSION 2
#include <nbdkit-plugin.h>

#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <syslog.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>

#include "loopdio/aligned_io.h"
#include "loopdio/backing.h"
#include "loopdio/control.h"
#include "loopdio/control_server.h"
#include "loopdio/drain_gate.h"
#include "loopdio/engine.h"
#include "loopdio/engine_share.h"
#include "loopdio/error.h"
#include "loopdio/extents.h"
#include "loopdio/log.h"
#include "loopdio/options.h"
#include "loopdio/space_ops.h"
#include "loopdio/version.h"

#define THREAD_MODEL NBDKIT_THREAD_MODEL_PARALLEL

namespace {

using namespace loopdio;

Options g_opts;
std::unique_ptr<Backing> g_backing;   // set in get_ready, before any connection
std::unique_ptr<AlignedIo> g_io;
std::unique_ptr<SpaceOps> g_space;
std::unique_ptr<EngineShare> g_engines;  // the engine every connection shares
RangeLock g_locks;                     // shared by every connection
DrainGate g_gate;                      // every request passes it; a run-time switch drains it
std::unique_ptr<ControlServer> g_control;
std::atomic<unsigned> g_connections{0};
std::atomic<bool> g_readonly_open{false};  // a connection was opened read-only (nbdkit -r)
// Connections by the engine they actually use (a fallback shows here, and in `loopdio list`).
std::atomic<int> g_by_engine[3];
const char* const kEngineNames[3] = {"libaio", "io_uring", "sync"};

int engine_index(const Engine& e) {
  for (int i = 0; i < 3; ++i)
    if (std::strcmp(e.name(), kEngineNames[i]) == 0) return i;
  return 2;
}

struct Connection {
  std::shared_ptr<Engine> engine;
  BouncePool::Client bounce;  // this connection's share of the bounce memory
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

// A result from the core: 0, or -errno to report to the client.
int io_result(const char* what, uint32_t count, uint64_t offset, int r) {
  if (r == 0) return 0;
  nbdkit_error("%s: %s: %" PRIu32 " bytes at %" PRIu64 ": %s", what, g_opts.file.c_str(), count,
               offset, std::strerror(-r));
  nbdkit_set_error(-r);
  return -1;
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
                        : std::strcmp(key, "control") == 0 ? &g_opts.control
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
  if (g_opts.file.empty()) {
    nbdkit_error("file=PATH is required: the image file or block device to serve");
    return -1;
  }
  return guarded("config", [] {
    check_options(g_opts);
    return 0;
  }, -1);
}

// The engines in use: "libaio", "libaio+sync" after a fallback; the one asked for when idle.
std::string engines_in_use() {
  std::string in_use;
  for (int i = 0; i < 3; ++i)
    if (g_by_engine[i].load()) in_use += (in_use.empty() ? "" : "+") + std::string(kEngineNames[i]);
  return in_use.empty() ? to_string(g_opts.engine) : in_use;
}

void add_status(Json& j) {
  j["served_readonly"] = g_readonly_open || !g_backing->writable();
  j["connections"] = g_connections.load();
  j["max_connections"] = g_opts.max_connections;
  j["in_flight"] = g_gate.in_flight();
  Json engines = Json::object();
  for (int i = 0; i < 3; ++i) engines[kEngineNames[i]] = g_by_engine[i].load();
  j["engines"] = engines;
  std::string in_use = engines_in_use();
  j["aio_in_use"] = in_use;
  BouncePool::Stats b = g_io->bounce_pool().stats();
  j["bounce"] = {{"leased", b.leased}, {"cached", b.cached}, {"peak", b.peak},
                 {"waits", b.waits}, {"total", g_opts.bounce_total},
                 {"per_connection", g_opts.bounce_per_connection}};
  j["description"] = g_backing->describe(in_use.c_str());
}

std::string control_command(std::string_view line) {
  ControlContext ctx{*g_backing, g_gate, add_status};
  return handle_control(line, ctx);
}

int loopdio_get_ready() {
  return guarded("get_ready", [] {
    g_backing = Backing::open(g_opts);
    for (const std::string& line : g_backing->findings()) nbdkit_debug("%s", line.c_str());
    if (!g_backing->direct() && g_opts.direct_io == DirectIo::kAuto)
      notice("direct I/O off, serving buffered: " + g_backing->direct_reason());
    if (!g_backing->writable()) notice("serving " + g_opts.file + " read-only: " + g_backing->readonly_reason());
    g_io = std::make_unique<AlignedIo>(g_backing->geometry(), g_locks, g_opts.bounce_total,
                                       g_opts.bounce_per_connection);
    g_engines = std::make_unique<EngineShare>(g_opts.engine, g_backing->fd());
    if (g_backing->probe().fs_type == "fuse") {
      // The kernel hands RWF_DSYNC to the FUSE server as a flag it may ignore.
      g_io->use_fdatasync_for_fua();
      notice("FUSE backing: FUA is a write followed by fdatasync");
    }
    const ProbeResult& p = g_backing->probe();
    SpaceSupport sup;
    sup.block_device = p.is_block_device;
    sup.device_block = p.logical_block ? p.logical_block : 512;
    sup.discard = p.discard_max > 0;
    sup.zero_offload = p.write_zeroes_max > 0;
    g_space = std::make_unique<SpaceOps>(*g_io, g_locks, sup);
    if (!g_opts.control.empty()) g_control = std::make_unique<ControlServer>(g_opts.control, control_command);
    return 0;
  }, -1);
}

// Threads may start only now: nbdkit has forked (or will not).
int loopdio_after_fork() {
  return guarded("after_fork", [] {
    if (g_control) g_control->start();
    return 0;
  }, -1);
}

void loopdio_cleanup() { g_control.reset(); }

void* loopdio_open(int readonly) {
  if (readonly && !g_readonly_open.exchange(true) && g_backing->writable())
    notice("nbdkit -r: clients may not write, but the image is open read-write; "
           "readonly=1 opens it read-only");
  return guarded("open", [] {
    if (g_connections.fetch_add(1) >= g_opts.max_connections) {
      --g_connections;
      throw Error("too many connections: max-connections=" +
                  std::to_string(g_opts.max_connections) + " are open", EBUSY);
    }
    struct Undo {
      bool armed = true;
      ~Undo() { if (armed) --g_connections; }
    } undo;
    auto c = std::make_unique<Connection>();
    c->engine = g_engines->acquire();
    ++g_by_engine[engine_index(*c->engine)];
    undo.armed = false;
    return static_cast<void*>(c.release());
  }, static_cast<void*>(nullptr));
}

void loopdio_close(void* handle) {
  auto* c = static_cast<Connection*>(handle);
  --g_by_engine[engine_index(*c->engine)];
  delete c;
  --g_connections;
}

int64_t loopdio_get_size(void*) { return static_cast<int64_t>(g_backing->geometry().size); }

int loopdio_block_size(void*, uint32_t* minimum, uint32_t* preferred, uint32_t* maximum) {
  *minimum = g_backing->min_block();
  *preferred = g_backing->preferred_block();
  *maximum = g_backing->max_block();
  return 0;
}

const char* loopdio_export_description(void* handle) {
  auto* c = static_cast<Connection*>(handle);
  return guarded("export_description", [&] {
    return nbdkit_strdup_intern(g_backing->describe(c->engine->name()).c_str());
  }, static_cast<const char*>(nullptr));
}

int loopdio_can_write(void*) { return g_backing->writable(); }
int loopdio_can_flush(void*) { return 1; }
int loopdio_can_fua(void*) { return NBDKIT_FUA_NATIVE; }
// Every connection shares one fd, so a flush on any of them covers the writes of all.
int loopdio_can_multi_conn(void*) { return 1; }
int loopdio_can_trim(void*) { return g_backing->writable() && g_space->can_trim(); }
// Zeroes are always possible: the kernel offloads them, or they are written.
int loopdio_can_zero(void*) { return g_backing->writable(); }
// A fast zero that cannot be cheap fails at once with ENOTSUP, as the protocol asks.
int loopdio_can_fast_zero(void*) { return g_backing->writable(); }
// Block devices have no holes to report: everything is data (nbdkit's default).
int loopdio_can_extents(void*) { return !g_backing->probe().is_block_device; }
// Native: a no-op with direct I/O (no page cache to fill), readahead when buffered.
int loopdio_can_cache(void*) { return NBDKIT_CACHE_NATIVE; }

int loopdio_pread(void* handle, void* buf, uint32_t count, uint64_t offset, uint32_t) {
  auto* c = static_cast<Connection*>(handle);
  DrainGate::Pass pass(g_gate);
  int r = g_io->read(*c->engine, g_backing->mode(), buf, count, offset, &c->bounce);
  return io_result("read", count, offset, r);
}

int loopdio_pwrite(void* handle, const void* buf, uint32_t count, uint64_t offset, uint32_t flags) {
  auto* c = static_cast<Connection*>(handle);
  DrainGate::Pass pass(g_gate);
  int r = g_io->write(*c->engine, g_backing->mode(), buf, count, offset, flags & NBDKIT_FLAG_FUA,
                      &c->bounce);
  return io_result("write", count, offset, r);
}

int loopdio_flush(void* handle, uint32_t) {
  auto* c = static_cast<Connection*>(handle);
  DrainGate::Pass pass(g_gate);
  return io_result("flush", 0, 0, g_io->flush(*c->engine, g_backing->mode()));
}

int loopdio_trim(void* handle, uint32_t count, uint64_t offset, uint32_t flags) {
  auto* c = static_cast<Connection*>(handle);
  DrainGate::Pass pass(g_gate);
  int r = g_space->trim(*c->engine, g_backing->mode(), count, offset, flags & NBDKIT_FLAG_FUA);
  return io_result("trim", count, offset, r);
}

int loopdio_zero(void* handle, uint32_t count, uint64_t offset, uint32_t flags) {
  auto* c = static_cast<Connection*>(handle);
  DrainGate::Pass pass(g_gate);
  ZeroFlags f;
  f.may_trim = flags & NBDKIT_FLAG_MAY_TRIM;
  f.fua = flags & NBDKIT_FLAG_FUA;
  f.fast = flags & NBDKIT_FLAG_FAST_ZERO;
  int r = g_space->zero(*c->engine, g_backing->mode(), count, offset, f, &c->bounce);
  if (r == -ENOTSUP && f.fast) {  // the expected answer to a fast zero, not an error to log
    nbdkit_set_error(ENOTSUP);
    return -1;
  }
  return io_result("zero", count, offset, r);
}

int loopdio_extents(void*, uint32_t count, uint64_t offset, uint32_t flags,
                    struct nbdkit_extents* extents) {
  const uint64_t base = g_backing->geometry().base;
  int r = map_extents(g_backing->fd(), base + offset, base + offset + count,
                      flags & NBDKIT_FLAG_REQ_ONE, [&](uint64_t off, uint64_t len, bool hole) {
                        uint32_t type = hole ? NBDKIT_EXTENT_HOLE | NBDKIT_EXTENT_ZERO : 0;
                        return nbdkit_add_extent(extents, off - base, len, type) == 0 ? 0 : -EIO;
                      });
  return io_result("extents", count, offset, r);
}

int loopdio_cache(void*, uint32_t count, uint64_t offset, uint32_t) {
  DrainGate::Pass pass(g_gate);
  return io_result("cache", count, offset, g_space->cache(g_backing->mode(), count, offset));
}

void loopdio_dump_plugin() {
  std::printf("loopdio_version=%s\n", kVersion);
  std::printf("loopdio_engines=libaio,%ssync\n", kHaveUring ? "io_uring," : "");
}

const char kHelp[] =
    "file=PATH            (required) The image file or block device to serve.\n"
    "directio=auto|1|0    O_DIRECT: auto (default) when the backing allows it; 1 demands it;\n"
    "                     0 serves buffered through the same code path.\n"
    "aio=libaio|io_uring|sync\n"
    "                     The I/O engine (default libaio). sync = pread/pwrite.\n"
    "offset=SIZE          Serve from this byte of the backing (losetup -o). k/M/G/T suffixes.\n"
    "sizelimit=SIZE       Serve at most this many bytes (losetup --sizelimit).\n"
    "sector-size=N        512, 1024, 2048 or 4096: the advertised minimum block size\n"
    "                     (a multiple of the direct-I/O alignment).\n"
    "control=PATH         A root-only Unix socket for status and run-time switches.\n"
    "readonly=1           Open the image read-only (use with nbdkit -r).\n"
    "max-connections=N    Refuse clients beyond N connections at once (default 64).\n"
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
  p.cleanup = loopdio_cleanup;
  p.unload = loopdio_cleanup;
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

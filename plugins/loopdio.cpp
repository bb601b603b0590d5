// The nbdkit glue: the only file that knows nbdkit. It parses parameters, opens the backing
// before nbdkit forks, gives each connection its own engine, and turns the core library's
// results (0 or -errno, loopdio::Error) into nbdkit errors. Ordered like the lifecycle:
// configuration, connections, sizes and capabilities, the data path, the plugin table.
#define NBDKIT_API_VERSION 2
#include <nbdkit-plugin.h>

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
#include "loopdio/drain_gate.h"
#include "loopdio/engine.h"
#include "loopdio/error.h"
#include "loopdio/extents.h"
#include "loopdio/log.h"
#include "loopdio/options.h"
#include "loopdio/space_ops.h"
#include "loopdio/version.h"

#define THREAD_MODEL NBDKIT_THREAD_MODEL_PARALLEL

namespace {

using namespace loopdio;

// Slots of a connection's AIO context: nbdkit's default 16 worker threads, each with a few
// transfers of one request in flight. Each context reserves about twice this from
// fs.aio-max-nr.
constexpr unsigned kAioDepth = 128;
constexpr unsigned kAioDepthLow = 16;

Options g_opts;
std::unique_ptr<Backing> g_backing;   // set in get_ready, before any connection
std::unique_ptr<AlignedIo> g_io;
std::unique_ptr<SpaceOps> g_space;
RangeLock g_locks;                     // shared by every connection
DrainGate g_gate;                      // every request passes it; a run-time switch drains it
std::unique_ptr<ControlServer> g_control;
std::atomic<int> g_connections{0};
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
  std::unique_ptr<Engine> engine;
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

void loopdio_load() {
  set_notice_sink([](const std::string& m) {
    nbdkit_debug("%s", m.c_str());
    std::fprintf(stderr, "nbdkit: loopdio: %s\n", m.c_str());
  });
}

int loopdio_config(const char* key, const char* value) {
  return guarded("config", [&] {
    apply_option(g_opts, key, value);
    if (std::strcmp(key, "file") == 0) {
      char* abs = nbdkit_absolute_path(value);
      if (!abs) return -1;
      g_opts.file = abs;
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
  return 0;
}

std::string control_command(std::string_view line) {
  ControlContext ctx{*g_backing, g_gate, [] {
    std::string s = std::string(",\"served_readonly\":") +
                    (g_readonly_open || !g_backing->writable() ? "true" : "false") + ",\"connections\":" + std::to_string(g_connections.load()) +
                    ",\"in_flight\":" + std::to_string(g_gate.in_flight()) + ",\"engines\":{";
    std::string in_use;  // "libaio", "libaio+sync" after a fallback; the request when idle
    for (int i = 0; i < 3; ++i) {
      int n = g_by_engine[i].load();
      s += std::string(i ? "," : "") + "\"" + kEngineNames[i] + "\":" + std::to_string(n);
      if (n) in_use += (in_use.empty() ? "" : "+") + std::string(kEngineNames[i]);
    }
    if (in_use.empty()) in_use = to_string(g_opts.engine);
    return s + "},\"aio_in_use\":" + json_string(in_use);
  }};
  return handle_control(line, ctx);
}

int loopdio_get_ready() {
  return guarded("get_ready", [] {
    g_backing = Backing::open(g_opts);
    for (const std::string& line : g_backing->findings()) nbdkit_debug("%s", line.c_str());
    if (!g_backing->direct() && g_opts.direct_io == DirectIo::kAuto)
      notice("direct I/O off, serving buffered: " + g_backing->direct_reason());
    if (!g_backing->writable()) notice("serving " + g_opts.file + " read-only: " + g_backing->readonly_reason());
    g_io = std::make_unique<AlignedIo>(g_backing->geometry(), g_locks);
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

std::unique_ptr<Engine> make_engine() {
  switch (g_opts.engine) {
    case EngineKind::kSync:
      return make_sync_engine();
    case EngineKind::kIoUring:
      try {
        return make_uring_engine(kAioDepth, g_backing->fd());
      } catch (const Error& e) {
        notice(std::string("io_uring refused (") + e.what() + "): this connection uses libaio");
      }
      [[fallthrough]];
    case EngineKind::kLibaio:
      for (unsigned depth : {kAioDepth, kAioDepthLow}) {
        try {
          return make_libaio_engine(depth);
        } catch (const Error& e) {
          if (depth == kAioDepthLow)
            notice(std::string(e.what()) +
                   " (fs.aio-max-nr used up?): this connection uses the sync engine");
        }
      }
      return make_sync_engine();
  }
  return make_sync_engine();
}

void* loopdio_open(int readonly) {
  g_readonly_open = readonly != 0;
  return guarded("open", [] {
    auto c = std::make_unique<Connection>();
    c->engine = make_engine();
    ++g_connections;
    ++g_by_engine[engine_index(*c->engine)];
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
  return io_result("read", count, offset, g_io->read(*c->engine, g_backing->mode(), buf, count, offset));
}

int loopdio_pwrite(void* handle, const void* buf, uint32_t count, uint64_t offset, uint32_t flags) {
  auto* c = static_cast<Connection*>(handle);
  DrainGate::Pass pass(g_gate);
  int r = g_io->write(*c->engine, g_backing->mode(), buf, count, offset, flags & NBDKIT_FLAG_FUA);
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
  int r = g_space->zero(*c->engine, g_backing->mode(), count, offset, f);
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
    "control=PATH         A root-only Unix socket for status and run-time switches.";

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

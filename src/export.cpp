// One export and what its connections share; see export.h.
#include "loopdio/export.h"

#include <cstring>

#include "loopdio/error.h"
#include "loopdio/log.h"

namespace loopdio {
namespace {

// The name an engine of kind i gives itself (Engine::name): Export::by_engine_ is indexed
// by EngineKind.
const char* engine_name(int i) { return to_string(static_cast<EngineKind>(i)); }

SpaceSupport space_support(const ProbeResult& p) {
  SpaceSupport sup;
  sup.block_device = p.is_block_device;
  sup.device_block = p.logical_block ? p.logical_block : 512;
  sup.discard = p.discard_max > 0;
  sup.zero_offload = p.write_zeroes_max > 0;
  return sup;
}

}  // namespace

std::unique_ptr<Export> Export::open(const Options& o, ServerShared& shared,
                                     std::shared_ptr<Stats> stats, const std::string& name,
                                     int dirfd) {
  std::unique_ptr<Export> x(new Export);
  x->name_ = name;
  x->groups_ = &shared.groups;
  x->throttle_ = std::make_shared<Throttle>(shared.clock, ThrottleLimits{});
  x->set_limits(o.limits);
  BouncePool& pool = shared.pool;
  x->bounce_group_ = std::make_unique<BouncePool::Group>(pool);
  x->stats_ = std::move(stats);
  x->backing_ = dirfd >= 0 ? Backing::open_in(dirfd, name, o) : Backing::open(o);
  Backing& b = *x->backing_;
  if (!b.direct() && o.direct_io == DirectIo::kAuto)
    notice("direct I/O off, serving buffered: " + b.direct_reason());
  if (!b.writable()) notice("serving " + o.file + " read-only: " + b.readonly_reason());
  x->io_ = std::make_unique<AlignedIo>(b.geometry(), x->locks_, pool);
  x->io_->set_stats(x->stats_.get());
  if (b.probe().fs_type == "fuse") {
    // The kernel hands RWF_DSYNC to the FUSE server as a flag it may ignore.
    x->io_->use_fdatasync_for_fua();
    notice("FUSE backing: FUA is a write followed by fdatasync");
  }
  x->space_ = std::make_unique<SpaceOps>(*x->io_, x->locks_, space_support(b.probe()));
  x->space_->set_stats(x->stats_.get());
  x->engines_ = std::make_unique<EngineShare>(o.engine, b.fd(), shared.aio);
  return x;
}

int Export::engine_index(const Engine& e) {
  for (int i = 0; i < kEngineKinds; ++i)
    if (std::strcmp(e.name(), engine_name(i)) == 0) return i;
  return static_cast<int>(EngineKind::kSync);
}

std::shared_ptr<Engine> Export::attach(unsigned limit) {
  unsigned n = connections_.load();
  do {
    if (n >= limit)
      throw Error("too many connections to " + (name_.empty() ? options().file : name_) + ": " +
                      "max-connections-per-export=" + std::to_string(limit) +
                      " are open; try again later",
                  EBUSY);
  } while (!connections_.compare_exchange_weak(n, n + 1));
  std::shared_ptr<Engine> e;
  try {
    e = engines_->acquire();
  } catch (...) {
    --connections_;
    throw;
  }
  if (std::strcmp(e->name(), to_string(options().engine)) != 0) stats_->fallback();
  ++by_engine_[engine_index(*e)];
  return e;
}

void Export::release(const Engine& e) {
  --by_engine_[engine_index(e)];
  --connections_;
}

ThrottleLimits Export::limits() const {
  std::lock_guard lock(limits_mu_);
  ThrottleLimits l = throttle_->limits();
  if (std::shared_ptr<Throttle> g = group_.load())
    for (auto& [name, t] : groups_->all())
      if (t == g) l.group = name;
  return l;
}

void Export::set_limits(const ThrottleLimits& l) {
  std::lock_guard lock(limits_mu_);
  std::shared_ptr<Throttle> g = l.group.empty() ? nullptr : groups_->get(l.group);  // may throw
  ThrottleLimits own = l;
  own.group.clear();
  throttle_->set(own);
  group_.store(g);
  grouped_.store(g != nullptr, std::memory_order_release);
}

void Export::note_readonly_client() {
  if (!readonly_client_.exchange(true) && backing_->writable())
    notice("nbdkit -r: clients may not write, but the image is open read-write; readonly=1 "
           "opens it read-only (" + options().file + ")");
}

std::string Export::engines_in_use() const {
  std::string in_use;
  for (int i = 0; i < kEngineKinds; ++i)
    if (by_engine_[i].load()) {
      if (!in_use.empty()) in_use += " and ";
      in_use += engine_name(i);
    }
  return in_use.empty() ? to_string(options().engine) : in_use;
}

std::string Export::describe() const { return backing_->describe(engines_in_use().c_str()); }

void Export::status(Json& j) {
  const Backing& b = *backing_;
  const Options& o = b.options();
  if (!name_.empty()) put_path(j, "name", name_);
  put_path(j, "file", o.file);
  j["size"] = b.geometry().size;
  j["offset"] = b.geometry().base;
  j["sizelimit"] = o.sizelimit ? Json(*o.sizelimit) : Json(nullptr);
  j["readonly"] = !b.writable();
  j["served_readonly"] = readonly_client_.load() || !b.writable();
  auto [on, why] = b.direct_state();
  j["dio"] = on;
  j["dio_reason"] = why;
  j["aio"] = to_string(o.engine);
  j["aio_in_use"] = engines_in_use();
  Json engines = Json::object();
  for (int i = 0; i < kEngineKinds; ++i) engines[engine_name(i)] = by_engine_[i].load();
  j["engines"] = engines;
  j["log_sec"] = b.min_block();
  j["alignment"] = b.probe().dio_supported ? b.probe().align.offset : 0;
  j["connections"] = connections_.load();
  j["in_flight"] = gate_.in_flight();
  j["drains"] = gate_.drains();  // pauses for a switch or a snapshot
  j["drained_seconds"] = static_cast<double>(gate_.closed_ns()) / 1e9;
  j["throttle_waiting"] = throttle_->waiting();  // requests its limits hold back now
  j["description"] = describe();
  j["limits"] = limits().json();
  StatsSnapshot st = stats_->snapshot();
  j["throttled"] = st.throttled;
  j["throttled_seconds"] = static_cast<double>(st.throttled_ns) / 1e9;
}

}  // namespace loopdio

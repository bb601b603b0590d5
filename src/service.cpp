// The server's exports and its control commands; see service.h.
#include "loopdio/service.h"

#include <malloc.h>

#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <iterator>

#include "loopdio/control.h"
#include "loopdio/error.h"
#include "loopdio/reserve_heap.h"
#include "loopdio/safe_text.h"
#include "loopdio/snapshot.h"

namespace loopdio {

Service::Service(const Options& o, ConnectionSlots& slots)
    : opts_(o), pool_(o.bounce_total, o.bounce_per_connection, o.dir.empty() ? 1 : 2),
      aio_(o.aio_events), groups_(clock_), shared_{pool_, aio_, clock_, groups_}, slots_(slots) {
  check_options(opts_);
  slots_.set_limits(opts_.max_connections, opts_.max_handshakes);
  if (!opts_.dir.empty()) {
    dir_ = std::make_unique<ExportDir>(opts_.dir, opts_, shared_);
    if (!opts_.limits_file.empty()) load_limits_file(opts_.limits_file);
  } else {
    single_stats_ = std::make_shared<Stats>();
    single_ = Export::open(opts_, shared_, single_stats_);
  }
}

// {"groups": {"vm1": {"iops": 4000}}, "exports": {"vm1-root.img": {"iops": 2000, "group":
// "vm1"}}}: every entry checked before the server starts.
void Service::load_limits_file(const std::string& path) {
  const std::string what = "limits=" + safe_encode(path);
  std::ifstream in(path);
  if (!in) throw sys_error(what);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (text.size() > (1u << 20)) throw Error(what + ": larger than 1 MiB");
  Json j = parse_json(text, what);
  if (!j.is_object()) throw Error(what + ": expected an object with \"groups\" and \"exports\"");
  for (auto& [key, v] : j.items())
    if (key != "groups" && key != "exports")
      throw Error(what + ": unknown member \"" + safe_encode(key) + "\" (groups, exports)");
  if (j.contains("groups"))
    for (auto& [name, l] : j.at("groups").items())
      groups_.set(name, limits_from_json(l, what + ": group " + name));
  if (j.contains("exports"))
    for (auto& [name, l] : j.at("exports").items()) {
      ThrottleLimits limits = limits_from_json(l, what + ": export " + safe_encode(name));
      if (!limits.group.empty()) groups_.get(limits.group);
      dir_->configure_limits(name, limits);
    }
}

// "set limits [KEY=VALUE | none]... [-- EXPORT | -- group:NAME]"
Json Service::set_limits(std::string_view args) {
  std::string target;
  if (auto sep = args.find("-- "); sep != std::string_view::npos) {
    target = std::string(args.substr(sep + 3));
    args = args.substr(0, sep);
  } else if (args.ends_with("--")) {
    args.remove_suffix(2);
  }
  std::vector<std::string> words;
  for (std::size_t i = 0; i < args.size();) {
    std::size_t j = args.find(' ', i);
    if (j == std::string_view::npos) j = args.size();
    if (j > i) words.emplace_back(args.substr(i, j - i));
    i = j + 1;
  }
  if (words.empty()) throw Error("set limits: nothing to set (iops=N bps=SIZE ..., or none)");
  ThrottleLimits l;
  if (target.starts_with("group:")) {
    const std::string name = target.substr(6);
    std::shared_ptr<Throttle> g = groups_.find(name);  // none: a new group
    l = parse_limits(g ? g->limits() : ThrottleLimits{}, words);
    groups_.set(name, l);
  } else if (single_) {
    if (!target.empty()) throw Error("set limits: this server serves one image: name no export");
    l = parse_limits(single_->limits(), words);
    single_->set_limits(l);
  } else {
    if (target.empty()) throw Error("set limits: which export? (set limits ... -- NAME)");
    l = dir_->set_limits(target, words);
  }
  return Json{{"ok", true}, {"limits", l.json()}};
}

std::shared_ptr<Export> Service::connect(const std::string& name) {
  if (!slots_.open())
    throw Error("too many connections: max-connections=" + std::to_string(slots_.max_open()) +
                    " are serving exports; try again later",
                EBUSY);
  try {
    if (single_) return single_;
    const std::string& wanted = name.empty() ? opts_.default_export : name;
    if (wanted.empty())
      throw Error("no export name given: " + opts_.dir +
                      " is served as a directory of exports (nbdinfo --list shows them)",
                  ENOENT);
    return dir_->acquire(wanted);
  } catch (...) {
    slots_.close();
    throw;
  }
}

std::vector<ExportDir::Entry> Service::exports() {
  if (dir_) return dir_->list();
  ExportDir::Entry e;
  e.description = single_->describe();
  e.open = true;
  return {e};
}

void Service::set_direct_io(const std::string& name, bool on) {
  std::lock_guard lock(switch_mu_);
  if (dir_) {
    if (name.empty()) throw Error("set direct-io: which export? (set direct-io on|off NAME)");
    dir_->set_direct_io(name, on);
  } else {
    switch_direct_io(single_->backing(), single_->gate(), on);
  }
}

std::vector<std::shared_ptr<Export>> Service::open_exports() {
  return single_ ? std::vector<std::shared_ptr<Export>>{single_} : dir_->open_exports();
}

// Every open export, whatever its name leads to now (renamed and deleted files included).
void Service::flush() {
  for (const std::shared_ptr<Export>& x : open_exports())
    if (::fdatasync(x->backing().fd()) != 0)
      throw sys_error("fdatasync: " + safe_encode(x->options().file));
}

// "snapshot {JSON}" (snapshot.h): one export, or several of a directory at one instant.
Json Service::snapshot(std::string_view args) {
  const std::vector<SnapshotRequest> reqs = parse_snapshot_request(args);
  // Held throughout: connections arriving meanwhile share the exports' gates.
  std::vector<std::shared_ptr<Export>> held;
  std::vector<std::pair<Export*, std::string>> targets;
  for (const SnapshotRequest& r : reqs) {
    if (single_) {
      if (!r.name.empty()) throw Error("snapshot: this server serves one image: name no export");
      if (reqs.size() > 1) throw Error("snapshot: this server serves one image: one DEST");
      held.push_back(single_);
    } else {
      if (r.name.empty())
        throw Error("snapshot: which export? (\"name\" of a file in " + safe_encode(opts_.dir) +
                    ")");
      try {
        held.push_back(dir_->acquire(r.name));
      } catch (const Error& e) {
        throw Error("snapshot: " + std::string(e.what()), e.code());
      }
    }
    targets.emplace_back(held.back().get(), r.dest);
  }
  Json exports = Json::array();
  for (const SnapshotResult& r : snapshot_exports(targets)) exports.push_back(r.json());
  return Json{{"ok", true}, {"exports", std::move(exports)}};
}

std::vector<ExportMetrics> Service::collect() {
  std::vector<ExportMetrics> v;
  if (single_) {
    v.push_back(export_metrics("", opts_.file, *single_stats_, {single_}));
    v.back().limits = single_->limits().json();
    return v;
  }
  std::vector<std::shared_ptr<Export>> open = dir_->open_exports();
  for (auto& [name, stats] : dir_->all_stats()) {
    std::vector<std::shared_ptr<Export>> mine;  // a replaced file and its successor, say
    for (auto& x : open)
      if (x->name() == name) mine.push_back(x);
    v.push_back(export_metrics(name, opts_.dir + "/" + name, *stats, mine));
    v.back().limits = dir_->limits_of(name).json();
  }
  return v;
}

std::vector<GroupMetrics> Service::group_metrics() {
  std::vector<GroupMetrics> v;
  for (auto& [name, t] : groups_.all()) {
    GroupMetrics g;
    g.name = name;
    g.limits = t->limits().json();
    g.throttled = t->throttled_requests();
    g.throttled_ns = t->throttled_ns();
    v.push_back(std::move(g));
  }
  return v;
}

ExportMetrics Service::export_metrics(const std::string& name, const std::string& file,
                                      const Stats& s,
                                      const std::vector<std::shared_ptr<Export>>& open) {
  ExportMetrics m;
  m.name = name;
  m.file = file;
  m.stats = s.snapshot();
  for (const auto& x : open) {
    m.direct = m.open ? m.direct && x->backing().direct() : x->backing().direct();
    m.open = true;
    m.connections += x->connections();
    m.in_flight += x->gate().in_flight();
  }
  return m;
}

void Service::disconnect() noexcept {
  constexpr std::size_t kKeepCached = 4u << 20;  // what a few busy connections reuse
  pool_.trim(slots_.close() ? 0 : kKeepCached);  // all of it with the last connection
  // The closed connection's threads' small allocations stay in glibc's arenas (72-77 MiB
  // after a storm of 63 connections) until trimmed: with every connection that closes, not
  // only the last, as a client that stays connected would keep them resident.
  ::malloc_trim(0);
}

Json Service::status() {
  Json j;
  j["ok"] = true;
  j["pid"] = ::getpid();
  j["connections"] = slots_.open_now();
  j["handshaking"] = slots_.handshaking();
  j["max_connections"] = slots_.max_open();
  j["max_connections_per_export"] = connections_per_export(opts_);
  j["max_handshakes"] = slots_.max_handshakes();
  j["memory_max"] = limits_.memory_max;
  j["memory"] = private_memory();
  const ReserveStats r = reserve_heap_stats();
  j["memory_reserve"] = {{"size", r.size}, {"used", r.used}, {"peak", r.peak},
                         {"fallbacks", r.fallbacks}, {"refused", r.refused}};
  j["fd_limit"] = limits_.fd_limit;
  j["aio_events"] = {{"used", aio_.used()}, {"total", aio_.total()}};
  BouncePool::Stats p = pool_.stats();
  j["bounce"] = {{"leased", p.leased}, {"cached", p.cached}, {"peak", p.peak},
                 {"resident", p.resident}, {"waits", p.waits},
                 {"total", opts_.bounce_total}, {"per_connection", opts_.bounce_per_connection}};
  Json groups = Json::array();
  for (const GroupMetrics& g : group_metrics())
    groups.push_back({{"name", g.name}, {"limits", g.limits}, {"throttled", g.throttled},
                      {"throttled_seconds", static_cast<double>(g.throttled_ns) / 1e9}});
  j["groups"] = std::move(groups);
  if (single_) {
    single_->status(j);  // one image: its members at the top, as `loopdio list` reads them
    return j;
  }
  put_path(j, "dir", opts_.dir);
  j["aio"] = to_string(opts_.engine);
  Json exports = Json::array();
  std::vector<std::shared_ptr<Export>> open = dir_->open_exports();
  std::map<std::string, std::shared_ptr<Stats>> stats;  // also of exports closed again
  for (auto& [name, st] : dir_->all_stats()) stats.emplace(name, st);
  for (const ExportDir::Entry& n : dir_->list()) {
    Json e;
    if (n.live) {  // its file is open, whichever of its names opened it
      n.live->status(e);
      put_path(e, "name", n.name);
      e["open"] = true;
      std::erase(open, n.live);
    } else {
      put_path(e, "name", n.name);
      put_path(e, "file", opts_.dir + "/" + n.name);
      e["open"] = false;
      e["description"] = n.description;
      e["limits"] = dir_->limits_of(n.name).json();
      auto it = stats.find(n.name);
      const StatsSnapshot st = it != stats.end() ? it->second->snapshot() : StatsSnapshot{};
      e["throttled"] = st.throttled;
      e["throttled_seconds"] = static_cast<double>(st.throttled_ns) / 1e9;
    }
    exports.push_back(std::move(e));
  }
  // Still served to the connections that have them, though their names lead elsewhere now.
  for (const auto& x : open) {
    Json e;
    x->status(e);
    e["open"] = true;
    e["stale"] = true;
    exports.push_back(std::move(e));
  }
  j["exports"] = std::move(exports);
  return j;
}

Json Service::stats() {
  Json j;
  j["ok"] = true;
  Json exports = Json::array();
  for (const ExportMetrics& m : collect()) exports.push_back(metrics_json(m));
  j["exports"] = std::move(exports);
  return j;
}

std::string Service::metrics() { return prometheus_text(collect(), group_metrics()); }

std::string Service::control(std::string_view line) {
  try {
    if (line == "status") return dump_line(status());
    if (line == "stats") return dump_line(stats());
    if (line == "metrics") return dump_line(Json{{"ok", true}, {"text", metrics()}});
    if (line == "flush") {
      flush();
      return dump_line(Json{{"ok", true}});
    }
    if (line.starts_with("snapshot ") || line == "snapshot")
      return dump_line(snapshot(line.substr(std::min<std::size_t>(line.size(), 9))));
    if (line.starts_with("set limits ") || line == "set limits")
      return dump_line(set_limits(line.substr(std::min<std::size_t>(line.size(), 11))));
    for (const char* verb : {"set direct-io on", "set direct-io off"}) {
      std::string_view v(verb);
      if (!line.starts_with(v) || (line.size() > v.size() && line[v.size()] != ' ')) continue;
      std::string name(line.size() > v.size() ? line.substr(v.size() + 1) : "");
      bool on = v.ends_with("on");
      set_direct_io(name, on);
      return dump_line(Json{{"ok", true}, {"dio", on}});
    }
    return dump_line(Json{{"ok", false}, {"error", "unknown command: " + std::string(line)}});
  } catch (const std::exception& e) {
    return dump_line(Json{{"ok", false}, {"error", e.what()}});
  }
}

}  // namespace loopdio

// The server's exports and its control commands; see service.h.
#include "loopdio/service.h"

#include <unistd.h>

#include "loopdio/control.h"
#include "loopdio/error.h"

namespace loopdio {

Service::Service(const Options& o) : opts_(o), pool_(o.bounce_total, o.bounce_per_connection) {
  check_options(opts_);
  if (!opts_.dir.empty()) {
    dir_ = std::make_unique<ExportDir>(opts_.dir, opts_, pool_);
  } else {
    single_stats_ = std::make_shared<Stats>();
    single_ = Export::open(opts_, pool_, single_stats_);
  }
}

std::shared_ptr<Export> Service::connect(const std::string& name) {
  if (connections_.fetch_add(1) >= opts_.max_connections) {
    --connections_;
    throw Error("too many connections: max-connections=" + std::to_string(opts_.max_connections) +
                    " are open",
                EBUSY);
  }
  try {
    if (single_) return single_;
    const std::string& wanted = name.empty() ? opts_.default_export : name;
    if (wanted.empty())
      throw Error("no export name given: " + opts_.dir +
                      " is served as a directory of exports (nbdinfo --list shows them)",
                  ENOENT);
    return dir_->acquire(wanted);
  } catch (...) {
    --connections_;
    throw;
  }
}

std::vector<std::string> Service::export_names() const {
  return dir_ ? dir_->list() : std::vector<std::string>{""};
}

std::string Service::describe(const std::string& name) {
  return dir_ ? dir_->describe(name) : single_->describe();
}

void Service::set_direct_io(const std::string& name, bool on) {
  if (dir_) {
    if (name.empty()) throw Error("set direct-io: which export? (set direct-io on|off NAME)");
    dir_->set_direct_io(name, on);
  } else {
    switch_direct_io(single_->backing(), single_->gate(), on);
  }
}

void Service::flush() {
  auto sync = [](Export& x) {
    if (::fdatasync(x.backing().fd()) != 0) throw sys_error("fdatasync: " + x.options().file);
  };
  if (single_) return sync(*single_);
  for (const std::string& n : dir_->list())
    if (auto x = dir_->find_open(n)) sync(*x);
}

std::vector<ExportMetrics> Service::collect() {
  std::vector<ExportMetrics> v;
  auto add = [&](const std::string& name, const std::string& file, const Stats& s,
                 const std::shared_ptr<Export>& x) {
    ExportMetrics m;
    m.name = name;
    m.file = file;
    m.stats = s.snapshot();
    if (x) {
      m.open = true;
      m.connections = x->connections();
      m.in_flight = x->gate().in_flight();
      m.direct = x->backing().direct();
    }
    v.push_back(std::move(m));
  };
  if (single_) {
    add("", opts_.file, *single_stats_, single_);
  } else {
    for (auto& [name, stats] : dir_->all_stats()) add(name, opts_.dir + "/" + name, *stats, dir_->find_open(name));
  }
  return v;
}

Json Service::status() {
  Json j;
  j["ok"] = true;
  j["pid"] = ::getpid();
  j["connections"] = connections_.load();
  j["max_connections"] = opts_.max_connections;
  BouncePool::Stats p = pool_.stats();
  j["bounce"] = {{"leased", p.leased}, {"cached", p.cached}, {"peak", p.peak}, {"waits", p.waits},
                 {"total", opts_.bounce_total}, {"per_connection", opts_.bounce_per_connection}};
  if (single_) {
    single_->status(j);  // one image: its members at the top, as `loopdio list` reads them
    return j;
  }
  put_path(j, "dir", opts_.dir);
  j["aio"] = to_string(opts_.engine);
  Json exports = Json::array();
  for (const std::string& n : dir_->list()) {
    Json e;
    if (auto x = dir_->find_open(n)) {
      x->status(e);
      e["open"] = true;
    } else {
      put_path(e, "name", n);
      put_path(e, "file", opts_.dir + "/" + n);
      e["open"] = false;
      try {
        e["description"] = dir_->describe(n);
      } catch (const Error& err) {
        e["description"] = std::string("loopdio: unavailable: ") + err.what();
      }
    }
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

std::string Service::metrics() { return prometheus_text(collect()); }

std::string Service::control(std::string_view line) {
  try {
    if (line == "status") return dump_line(status());
    if (line == "stats") return dump_line(stats());
    if (line == "metrics") return dump_line(Json{{"ok", true}, {"text", metrics()}});
    if (line == "flush") {
      flush();
      return dump_line(Json{{"ok", true}});
    }
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

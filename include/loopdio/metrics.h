// The statistics of a server's exports as data: JSON for `loopdio stat --json`, and the
// Prometheus text exposition format (for the control socket's `metrics` command and for
// node_exporter's textfile collector): counters end in _total, sizes are in bytes,
// durations in seconds, and latencies are histograms (_bucket with cumulative `le`, _sum,
// _count), with the export name as a label.
#pragma once

#include <string>
#include <vector>

#include "loopdio/json.h"
#include "loopdio/stats.h"

namespace loopdio {

struct ExportMetrics {
  std::string name;  // the export name ("" for the one image of file=)
  std::string file;
  StatsSnapshot stats;
  bool open = false;  // a connection has it open now; the gauges below are live only then
  unsigned connections = 0;
  unsigned in_flight = 0;
  bool direct = false;
  Json limits = Json::object();  // its throttle limits now (throttle_limits.h), {} for none
};

// A group of exports sharing one throttle budget.
struct GroupMetrics {
  std::string name;
  Json limits = Json::object();
  std::uint64_t throttled = 0, throttled_ns = 0;
};

Json metrics_json(const ExportMetrics& m);
// The reverse, for a client of the control socket's `stats`. Throws loopdio::Error on a
// reply that is not one.
ExportMetrics metrics_from_json(const Json& j);
std::string prometheus_text(const std::vector<ExportMetrics>& exports,
                            const std::vector<GroupMetrics>& groups = {});

// "EIO" for 5; "errno 200" for what has no name.
std::string errno_name(int e);

}  // namespace loopdio

// Statistics as JSON and as Prometheus text; see metrics.h.
#include "loopdio/metrics.h"

#include <cmath>
#include <cstdio>
#include <cstring>

#include "loopdio/error.h"

namespace loopdio {
namespace {

// A label value: backslash, double quote and newline escaped; invalid UTF-8 replaced.
std::string label(const std::string& v) {
  std::string utf8 = is_utf8(v) ? v : Json::parse(dump_line(Json(v))).get<std::string>();
  std::string r;
  for (char c : utf8) {
    if (c == '\\') r += "\\\\";
    else if (c == '"') r += "\\\"";
    else if (c == '\n') r += "\\n";
    else r += c;
  }
  return r;
}

std::string number(double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.9g", v);
  return buf;
}

class Writer {
 public:
  void family(const char* name, const char* type, const char* help) {
    out_ += std::string("# HELP ") + name + " " + help + "\n# TYPE " + name + " " + type + "\n";
  }
  void sample(const std::string& name, const std::string& labels, double v) {
    out_ += name + "{" + labels + "} " + number(v) + "\n";
  }
  std::string take() { return std::move(out_); }

 private:
  std::string out_;
};

std::string export_label(const ExportMetrics& m) { return "export=\"" + label(m.name) + "\""; }

}  // namespace

std::string errno_name(int e) {
  const char* n = e > 0 ? ::strerrorname_np(e) : nullptr;
  return n ? n : "errno " + std::to_string(e);
}

Json metrics_json(const ExportMetrics& m) {
  Json j;
  put_path(j, "name", m.name);
  put_path(j, "file", m.file);
  j["open"] = m.open;
  j["connections"] = m.connections;
  j["in_flight"] = m.in_flight;
  j["dio"] = m.direct;
  Json cmds = Json::object();
  for (int c = 0; c < kCmds; ++c) {
    const StatsSnapshot::PerCmd& p = m.stats.cmd[c];
    cmds[to_string(static_cast<Cmd>(c))] = {
        {"requests", p.requests}, {"bytes", p.bytes}, {"errors", p.errors},
        {"latency_ns", p.latency_ns}, {"p50_us", p.quantile_us(0.5)},
        {"p99_us", p.quantile_us(0.99)}, {"p999_us", p.quantile_us(0.999)},
        {"buckets", p.buckets}};
  }
  j["commands"] = cmds;
  Json errors = Json::object();
  for (int e = 0; e < kMaxErrno; ++e)
    if (m.stats.errors[e]) errors[e ? errno_name(e) : "other"] = m.stats.errors[e];
  j["errors"] = errors;
  j["read_modify_writes"] = m.stats.rmw;
  j["bounced_bytes"] = m.stats.bounced_bytes;
  j["fallbacks"] = m.stats.fallbacks;
  j["limits"] = m.limits;
  j["throttled"] = m.stats.throttled;
  j["throttled_seconds"] = static_cast<double>(m.stats.throttled_ns) / 1e9;
  return j;
}

ExportMetrics metrics_from_json(const Json& j) {
  try {
    ExportMetrics m;
    m.name = get_path(j, "name");
    m.file = get_path(j, "file");
    m.open = j.at("open").get<bool>();
    m.connections = j.at("connections").get<unsigned>();
    m.in_flight = j.at("in_flight").get<unsigned>();
    m.direct = j.at("dio").get<bool>();
    for (int c = 0; c < kCmds; ++c) {
      const Json& p = j.at("commands").at(to_string(static_cast<Cmd>(c)));
      StatsSnapshot::PerCmd& q = m.stats.cmd[c];
      q.requests = p.at("requests").get<std::uint64_t>();
      q.bytes = p.at("bytes").get<std::uint64_t>();
      q.errors = p.at("errors").get<std::uint64_t>();
      q.latency_ns = p.at("latency_ns").get<std::uint64_t>();
      const Json& b = p.at("buckets");
      for (int i = 0; i < kLatencyBuckets && i < static_cast<int>(b.size()); ++i)
        q.buckets[i] = b.at(i).get<std::uint64_t>();
    }
    for (auto& [name, n] : j.at("errors").items()) {
      int e = 0;
      for (int k = 1; k < kMaxErrno; ++k)
        if (errno_name(k) == name) e = k;
      m.stats.errors[e] += n.get<std::uint64_t>();
    }
    m.stats.rmw = j.at("read_modify_writes").get<std::uint64_t>();
    m.stats.bounced_bytes = j.at("bounced_bytes").get<std::uint64_t>();
    m.stats.fallbacks = j.at("fallbacks").get<std::uint64_t>();
    if (j.contains("limits")) m.limits = j.at("limits");
    if (j.contains("throttled")) {
      m.stats.throttled = j.at("throttled").get<std::uint64_t>();
      m.stats.throttled_ns =
          static_cast<std::uint64_t>(j.at("throttled_seconds").get<double>() * 1e9);
    }
    return m;
  } catch (const Json::exception& e) {
    throw Error(std::string("statistics: ") + e.what());
  }
}

std::string prometheus_text(const std::vector<ExportMetrics>& exports,
                            const std::vector<GroupMetrics>& groups) {
  Writer w;
  auto per_cmd = [&](const char* name, const char* help, auto value) {
    w.family(name, "counter", help);
    for (const ExportMetrics& m : exports)
      for (int c = 0; c < kCmds; ++c)
        w.sample(name, export_label(m) + ",command=\"" + to_string(static_cast<Cmd>(c)) + "\"",
                 static_cast<double>(value(m.stats.cmd[c])));
  };
  per_cmd("loopdio_requests_total", "NBD requests served, by command.",
          [](const StatsSnapshot::PerCmd& p) { return p.requests; });
  per_cmd("loopdio_bytes_total", "Bytes moved by requests that succeeded, by command.",
          [](const StatsSnapshot::PerCmd& p) { return p.bytes; });
  per_cmd("loopdio_request_errors_total", "Requests that failed, by command.",
          [](const StatsSnapshot::PerCmd& p) { return p.errors; });

  w.family("loopdio_errors_total", "counter", "Requests that failed, by errno.");
  for (const ExportMetrics& m : exports)
    for (int e = 0; e < kMaxErrno; ++e)
      if (m.stats.errors[e])
        w.sample("loopdio_errors_total",
                 export_label(m) + ",errno=\"" + (e ? errno_name(e) : "other") + "\"",
                 static_cast<double>(m.stats.errors[e]));

  auto per_export = [&](const char* name, const char* type, const char* help, auto value) {
    w.family(name, type, help);
    for (const ExportMetrics& m : exports) w.sample(name, export_label(m), static_cast<double>(value(m)));
  };
  per_export("loopdio_read_modify_writes_total", "counter",
             "Writes that read partial blocks first.", [](const ExportMetrics& m) { return m.stats.rmw; });
  per_export("loopdio_bounced_bytes_total", "counter",
             "Bytes copied through aligned bounce buffers.",
             [](const ExportMetrics& m) { return m.stats.bounced_bytes; });
  per_export("loopdio_fallbacks_total", "counter",
             "Times a kernel feature was refused and something else used instead.",
             [](const ExportMetrics& m) { return m.stats.fallbacks; });
  per_export("loopdio_requests_in_flight", "gauge", "Requests being served now.",
             [](const ExportMetrics& m) { return m.in_flight; });
  per_export("loopdio_connections", "gauge", "Client connections open now.",
             [](const ExportMetrics& m) { return m.connections; });
  per_export("loopdio_direct_io", "gauge", "1 while the export is served with O_DIRECT.",
             [](const ExportMetrics& m) { return m.direct ? 1 : 0; });

  per_export("loopdio_throttled_requests_total", "counter",
             "Requests that waited for the export's or its group's limits.",
             [](const ExportMetrics& m) { return m.stats.throttled; });
  w.family("loopdio_throttled_seconds_total", "counter",
           "Time requests waited for the export's or its group's limits.");
  for (const ExportMetrics& m : exports)
    w.sample("loopdio_throttled_seconds_total", export_label(m),
             static_cast<double>(m.stats.throttled_ns) / 1e9);
  w.family("loopdio_limit", "gauge",
           "The export's limits now: rates per second, burst lengths in seconds, iops-size in bytes.");
  for (const ExportMetrics& m : exports)
    for (auto& [key, v] : m.limits.items())
      if (v.is_number())
        w.sample("loopdio_limit", export_label(m) + ",limit=\"" + label(key) + "\"", v.get<double>());
  w.family("loopdio_group_limit", "gauge", "A throttle group's limits now.");
  for (const GroupMetrics& g : groups)
    for (auto& [key, v] : g.limits.items())
      if (v.is_number())
        w.sample("loopdio_group_limit",
                 "group=\"" + label(g.name) + "\",limit=\"" + label(key) + "\"", v.get<double>());
  w.family("loopdio_group_throttled_seconds_total", "counter",
           "Time requests waited for a throttle group's limits.");
  for (const GroupMetrics& g : groups)
    w.sample("loopdio_group_throttled_seconds_total", "group=\"" + label(g.name) + "\"",
             static_cast<double>(g.throttled_ns) / 1e9);

  const char* h = "loopdio_request_duration_seconds";
  w.family(h, "histogram", "Time from a request reaching the plugin to its reply, by command.");
  for (const ExportMetrics& m : exports)
    for (int c = 0; c < kCmds; ++c) {
      const StatsSnapshot::PerCmd& p = m.stats.cmd[c];
      std::string labels = export_label(m) + ",command=\"" + to_string(static_cast<Cmd>(c)) + "\"";
      // Every figure of the histogram comes from the buckets, so that it is valid (cumulative,
      // +Inf == _count) even for statistics whose request count disagrees with them.
      std::uint64_t cumulative = 0;
      for (int b = 0; b < kLatencyBuckets - 1; ++b) {
        cumulative += p.buckets[b];
        w.sample(std::string(h) + "_bucket", labels + ",le=\"" + number(std::ldexp(1e-6, b)) + "\"",
                 static_cast<double>(cumulative));
      }
      cumulative += p.buckets[kLatencyBuckets - 1];
      w.sample(std::string(h) + "_bucket", labels + ",le=\"+Inf\"", static_cast<double>(cumulative));
      w.sample(std::string(h) + "_sum", labels, static_cast<double>(p.latency_ns) / 1e9);
      w.sample(std::string(h) + "_count", labels, static_cast<double>(cumulative));
    }
  return w.take();
}

}  // namespace loopdio

// `loopdio stat`: the live view of what each export is doing, as `iostat -x` shows a
// disk: requests and MiB per second, average and p99 latency, requests in flight and errors,
// refreshed every N seconds until Ctrl-C. Also the raw counters as JSON, and the
// Prometheus text exposition format for node_exporter's textfile collector.
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <iostream>
#include <map>
#include <thread>

#include "args.h"
#include "cli.h"
#include "control_client.h"
#include "interrupt.h"
#include "loopdio/error.h"
#include "loopdio/metrics.h"
#include "loopdio/throttle_limits.h"
#include "safe_text.h"
#include "state.h"

namespace loopdio::cli {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

const CommandHelp kHelp = {
    "stat", "[options] [DEVICE|SOCKET|URI]",
    "Shows what exports started by loopdio are doing (all of them, or the one named as\n"
    "`loopdio list` shows it). Without --interval: the counters since each export was\n"
    "first opened. With --interval N: every N seconds, per export, r/s and w/s (requests),\n"
    "rMiB/s and wMiB/s, r_await and w_await (average latency, ms), r_p99 and w_p99 (99th\n"
    "percentile latency, ms, to the power of two above it), inflight and err/s, until\n"
    "Ctrl-C. --prometheus writes the Prometheus text format once (for node_exporter's\n"
    "textfile collector: write to a temporary file, then rename it into place).\n"};

struct Sample {
  std::string label;  // how `loopdio list` names the export
  ExportMetrics m;
};

// The statistics of every export `target` selects (every export started by loopdio when
// empty), each labelled as `loopdio list` names it.
std::vector<Sample> sample(const std::string& target) {
  StateDir dir;
  std::vector<ExportState> servers;
  std::string only;  // one export of a directory
  {
    StateLock lock(dir);
    if (target.empty()) {
      servers = dir.live();
    } else {
      for (const ExportState& s : dir.live())
        if (auto name = export_in(s, target)) {
          servers.push_back(s);
          only = *name;
        }
      if (servers.empty()) servers.push_back(dir.find(target));
    }
  }
  std::vector<Sample> out;
  for (const ExportState& s : servers) {
    Json reply = control_call(s.control, "stats", 5s);
    for (const Json& e : reply.at("exports")) {
      Sample x{"", metrics_from_json(e)};
      if (!only.empty() && x.m.name != only) continue;
      x.label = s.requested.dir.empty() ? s.display_name() : export_uri(s, x.m.name);
      out.push_back(std::move(x));
    }
  }
  return out;
}

// One interval's figures from two samples of the same export.
struct Rates {
  double rps = 0, wps = 0, rmib = 0, wmib = 0, r_await = 0, w_await = 0, r_p99 = 0, w_p99 = 0;
  double errors = 0;
};

StatsSnapshot::PerCmd delta(const StatsSnapshot::PerCmd& a, const StatsSnapshot::PerCmd& b) {
  StatsSnapshot::PerCmd d;
  d.requests = b.requests - a.requests;
  d.bytes = b.bytes - a.bytes;
  d.errors = b.errors - a.errors;
  d.latency_ns = b.latency_ns - a.latency_ns;
  for (int i = 0; i < kLatencyBuckets; ++i) d.buckets[i] = b.buckets[i] - a.buckets[i];
  return d;
}

Rates rates(const ExportMetrics* before, const ExportMetrics& now, double seconds) {
  StatsSnapshot zero;
  const StatsSnapshot& a = before ? before->stats : zero;
  auto r = delta(a.cmd[static_cast<int>(Cmd::kRead)], now.stats.cmd[static_cast<int>(Cmd::kRead)]);
  auto w = delta(a.cmd[static_cast<int>(Cmd::kWrite)], now.stats.cmd[static_cast<int>(Cmd::kWrite)]);
  Rates x;
  x.rps = static_cast<double>(r.requests) / seconds;
  x.wps = static_cast<double>(w.requests) / seconds;
  x.rmib = static_cast<double>(r.bytes) / seconds / (1 << 20);
  x.wmib = static_cast<double>(w.bytes) / seconds / (1 << 20);
  x.r_await = r.requests ? static_cast<double>(r.latency_ns) / static_cast<double>(r.requests) / 1e6 : 0;
  x.w_await = w.requests ? static_cast<double>(w.latency_ns) / static_cast<double>(w.requests) / 1e6 : 0;
  x.r_p99 = r.quantile_us(0.99) / 1000;
  x.w_p99 = w.quantile_us(0.99) / 1000;
  std::uint64_t errs = 0;
  for (int c = 0; c < kCmds; ++c) errs += now.stats.cmd[c].errors - a.cmd[c].errors;
  x.errors = static_cast<double>(errs) / seconds;
  return x;
}

void print_rates(const std::vector<Sample>& now, const std::map<std::string, ExportMetrics>& before,
                 double seconds, bool json) {
  if (!json)
    std::printf("%-40s %9s %9s %8s %8s %8s %8s %8s %8s %8s %6s\n", "EXPORT", "r/s", "w/s",
                "rMiB/s", "wMiB/s", "r_await", "w_await", "r_p99", "w_p99", "inflight", "err/s");
  for (const Sample& s : now) {
    auto it = before.find(s.label);
    Rates x = rates(it == before.end() ? nullptr : &it->second, s.m, seconds);
    if (json) {
      Json j;
      put_path(j, "export", s.label);
      j["interval_s"] = seconds;
      j["r/s"] = x.rps;
      j["w/s"] = x.wps;
      j["rMiB/s"] = x.rmib;
      j["wMiB/s"] = x.wmib;
      j["r_await_ms"] = x.r_await;
      j["w_await_ms"] = x.w_await;
      j["r_p99_ms"] = x.r_p99;
      j["w_p99_ms"] = x.w_p99;
      j["in_flight"] = s.m.in_flight;
      j["err/s"] = x.errors;
      std::cout << dump_line(j) << "\n";
    } else {
      std::printf("%-40s %9.1f %9.1f %8.2f %8.2f %8.3f %8.3f %8.3f %8.3f %8u %6.1f\n",
                  safe_encode(s.label).c_str(), x.rps, x.wps, x.rmib, x.wmib, x.r_await,
                  x.w_await, x.r_p99, x.w_p99, s.m.in_flight, x.errors);
    }
  }
  std::cout << (json ? "" : "\n") << std::flush;
}

void print_totals(const std::vector<Sample>& now, bool json) {
  if (json) {
    Json all = Json::array();
    for (const Sample& s : now) {
      Json j = metrics_json(s.m);
      put_path(j, "export", s.label);
      all.push_back(std::move(j));
    }
    std::cout << all.dump(2, ' ', false, Json::error_handler_t::replace) << std::endl;
    return;
  }
  std::printf("%-40s %10s %10s %10s %10s %9s %9s %8s %8s\n", "EXPORT", "reads", "writes",
              "read MiB", "write MiB", "r_await", "w_await", "inflight", "errors");
  for (const Sample& s : now) {
    const auto& r = s.m.stats.cmd[static_cast<int>(Cmd::kRead)];
    const auto& w = s.m.stats.cmd[static_cast<int>(Cmd::kWrite)];
    std::uint64_t errs = 0;
    for (const auto& c : s.m.stats.cmd) errs += c.errors;
    auto await = [](const StatsSnapshot::PerCmd& c) {
      return c.requests ? static_cast<double>(c.latency_ns) / static_cast<double>(c.requests) / 1e6 : 0;
    };
    std::printf("%-40s %10llu %10llu %10.1f %10.1f %9.3f %9.3f %8u %8llu\n",
                safe_encode(s.label).c_str(), static_cast<unsigned long long>(r.requests),
                static_cast<unsigned long long>(w.requests), static_cast<double>(r.bytes) / (1 << 20),
                static_cast<double>(w.bytes) / (1 << 20), await(r), await(w), s.m.in_flight,
                static_cast<unsigned long long>(errs));
    if (!s.m.limits.empty() || s.m.stats.throttled)
      std::printf("  limits: %s; throttled %llu requests, %.3f s\n",
                  s.m.limits.empty() ? "none"
                                     : safe_encode(limits_from_json(s.m.limits, "limits").text()).c_str(),
                  static_cast<unsigned long long>(s.m.stats.throttled),
                  static_cast<double>(s.m.stats.throttled_ns) / 1e9);
  }
}

}  // namespace

int run_stat(const Args& args) {
  po::options_description visible("Options");
  visible.add_options()
      ("interval,i", po::value<double>()->value_name("N"), "Report every N seconds (rates).")
      ("count,c", po::value<unsigned>()->value_name("K"), "With --interval: stop after K reports.")
      ("json,J", "JSON: the counters, or with --interval one object per export and report.")
      ("prometheus", "The Prometheus text exposition format, once.");
  po::options_description hidden;
  hidden.add_options()("target", po::value<std::string>());
  po::positional_options_description pos;
  pos.add("target", 1);
  auto vm = parse_args(kHelp, args, visible, hidden, pos);
  if (!vm) return kExitOk;
  std::string target = vm->count("target") ? vm->at("target").as<std::string>() : "";
  bool json = vm->count("json") > 0;

  if (vm->count("prometheus")) {
    std::vector<ExportMetrics> all;
    for (Sample& s : sample(target)) {
      s.m.name = s.label;  // unique across servers: the export label is how list names it
      all.push_back(std::move(s.m));
    }
    std::cout << prometheus_text(all) << std::flush;
    return kExitOk;
  }
  if (!vm->count("interval")) {
    print_totals(sample(target), json);
    return kExitOk;
  }
  double interval = vm->at("interval").as<double>();
  if (!(interval >= 0.1 && interval <= 86400)) throw UsageError("stat: --interval: expected 0.1 to 86400 seconds");
  std::optional<unsigned> count;
  if (vm->count("count")) count = vm->at("count").as<unsigned>();

  InterruptGuard interrupts;
  std::map<std::string, ExportMetrics> before;
  for (Sample& s : sample(target)) before[s.label] = s.m;
  auto t0 = Clock::now();
  for (unsigned n = 0; !count || n < *count; ++n) {
    auto next = t0 + std::chrono::duration_cast<Clock::duration>(
                         std::chrono::duration<double>(interval * (n + 1)));
    while (Clock::now() < next && !InterruptGuard::interrupted())
      std::this_thread::sleep_for(std::min<Clock::duration>(next - Clock::now(), 100ms));
    if (InterruptGuard::interrupted()) break;
    std::vector<Sample> now = sample(target);
    print_rates(now, before, interval, json);
    before.clear();
    for (Sample& s : now) before[s.label] = s.m;
  }
  return kExitOk;
}

}  // namespace loopdio::cli

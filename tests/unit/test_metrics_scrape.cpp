// Prometheus scrapes taken while requests are being counted. Regression: a snapshot read each
// shard's request count before its latency buckets, so the histogram's `+Inf` and `_count`
// (the count) disagreed with its finite buckets (read later): a request counted in between
// showed in a finite bucket above `+Inf`, which Prometheus rejects, and one half counted
// showed in `+Inf` but in no finite bucket, as if it had taken more than 67 s. Every scrape
// must obey the exposition format (buckets cumulative and non-decreasing, `+Inf` equal to
// `_count`) and count each request once, in its own bucket.
#include <gtest/gtest.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <map>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "loopdio/metrics.h"
#include "loopdio/stats.h"

using namespace loopdio;

namespace {

// One histogram series of a scrape: its buckets in the order written, then _count.
struct Series {
  std::vector<std::pair<std::string, double>> buckets;  // le, value
  double count = -1;
  double requests_total = -1;
};

// The series of `text` by their labels without `le`. Lines it does not know are skipped.
std::map<std::string, Series> parse(const std::string& text) {
  const std::string hist = "loopdio_request_duration_seconds";
  std::map<std::string, Series> r;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    if (line.empty() || line[0] == '#') continue;
    auto open = line.find('{'), close = line.rfind('}');
    if (open == std::string::npos || close == std::string::npos) continue;
    std::string name = line.substr(0, open);
    std::string labels = line.substr(open + 1, close - open - 1);
    double value = std::stod(line.substr(close + 2));
    if (name == hist + "_bucket") {
      auto le = labels.rfind(",le=\"");
      std::string bound = labels.substr(le + 5, labels.size() - le - 6);
      r[labels.substr(0, le)].buckets.emplace_back(bound, value);
    } else if (name == hist + "_count") {
      r[labels].count = value;
    } else if (name == "loopdio_requests_total") {
      r[labels].requests_total = value;
    }
  }
  return r;
}

// Empty when the scrape obeys the rules, else what it broke. `same_snapshot`: the counters
// came from one snapshot, so the request counter must equal the histogram's count too.
std::string check(const std::string& text, bool same_snapshot = true) {
  auto all = parse(text);
  if (all.empty()) return "no histogram in the scrape";
  for (const auto& [labels, s] : all) {
    if (s.buckets.empty() || s.buckets.back().first != "+Inf") return labels + ": no +Inf bucket";
    for (std::size_t i = 1; i < s.buckets.size(); ++i)
      if (s.buckets[i].second < s.buckets[i - 1].second)
        return labels + ": bucket le=" + s.buckets[i].first + " (" +
               std::to_string(s.buckets[i].second) + ") below le=" + s.buckets[i - 1].first +
               " (" + std::to_string(s.buckets[i - 1].second) + ")";
    if (s.buckets.back().second != s.count)
      return labels + ": +Inf " + std::to_string(s.buckets.back().second) + " but _count " +
             std::to_string(s.count);
    if (same_snapshot && s.requests_total != s.count)
      return labels + ": requests_total " + std::to_string(s.requests_total) + " but _count " +
             std::to_string(s.count);
  }
  return {};
}

}  // namespace

TEST(MetricsScrape, EveryScrapeTakenUnderLoadIsConsistent) {
  // Workers count requests without a pause while this thread scrapes. Every latency is
  // below 2^21 µs, so beside the format's rules each scrape must count every request in a
  // finite bucket: `+Inf` equal to the largest finite bucket. The scrapes go on for two
  // seconds (or 2000 scrapes) unless one breaks a rule first.
  Stats stats;
  std::atomic<bool> stop{false};
  std::vector<std::thread> workers;
  for (int t = 0; t < 8; ++t)
    workers.emplace_back([&, t] {
      for (std::uint64_t i = 0; !stop.load(std::memory_order_relaxed); ++i) {
        std::uint64_t ns = 1000ull << ((i * 7 + static_cast<unsigned>(t)) % 21);
        stats.request(i % 3 ? Cmd::kRead : Cmd::kWrite, 4096, ns, i % 11 ? 0 : -EIO);
      }
    });
  std::string broken;
  std::uint64_t last = 0;
  int scrapes = 0;
  auto start = std::chrono::steady_clock::now();
  while (broken.empty() && scrapes < 2000 &&
         std::chrono::steady_clock::now() - start < std::chrono::seconds(2)) {
    ExportMetrics m;
    m.name = "disk";
    m.stats = stats.snapshot();
    std::string text = prometheus_text({m});
    ++scrapes;
    broken = check(text);
    for (const auto& [labels, series] : parse(text)) {
      const auto& b = series.buckets;
      if (broken.empty() && b.size() >= 2 && b[b.size() - 1].second != b[b.size() - 2].second)
        broken = labels + ": +Inf " + std::to_string(b.back().second) +
                 " but every request is in a finite bucket, whose largest says " +
                 std::to_string(b[b.size() - 2].second);
    }
    for (const StatsSnapshot::PerCmd& p : m.stats.cmd)
      if (broken.empty() && p.errors > p.requests) broken = "more errors than requests";
    // A counter never goes down from one scrape to the next.
    std::uint64_t reads = m.stats.cmd[static_cast<int>(Cmd::kRead)].requests;
    if (broken.empty() && reads < last) broken = "read requests went down";
    last = reads;
  }
  stop = true;
  for (auto& w : workers) w.join();
  EXPECT_EQ(broken, "") << "at scrape " << scrapes;
  EXPECT_GT(last, 0u) << "the workers never ran while the scrapes were taken";
}

TEST(MetricsScrape, AHistogramIsValidEvenWhenTheCountDisagreesWithItsBuckets) {
  // Statistics read back from another server's JSON may carry a request count that is not
  // the sum of the buckets; the histogram is still exposed valid, from the buckets alone.
  ExportMetrics m;
  m.name = "disk";
  auto& reads = m.stats.cmd[static_cast<int>(Cmd::kRead)];
  reads.buckets[3] = 5;
  reads.buckets[kLatencyBuckets - 1] = 2;  // slower than the largest finite bound
  for (std::uint64_t requests : {4u, 7u, 9u}) {
    reads.requests = requests;
    std::string text = prometheus_text({m});
    EXPECT_EQ(check(text, false), "");
    EXPECT_NE(text.find("loopdio_request_duration_seconds_count{export=\"disk\","
                        "command=\"read\"} 7\n"),
              std::string::npos);
  }
}

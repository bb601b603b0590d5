// What one nbdkit process serves: one image (file=) or a directory of them (dir=), with the
// bounce memory every export shares, the limit on connections, and the answers to the
// control socket's commands. The nbdkit glue asks it for the export a connection names and
// hands control commands to it; everything else is per export.
#pragma once

#include <atomic>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "loopdio/bounce_pool.h"
#include "loopdio/export.h"
#include "loopdio/export_dir.h"
#include "loopdio/json.h"
#include "loopdio/metrics.h"
#include "loopdio/options.h"

namespace loopdio {

class Service {
 public:
  // Opens the image (or the directory) now. Throws loopdio::Error.
  explicit Service(const Options& o);

  const Options& options() const { return opts_; }
  bool serves_dir() const { return dir_ != nullptr; }
  BouncePool& pool() { return pool_; }

  // A connection opens: counts it against max-connections and returns the export `name`
  // asks for (any name, with file=). Throws loopdio::Error (EBUSY beyond the limit).
  std::shared_ptr<Export> connect(const std::string& name);
  void disconnect() { --connections_; }
  unsigned connections() const { return connections_.load(); }

  // dir=: the exports' names; and the description of one.
  std::vector<std::string> export_names() const;
  std::string describe(const std::string& name);

  // The control socket's command, executed; the one-line JSON reply. Never throws.
  std::string control(std::string_view line);

  Json status();
  Json stats();
  std::string metrics();
  std::vector<ExportMetrics> collect();

 private:
  void set_direct_io(const std::string& name, bool on);
  void flush();

  Options opts_;
  BouncePool pool_;
  std::shared_ptr<Stats> single_stats_;
  std::shared_ptr<Export> single_;   // file=
  std::unique_ptr<ExportDir> dir_;   // dir=
  std::atomic<unsigned> connections_{0};
};

}  // namespace loopdio

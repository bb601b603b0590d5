// What one nbdkit process serves: one image (file=) or a directory of them (dir=), with the
// bounce memory every export shares, the limit on connections, and the answers to the
// control socket's commands. The nbdkit glue asks it for the export a connection names and
// hands control commands to it; everything else is per export.
#pragma once

#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "loopdio/bounce_pool.h"
#include "loopdio/connection_slots.h"
#include "loopdio/engine_share.h"
#include "loopdio/export.h"
#include "loopdio/export_dir.h"
#include "loopdio/json.h"
#include "loopdio/metrics.h"
#include "loopdio/options.h"
#include "loopdio/process_limits.h"

namespace loopdio {

class Service {
 public:
  // Opens the image (or the directory) now; counts connections in `slots` (which outlive
  // the service: a connection's thread may end after it). Throws loopdio::Error.
  Service(const Options& o, ConnectionSlots& slots);

  const Options& options() const { return opts_; }
  bool serves_dir() const { return dir_ != nullptr; }
  BouncePool& pool() { return pool_; }

  // A connection opens an export: it takes an open slot (max-connections) and the export
  // `name` asks for (any name, with file=); the caller then attaches to it with
  // connections_per_export(). Throws loopdio::Error (EBUSY beyond the limit).
  std::shared_ptr<Export> connect(const std::string& name);
  // A connection gone, the bounce pool's free pages beyond a few MiB go back to the system
  // (the others' requests keep theirs); the last one gone, all of them, and what malloc
  // keeps of nbdkit's request buffers.
  void disconnect() noexcept;
  unsigned connections() const { return slots_.open_now(); }
  // The process's limits as applied (shown by `status`); set before the control socket starts.
  void set_limits(const ProcessLimits& pl) { limits_ = pl; }
  // Starts what runs on threads of its own (the throttles' clock): after nbdkit has forked.
  void start() { clock_.start(); }

  // The exports and their descriptions, as NBD_OPT_LIST shows them (file=: one, unnamed).
  // Opens nothing.
  std::vector<ExportDir::Entry> exports();
  // Every open export.
  std::vector<std::shared_ptr<Export>> open_exports();

  // The control socket's command, executed; the one-line JSON reply. Never throws.
  std::string control(std::string_view line);

  Json status();
  Json stats();
  std::string metrics();
  std::vector<ExportMetrics> collect();
  std::vector<GroupMetrics> group_metrics();

 private:
  void set_direct_io(const std::string& name, bool on);
  Json set_limits(std::string_view args);
  Json snapshot(std::string_view args);
  void load_limits_file(const std::string& path);
  void flush();
  static ExportMetrics export_metrics(const std::string& name, const std::string& file,
                                      const Stats& s,
                                      const std::vector<std::shared_ptr<Export>>& open);

  Options opts_;
  BouncePool pool_;
  AioBudget aio_;  // before the exports, whose engines give it back
  ThrottleClock clock_;      // before the exports and groups, whose throttles it wakes
  ThrottleGroups groups_;
  ServerShared shared_;
  std::shared_ptr<Stats> single_stats_;
  std::shared_ptr<Export> single_;   // file=
  std::unique_ptr<ExportDir> dir_;   // dir=
  ConnectionSlots& slots_;
  ProcessLimits limits_;
  std::mutex switch_mu_;  // one direct-I/O switch at a time: the control socket runs
                          // commands on several threads, and two opposite switches of one
                          // export must not leave the setting and the backing disagreeing
};

}  // namespace loopdio

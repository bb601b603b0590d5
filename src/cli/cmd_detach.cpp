// `loopdio detach`: the reverse of attach, in the order that loses nothing acknowledged:
// hold the device exclusively (nobody mounts it meanwhile), fsync it (dirty pages reach the
// server, then a flush), have the server fdatasync the image (control `flush`), disconnect
// the kernel client, then let nbdkit exit on SIGTERM and remove the state.
#include <cstdio>

#include "args.h"
#include "cli.h"
#include "control_client.h"
#include "interrupt.h"
#include "loopdio/error.h"
#include "nbd_kernel.h"
#include "paths.h"
#include "process.h"
#include "state.h"

namespace loopdio::cli {
namespace {

using namespace std::chrono_literals;

const CommandHelp kHelp = {
    "detach", "DEVICE | --all",
    "Detaches an NBD device attached by `loopdio attach`: flushes it, disconnects the\n"
    "kernel client and stops its server. Refused while the device is mounted or held\n"
    "open exclusively. Needs root.\n"};

void detach_one(const StateDir& dir, const ExportState& s, const NbdKernel& kernel,
                const std::string& nbd_client) {
  int index = kernel.parse_device(s.device);
  // The server must answer before anything changes: a device whose server is wedged is
  // left as it is, rather than disconnected with its writes in doubt.
  control_call(s.control, "status", 10s);
  if (kernel.connected(index)) {
    UniqueFd held = kernel.open_exclusive(index);
    kernel.flush(held.get(), index);
    control_call(s.control, "flush", 120s);
    kernel.disconnect(nbd_client, index);
    held.reset();
    if (!kernel.wait_disconnected(index, 10s))
      throw Error(s.device + " still shows as connected after nbd-client -d");
  } else {
    control_call(s.control, "flush", 120s);  // disconnected behind our back: still flush
  }
  if (!stop_process(s.pid, s.marker(), 30s))
    std::fprintf(stderr, "loopdio: %s: its server (pid %d) did not exit on SIGTERM within 30 s "
                 "and was killed (the image had been flushed)\n", s.device.c_str(), static_cast<int>(s.pid));
  dir.remove(s);
}

}  // namespace

int run_detach(const Args& args) {
  po::options_description visible("Options");
  visible.add_options()("all,a", "Detach every device attached by loopdio.");
  po::options_description hidden;
  hidden.add_options()("device", po::value<std::string>());
  po::positional_options_description pos;
  pos.add("device", 1);
  auto vm = parse_args(kHelp, args, visible, hidden, pos);
  if (!vm) return kExitOk;
  bool all = vm->count("all") > 0;
  if (all == (vm->count("device") > 0)) throw UsageError("detach: give a DEVICE or --all");

  NbdKernel kernel;
  if (!all) kernel.parse_device(vm->at("device").as<std::string>());
  require_root("detach");
  std::string nbd_client = find_program("nbd-client", "LOOPDIO_NBD_CLIENT", "apt-get install nbd-client");

  InterruptGuard interrupts;  // a detach half done is worse than a detach finished
  StateDir dir;
  StateLock lock(dir);
  std::vector<ExportState> targets;
  if (all) {
    for (ExportState& s : dir.live())
      if (s.kind == "device") targets.push_back(std::move(s));
  } else {
    std::string dev = kernel.device_path(kernel.parse_device(vm->at("device").as<std::string>()));
    for (ExportState& s : dir.live())
      if (s.device == dev) targets.push_back(std::move(s));
    if (targets.empty()) throw Error(dev + " was not attached by loopdio (no state in " + dir.path() + ")");
  }
  int rc = kExitOk;
  for (const ExportState& s : targets) {
    try {
      detach_one(dir, s, kernel, nbd_client);
    } catch (const Error& e) {
      if (!all) throw;
      std::fprintf(stderr, "loopdio: %s: %s\n", s.device.c_str(), e.what());
      rc = kExitFailure;
    }
  }
  return rc;
}

}  // namespace loopdio::cli

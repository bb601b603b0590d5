// `loopdio attach`: losetup for NBD. Starts a private nbdkit on a root-only Unix socket,
// detached so that it outlives this command, connects the kernel client to it with the
// export's minimum block size, and records the state. Each step is owned by an RAII handle
// until the last one succeeded, so a failure (or a signal) anywhere undoes the others.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <iostream>
#include <set>
#include <sstream>
#include <thread>

#include "args.h"
#include "cli.h"
#include "interrupt.h"
#include "json_read.h"
#include "loopdio/error.h"
#include "loopdio/unique_fd.h"
#include "nbd_kernel.h"
#include "nbdkit_program.h"
#include "paths.h"
#include "process.h"
#include "safe_text.h"
#include "server.h"
#include "state.h"

namespace loopdio::cli {
namespace {

using namespace std::chrono_literals;

const CommandHelp kHelp = {
    "attach", "[options] IMAGE [/dev/nbdN]",
    "Attaches IMAGE to an NBD device, served by a private nbdkit with the loopdio plugin\n"
    "(direct I/O and asynchronous kernel I/O on the image). Without a device, the first\n"
    "free one is taken. The device's block size is the export's minimum block size (the\n"
    "image's direct-I/O alignment, or --sector-size). Needs root and the nbd module.\n"};

po::options_description attach_options() {
  po::options_description d("Device");
  d.add_options()
      ("read-only,r", "Attach read-only.")
      ("connections,C", po::value<int>()->value_name("N")->default_value(1),
       "Connections between the kernel and the server (nbd-client -C).")
      ("show", "Print the device name.");
  return d;
}

constexpr std::size_t kMaxLog = 1 << 20;  // what is read of a server's start-up log

// The server's start-up log, as far as it is read.
std::string read_log(const StateDir& dir, const ExportState& s) {
  try {
    return dir.run().read(s.name + ".log", kMaxLog).value_or("");
  } catch (const Error& e) {
    return e.what();
  }
}

// The plugin's notices at start-up (direct I/O refused, a fallback) are worth seeing here:
// the server's log is otherwise read by nobody.
void show_notices(const std::string& log) {
  std::istringstream in(log);
  const std::string prefix = "nbdkit: loopdio: ";
  for (std::string line; std::getline(in, line);)
    if (line.rfind(prefix, 0) == 0)
      std::fprintf(stderr, "loopdio: %s\n", safe_encode(line.substr(prefix.size())).c_str());
}

// Starts nbdkit in the foreground of a process of its own, detached from this command
// (nbdkit's own daemonising is no use: the plugin's control socket would be removed by
// the process that exits). `server` owns it from the start; returns its status once its
// control socket answers.
Json start_server(const ServerSpec& spec, const std::string& plugin, const StateDir& dir,
                  const ExportState& state, std::optional<DaemonGuard>& server, pid_t& pid) {
  UniqueFd log = dir.run().create_file(state.name + ".log", 0600);
  SpawnOptions so;
  so.out = so.err = log.get();
  pid = spawn_detached(nbdkit_command(spec, plugin), so);
  server.emplace(pid, state.marker());
  auto deadline = std::chrono::steady_clock::now() + kStartTimeout;
  for (;;) {
    if (!process_alive(pid)) {
      std::string why = nbdkit_error(read_log(dir, state));
      throw Error(!why.empty() ? why : "nbdkit exited before serving " + state.requested.file);
    }
    if (auto status = try_status(state.control)) return *status;
    InterruptGuard::check();
    if (std::chrono::steady_clock::now() > deadline)
      throw Error("nbdkit did not start serving " + state.requested.file + " within " +
                  std::to_string(kStartTimeout.count()) + " s");
    std::this_thread::sleep_for(20ms);
  }
}

struct AttachRequest {
  ServerSpec spec;
  int connections = 1;
  std::optional<int> device;  // the index asked for, if any
  bool show = false;
};

AttachRequest request_from(const po::variables_map& vm, const NbdKernel& kernel) {
  AttachRequest r;
  apply_plugin_options(vm, r.spec.opts);
  r.spec.read_only = r.spec.opts.readonly = vm.count("read-only") > 0;
  r.connections = vm.at("connections").as<int>();
  if (r.connections < 1 || r.connections > 64) throw UsageError("attach: --connections: expected 1 to 64");
  if (vm.count("device")) r.device = kernel.parse_device(vm.at("device").as<std::string>());
  r.show = vm.count("show") > 0;
  return r;
}

// The device to take: the one asked for, or the lowest free one. A device that the state
// says is attached counts as taken even when the kernel shows it free (disconnected
// behind loopdio's back, its server still running).
int choose_device(StateDir& dir, const NbdKernel& kernel, std::optional<int> wanted) {
  std::set<int> recorded;
  for (const ExportState& s : dir.live()) {  // also sweeps stale state
    if (s.kind != "device") continue;
    int i = kernel.parse_device(s.device);
    if (wanted == i)
      throw Error(s.device + " is still attached to " + s.requested.file + " (server pid " +
                  std::to_string(s.pid) + "): loopdio detach " + s.device + " first");
    recorded.insert(i);
  }
  int index = wanted ? *wanted : kernel.first_free(recorded);
  kernel.require_free(index);
  return index;
}

ExportState new_state(const StateDir& dir, const NbdKernel& kernel, int index, AttachRequest& r) {
  ExportState s;
  s.name = "nbd" + std::to_string(index);
  s.kind = "device";
  s.device = kernel.device_path(index);
  // The devices' NBD sockets live in a directory only root may enter: nbdkit creates its
  // socket with mode 0755 whatever the umask, and whoever connects to it writes the disk.
  s.socket = dir.run().private_dir() + "/" + s.name + ".sock";
  s.uri = "nbd+unix:///?socket=" + s.socket;
  s.control = dir.file(s.name, ".ctl");
  s.log = dir.file(s.name, ".log");
  s.read_only = r.spec.read_only;
  s.connections = r.connections;
  r.spec.unix_socket = s.socket;
  r.spec.opts.control = s.control;
  s.requested = r.spec.opts;
  return s;
}

// nbd-client, with the export's minimum block size; a device left connected by a failure
// (or a signal) after nbd-client is disconnected again.
void connect_device(const NbdKernel& kernel, const std::string& nbd_client, const ExportState& s,
                    int index, std::int64_t block, const AttachRequest& r) {
  if (block < 512 || block > 4096)  // what the kernel's NBD client accepts as a block size
    throw Error(s.requested.file + ": the export's minimum block size is " + std::to_string(block) +
                ", which a kernel NBD device cannot have (512 to 4096): use --sector-size");
  InterruptGuard::check();
  try {
    kernel.connect(nbd_client, s.socket, index, static_cast<unsigned>(block), r.connections,
                   r.spec.read_only);
    InterruptGuard::check();
  } catch (...) {
    try {
      if (kernel.connected(index)) kernel.disconnect(nbd_client, index);
    } catch (const Error& e) {
      std::fprintf(stderr, "loopdio: undoing: %s\n", e.what());
    }
    throw;
  }
}

}  // namespace

int run_attach(const Args& args) {
  po::options_description visible;
  visible.add(attach_options()).add(plugin_options());
  po::options_description hidden;
  hidden.add_options()("image", po::value<std::string>())("device", po::value<std::string>());
  po::positional_options_description pos;
  pos.add("image", 1).add("device", 1);
  auto vm = parse_args(kHelp, args, visible, hidden, pos);
  if (!vm) return kExitOk;
  if (!vm->count("image")) throw UsageError("attach: which IMAGE? (loopdio attach [options] IMAGE [/dev/nbdN])");
  NbdKernel kernel;
  AttachRequest req = request_from(*vm, kernel);

  require_root("attach");
  kernel.require_client();
  std::string image = vm->at("image").as<std::string>();
  check_image(image);
  req.spec.opts.file = absolute_path(image);
  std::string plugin = find_plugin();
  req.spec.nbdkit = find_nbdkit();
  std::string nbd_client = find_program("nbd-client", "LOOPDIO_NBD_CLIENT", "apt-get install nbd-client");

  InterruptGuard interrupts;
  StateDir dir;
  dir.create();
  StateLock lock(dir);
  int index = choose_device(dir, kernel, req.device);
  ExportState state = new_state(dir, kernel, index, req);
  dir.remove(state);  // leftovers of a server that died with its state file gone

  // Declared before the server: on failure the server stops first, then its state, log
  // and sockets go. The state exists from the start, with no pid until the server has one.
  StateGuard guard(dir, state);
  std::optional<DaemonGuard> server;
  Json status = start_server(req.spec, plugin, dir, state, server, state.pid);
  guard.update(state);
  std::int64_t log_sec = member<std::int64_t>(status, "log_sec", "control socket " + state.control);
  connect_device(kernel, nbd_client, state, index, log_sec, req);
  guard.keep();
  server->release();
  show_notices(read_log(dir, state));
  if (req.show) std::cout << state.device << std::endl;
  return kExitOk;
}

}  // namespace loopdio::cli

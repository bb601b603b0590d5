// `loopdio serve`: nbdkit with the loopdio plugin in the foreground, for a remote export.
// loopdio stays nbdkit's parent (nbdkit runs --exit-with-parent, so it cannot be
// orphaned), relays its log, forwards Ctrl-C and SIGTERM to it, and keeps a state file for
// exactly as long as the export is served.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include <cstdio>
#include <iostream>

#include "args.h"
#include "cli.h"
#include "loopdio/error.h"
#include "loopdio/unique_fd.h"
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
    "serve", "[options] IMAGE",
    "Serves IMAGE over NBD with nbdkit and the loopdio plugin, in the foreground, until\n"
    "Ctrl-C or SIGTERM. Without --unix it listens on TCP port 10809 of every address.\n"
    "While it runs, `loopdio list` shows the export and `loopdio set` switches it.\n"};

po::options_description serve_options() {
  po::options_description d("Listening and access");
  d.add_options()
      ("unix,U", po::value<std::string>()->value_name("PATH"), "Listen on this Unix socket instead of TCP.")
      ("port,p", po::value<unsigned>()->value_name("PORT"), "TCP port (default 10809).")
      ("bind,i", po::value<std::string>()->value_name("ADDR"), "Listen on this address only.")
      ("export-name,e", po::value<std::string>()->value_name("NAME"),
       "Serve under this export name only; clients asking for another name are refused.")
      ("read-only,r", "Clients may not write.")
      ("tls-psk", po::value<std::string>()->value_name("FILE"),
       "Require TLS with the pre-shared keys in FILE (psktool -u USER -p FILE).")
      ("tls-certificates", po::value<std::string>()->value_name("DIR"),
       "Require TLS with the X.509 certificates in DIR (ca-cert.pem, server-cert.pem, "
       "server-key.pem).");
  return d;
}

ServerSpec spec_from(const po::variables_map& vm) {
  ServerSpec s;
  apply_plugin_options(vm, s.opts);
  if (vm.count("unix") && (vm.count("port") || vm.count("bind")))
    throw UsageError("serve: --unix and --port/--bind exclude each other");
  if (vm.count("tls-psk") && vm.count("tls-certificates"))
    throw UsageError("serve: --tls-psk and --tls-certificates exclude each other");
  if (vm.count("unix")) s.unix_socket = absolute_path(vm["unix"].as<std::string>());
  if (!vm.count("unix")) s.port = vm.count("port") ? vm["port"].as<unsigned>() : 10809;
  if (s.port && (*s.port == 0 || *s.port > 65535)) throw UsageError("serve: --port: expected 1 to 65535");
  if (vm.count("bind")) s.bind = vm["bind"].as<std::string>();
  if (vm.count("export-name")) s.export_name = vm["export-name"].as<std::string>();
  if (vm.count("tls-psk")) s.tls_psk = absolute_path(vm["tls-psk"].as<std::string>());
  if (vm.count("tls-certificates")) s.tls_certificates = absolute_path(vm["tls-certificates"].as<std::string>());
  s.read_only = vm.count("read-only") > 0;
  s.exit_with_parent = true;
  return s;
}

std::string export_uri(const ServerSpec& s) {
  bool tls = !s.tls_psk.empty() || !s.tls_certificates.empty();
  if (!s.unix_socket.empty())
    return std::string(tls ? "nbds+unix" : "nbd+unix") + ":///" + s.export_name + "?socket=" + s.unix_socket;
  std::string host = s.bind.empty() ? "localhost" : s.bind;
  if (host.find(':') != std::string::npos) host = "[" + host + "]";
  return std::string(tls ? "nbds" : "nbd") + "://" + host + ":" + std::to_string(*s.port) +
         (s.export_name.empty() ? "" : "/" + s.export_name);
}

// nbdkit's stderr, line by line: relayed as it is, except an error before the export is
// ready, which becomes loopdio's own one-line message.
class StderrRelay {
 public:
  explicit StderrRelay(UniqueFd fd) : fd_(std::move(fd)) { ::fcntl(fd_.get(), F_SETFL, O_NONBLOCK); }
  int fd() const { return fd_.get(); }
  bool open() const { return static_cast<bool>(fd_); }
  const std::string& error() const { return error_; }

  void pump(bool ready) {
    char buf[4096];
    for (;;) {
      ssize_t n = ::read(fd_.get(), buf, sizeof buf);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        if (n == 0) fd_.reset();  // nbdkit closed it: it has exited
        break;
      }
      pending_.append(buf, static_cast<std::size_t>(n));
      for (auto nl = pending_.find('\n'); nl != std::string::npos; nl = pending_.find('\n')) {
        line(pending_.substr(0, nl), ready);
        pending_.erase(0, nl + 1);
      }
    }
  }

 private:
  void line(const std::string& l, bool ready) {
    std::string e = l.find("error: ") != std::string::npos ? nbdkit_error(l) : "";
    if (!ready && !e.empty())
      error_ = e;
    else
      std::fprintf(stderr, "%s\n", l.c_str());
  }

  UniqueFd fd_;
  std::string pending_, error_;
};

// SIGINT, SIGTERM, SIGHUP and SIGCHLD arrive on a descriptor instead of interrupting.
class SignalFd {
 public:
  SignalFd() {
    sigemptyset(&set_);
    for (int s : {SIGINT, SIGTERM, SIGHUP, SIGCHLD}) sigaddset(&set_, s);
    ::sigprocmask(SIG_BLOCK, &set_, &old_);
    fd_.reset(::signalfd(-1, &set_, SFD_CLOEXEC | SFD_NONBLOCK));
    if (!fd_) throw sys_error("signalfd");
  }
  ~SignalFd() { ::sigprocmask(SIG_SETMASK, &old_, nullptr); }
  int fd() const { return fd_.get(); }
  // True when a stop signal (not SIGCHLD) was among those read.
  bool stop_requested() {
    bool stop = false;
    struct signalfd_siginfo si {};
    while (::read(fd_.get(), &si, sizeof si) == static_cast<ssize_t>(sizeof si))
      if (si.ssi_signo != SIGCHLD) stop = true;
    return stop;
  }

 private:
  sigset_t set_, old_;
  UniqueFd fd_;
};

struct ServeLoop {
  StateDir& dir;
  ExportState state;
  Child& child;
  StderrRelay& relay;
  SignalFd& signals;
  ServedSocket& served;
  std::optional<StateGuard>& guard;
  bool ready = false;
  bool stopping = false;

  int run() {
    auto deadline = std::chrono::steady_clock::now() + kStartTimeout;
    std::optional<int> code;
    while (!code) {
      struct pollfd fds[2] = {{signals.fd(), POLLIN, 0}, {relay.fd(), POLLIN, 0}};
      ::poll(fds, relay.open() ? 2 : 1, ready ? 1000 : 50);
      if ((fds[0].revents & POLLIN) && signals.stop_requested() && !stopping) {
        child.signal(SIGTERM);
        stopping = true;
      }
      if (relay.open() && fds[1].revents) relay.pump(ready);
      if ((code = child.try_wait())) break;
      if (!ready && !stopping) become_ready(deadline);
    }
    // nbdkit has exited, so its end of the pipe is closed: read what is left.
    for (int i = 0; i < 100 && relay.open(); ++i) {
      struct pollfd f = {relay.fd(), POLLIN, 0};
      ::poll(&f, 1, 10);
      relay.pump(ready);
    }
    return finish(*code);
  }

  void become_ready(std::chrono::steady_clock::time_point deadline) {
    if (try_status(state.control)) {
      state.pid = child.pid();
      StateLock lock(dir);
      guard.emplace(dir, state);
      served.own();
      ready = true;
      std::cout << "serving " << safe_encode(state.requested.file) << " on " << safe_encode(state.uri)
                << std::endl;
    } else if (std::chrono::steady_clock::now() > deadline) {
      throw Error("nbdkit did not start serving " + state.requested.file + " within " +
                  std::to_string(kStartTimeout.count()) + " s");
    }
  }

  int finish(int code) {
    if (!ready) {
      if (stopping) throw Error("interrupted before the export was ready");
      if (!relay.error().empty()) throw Error(relay.error());
      throw Error("nbdkit exited with status " + std::to_string(code) + " before serving");
    }
    if (code == 0 || (stopping && code == 128 + SIGTERM)) return kExitOk;
    throw Error("nbdkit exited with status " + std::to_string(code));
  }
};

}  // namespace

int run_serve(const Args& args) {
  po::options_description visible;
  visible.add(serve_options()).add(plugin_options());
  po::options_description hidden;
  hidden.add_options()("image", po::value<std::string>());
  po::positional_options_description pos;
  pos.add("image", 1);
  auto vm = parse_args(kHelp, args, visible, hidden, pos);
  if (!vm) return kExitOk;
  if (!vm->count("image")) throw UsageError("serve: which IMAGE? (loopdio serve [options] IMAGE)");

  ServerSpec spec = spec_from(*vm);
  std::string image = vm->at("image").as<std::string>();
  check_image(image);
  spec.opts.file = absolute_path(image);
  std::string plugin = find_plugin();
  spec.nbdkit = find_nbdkit();

  StateDir dir;
  dir.create();
  ExportState state;
  state.name = "serve-" + std::to_string(::getpid());
  state.kind = "socket";
  state.socket = spec.unix_socket;
  state.uri = export_uri(spec);
  state.control = dir.file(state.name, ".ctl");
  state.owner = ::getpid();
  state.read_only = spec.read_only;
  state.export_name = spec.export_name;
  spec.opts.control = state.control;
  state.requested = spec.opts;

  SignalFd signals;
  int p[2];
  if (::pipe2(p, O_CLOEXEC) != 0) throw sys_error("pipe");
  UniqueFd err_read(p[0]), err_write(p[1]);
  SpawnOptions so;
  so.err = err_write.get();
  // Declared before the child: on the way out the server stops first, then its state and
  // its socket go.
  remove_dead_socket(spec.unix_socket);
  ServedSocket served(spec.unix_socket);
  std::optional<StateGuard> guard;
  Child child = Child::spawn(nbdkit_command(spec, plugin), so);
  err_write.reset();
  StderrRelay relay(std::move(err_read));
  return ServeLoop{dir, state, child, relay, signals, served, guard}.run();
}

}  // namespace loopdio::cli

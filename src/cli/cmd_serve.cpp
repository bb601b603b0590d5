// `loopdio serve`: nbdkit with the loopdio plugin in the foreground, for a remote export.
// loopdio stays nbdkit's parent (nbdkit runs --exit-with-parent, so it cannot be
// orphaned), relays its log, forwards Ctrl-C and SIGTERM to it, and keeps a state file for
// exactly as long as the export is served.
#include <fcntl.h>
#include <sys/stat.h>
#include <poll.h>
#include <signal.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include <chrono>
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
#include "serve_request.h"
#include "server.h"
#include "state.h"

namespace loopdio::cli {
namespace {

using namespace std::chrono_literals;

const CommandHelp kHelp = {
    "serve", "[options] IMAGE|DIR",
    "Serves IMAGE over NBD with nbdkit and the loopdio plugin, in the foreground, until\n"
    "Ctrl-C or SIGTERM. A directory DIR serves every image in it, each as an export named\n"
    "by its file name (nbd://localhost/NAME); files added later are served too.\n"
    "Without --unix it listens on TCP port 10809 of localhost only;\n"
    "on an address other hosts can reach, a writable export needs TLS (or -r, or\n"
    "--insecure-no-tls). It prints the URI and the export's description once ready.\n"
    "While it runs, `loopdio list` shows the export and `loopdio set` switches it.\n"};

// nbdkit's stderr, line by line. Until the export is ready its lines are held: they are
// relayed once it is (the plugin's notices: a fallback, direct I/O refused), or, when
// nbdkit exits first, become loopdio's one-line reason. Afterwards each is relayed as read,
// up to kBurst lines a second: a flood (clients refused by the thousand, requests failing
// with ENOMEM, accept failing at the descriptor limit) is counted, not written, and the
// count said once a second, so no client can fill the disk with the log.
class StderrRelay {
 public:
  static constexpr int kBurst = 20;

 public:
  explicit StderrRelay(UniqueFd fd) : fd_(std::move(fd)) { ::fcntl(fd_.get(), F_SETFL, O_NONBLOCK); }
  int fd() const { return fd_.get(); }
  bool open() const { return static_cast<bool>(fd_); }
  const std::string& held() const { return held_; }

  // Says how many lines were held back in the second that ended.
  void tick() {
    auto now = std::chrono::steady_clock::now();
    if (now - window_ < std::chrono::seconds(1)) return;
    if (suppressed_)
      std::fprintf(stderr, "loopdio: %d lines of nbdkit's log left out in the last second\n",
                   suppressed_);
    window_ = now;
    in_window_ = suppressed_ = 0;
  }

  void pump() {
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
        line(pending_.substr(0, nl + 1));
        pending_.erase(0, nl + 1);
      }
      if (pending_.size() > (64u << 10)) {  // no end of line in sight: a line of its own
        line(pending_ + "\n");
        pending_.clear();
      }
    }
  }

  // The export is ready: what was held is relayed, and from now on every line.
  void release() {
    std::fputs(held_.c_str(), stderr);
    held_.clear();
    ready_ = true;
  }

 private:
  void line(const std::string& l) {
    if (!ready_) {
      if (held_.size() < (64u << 10)) held_ += l;  // what explains a failed start comes first
      return;
    }
    tick();
    if (++in_window_ <= kBurst)
      std::fputs(l.c_str(), stderr);
    else
      ++suppressed_;
  }

  UniqueFd fd_;
  std::string pending_, held_;
  bool ready_ = false;
  std::chrono::steady_clock::time_point window_ = std::chrono::steady_clock::now();
  int in_window_ = 0, suppressed_ = 0;
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
  const ServeRequest& request;
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
      if (relay.open() && fds[1].revents) relay.pump();
      if (ready) relay.tick();
      if ((code = child.try_wait())) break;
      if (!ready && !stopping) become_ready(deadline);
    }
    // nbdkit has exited, so its end of the pipe is closed: read what is left.
    for (int i = 0; i < 100 && relay.open(); ++i) {
      struct pollfd f = {relay.fd(), POLLIN, 0};
      ::poll(&f, 1, 10);
      relay.pump();
    }
    return finish(*code);
  }

  void become_ready(std::chrono::steady_clock::time_point deadline) {
    if (auto status = try_status(state.control)) {
      state.pid = child.pid();
      StateLock lock(dir);
      guard.emplace(dir, state);
      served.own();
      ready = true;
      relay.release();
      print_ready(*status);
    } else if (std::chrono::steady_clock::now() > deadline) {
      throw Error("nbdkit did not start serving " + image_of(state.requested) + " within " +
                  std::to_string(kStartTimeout.count()) + " s");
    }
  }

  // Where it serves and what: one export's description, or each export of a directory.
  void print_ready(const Json& status) {
    const Options& o = state.requested;
    if (o.dir.empty()) {
      std::cout << "serving " << safe_encode(o.file) << " on " << safe_encode(request.where)
                << "\ndescription: " << safe_encode(export_description(status)) << std::endl;
      return;
    }
    const Json& exports = status.at("exports");
    std::cout << "serving the images in " << safe_encode(o.dir) << " (" << exports.size()
              << " now), each by its name, on " << safe_encode(export_uri(state, "NAME"))
              << (request.listen.wildcard ? " (listening on every address)" : "") << "\n";
    for (const Json& e : exports)
      std::cout << "export " << safe_encode(get_path(e, "name")) << ": "
                << safe_encode(export_description(e)) << "\n";
    std::cout << std::flush;
  }

  // Why nbdkit exited before the export was ready, in one line.
  std::string start_failure(int code) const {
    std::string why = nbdkit_error(relay.held());
    if (why.empty()) return "nbdkit exited with status " + std::to_string(code) + " before serving";
    if (request.tcp && relay.held().find("bind") != std::string::npos)
      return "cannot listen on " + request.listen.uri_host + ":" +
             std::to_string(*request.spec.port) + ": " + why;
    return why;
  }

  int finish(int code) {
    if (!ready) {
      if (stopping) throw Error("interrupted before the export was ready");
      throw Error(start_failure(code));
    }
    // Ctrl-C reaches nbdkit too (it is in our process group), as well as our SIGTERM.
    if (code == 0 || (stopping && (code == 128 + SIGTERM || code == 128 + SIGINT))) return kExitOk;
    throw Error("nbdkit exited with status " + std::to_string(code));
  }
};

}  // namespace

static bool is_directory(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

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

  ServeRequest request = serve_request(*vm);
  ServerSpec& spec = request.spec;
  std::string image = vm->at("image").as<std::string>();
  check_image(image);
  if (!spec.opts.default_export.empty() && !is_directory(image))
    throw UsageError("serve: --default-export applies to a directory of images");
  (is_directory(image) ? spec.opts.dir : spec.opts.file) = absolute_path(image);
  std::string plugin = find_plugin();
  spec.nbdkit = find_nbdkit();

  StateDir dir;
  dir.create();
  ExportState state;
  state.name = "serve-" + std::to_string(::getpid());
  state.kind = "socket";
  state.socket = spec.unix_socket;
  state.uri = request.uri;
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
  return ServeLoop{dir, state, request, child, relay, signals, served, guard}.run();
}

}  // namespace loopdio::cli

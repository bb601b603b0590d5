// serve's options and the listening policy; see serve_request.h.
#include "serve_request.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>

#include "loopdio/error.h"
#include "paths.h"
#include "safe_text.h"

namespace loopdio::cli {
namespace {

void check_exclusions(const po::variables_map& vm) {
  if (vm.count("unix") && (vm.count("port") || vm.count("bind") || vm.count("insecure-no-tls")))
    throw UsageError("serve: --unix and --port/--bind/--insecure-no-tls exclude each other");
  if (vm.count("tls-psk") && vm.count("tls-certificates"))
    throw UsageError("serve: --tls-psk and --tls-certificates exclude each other");
}

void apply_limits(const po::variables_map& vm, ServerSpec& s) {
  if (vm.count("threads")) {
    unsigned t = vm["threads"].as<unsigned>();
    if (t < 1 || t > 1024) throw UsageError("serve: --threads: expected 1 to 1024");
    s.threads = t;
  }
  for (const char* key : {"max-connections", "max-connections-per-export", "max-handshakes",
                          "memory-max", "aio-events"}) {
    if (!vm.count(key)) continue;
    try {
      apply_option(s.opts, key, vm[key].as<std::string>());
    } catch (const Error& e) {
      throw UsageError(std::string("--") + e.what());
    }
  }
  if (vm.count("devices")) s.opts.devices = true;
  if (vm.count("timeout")) {
    unsigned t = vm["timeout"].as<unsigned>();
    if (t > 3600) throw UsageError("serve: --timeout: expected 0 (none) to 3600 seconds");
    s.handshake_timeout = t;
  }
}

std::string bind_name(const ServeRequest& r) {
  return r.listen.bind.empty() ? "*" : r.listen.bind;
}

// Anyone who reaches the address could write the image, unauthenticated and in clear.
void refuse_open_writes(const ServeRequest& r, bool insecure) {
  bool tls = !r.spec.tls_psk.empty() || !r.spec.tls_certificates.empty();
  if (!r.tcp || r.listen.loopback || r.spec.read_only || tls || insecure) return;
  throw UsageError("serve: --bind " + bind_name(r) +
                   " is reachable from other hosts, which could write the image without TLS: "
                   "add --tls-psk or --tls-certificates, or -r, or --insecure-no-tls to allow it");
}

// An export that other hosts reach without TLS is allowed when asked for (-r, or
// --insecure-no-tls), but never silently: one line each, at start.
void warn_open_exposure(const ServeRequest& r, bool insecure) {
  bool tls = !r.spec.tls_psk.empty() || !r.spec.tls_certificates.empty();
  if (!r.tcp || r.listen.loopback || tls) return;
  std::string where = "--bind " + bind_name(r) + " without TLS: anyone who reaches port " +
                      std::to_string(*r.spec.port) + " can ";
  if (r.spec.read_only)
    where += "read the image (-r only keeps them from writing it)";
  else if (insecure)
    where += "read and overwrite the image (--insecure-no-tls)";
  else
    return;
  std::fprintf(stderr, "loopdio: warning: serve: %s\n", safe_encode(where).c_str());
}

// The pre-shared keys let whoever reads them in as any of their users, and whoever may
// change them add their own: like ssh with a private key, the file must be its owner's
// alone (no permission for group or others), and the owner root or the user serving.
void check_psk_file(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) throw sys_error("serve: --tls-psk " + path);
  std::string why;
  if (!S_ISREG(st.st_mode)) {
    why = "not a regular file";
  } else if (st.st_uid != 0 && st.st_uid != ::geteuid()) {
    why = "owned by uid " + std::to_string(st.st_uid) + ", who could change the keys: chown " +
          (::geteuid() == 0 ? "root " : std::to_string(::geteuid()) + " ") + path;
  } else if (st.st_mode & 077) {
    char mode[8];
    std::snprintf(mode, sizeof mode, "%04o", static_cast<unsigned>(st.st_mode & 07777));
    std::string who = st.st_mode & 007 ? "others" : "its group";
    std::string what = st.st_mode & 044 ? "readable" : st.st_mode & 022 ? "writable" : "open";
    why = what + " by " + who + " (mode " + mode +
          "): the keys must be the owner's alone: chmod 600 " + path;
  }
  if (!why.empty()) throw Error("serve: --tls-psk " + path + ": refusing the keys: " + why);
}

std::string export_uri(const ServeRequest& r) {
  const ServerSpec& s = r.spec;
  bool tls = !s.tls_psk.empty() || !s.tls_certificates.empty();
  if (!r.tcp)
    return std::string(tls ? "nbds+unix" : "nbd+unix") + ":///" + s.export_name +
           "?socket=" + s.unix_socket;
  return std::string(tls ? "nbds" : "nbd") + "://" + r.listen.uri_host + ":" +
         std::to_string(*s.port) + (s.export_name.empty() ? "" : "/" + s.export_name);
}

}  // namespace

po::options_description serve_options() {
  po::options_description d("Listening and access");
  // clang-format off
  d.add_options()
      ("unix,U", po::value<std::string>()->value_name("PATH"),
       "Listen on this Unix socket instead of TCP.")
      ("port,p", po::value<unsigned>()->value_name("PORT"), "TCP port (default 10809).")
      ("bind,i", po::value<std::string>()->value_name("ADDR"),
       "Listen on this address (default localhost: loopback only). 0.0.0.0, :: or * listen "
       "on every address.")
      ("insecure-no-tls",
       "Allow a writable export without TLS on an address other hosts can reach (refused "
       "otherwise: anyone who reaches it could write the image; allowed, with a warning).")
      ("export-name,e", po::value<std::string>()->value_name("NAME"),
       "Serve under this export name only; clients asking for another name are refused.")
      ("default-export", po::value<std::string>()->value_name("NAME"),
       "Serving a directory: what a client asking for no export name gets (plugin "
       "default-export=; default: refused).")
      ("read-only,r", "Clients may not write (nbdkit -r, plugin readonly=1).")
      ("tls-psk", po::value<std::string>()->value_name("FILE"),
       "Require TLS with the pre-shared keys in FILE (psktool -u USER -p FILE); FILE must "
       "have no permission for group or others.")
      ("tls-certificates", po::value<std::string>()->value_name("DIR"),
       "Require TLS with the X.509 certificates in DIR (ca-cert.pem, server-cert.pem, "
       "server-key.pem).")
      ("threads,t", po::value<unsigned>()->value_name("N"),
       "nbdkit's worker threads (nbdkit --threads; default nbdkit's, 16).")
      ("max-connections", po::value<std::string>()->value_name("N"),
       "Connections serving exports at once; more are refused at the handshake (plugin "
       "max-connections=; default 64).")
      ("max-connections-per-export", po::value<std::string>()->value_name("N"),
       "Of them, to one export (plugin max-connections-per-export=; default all for an "
       "image, half for a directory).")
      ("max-handshakes", po::value<std::string>()->value_name("N"),
       "Connections still negotiating or listing exports (plugin max-handshakes=; default "
       "16); more are closed at once.")
      ("timeout", po::value<unsigned>()->value_name("SECONDS"),
       "Drop a client that has not finished its handshake within SECONDS (nbdkit "
       "--timeout; default 10, 0 for none).")
      ("memory-max", po::value<std::string>()->value_name("SIZE"),
       "The server's private memory, nbdkit's request buffers included (plugin memory-max=; "
       "default 2G, none for no limit); past it requests fail with ENOMEM.")
      ("aio-events", po::value<std::string>()->value_name("N"),
       "Kernel AIO events the server may hold of the host's fs.aio-max-nr (plugin "
       "aio-events=; default 4096, 64 per open export).")
      ("devices",
       "Serving a directory: its block device nodes are exports too (plugin devices=1).");
  // clang-format on
  return d;
}

ServeRequest serve_request(const po::variables_map& vm) {
  check_exclusions(vm);
  ServeRequest r;
  ServerSpec& s = r.spec;
  apply_plugin_options(vm, s.opts);
  apply_limits(vm, s);
  r.tcp = !vm.count("unix");
  if (!r.tcp) s.unix_socket = absolute_path(vm["unix"].as<std::string>());
  if (r.tcp) {
    s.port = vm.count("port") ? vm["port"].as<unsigned>() : kDefaultPort;
    if (*s.port == 0 || *s.port > 65535) throw UsageError("serve: --port: expected 1 to 65535");
    r.listen = classify_bind(vm.count("bind") ? vm["bind"].as<std::string>() : kDefaultBind);
    s.bind = r.listen.bind;
  }
  if (vm.count("export-name")) s.export_name = vm["export-name"].as<std::string>();
  if (vm.count("default-export")) s.opts.default_export = vm["default-export"].as<std::string>();
  if (vm.count("tls-psk")) {
    s.tls_psk = absolute_path(vm["tls-psk"].as<std::string>());
    check_psk_file(s.tls_psk);
  }
  if (vm.count("tls-certificates"))
    s.tls_certificates = absolute_path(vm["tls-certificates"].as<std::string>());
  s.read_only = s.opts.readonly = vm.count("read-only") > 0;
  s.exit_with_parent = true;
  refuse_open_writes(r, vm.count("insecure-no-tls") > 0);
  warn_open_exposure(r, vm.count("insecure-no-tls") > 0);
  r.uri = export_uri(r);
  r.where = r.uri + (r.listen.wildcard ? " (listening on every address)" : "");
  return r;
}

}  // namespace loopdio::cli

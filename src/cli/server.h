// Starting nbdkit with the loopdio plugin: the command line for an export (always with
// control=, so that list and set can reach it), the readiness check (the control socket
// answers only once nbdkit has opened the image and bound its sockets), and nbdkit's own
// error message when it refuses to start.
#pragma once

#include <chrono>
#include <optional>
#include <string>
#include <vector>

#include "loopdio/json.h"
#include "loopdio/options.h"

namespace loopdio::cli {

inline constexpr unsigned kDefaultHandshakeTimeout = 10;  // seconds

struct ServerSpec {
  std::string nbdkit;           // the program (find_nbdkit)
  Options opts;                 // file (absolute), plugin options and control
  bool read_only = false;       // nbdkit -r (and the plugin's readonly=1, in opts)
  std::string unix_socket;      // nbdkit -U
  std::optional<unsigned> port; // nbdkit -p
  std::string bind;             // nbdkit -i; empty: every address
  std::string export_name;      // only this name is served (the exportname filter, strict)
  std::string tls_psk;          // --tls-psk=FILE
  std::string tls_certificates; // --tls-certificates=DIR
  std::optional<unsigned> threads;  // nbdkit --threads
  // nbdkit --timeout: a client that has not finished its handshake by then is dropped, so
  // that stalled ones cannot keep the handshake slots (max-handshakes=) forever.
  unsigned handshake_timeout = kDefaultHandshakeTimeout;
  bool exit_with_parent = false;
};

// The whole argv, starting with the nbdkit program.
std::vector<std::string> nbdkit_command(const ServerSpec& spec, const std::string& plugin);

// The image must exist and be reachable before nbdkit is bothered with it: a missing
// image is loopdio's own one-line error.
void check_image(const std::string& path);

// serve --unix PATH: nbdkit refuses to start on an existing socket and leaves its own behind
// when it exits. PATH comes from the user's command line (never from a state file): this
// removes it when it is a socket that nobody listens on, a server's that was killed.
void remove_dead_socket(const std::string& path);

// Removes the Unix socket an export was served on once its server has stopped (it is
// destroyed after the server's handle), when it is still a socket. Only once owned: a
// server that did not start may have failed on a socket that is another server's.
class ServedSocket {
 public:
  explicit ServedSocket(std::string path) : path_(std::move(path)) {}
  ServedSocket(const ServedSocket&) = delete;
  ServedSocket& operator=(const ServedSocket&) = delete;
  ~ServedSocket();
  void own() { owned_ = true; }  // our server listens on it

 private:
  std::string path_;
  bool owned_ = false;
};

// The server's status once its control socket answers, nullopt while it does not yet.
std::optional<Json> try_status(const std::string& control);

// What the export's description says (direct I/O, alignment, engine): the status's
// "description" when it has one, else the same built from its other members.
std::string export_description(const Json& status);

// The message of the last error nbdkit printed ("nbdkit: loopdio[1]: error: offset=...:
// ..." gives "offset=...: ..."), or, failing that, its last line without "nbdkit: "; empty
// for no output.
std::string nbdkit_error(const std::string& output);

// How long nbdkit may take to open and probe the image before loopdio gives up.
constexpr std::chrono::seconds kStartTimeout{60};

}  // namespace loopdio::cli

// What `loopdio serve` is asked to do: its options, where it listens (loopback unless --bind
// says otherwise), the refusal to let the network write an image without TLS unless
// --insecure-no-tls says so (and a warning when it does, or when -r lets it read), the
// refusal of TLS keys others may read, and the URI it prints.
#pragma once

#include <string>

#include "args.h"
#include "listen.h"
#include "server.h"

namespace loopdio::cli {

constexpr unsigned kDefaultPort = 10809;

struct ServeRequest {
  ServerSpec spec;       // everything but the image and the control socket
  bool tcp = false;      // TCP, not a Unix socket
  ListenAddress listen;  // for TCP
  std::string uri;       // how clients reach the export
  std::string where;     // the URI, and "(listening on every address)" for a wildcard
};

// --unix, --port, --bind, --insecure-no-tls, --export-name, -r, TLS, --threads,
// --max-connections.
po::options_description serve_options();

// The request from the parsed command line. Throws UsageError for options that exclude
// each other or bad values, and for a writable export without TLS on an address others can
// reach unless --insecure-no-tls was given; loopdio::Error when --bind does not resolve, or
// when the --tls-psk file is missing, not the user's (or root's), or open to group or
// others. Prints a one-line warning on stderr when other hosts may read the export without
// TLS: --insecure-no-tls, or -r, on an address that is not loopback.
ServeRequest serve_request(const po::variables_map& vm);

}  // namespace loopdio::cli

// What `loopdio serve` is asked to do: its options, where it listens (loopback unless --bind
// says otherwise), the refusal to let the network write an image without TLS unless
// --insecure-no-tls says so, and the URI it prints.
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
// reach unless --insecure-no-tls was given; loopdio::Error when --bind does not resolve.
ServeRequest serve_request(const po::variables_map& vm);

}  // namespace loopdio::cli

// Where `loopdio serve` listens on TCP, and whether that reaches beyond this host. By
// default only loopback ("localhost"); an address is loopback when it is in 127.0.0.0/8 or
// is ::1 (or ::ffff:127.x.x.x), and a host name only when every address it resolves to is.
#pragma once

#include <string>
#include <string_view>

namespace loopdio::cli {

constexpr char kDefaultBind[] = "localhost";

struct ListenAddress {
  std::string bind;       // what nbdkit -i gets; empty: every address of every family
  bool loopback = false;  // only this host can connect
  bool wildcard = false;  // every address (0.0.0.0, ::, or *)
  std::string uri_host;   // the host part of the URI clients use (an IPv6 address bracketed)
};

// True for a numeric address in 127.0.0.0/8, ::1, or ::ffff:127.0.0.0/104. False for
// anything else, including names.
bool is_loopback_literal(std::string_view address);

// Classifies `bind` (--bind's argument): "*", "0.0.0.0" or "::" listen on every address; a
// numeric address is classified as it is; a name is resolved. Throws loopdio::Error when a
// name does not resolve.
ListenAddress classify_bind(const std::string& bind);

}  // namespace loopdio::cli

// Listening addresses and loopback; see listen.h.
#include "listen.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <memory>

#include "loopdio/error.h"

namespace loopdio::cli {
namespace {

struct AddrinfoFree {
  void operator()(struct addrinfo* a) const { ::freeaddrinfo(a); }
};

bool loopback_v4(const struct in_addr& a) { return (ntohl(a.s_addr) >> 24) == 127; }

bool loopback_v6(const struct in6_addr& a) {
  if (IN6_IS_ADDR_LOOPBACK(&a)) return true;
  if (!IN6_IS_ADDR_V4MAPPED(&a)) return false;
  return a.s6_addr[12] == 127;
}

bool loopback_sockaddr(const struct sockaddr* sa) {
  if (sa->sa_family == AF_INET)
    return loopback_v4(reinterpret_cast<const sockaddr_in*>(sa)->sin_addr);
  if (sa->sa_family == AF_INET6)
    return loopback_v6(reinterpret_cast<const sockaddr_in6*>(sa)->sin6_addr);
  return false;
}

// Every address `name` resolves to is loopback (and there is at least one).
bool resolves_to_loopback(const std::string& name) {
  struct addrinfo hints {};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_ADDRCONFIG;  // as nbdkit asks, so the same addresses are judged
  struct addrinfo* res = nullptr;
  if (int r = ::getaddrinfo(name.c_str(), nullptr, &hints, &res); r != 0)
    throw Error("--bind " + name + ": " + ::gai_strerror(r));
  std::unique_ptr<struct addrinfo, AddrinfoFree> owner(res);
  for (const struct addrinfo* a = res; a; a = a->ai_next)
    if (!loopback_sockaddr(a->ai_addr)) return false;
  return res != nullptr;
}

std::string host_name() {
  char buf[256] = {};
  if (::gethostname(buf, sizeof buf - 1) != 0 || !buf[0]) return "localhost";
  return buf;
}

}  // namespace

bool is_loopback_literal(std::string_view address) {
  std::string s(address);
  struct in_addr v4 {};
  struct in6_addr v6 {};
  if (::inet_pton(AF_INET, s.c_str(), &v4) == 1) return loopback_v4(v4);
  if (::inet_pton(AF_INET6, s.c_str(), &v6) == 1) return loopback_v6(v6);
  return false;
}

ListenAddress classify_bind(const std::string& bind) {
  ListenAddress l;
  l.bind = bind == "*" ? "" : bind;
  l.wildcard = bind == "*" || bind == "0.0.0.0" || bind == "::";
  struct in6_addr v6 {};
  bool numeric_v6 = ::inet_pton(AF_INET6, bind.c_str(), &v6) == 1;
  if (l.wildcard) {
    l.uri_host = host_name();
  } else {
    l.uri_host = numeric_v6 ? "[" + bind + "]" : bind;
    struct in_addr v4 {};
    bool numeric = numeric_v6 || ::inet_pton(AF_INET, bind.c_str(), &v4) == 1;
    l.loopback = numeric ? is_loopback_literal(bind) : resolves_to_loopback(bind);
  }
  return l;
}

}  // namespace loopdio::cli

// Talking to a running export's control socket; see control_client.h.
#include "control_client.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "json_read.h"
#include "loopdio/error.h"
#include "loopdio/unique_fd.h"

namespace loopdio::cli {
namespace {

using Clock = std::chrono::steady_clock;

int remaining_ms(Clock::time_point deadline) {
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
  return left.count() > 0 ? static_cast<int>(left.count()) : 0;
}

Error no_answer(const std::string& path, const std::string& why) {
  return Error(path + ": the export does not answer: " + why);
}

UniqueFd connect_to(const std::string& path) {
  struct sockaddr_un addr {};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof addr.sun_path) throw Error(path + ": path too long for a socket");
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd) throw sys_error("socket");
  if (::connect(fd.get(), reinterpret_cast<struct sockaddr*>(&addr), sizeof addr) != 0) {
    int e = errno;
    if (e == EACCES || e == EPERM)
      throw Error(path + ": " + std::strerror(e) + " (the control socket is root's only)", e);
    throw no_answer(path, std::strerror(e));
  }
  return fd;
}

// The reply as JSON. Invalid UTF-8 is replaced first, which leaves valid JSON valid.
Json parse_reply(const std::string& reply, const std::string& what) {
  if (is_utf8(reply)) return parse_json(reply, what);
  std::string quoted = dump_line(Json(reply));
  return parse_json(Json::parse(quoted).get<std::string>(), what);
}

}  // namespace

Json control_request(const std::string& path, std::string_view command,
                           std::chrono::milliseconds timeout) {
  auto deadline = Clock::now() + timeout;
  UniqueFd fd = connect_to(path);
  std::string request = std::string(command) + "\n";
  if (::send(fd.get(), request.data(), request.size(), MSG_NOSIGNAL) !=
      static_cast<ssize_t>(request.size()))
    throw no_answer(path, std::strerror(errno));
  std::string reply;
  char buf[1024];
  while (reply.find('\n') == std::string::npos) {
    struct pollfd p = {fd.get(), POLLIN, 0};
    int r = ::poll(&p, 1, remaining_ms(deadline));
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) throw sys_error("poll " + path);
    if (r == 0)
      throw no_answer(path, "no reply to \"" + std::string(command) + "\" within " +
                                std::to_string(timeout.count() / 1000) + " s");
    ssize_t n = ::read(fd.get(), buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw no_answer(path, std::strerror(errno));
    if (n == 0) throw no_answer(path, "it closed the connection without a reply");
    reply.append(buf, static_cast<std::size_t>(n));
  }
  reply.resize(reply.find('\n'));
  Json j = parse_reply(reply, "control socket " + path);
  if (!j.is_object()) throw Error("control socket " + path + ": the reply is not a JSON object");
  return j;
}

Json control_call(const std::string& path, std::string_view command,
                  std::chrono::milliseconds timeout) {
  Json reply = control_request(path, command, timeout);
  std::string what = "control socket " + path;
  if (!member<bool>(reply, "ok", what))
    throw Error(opt_member<std::string>(reply, "error", what)
                    .value_or("the export refused \"" + std::string(command) + "\""));
  return reply;
}

}  // namespace loopdio::cli

// The notice sink; see log.h. Set once before threads start, read afterwards.
#include "loopdio/log.h"

#include <cstdio>

namespace loopdio {
namespace {
std::function<void(const std::string&)>& sink() {
  static std::function<void(const std::string&)> s = [](const std::string& m) {
    std::fprintf(stderr, "loopdio: %s\n", m.c_str());
  };
  return s;
}
}  // namespace

void set_notice_sink(std::function<void(const std::string&)> s) { sink() = std::move(s); }

void notice(const std::string& message) { sink()(message); }

}  // namespace loopdio

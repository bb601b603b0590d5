// Finding a supported nbdkit; see nbdkit_program.h.
#include "nbdkit_program.h"

#include <unistd.h>

#include <cstdio>
#include <cstdlib>

#include "loopdio/error.h"
#include "paths.h"
#include "process.h"

namespace loopdio::cli {
namespace {

using namespace std::chrono_literals;

constexpr NbdkitVersion kMinimum{1, 34, 0};
constexpr char kWayOut[] = "install nbdkit 1.34 or later (scripts/nbdkit.sh builds one)";

bool older(const NbdkitVersion& a, const NbdkitVersion& b) {
  if (a.major != b.major) return a.major < b.major;
  if (a.minor != b.minor) return a.minor < b.minor;
  return a.micro < b.micro;
}

std::string to_string(const NbdkitVersion& v) {
  return std::to_string(v.major) + "." + std::to_string(v.minor) + "." + std::to_string(v.micro);
}

std::string choose_program() {
  if (const char* p = std::getenv("LOOPDIO_NBDKIT"); p && *p) return p;
  if (::access(LOOPDIO_NBDKIT_BIN, X_OK) == 0) return LOOPDIO_NBDKIT_BIN;
  return find_program("nbdkit", nullptr, "scripts/nbdkit.sh installs a supported one");
}

// Why this version will not do.
std::string unsupported(const NbdkitVersion& v) {
  bool aborts = !older(v, {1, 32, 4}) && older(v, {1, 33, 10});
  return aborts ? "nbdkit 1.32.4 to 1.33.9 abort when a client hangs up with requests queued"
                : "too old for loopdio";
}

}  // namespace

std::optional<NbdkitVersion> parse_nbdkit_version(std::string_view output) {
  std::string first(output.substr(0, output.find('\n')));
  NbdkitVersion v;
  int n = std::sscanf(first.c_str(), "nbdkit %d.%d.%d", &v.major, &v.minor, &v.micro);
  if (n < 2 || v.major < 0 || v.minor < 0) return std::nullopt;
  if (n == 2) v.micro = 0;
  return v;
}

std::string find_nbdkit() {
  std::string program = choose_program();
  RunResult r = run_capture({program, "--version"}, 10s);
  auto v = parse_nbdkit_version(r.output);
  if (r.status != 0 || !v) {
    std::string said = r.output.substr(0, r.output.find('\n'));
    throw Error("cannot tell the version of nbdkit (" + program + "): `nbdkit --version` said \"" +
                said + "\" (exit " + std::to_string(r.status) + "); " + kWayOut);
  }
  if (older(*v, kMinimum))
    throw Error("nbdkit " + to_string(*v) + " (" + program +
                ") is not supported: " + unsupported(*v) + "; " + kWayOut);
  return program;
}

}  // namespace loopdio::cli

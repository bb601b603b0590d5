// Run directory, plugin and program lookup; see paths.h.
#include "paths.h"

#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <sstream>
#include <vector>

#include "loopdio/error.h"

namespace loopdio::cli {
namespace {

namespace fs = std::filesystem;

std::string env_or(const char* name, const char* def) {
  const char* v = std::getenv(name);
  return v && *v ? v : def;
}

bool is_executable(const std::string& p) {
  std::error_code ec;
  return fs::is_regular_file(p, ec) && ::access(p.c_str(), X_OK) == 0;
}

}  // namespace

std::string run_dir() { return env_or("LOOPDIO_RUN_DIR", "/run/loopdio"); }
std::string sysfs_dir() { return env_or("LOOPDIO_SYSFS", "/sys"); }
std::string dev_dir() { return env_or("LOOPDIO_DEV_DIR", "/dev"); }

std::string find_plugin() {
  if (const char* p = std::getenv("LOOPDIO_PLUGIN"); p && *p) {
    std::error_code ec;
    if (!fs::exists(p, ec)) throw Error(std::string("LOOPDIO_PLUGIN=") + p + ": no such file");
    return absolute_path(p);
  }
  std::vector<std::string> tried;
  std::error_code ec;
  fs::path self = fs::read_symlink("/proc/self/exe", ec);
  if (!ec) {
    std::string next_to_me = (self.parent_path() / "loopdio.so").string();
    if (fs::exists(next_to_me, ec)) return next_to_me;
    tried.push_back(next_to_me);
  }
  std::string installed = std::string(LOOPDIO_NBDKIT_PLUGINDIR) + "/nbdkit-loopdio-plugin.so";
  if (fs::exists(installed, ec)) return installed;
  tried.push_back(installed);
  std::string msg = "cannot find the nbdkit plugin: tried";
  for (const std::string& t : tried) msg += " " + t;
  throw Error(msg + " (set LOOPDIO_PLUGIN to loopdio.so)");
}

std::string find_program(const std::string& name, const char* env_override,
                         const std::string& install_hint) {
  if (const char* p = env_override ? std::getenv(env_override) : nullptr; p && *p) return p;
  std::vector<std::string> dirs;
  std::stringstream path(env_or("PATH", ""));
  for (std::string d; std::getline(path, d, ':');)
    if (!d.empty()) dirs.push_back(d);
  for (const char* d : {"/usr/sbin", "/sbin", "/usr/bin", "/bin"}) dirs.emplace_back(d);
  for (const std::string& d : dirs)
    if (is_executable(d + "/" + name)) return d + "/" + name;
  throw Error(name + " is not installed (" + install_hint + ")");
}

std::string absolute_path(const std::string& path) {
  return fs::absolute(path).lexically_normal().string();
}

void require_root(const std::string& what) {
  if (::geteuid() != 0) throw Error(what + " needs root");
}

}  // namespace loopdio::cli

// The kernel NBD client through nbd-client(8) and sysfs; see nbd_kernel.h. nbd-client 3.24
// configures the device over netlink and exits at once (the kernel owns the sockets). It
// never asks the server for block sizes, so -b carries the export's minimum block size;
// -C N needs the multi-conn flag, which loopdio always advertises.
#include "nbd_kernel.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string_view>
#include <sstream>
#include <thread>

#include "cli.h"
#include "loopdio/error.h"
#include "paths.h"
#include "process.h"

namespace loopdio::cli {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

constexpr auto kClientTimeout = 60s;

// nbd-client says "Error: <why>" and then "Exiting."; keep the why.
std::string client_reason(const std::string& output, int status) {
  std::istringstream in(output);
  std::string line, last, error;
  while (std::getline(in, line)) {
    if (line.empty() || line == "Exiting.") continue;
    last = line;
    if (line.rfind("Error: ", 0) == 0) error = line.substr(7);
    if (line.rfind("E: ", 0) == 0) error = line.substr(3);
  }
  std::string why = !error.empty() ? error : last;
  return why.empty() ? "exit status " + std::to_string(status) : why;
}

// "nbd12" -> 12; anything else (a partition "nbd0p1" too) -> nullopt.
std::optional<int> nbd_index(std::string_view name) {
  if (name.substr(0, 3) != "nbd" || name.size() == 3 || name.size() > 9) return std::nullopt;
  int v = 0;
  for (char c : name.substr(3)) {
    if (c < '0' || c > '9') return std::nullopt;
    v = v * 10 + (c - '0');
  }
  return v;
}

std::uint64_t read_number(const std::string& path) {
  std::ifstream in(path);
  std::uint64_t v = 0;
  in >> v;
  return v;
}

}  // namespace

NbdKernel::NbdKernel() : sysfs_(sysfs_dir()), dev_(dev_dir()) {}

std::string NbdKernel::sys_block(int index) const {
  return sysfs_ + "/block/nbd" + std::to_string(index);
}

std::string NbdKernel::device_path(int index) const { return dev_ + "/nbd" + std::to_string(index); }

std::vector<int> NbdKernel::devices() const {
  std::vector<int> out;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(sysfs_ + "/block", ec))
    if (auto i = nbd_index(e.path().filename().string())) out.push_back(*i);
  std::sort(out.begin(), out.end());
  return out;
}

void NbdKernel::require_client() const {
  std::error_code ec;
  if (fs::exists(sysfs_ + "/module/nbd", ec) || fs::exists(dev_ + "/nbd0", ec) || !devices().empty())
    return;
  throw Error("the kernel has no NBD client: modprobe nbd");
}

int NbdKernel::parse_device(const std::string& arg) const {
  auto slash = arg.rfind('/');
  auto index = nbd_index(slash == std::string::npos ? arg : arg.substr(slash + 1));
  if (!index || (slash != std::string::npos && arg.substr(0, slash) != dev_))
    throw UsageError(arg + ": not an NBD device (expected " + dev_ + "/nbdN)");
  return *index;
}

bool NbdKernel::connected(int index) const {
  std::error_code ec;
  return fs::exists(sys_block(index) + "/pid", ec);
}

bool NbdKernel::in_use(int index) const {
  return connected(index) || read_number(sys_block(index) + "/size") != 0;
}

void NbdKernel::require_free(int index) const {
  std::error_code ec;
  std::string dev = device_path(index);
  if (!fs::exists(sys_block(index), ec) || !fs::exists(dev, ec))
    throw Error(dev + ": no such NBD device (the nbd module made " + std::to_string(devices().size()) +
                "; modprobe nbd nbds_max=N makes more)");
  if (connected(index))
    throw Error(dev + " is busy: connected by nbd-client pid " +
                std::to_string(read_number(sys_block(index) + "/pid")));
  if (in_use(index)) throw Error(dev + " is busy: it still has a size (being set up or torn down?)");
}

int NbdKernel::first_free(const std::set<int>& taken) const {
  std::vector<int> all = devices();
  std::error_code ec;
  for (int i : all)
    if (!taken.count(i) && !in_use(i) && fs::exists(device_path(i), ec)) return i;
  throw Error("no free NBD device: all " + std::to_string(all.size()) +
              " are in use (modprobe nbd nbds_max=N makes more)");
}

void NbdKernel::connect(const std::string& nbd_client, const std::string& socket, int index,
                        unsigned block_size, int connections, bool read_only) const {
  std::string dev = device_path(index);
  std::vector<std::string> argv = {nbd_client, "-unix", socket, dev, "-b", std::to_string(block_size),
                                   "-C", std::to_string(connections)};
  if (read_only) argv.push_back("-readonly");
  RunResult r = run_capture(argv, kClientTimeout);
  if (r.status != 0) throw Error("nbd-client could not connect " + dev + ": " + client_reason(r.output, r.status));
  for (int i = 0; i < 500; ++i) {
    if (connected(index)) return;
    std::this_thread::sleep_for(20ms);
  }
  throw Error("nbd-client returned but " + dev + " does not show as connected");
}

UniqueFd NbdKernel::open_exclusive(int index) const {
  std::string dev = device_path(index);
  UniqueFd fd(::open(dev.c_str(), O_RDONLY | O_EXCL | O_CLOEXEC));
  if (fd) return fd;
  if (errno == EBUSY) throw Error(dev + " is in use (mounted, or held open exclusively): unmount it first");
  throw sys_error(dev);
}

void NbdKernel::flush(int fd, int index) const {
  if (::fsync(fd) != 0) throw sys_error("fsync " + device_path(index));
}

void NbdKernel::disconnect(const std::string& nbd_client, int index) const {
  std::string dev = device_path(index);
  RunResult r = run_capture({nbd_client, "-d", dev}, kClientTimeout);
  if (r.status != 0) throw Error("nbd-client -d " + dev + " failed: " + client_reason(r.output, r.status));
}

bool NbdKernel::wait_disconnected(int index, std::chrono::milliseconds timeout) const {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (connected(index)) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(20ms);
  }
  return true;
}

}  // namespace loopdio::cli

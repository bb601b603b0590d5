// The kernel's NBD client, as nbd-client(8) drives it: is the module there, which
// /dev/nbdN are free (no /sys/block/nbdN/pid, size 0), connecting a device to a Unix
// socket with the export's minimum block size and N connections, flushing it, and
// disconnecting it.
#pragma once

#include <chrono>
#include <set>
#include <string>
#include <vector>

#include "loopdio/unique_fd.h"

namespace loopdio::cli {

class NbdKernel {
 public:
  NbdKernel();

  // Throws loopdio::Error("the kernel has no NBD client: modprobe nbd") without the module.
  void require_client() const;

  // "/dev/nbd3" or "nbd3" -> 3. Throws UsageError for anything else (a partition too).
  int parse_device(const std::string& arg) const;
  std::string device_path(int index) const;  // /dev/nbdN
  // Throws loopdio::Error when /dev/nbdN does not exist or is connected.
  void require_free(int index) const;
  // The lowest free device not in `taken`. Throws loopdio::Error when there is none.
  int first_free(const std::set<int>& taken) const;
  bool connected(int index) const;  // /sys/block/nbdN/pid exists

  // nbd-client -unix SOCKET /dev/nbdN -b BLOCK -C CONNS [-readonly], then waits until the
  // kernel shows the device connected. Throws loopdio::Error with nbd-client's reason.
  void connect(const std::string& nbd_client, const std::string& socket, int index,
               unsigned block_size, int connections, bool read_only) const;

  // Opens the device exclusively, so that nobody mounts it while it is detached. Throws
  // loopdio::Error naming the device when it is mounted or held.
  UniqueFd open_exclusive(int index) const;
  // Writes the device's dirty pages and sends a flush to the server (fsync(2)).
  void flush(int fd, int index) const;

  // nbd-client -d /dev/nbdN. Throws loopdio::Error with nbd-client's reason.
  void disconnect(const std::string& nbd_client, int index) const;
  // Waits until the device no longer shows as connected; false after `timeout`.
  bool wait_disconnected(int index, std::chrono::milliseconds timeout) const;

 private:
  std::vector<int> devices() const;  // from /sys/block/nbd*
  bool in_use(int index) const;      // connected, or still sized
  std::string sys_block(int index) const;

  std::string sysfs_, dev_;
};

}  // namespace loopdio::cli

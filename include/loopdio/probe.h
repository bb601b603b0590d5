// What the kernel tells about a backing file or block device: its size, whether O_DIRECT
// works on it and with which offset and memory alignment. Probed once, at start. Every kernel
// call goes through ProbeHooks so the unit tests can inject any answer.
#pragma once

#include <sys/stat.h>

#include <cstdint>
#include <functional>
#include <optional>
#include <string>

namespace loopdio {

struct DioAlignment {
  std::uint32_t offset = 0;  // file offsets and lengths must be multiples of this
  std::uint32_t mem = 0;     // buffer addresses must be multiples of this
  std::string source;        // where the numbers came from: "statx", "BLKSSZGET", ...
};

struct ProbeResult {
  bool is_block_device = false;
  std::uint64_t size = 0;             // bytes: st_size or BLKGETSIZE64
  std::uint32_t logical_block = 0;    // BLKSSZGET, or the underlying device's; 0 if unknown
  std::uint32_t physical_block = 0;   // BLKPBSZGET, or the underlying device's; 0 if unknown
  bool dio_supported = false;
  std::string dio_reason;             // why not, when !dio_supported
  DioAlignment align;                 // valid when dio_supported
  std::string fs_type;                // "ext4", "xfs", "tmpfs", ... or the magic in hex
  // Block devices only: what the device offloads (queue/discard_max_bytes and
  // queue/write_zeroes_max_bytes of the disk, for a partition its disk's; 0 = not
  // supported, the kernel would write zeroes itself).
  std::uint64_t discard_max = 0;
  std::uint64_t write_zeroes_max = 0;
};

// Kernel entry points used by probe(); each returns -1 with errno set on failure, like libc.
struct ProbeHooks {
  std::function<int(int fd, struct stat*)> fstat;
  std::function<int(int fd, struct statx*)> statx_dioalign;
  std::function<int(int fd, unsigned long request, void* arg)> ioctl;
  // Contents of a sysfs file, without the trailing newline; nullopt when it cannot be read.
  std::function<std::optional<std::string>(const std::string& path)> read_sysfs;
  // Opens the file that `fd` is open on again, read-only with O_DIRECT; returns an fd
  // (owned by probe()) or -1.
  std::function<int(int fd)> open_direct;
  std::function<long(int fd, void* buf, std::size_t len, std::uint64_t off)> pread;
  // lseek(SEEK_DATA): the first data at or after `off`, or -1.
  std::function<long long(int fd, std::uint64_t off)> seek_data;
  // Name of the filesystem that holds fd ("ext4"), empty when unknown.
  std::function<std::string(int fd)> fs_type;

  static ProbeHooks real();
};

// Probes the backing open as `fd` (and reopened by path with O_DIRECT). Throws loopdio::Error
// when the backing's size cannot be had; anything about direct I/O that fails only makes
// dio_supported false with the reason.
ProbeResult probe(const std::string& path, int fd, const ProbeHooks& hooks = ProbeHooks::real());

// "ext4", "xfs", ... for a statfs f_type; "fs 0x..." for one without a name here.
std::string fs_type_name(long magic);

}  // namespace loopdio

// Probing a backing: size, direct-I/O support and alignment. The order follows what the
// kernel knows best: statx(STATX_DIOALIGN) (Linux 6.1+), then the block device's logical
// sector size (BLKSSZGET, or sysfs for the device under a file), and last trial reads.
#include "loopdio/probe.h"

#include <fcntl.h>
#include <linux/fs.h>
#include <linux/magic.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <cstring>
#include <fstream>

#include "loopdio/align.h"
#include "loopdio/aligned_buffer.h"
#include "loopdio/error.h"
#include "loopdio/unique_fd.h"

namespace loopdio {

std::string fs_type_name(long magic) {
  switch (static_cast<unsigned long>(magic)) {
    case EXT4_SUPER_MAGIC: return "ext4";
    case XFS_SUPER_MAGIC: return "xfs";
    case TMPFS_MAGIC: return "tmpfs";
    case BTRFS_SUPER_MAGIC: return "btrfs";
    case 0x01021997: return "9p";
    case 0x65735546: return "fuse";
    case RAMFS_MAGIC: return "ramfs";
    case NFS_SUPER_MAGIC: return "nfs";
    case OVERLAYFS_SUPER_MAGIC: return "overlayfs";
    case 0x62646576: return "bdev";
    default: {
      char buf[32];
      std::snprintf(buf, sizeof buf, "fs 0x%lx", static_cast<unsigned long>(magic));
      return buf;
    }
  }
}

namespace {

std::optional<std::uint64_t> sysfs_u64(const ProbeHooks& h, const std::string& path) {
  auto s = h.read_sysfs(path);
  if (!s) return std::nullopt;
  try {
    return std::stoull(*s);
  } catch (const std::exception&) {
    return std::nullopt;
  }
}

// An attribute of the queue of the disk that holds device `dev`, walking from a partition
// to its disk: /sys/dev/block/MAJ:MIN/queue/ATTR, or /sys/dev/block/MAJ:MIN/../queue/ATTR
// for a partition (which has no queue of its own).
std::optional<std::uint64_t> queue_u64(const ProbeHooks& h, dev_t dev, const char* attr) {
  std::string base = "/sys/dev/block/" + std::to_string(major(dev)) + ":" +
                     std::to_string(minor(dev));
  if (auto v = sysfs_u64(h, base + "/queue/" + attr)) return v;
  return sysfs_u64(h, base + "/../queue/" + attr);
}

// A block size from the queue: a power of two no larger than 1 GiB.
std::optional<std::uint32_t> queue_attr(const ProbeHooks& h, dev_t dev, const char* attr) {
  auto v = queue_u64(h, dev, attr);
  if (!v || *v == 0 || *v > (1u << 30)) return std::nullopt;
  return static_cast<std::uint32_t>(*v);
}

// What a series of trial reads found: the smallest alignment that worked, or 0; and
// whether the reads proved anything at all.
struct Trial {
  std::uint32_t align = 0;
  bool conclusive = true;
};

// Smallest power of two for which an O_DIRECT read from the start of the file succeeds: of
// that many bytes (the kernel checks offset and length against the same mask), or, with
// mem_only, of 64 KiB into a buffer whose address is a multiple of it only. A read that
// returns nothing proves nothing: at or past the end of a file the kernel returns 0 before
// it checks any alignment.
Trial trial_align(const ProbeHooks& h, int dfd, bool mem_only) {
  constexpr std::uint32_t kMax = 64 * 1024;
  AlignedBuffer buf(kMax, 2 * kMax);
  for (std::uint32_t a = 512; a <= kMax; a *= 2) {
    char* p = mem_only ? buf.data() + a : buf.data();
    std::size_t len = mem_only ? kMax : a;
    long n = h.pread(dfd, p, len, 0);
    if (n > 0) return {a, true};
    if (n == 0) return {0, false};
    if (errno != EINVAL) return {0, true};
  }
  return {0, true};
}

// The last resort: trial reads, or a safe guess when the file holds too little data to
// read (an empty file, or one whose first block is a hole: holes are read without checks).
void probe_by_trial_reads(const ProbeHooks& h, int dfd, ProbeResult& r) {
  Trial off, mem;
  if (h.seek_data(dfd, 0) == 0)
    off = trial_align(h, dfd, false);
  else
    off.conclusive = false;
  if (off.align) mem = trial_align(h, dfd, true);
  if (!off.conclusive || (off.align && !mem.conclusive)) {
    r.align = {4096, 4096, "a safe guess: no data at the start of the file to probe"};
    return;
  }
  if (off.align == 0 || mem.align == 0) {
    r.dio_reason = "trial O_DIRECT reads failed: " + std::string(std::strerror(errno));
    return;
  }
  r.align = {off.align, mem.align, "trial reads"};
}

void probe_alignment(int fd, const ProbeHooks& h, const struct stat& st,
                     ProbeResult& r) {
  UniqueFd dfd(h.open_direct(fd));
  if (!dfd) {
    r.dio_reason = (r.fs_type.empty() ? std::string("the filesystem") : r.fs_type) +
                   " refuses O_DIRECT (open: " + std::strerror(errno) + ")";
    return;
  }
  struct statx stx {};
  if (h.statx_dioalign(dfd.get(), &stx) == 0 && (stx.stx_mask & STATX_DIOALIGN)) {
    if (stx.stx_dio_offset_align == 0) {
      r.dio_reason = "the filesystem (" + r.fs_type + ") reports no direct I/O support (statx)";
      return;
    }
    r.align = {stx.stx_dio_offset_align, stx.stx_dio_mem_align ? stx.stx_dio_mem_align : 1,
               "statx"};
  } else if (r.is_block_device && r.logical_block) {
    r.align = {r.logical_block, r.logical_block, "BLKSSZGET"};
  } else if (auto lbs = queue_attr(h, st.st_dev, "logical_block_size")) {
    r.align = {*lbs, *lbs, "sysfs queue/logical_block_size"};
  } else {
    probe_by_trial_reads(h, dfd.get(), r);
    if (!r.dio_reason.empty()) return;
  }
  if (!is_power_of_2(r.align.offset) || !is_power_of_2(r.align.mem)) {
    r.dio_reason = "the kernel reported an alignment that is not a power of two";
    return;
  }
  r.dio_supported = true;
}

}  // namespace

ProbeHooks ProbeHooks::real() {
  ProbeHooks h;
  h.fstat = [](int fd, struct stat* st) { return ::fstat(fd, st); };
  h.statx_dioalign = [](int fd, struct statx* stx) {
    return ::statx(fd, "", AT_EMPTY_PATH, STATX_DIOALIGN, stx);
  };
  h.ioctl = [](int fd, unsigned long req, void* arg) { return ::ioctl(fd, req, arg); };
  h.read_sysfs = [](const std::string& path) -> std::optional<std::string> {
    std::ifstream in(path);
    std::string s;
    if (!in || !std::getline(in, s)) return std::nullopt;
    return s;
  };
  // Reopened through /proc: the same inode as `fd`, whatever the path now names.
  h.open_direct = [](int fd) {
    std::string self = "/proc/self/fd/" + std::to_string(fd);
    return ::open(self.c_str(), O_RDONLY | O_DIRECT | O_CLOEXEC);
  };
  h.pread = [](int fd, void* buf, std::size_t len, std::uint64_t off) {
    return static_cast<long>(::pread(fd, buf, len, static_cast<off_t>(off)));
  };
  h.seek_data = [](int fd, std::uint64_t off) {
    return static_cast<long long>(::lseek(fd, static_cast<off_t>(off), SEEK_DATA));
  };
  h.fs_type = [](int fd) -> std::string {
    struct statfs sfs {};
    if (::fstatfs(fd, &sfs) != 0) return {};
    return fs_type_name(sfs.f_type);
  };
  return h;
}

ProbeResult probe(const std::string& path, int fd, const ProbeHooks& h) {
  ProbeResult r;
  struct stat st {};
  if (h.fstat(fd, &st) != 0) throw sys_error("fstat: " + path);
  r.fs_type = h.fs_type(fd);
  r.is_block_device = S_ISBLK(st.st_mode);
  if (r.is_block_device) {
    std::uint64_t size = 0;
    int lbs = 0;
    unsigned int pbs = 0;
    if (h.ioctl(fd, BLKGETSIZE64, &size) != 0) throw sys_error("BLKGETSIZE64: " + path);
    r.size = size;
    if (h.ioctl(fd, BLKSSZGET, &lbs) == 0 && lbs > 0) r.logical_block = lbs;
    if (h.ioctl(fd, BLKPBSZGET, &pbs) == 0 && pbs > 0) r.physical_block = pbs;
    r.discard_max = queue_u64(h, st.st_rdev, "discard_max_bytes").value_or(0);
    r.write_zeroes_max = queue_u64(h, st.st_rdev, "write_zeroes_max_bytes").value_or(0);
  } else {
    r.size = static_cast<std::uint64_t>(st.st_size);
    if (auto v = queue_attr(h, st.st_dev, "logical_block_size")) r.logical_block = *v;
    if (auto v = queue_attr(h, st.st_dev, "physical_block_size")) r.physical_block = *v;
  }
  probe_alignment(fd, h, st, r);
  return r;
}

}  // namespace loopdio

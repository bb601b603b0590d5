// The probe with injected kernel answers: statx first, then the block size, then sysfs, then
// trial reads; and every way O_DIRECT can be refused leaves a reason.
#include <fcntl.h>
#include <linux/fs.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include "loopdio/error.h"
#include "loopdio/probe.h"

using namespace loopdio;

namespace {

// Hooks describing a regular file of 1 MiB on an ext4 filesystem whose device has 512-byte
// sectors; each test changes what it needs.
ProbeHooks file_hooks() {
  ProbeHooks h;
  h.fstat = [](int, struct stat* st) {
    *st = {};
    st->st_mode = S_IFREG | 0644;
    st->st_size = 1 << 20;
    st->st_dev = makedev(254, 1);
    return 0;
  };
  h.statx_dioalign = [](int, struct statx* stx) {
    *stx = {};
    stx->stx_mask = STATX_DIOALIGN;
    stx->stx_dio_offset_align = 512;
    stx->stx_dio_mem_align = 4;
    return 0;
  };
  h.ioctl = [](int, unsigned long, void*) {
    errno = ENOTTY;
    return -1;
  };
  h.read_sysfs = [](const std::string& p) -> std::optional<std::string> {
    if (p == "/sys/dev/block/254:1/queue/logical_block_size") return std::nullopt;
    if (p == "/sys/dev/block/254:1/../queue/logical_block_size") return "4096";
    if (p == "/sys/dev/block/254:1/../queue/physical_block_size") return "4096";
    return std::nullopt;
  };
  h.open_direct = [](int) { return ::open("/dev/null", O_RDONLY | O_CLOEXEC); };
  h.pread = [](int, void*, std::size_t, std::uint64_t) -> long {
    errno = EINVAL;
    return -1;
  };
  h.seek_data = [](int, std::uint64_t off) { return static_cast<long long>(off); };
  h.fs_type = [](int) { return std::string("ext4"); };
  return h;
}

}  // namespace

TEST(Probe, StatxDioAlignComesFirst) {
  ProbeResult r = probe("/img", 0, file_hooks());
  EXPECT_TRUE(r.dio_supported);
  EXPECT_EQ(r.align.offset, 512u);
  EXPECT_EQ(r.align.mem, 4u);
  EXPECT_EQ(r.align.source, "statx");
  EXPECT_EQ(r.size, 1u << 20);
  EXPECT_FALSE(r.is_block_device);
  EXPECT_EQ(r.logical_block, 4096u) << "walked from the partition to its disk";
}

TEST(Probe, StatxSaysNoDirectIo) {
  ProbeHooks h = file_hooks();
  h.statx_dioalign = [](int, struct statx* stx) {
    *stx = {};
    stx->stx_mask = STATX_DIOALIGN;
    return 0;
  };
  h.fs_type = [](int) { return std::string("tmpfs"); };
  ProbeResult r = probe("/img", 0, h);
  EXPECT_FALSE(r.dio_supported);
  EXPECT_NE(r.dio_reason.find("tmpfs"), std::string::npos) << r.dio_reason;
}

TEST(Probe, OpenWithODirectRefused) {
  ProbeHooks h = file_hooks();
  h.open_direct = [](int) {
    errno = EINVAL;
    return -1;
  };
  ProbeResult r = probe("/img", 0, h);
  EXPECT_FALSE(r.dio_supported);
  EXPECT_NE(r.dio_reason.find("Invalid argument"), std::string::npos) << r.dio_reason;
}

TEST(Probe, BlockDeviceWithoutStatxUsesBlkSszGet) {
  ProbeHooks h = file_hooks();
  h.fstat = [](int, struct stat* st) {
    *st = {};
    st->st_mode = S_IFBLK | 0660;
    return 0;
  };
  h.statx_dioalign = [](int, struct statx* stx) {
    *stx = {};  // an older kernel: no STATX_DIOALIGN in the mask
    return 0;
  };
  h.ioctl = [](int, unsigned long req, void* arg) {
    if (req == BLKGETSIZE64) *static_cast<std::uint64_t*>(arg) = 8ull << 30;
    else if (req == BLKSSZGET) *static_cast<int*>(arg) = 4096;
    else if (req == BLKPBSZGET) *static_cast<unsigned*>(arg) = 4096;
    return 0;
  };
  ProbeResult r = probe("/dev/x", 0, h);
  EXPECT_TRUE(r.is_block_device);
  EXPECT_EQ(r.size, 8ull << 30);
  EXPECT_TRUE(r.dio_supported);
  EXPECT_EQ(r.align.offset, 4096u);
  EXPECT_EQ(r.align.source, "BLKSSZGET");
}

TEST(Probe, FileWithoutStatxUsesTheDeviceSectorSize) {
  ProbeHooks h = file_hooks();
  h.statx_dioalign = [](int, struct statx*) {
    errno = EINVAL;
    return -1;
  };
  ProbeResult r = probe("/img", 0, h);
  EXPECT_TRUE(r.dio_supported);
  EXPECT_EQ(r.align.offset, 4096u);
  EXPECT_EQ(r.align.source, "sysfs queue/logical_block_size");
}

TEST(Probe, TrialReadsAsTheLastResort) {
  ProbeHooks h = file_hooks();
  h.statx_dioalign = [](int, struct statx*) {
    errno = EINVAL;
    return -1;
  };
  h.read_sysfs = [](const std::string&) { return std::nullopt; };
  // A device that takes 2048-aligned offsets and 1024-aligned buffers.
  h.pread = [](int, void* buf, std::size_t len, std::uint64_t off) -> long {
    auto p = reinterpret_cast<std::uintptr_t>(buf);
    if (off % 2048 || len % 2048 || p % 1024) {
      errno = EINVAL;
      return -1;
    }
    return static_cast<long>(len);
  };
  ProbeResult r = probe("/img", 0, h);
  EXPECT_TRUE(r.dio_supported);
  EXPECT_EQ(r.align.offset, 2048u);
  EXPECT_EQ(r.align.mem, 1024u);
  EXPECT_EQ(r.align.source, "trial reads");
}

TEST(Probe, TrialReadsAllFail) {
  ProbeHooks h = file_hooks();
  h.statx_dioalign = [](int, struct statx*) {
    errno = EINVAL;
    return -1;
  };
  h.read_sysfs = [](const std::string&) { return std::nullopt; };
  ProbeResult r = probe("/img", 0, h);
  EXPECT_FALSE(r.dio_supported);
  EXPECT_NE(r.dio_reason.find("trial"), std::string::npos);
}

TEST(Probe, SizeOfABlockDeviceMustBeKnown) {
  ProbeHooks h = file_hooks();
  h.fstat = [](int, struct stat* st) {
    *st = {};
    st->st_mode = S_IFBLK;
    return 0;
  };
  EXPECT_THROW(probe("/dev/x", 0, h), Error);
}

// Regression: trial reads reported 512 on an empty (or small) file. The probe read at
// offset 512, 1024, ... and an O_DIRECT read at or past the end of a file returns 0 bytes
// before the kernel checks any alignment, so the first read "succeeded". A read that moves
// nothing now proves nothing, and the probe falls back to a safe guess.
TEST(Probe, TrialReadsOnAnEmptyFileGiveASafeGuess) {
  ProbeHooks h = file_hooks();
  h.statx_dioalign = [](int, struct statx*) {
    errno = EINVAL;
    return -1;
  };
  h.read_sysfs = [](const std::string&) { return std::nullopt; };
  h.pread = [](int, void*, std::size_t, std::uint64_t) -> long { return 0; };  // at EOF
  h.seek_data = [](int, std::uint64_t) -> long long {
    errno = ENXIO;
    return -1;
  };
  ProbeResult r = probe("/img", 0, h);
  EXPECT_TRUE(r.dio_supported);
  EXPECT_EQ(r.align.offset, 4096u);
  EXPECT_NE(r.align.source.find("guess"), std::string::npos) << r.align.source;
}

TEST(Probe, TrialReadsOfASmallFileStillFindTheAlignment) {
  ProbeHooks h = file_hooks();
  h.statx_dioalign = [](int, struct statx*) {
    errno = EINVAL;
    return -1;
  };
  h.read_sysfs = [](const std::string&) { return std::nullopt; };
  // 100 bytes of data on a device that needs 4096-byte alignment.
  h.pread = [](int, void* buf, std::size_t len, std::uint64_t off) -> long {
    if (off % 4096 || len % 4096 || reinterpret_cast<std::uintptr_t>(buf) % 4096) {
      errno = EINVAL;
      return -1;
    }
    return off < 100 ? static_cast<long>(std::min<std::uint64_t>(len, 100 - off)) : 0;
  };
  ProbeResult r = probe("/img", 0, h);
  EXPECT_TRUE(r.dio_supported);
  EXPECT_EQ(r.align.offset, 4096u);
  EXPECT_EQ(r.align.mem, 4096u);
  EXPECT_EQ(r.align.source, "trial reads");
}

// Regression: a partition got no trim and no fast zero. discard_max_bytes and
// write_zeroes_max_bytes were read from the device's own queue/ in sysfs, which a partition
// (/dev/sdXN, /dev/nvme0n1pM, /dev/vdX1) does not have; its disk's is one level up. NVMe
// reports terabytes there, which must not be refused as too large.
TEST(Probe, APartitionTakesItsDisksDiscardAndZeroLimits) {
  ProbeHooks h = file_hooks();
  h.fstat = [](int, struct stat* st) {
    *st = {};
    st->st_mode = S_IFBLK | 0660;
    st->st_rdev = makedev(259, 3);  // nvme0n1p2
    return 0;
  };
  h.ioctl = [](int, unsigned long req, void* arg) {
    if (req == BLKGETSIZE64) *static_cast<std::uint64_t*>(arg) = 8ull << 30;
    else if (req == BLKSSZGET) *static_cast<int*>(arg) = 512;
    else if (req == BLKPBSZGET) *static_cast<unsigned*>(arg) = 512;
    return 0;
  };
  h.read_sysfs = [](const std::string& p) -> std::optional<std::string> {
    if (p == "/sys/dev/block/259:3/../queue/discard_max_bytes") return "2199023255040";
    if (p == "/sys/dev/block/259:3/../queue/write_zeroes_max_bytes") return "131072";
    return std::nullopt;
  };
  ProbeResult r = probe("/dev/nvme0n1p2", 0, h);
  EXPECT_EQ(r.discard_max, 2199023255040ull);
  EXPECT_EQ(r.write_zeroes_max, 131072u);
}

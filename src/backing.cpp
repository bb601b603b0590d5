// Opening a backing and deciding how to serve it. Every refusal is one line that names the
// parameter or path and the reason.
#include "loopdio/backing.h"

#include <fcntl.h>
#include <linux/fs.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/stat.h>

#include <cstdio>

#include "loopdio/align.h"
#include "loopdio/error.h"
#include "loopdio/file_kind.h"
#include "loopdio/safe_text.h"

namespace loopdio {
std::string human_size(std::uint64_t b) {
  static const char* units[] = {"KiB", "MiB", "GiB", "TiB", "PiB"};
  if (b < 1024) return std::to_string(b) + (b == 1 ? " byte" : " bytes");
  double v = static_cast<double>(b);
  int u = -1;
  while (v >= 1024 && u < 4) {
    v /= 1024;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f %s", v, units[u]);
  return buf;
}

std::unique_ptr<Backing> Backing::open(const Options& o, const ProbeHooks& hooks) {
  std::unique_ptr<Backing> b(new Backing);
  b->opts_ = o;
  b->open_fd(AT_FDCWD, o.file);
  b->finish_open(hooks);
  return b;
}

std::unique_ptr<Backing> Backing::open_in(int dirfd, const std::string& name, const Options& o) {
  std::unique_ptr<Backing> b(new Backing);
  b->opts_ = o;
  b->open_fd(dirfd, name);
  b->finish_open(ProbeHooks::real());
  return b;
}

void Backing::finish_open(const ProbeHooks& hooks) {
  probe_ = loopdio::probe(opts_.file, fd_.get(), hooks);
  apply_geometry();
  decide_direct();
  lock_writer();
}

// One writer per image: two servers (or two exports of one file) would each lock only their
// own ranges, and lose each other's partial-block updates. Taken last, so that a bad
// parameter is reported as such first.
Backing::~Backing() {
  if (locked_) ::flock(fd_.get(), LOCK_UN);
}

void Backing::lock_writer() {
  if (!writable_) return;
  if (::flock(fd_.get(), LOCK_EX | LOCK_NB) == 0) {
    locked_ = true;
    return;
  }
  const std::string path = safe_encode(opts_.file);
  if (errno != EWOULDBLOCK) throw sys_error("file=" + path + ": flock");
  throw Error("file=" + path + ": served by another process already (it holds a lock on the " +
                  "file): two writers would lose each other's partial-block updates; serve " +
                  "it once, or read-only (readonly=1)",
              EBUSY);
}

// Opens `name` relative to `dirfd` (AT_FDCWD: a path). Inside a directory of exports a
// symbolic link is never followed. O_NONBLOCK keeps a FIFO swapped in after the check from
// blocking the open; the type is checked again on what was opened.
void Backing::open_fd(int dirfd, const std::string& name) {
  const std::string path = safe_encode(opts_.file);  // for messages
  const int nofollow = dirfd == AT_FDCWD ? 0 : O_NOFOLLOW;
  struct stat st {};
  if (::fstatat(dirfd, name.c_str(), &st, nofollow ? AT_SYMLINK_NOFOLLOW : 0) != 0)
    throw sys_error("file=" + path);
  if (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode))
    throw Error("file=" + path + ": is " + file_kind(st.st_mode) +
                ", not a regular file or block device");
  const int flags = O_CLOEXEC | O_NOCTTY | O_NONBLOCK | nofollow;
  if (opts_.readonly) {
    writable_ = false;
    readonly_reason_ = "readonly=1";
    fd_.reset(::openat(dirfd, name.c_str(), O_RDONLY | flags));
  } else {
    fd_.reset(::openat(dirfd, name.c_str(), O_RDWR | flags));
    if (!fd_ && (errno == EACCES || errno == EROFS || errno == EPERM || errno == ETXTBSY)) {
      readonly_reason_ = std::string("cannot open for writing: ") + std::strerror(errno);
      writable_ = false;
      fd_.reset(::openat(dirfd, name.c_str(), O_RDONLY | flags));
    }
  }
  if (!fd_) throw sys_error("file=" + path + ": open");
  struct stat opened {};
  if (::fstat(fd_.get(), &opened) != 0) throw sys_error("file=" + path + ": fstat");
  if (opened.st_ino != st.st_ino || opened.st_dev != st.st_dev)
    throw Error("file=" + path + ": replaced while it was being opened");
  if (::fcntl(fd_.get(), F_SETFL, ::fcntl(fd_.get(), F_GETFL) & ~O_NONBLOCK) != 0)
    throw sys_error("file=" + path + ": fcntl");
  if (writable_ && S_ISBLK(st.st_mode)) {
    int ro = 0;
    if (::ioctl(fd_.get(), BLKROGET, &ro) == 0 && ro) {
      writable_ = false;
      readonly_reason_ = "the block device is read-only (BLKROGET)";
    }
  }
}

void Backing::apply_geometry() {
  const std::uint64_t size = probe_.size;
  const std::string& path = opts_.file;
  if (opts_.offset >= size && !(opts_.offset == 0 && size == 0))
    throw Error("offset=" + std::to_string(opts_.offset) + ": at or beyond the end of " + path +
                " (" + std::to_string(size) + " bytes)");
  std::uint64_t avail = size - opts_.offset;
  if (opts_.sizelimit && *opts_.sizelimit > avail)
    throw Error("sizelimit=" + std::to_string(*opts_.sizelimit) + ": reaches past the end of " +
                path + " (" + std::to_string(avail) + " bytes after offset " +
                std::to_string(opts_.offset) + ")");
  geo_.base = opts_.offset;
  geo_.size = opts_.sizelimit ? *opts_.sizelimit : avail;
  geo_.backing_size = size;
  geo_.is_file = !probe_.is_block_device;
}

void Backing::decide_direct() {
  const std::string& path = opts_.file;
  const bool demanded = opts_.direct_io == DirectIo::kOn;
  std::string why;
  if (opts_.direct_io == DirectIo::kOff) {
    why = "directio=0";
  } else if (!probe_.dio_supported) {
    why = path + ": " + probe_.dio_reason;
  } else if (!is_aligned(opts_.offset, std::uint64_t{probe_.align.offset})) {
    why = "offset=" + std::to_string(opts_.offset) + " is not a multiple of the direct-I/O alignment (" +
          std::to_string(probe_.align.offset) + " bytes) of " + path;
  }
  if (!why.empty() && demanded) throw Error("directio=1: not possible: " + why);

  const std::uint32_t dio_align = probe_.dio_supported ? probe_.align.offset : 0;
  if (opts_.sector_size && why.empty() && opts_.sector_size % dio_align != 0)
    throw Error("sector-size=" + std::to_string(opts_.sector_size) + ": " + path +
                " needs direct I/O in multiples of " + std::to_string(dio_align) +
                " bytes; use sector-size=" + std::to_string(dio_align) +
                " or larger, or directio=0");
  min_block_ = opts_.sector_size ? opts_.sector_size
               : dio_align        ? dio_align
                                  : 512;
  {
    std::lock_guard lock(reason_mu_);
    off_reason_ = why;
  }
  if (why.empty()) set_direct(true);
}

void Backing::check_direct(bool on) const {
  if (!on) return;
  if (!probe_.dio_supported) throw Error(opts_.file + ": " + probe_.dio_reason);
  if (!is_aligned(opts_.offset, std::uint64_t{probe_.align.offset}))
    throw Error("offset " + std::to_string(opts_.offset) +
                " is not a multiple of the direct-I/O alignment (" +
                std::to_string(probe_.align.offset) + " bytes) of " + opts_.file);
  if (min_block_ % probe_.align.offset != 0)
    throw Error("sector size " + std::to_string(min_block_) +
                " is not a multiple of the direct-I/O alignment (" +
                std::to_string(probe_.align.offset) + " bytes) of " + opts_.file);
}

void Backing::set_direct(bool on) {
  check_direct(on);
  int flags = ::fcntl(fd_.get(), F_GETFL);
  if (flags < 0) throw sys_error("fcntl(F_GETFL): " + opts_.file);
  flags = on ? flags | O_DIRECT : flags & ~O_DIRECT;
  if (::fcntl(fd_.get(), F_SETFL, flags) != 0)
    throw sys_error(std::string("fcntl(F_SETFL, ") + (on ? "O_DIRECT" : "~O_DIRECT") + "): " +
                    opts_.file);
  std::lock_guard lock(reason_mu_);
  off_reason_ = on ? "" : "switched off at run time";
  direct_.store(on, std::memory_order_release);
}

std::pair<bool, std::string> Backing::direct_state() const {
  std::lock_guard lock(reason_mu_);
  bool on = direct();
  return {on, on ? std::string() : off_reason_};
}

std::string Backing::direct_reason() const { return direct_state().second; }

IoMode Backing::mode() const {
  IoMode m;
  m.fd = fd_.get();
  m.direct = direct();
  if (m.direct) {
    m.align = probe_.align.offset;
    m.mem_align = probe_.align.mem;
  }
  return m;
}

std::uint32_t Backing::preferred_block() const {
  std::uint32_t p = std::max<std::uint32_t>(4096, min_block_);
  if (probe_.physical_block > p && probe_.physical_block <= (64u << 10)) p = probe_.physical_block;
  return p;
}

std::string Backing::describe(const char* engine) const {
  std::string s = "loopdio: " + safe_encode(opts_.file) + " (" +
                  (probe_.is_block_device ? "block device" : probe_.fs_type + " file") + ", " +
                  human_size(geo_.size);
  if (geo_.base) s += " at offset " + std::to_string(geo_.base);
  s += "): ";
  auto [on, why] = direct_state();
  if (on)
    s += "direct I/O on, alignment " + std::to_string(probe_.align.offset) + " (" +
         probe_.align.source + ")";
  else
    s += "direct I/O off (" + why + ")";
  s += ", engine " + std::string(engine) + ", sector size " + std::to_string(min_block_);
  if (!writable_) s += ", read-only (" + readonly_reason_ + ")";
  return s;
}

std::vector<std::string> Backing::findings() const {
  std::vector<std::string> v;
  const ProbeResult& p = probe_;
  v.push_back(opts_.file + ": " + (p.is_block_device ? "block device" : "regular file on " + p.fs_type) +
              ", " + std::to_string(p.size) + " bytes, logical block " +
              std::to_string(p.logical_block) + ", physical block " + std::to_string(p.physical_block));
  if (p.dio_supported)
    v.push_back("O_DIRECT works: offset alignment " + std::to_string(p.align.offset) +
                ", memory alignment " + std::to_string(p.align.mem) + " (from " + p.align.source + ")");
  else
    v.push_back("O_DIRECT does not work: " + p.dio_reason);
  v.push_back(direct() ? "decided: direct I/O on" : "decided: direct I/O off: " + direct_reason());
  if (!writable_) v.push_back("serving read-only: " + readonly_reason_);
  v.push_back("export: " + std::to_string(geo_.size) + " bytes at offset " + std::to_string(geo_.base) +
              "; block sizes min " + std::to_string(min_block_) + ", preferred " +
              std::to_string(preferred_block()) + ", max " + std::to_string(kMaxBlock));
  return v;
}

}  // namespace loopdio

// Live snapshots by reflink; see snapshot.h. The order matters: every check, the new file
// and a trial clone of one block come before the export pauses; the pause holds only the
// drain, fdatasync and the clone; the new file's fsync, its name and its directory's fsync
// come after.
#include "loopdio/snapshot.h"

#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>
#include <memory>

#include "loopdio/backing.h"
#include "loopdio/error.h"
#include "loopdio/export.h"
#include "loopdio/log.h"
#include "loopdio/probe.h"
#include "loopdio/safe_text.h"
#include "loopdio/unique_fd.h"

namespace loopdio {
namespace {

const std::string kWhat = "snapshot: ";

std::string fs_of(int fd) {
  struct statfs sfs {};
  return ::fstatfs(fd, &sfs) == 0 ? fs_type_name(sfs.f_type) : std::string("?");
}

// The errors with which the kernel says this filesystem (or this pair of files) cannot
// clone, as opposed to a clone that failed.
bool cannot_clone(int err) {
  return err == EOPNOTSUPP || err == EINVAL || err == EXDEV || err == ENOTTY || err == EBADF;
}

Error clone_refused(const std::string& file, const std::string& fs, const char* call, int err) {
  return Error(kWhat + safe_encode(file) + " is on " + fs + ", which cannot clone files (" +
                   call + ": " + std::strerror(err) + "): a snapshot needs reflink, as xfs " +
                   "made with reflink=1 (mkfs.xfs's default) or btrfs have it",
               err);
}

// DEST split into its directory and its last component, refused unless it is an absolute
// path naming a file.
std::pair<std::string, std::string> split_dest(const std::string& dest) {
  if (dest.empty() || dest[0] != '/')
    throw Error(kWhat + std::string("DEST must be an absolute path, not \"") + safe_encode(dest) +
                "\"");
  if (dest.find('\0') != std::string::npos) throw Error(kWhat + std::string("DEST holds a NUL byte"));
  const std::size_t slash = dest.rfind('/');
  std::string dir = slash == 0 ? "/" : dest.substr(0, slash);
  std::string base = dest.substr(slash + 1);
  if (base.empty() || base == "." || base == "..")
    throw Error(kWhat + std::string("DEST must name a new file, not \"") + safe_encode(dest) +
                "\"");
  return {dir, base};
}

Error exists(const std::string& path) {
  return Error(kWhat + safe_encode(path) +
                   " exists: a snapshot is always a new file (remove it, or choose another "
                   "name)",
               EEXIST);
}

// The new file. Made unnamed (O_TMPFILE) where the filesystem can, and named DEST only once
// complete and durable, never replacing anything (linkat fails on an existing name): a
// client of a served directory never finds a half-made snapshot there, and a crash leaves
// nothing. Elsewhere it is made at DEST at once with O_EXCL. Either way never an existing
// file, never through a symbolic link as the last component, and removed again on the way
// out unless kept (only while the name still leads to the file made here).
class NewFile {
 public:
  NewFile(const std::string& path, UniqueFd dir, std::string base)
      : path_(path), dir_(std::move(dir)), base_(std::move(base)) {
    struct stat st {};
    if (::fstatat(dir_.get(), base_.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0) throw exists(path_);
    fd_.reset(::openat(dir_.get(), ".", O_TMPFILE | O_WRONLY | O_CLOEXEC, 0600));
    if (fd_) return;
    if (errno != EOPNOTSUPP && errno != EISDIR && errno != EINVAL)
      throw sys_error(kWhat + "O_TMPFILE in " + safe_encode(path_));
    fd_.reset(::openat(dir_.get(), base_.c_str(),
                       O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600));
    if (!fd_) {
      if (errno == EEXIST) throw exists(path_);
      throw sys_error(kWhat + safe_encode(path_));
    }
    named();
  }
  NewFile(const NewFile&) = delete;
  NewFile& operator=(const NewFile&) = delete;
  ~NewFile() {
    if (kept_ || !named_) return;  // an unnamed file goes with its descriptor
    struct stat st {};
    if (::fstatat(dir_.get(), base_.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0 &&
        std::pair{st.st_dev, st.st_ino} == id_)
      ::unlinkat(dir_.get(), base_.c_str(), 0);
  }

  int fd() const { return fd_.get(); }
  int dir() const { return dir_.get(); }
  // Names the file DEST, unless it has that name already.
  void publish() {
    if (named_) return;
    int r = ::linkat(fd_.get(), "", dir_.get(), base_.c_str(), AT_EMPTY_PATH);
    if (r != 0 && (errno == ENOENT || errno == EPERM)) {
      // AT_EMPTY_PATH needs CAP_DAC_READ_SEARCH; the descriptor's /proc link does not.
      const std::string self = "/proc/self/fd/" + std::to_string(fd_.get());
      r = ::linkat(AT_FDCWD, self.c_str(), dir_.get(), base_.c_str(), AT_SYMLINK_FOLLOW);
    }
    if (r != 0) {
      if (errno == EEXIST) throw exists(path_);
      throw sys_error(kWhat + "linkat " + safe_encode(path_));
    }
    named();
  }
  void keep() { kept_ = true; }

 private:
  void named() {
    named_ = true;
    struct stat st {};
    if (::fstat(fd_.get(), &st) == 0) id_ = {st.st_dev, st.st_ino};
  }

  std::string path_;
  UniqueFd dir_;
  std::string base_;
  UniqueFd fd_;
  std::pair<dev_t, ino_t> id_{};
  bool named_ = false;
  bool kept_ = false;
};

}  // namespace

std::vector<SnapshotRequest> parse_snapshot_request(std::string_view text) {
  const char* usage = "expected {\"exports\":[{\"name\":NAME,\"dest\":\"/absolute/path\"}]}";
  Json j = parse_json(text, "snapshot");
  if (!j.is_object() || !j.contains("exports")) throw Error(kWhat + std::string(usage));
  for (auto& [key, v] : j.items())
    if (key != "exports")
      throw Error(kWhat + std::string("unknown member \"") + safe_encode(key) + "\": " + usage);
  const Json& list = j.at("exports");
  if (!list.is_array() || list.empty())
    throw Error(kWhat + std::string("\"exports\" must be a non-empty array: ") + usage);
  std::vector<SnapshotRequest> v;
  for (const Json& e : list) {
    if (!e.is_object()) throw Error(kWhat + std::string("each export must be an object: ") + usage);
    for (auto& [key, m] : e.items())
      if (key != "name" && key != "dest" && key != "dest-hex")
        throw Error(kWhat + std::string("unknown member \"") + safe_encode(key) +
                    "\" of an export (name, dest)");
    SnapshotRequest r;
    if (auto n = e.find("name"); n != e.end()) {
      if (!n->is_string()) throw Error(kWhat + std::string("\"name\" must be a string"));
      r.name = n->get<std::string>();
    }
    try {
      r.dest = get_path(e, "dest");
    } catch (const Error& err) {
      throw Error(kWhat + std::string(err.what()));
    }
    v.push_back(std::move(r));
  }
  return v;
}

Json SnapshotResult::json() const {
  Json j;
  put_path(j, "name", name);
  put_path(j, "dest", dest);
  j["bytes"] = bytes;
  j["paused_ms"] = paused_ms;
  return j;
}

namespace {

using Clock = std::chrono::steady_clock;

std::string ms_text(Clock::duration d) {
  char b[32];
  std::snprintf(b, sizeof b, "%.1f", std::chrono::duration<double, std::milli>(d).count());
  return b;
}

// One export's part of a snapshot, from its checks to its new file's name.
class Part {
 public:
  // Every check, the new file and the trial clone: nothing pauses yet. Throws loopdio::Error.
  Part(Export& x, const std::string& dest) : x_(x), dest_(dest) {
    const Backing& b = x.backing();
    const int src = b.fd();
    // What the export serves must be exactly one whole regular file.
    if (::fstat(src, &sst_) != 0) throw sys_error(kWhat + safe_encode(file()));
    if (!S_ISREG(sst_.st_mode) || !b.geometry().is_file)
      throw Error(kWhat + safe_encode(file()) +
                  " is a block device: a reflink clone copies files only (snapshot the device "
                  "with its own tools, such as LVM; or serve an image file on xfs or btrfs)");
    const Geometry& g = b.geometry();
    if (g.base != 0 || g.size != static_cast<std::uint64_t>(sst_.st_size))
      throw Error(kWhat + "offset=" + std::to_string(g.base) + " sizelimit=" +
                  std::to_string(g.size) + " serve part of " + safe_encode(file()) + " (" +
                  std::to_string(sst_.st_size) +
                  " bytes): a clone copies the whole file; serve the whole file to snapshot it");
    fs_ = fs_of(src);

    // DEST: a new file in an existing directory of the image's filesystem.
    auto [dir_path, base] = split_dest(dest);
    dir_path_ = dir_path;
    UniqueFd dir(::open(dir_path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (!dir) throw sys_error(kWhat + "DEST's directory " + safe_encode(dir_path));
    struct stat dst {};
    if (::fstat(dir.get(), &dst) != 0) throw sys_error(kWhat + safe_encode(dir_path));
    if (dst.st_dev != sst_.st_dev)
      throw Error(kWhat + safe_encode(dest) + " is on another filesystem (" + fs_of(dir.get()) +
                  ") than " + safe_encode(file()) + " (" + fs_ +
                  "): a reflink clone stays within one filesystem; choose DEST there");
    out_ = std::make_unique<NewFile>(dest, std::move(dir), base);

    // Can this filesystem clone at all? Asked with one block, while the export still runs
    // (a length of 0 would mean "to the end": the whole file, outside the pause).
    struct statfs sfs {};
    std::uint64_t block = static_cast<std::uint64_t>(sst_.st_blksize);
    if (::fstatfs(src, &sfs) == 0) block = std::max<std::uint64_t>(block, sfs.f_bsize);
    if (block > 0 && static_cast<std::uint64_t>(sst_.st_size) >= block) {
      file_clone_range r{};
      r.src_fd = src;
      r.src_offset = 0;
      r.src_length = block;
      r.dest_offset = 0;
      if (::ioctl(out_->fd(), FICLONERANGE, &r) != 0) fail("FICLONERANGE", errno);
    }
  }

  Export& exp() { return x_; }

  // While every export of the snapshot is drained: flush and clone.
  void clone() {
    const int src = x_.backing().fd();
    const Clock::time_point t0 = Clock::now();
    if (::fdatasync(src) != 0) throw sys_error(kWhat + "fdatasync: " + safe_encode(file()));
    const Clock::time_point t1 = Clock::now();
    if (::ioctl(out_->fd(), FICLONE, src) != 0) fail("FICLONE", errno);
    sync_ = t1 - t0;
    clone_ = Clock::now() - t1;
  }
  void set_paused(std::chrono::nanoseconds ns) { paused_ = ns; }

  // Durable: the clone's extents and size, then its name.
  void publish() {
    if (::fsync(out_->fd()) != 0) throw sys_error(kWhat + "fsync: " + safe_encode(dest_));
    out_->publish();
    if (::fsync(out_->dir()) != 0) throw sys_error(kWhat + "fsync: " + safe_encode(dir_path_));
    struct stat cst {};
    if (::fstat(out_->fd(), &cst) != 0) throw sys_error(kWhat + safe_encode(dest_));
    if (cst.st_size != sst_.st_size)
      throw Error(kWhat + safe_encode(dest_) + ": the clone holds " +
                  std::to_string(cst.st_size) + " bytes, the image " +
                  std::to_string(sst_.st_size));
  }

  // The snapshot is complete: its file stays.
  SnapshotResult keep() {
    out_->keep();
    SnapshotResult r;
    r.name = x_.name();
    r.dest = dest_;
    r.bytes = static_cast<std::uint64_t>(sst_.st_size);
    r.paused_ms = static_cast<double>(paused_.count()) / 1e6;
    notice("snapshot of " + safe_encode(file()) + " to " + safe_encode(dest_) + ": " +
           human_size(r.bytes) + ", the export paused " + ms_text(paused_) + " ms (fdatasync " +
           ms_text(sync_) + " ms, clone " + ms_text(clone_) + " ms)");
    return r;
  }

 private:
  const std::string& file() const { return x_.backing().options().file; }
  [[noreturn]] void fail(const char* call, int err) const {
    if (cannot_clone(err)) throw clone_refused(file(), fs_, call, err);
    throw sys_error(kWhat + call + " " + safe_encode(file()) + " to " + safe_encode(dest_), err);
  }

  Export& x_;
  std::string dest_, dir_path_, fs_;
  struct stat sst_ {};
  std::unique_ptr<NewFile> out_;
  Clock::duration sync_{}, clone_{};
  std::chrono::nanoseconds paused_{};
};

}  // namespace

std::vector<SnapshotResult> snapshot_exports(
    const std::vector<std::pair<Export*, std::string>>& exports) {
  for (std::size_t i = 0; i < exports.size(); ++i)
    for (std::size_t j = 0; j < i; ++j) {
      if (exports[i].first == exports[j].first)
        throw Error(kWhat + "\"" + safe_encode(exports[j].first->name()) + "\" and \"" +
                    safe_encode(exports[i].first->name()) +
                    "\" are one file (or one name twice): name it once");
      if (exports[i].second == exports[j].second)
        throw Error(kWhat + safe_encode(exports[i].second) + " is DEST twice");
    }
  std::vector<std::unique_ptr<Part>> parts;
  for (const auto& [x, dest] : exports) parts.push_back(std::make_unique<Part>(*x, dest));

  // The pause. Every gate is closed before any export is cloned, so that the snapshots are
  // of one instant: a write acknowledged on one export before a write was sent to another
  // is never missing from a snapshot that holds the other. Gates are closed in one order
  // (by address) so that two snapshots of overlapping sets cannot wait for each other.
  std::vector<Part*> order;
  for (auto& p : parts) order.push_back(p.get());
  std::sort(order.begin(), order.end(),
            [](Part* a, Part* b) { return std::less<Export*>()(&a->exp(), &b->exp()); });
  std::function<void(std::size_t)> close_from = [&](std::size_t i) {
    if (i == order.size()) {
      for (Part* p : order) p->clone();
      return;
    }
    order[i]->set_paused(order[i]->exp().gate().drained([&] { close_from(i + 1); }));
  };
  close_from(0);

  // All or nothing: every new file gets its name, then all stay (on a failure, the names
  // given so far are removed with their files).
  for (auto& p : parts) p->publish();
  std::vector<SnapshotResult> results;
  for (auto& p : parts) results.push_back(p->keep());
  return results;
}

SnapshotResult snapshot_export(Export& x, const std::string& dest) {
  return snapshot_exports({{&x, dest}}).front();
}

}  // namespace loopdio

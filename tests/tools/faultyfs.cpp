// faultyfs: a FUSE filesystem for tests that shows one backing file as MOUNTPOINT/NAME and fails
// chosen byte ranges of it with EIO, as a disk with bad sectors fails every request that
// touches them. The faults come from a file that is re-read whenever it is replaced:
//   read|write|rw START LENGTH    (bytes)       fsync    (every fsync fails)
#define FUSE_USE_VERSION 31
#include <fuse.h>

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <mutex>
#include <sstream>
#include <string>
#include <vector>

namespace {

constexpr const char* kUsage =
    "usage: faultyfs [--direct-io] [--faults FILE] [--log] BACKING MOUNTPOINT [FUSE options...]\n"
    "  shows BACKING as MOUNTPOINT/<its name>; FILE lists the faults, one per line:\n"
    "    read|write|rw START LENGTH   fail requests that touch these bytes with EIO\n"
    "    fsync                        fail every fsync with EIO\n"
    "  Replace FILE by rename to change the faults; they apply from the next request.\n";

enum Kind : unsigned { kRead = 1, kWrite = 2, kSync = 4 };

struct Fault {
  unsigned kinds;
  off_t start, end;
};

struct Config {
  int fd = -1;             // the backing file
  std::string name;        // "/" + the backing's base name
  bool direct_io = false;  // open every file with FOPEN_DIRECT_IO
  bool log = false;        // one stderr line per injected error
  std::string faults_path;
};
Config g_cfg;

// The current faults, and the identity of the file they were read from.
std::mutex g_faults_mu;  // protects g_faults and g_faults_id
std::vector<Fault> g_faults;
std::string g_faults_id;

std::vector<Fault> parse_faults(std::istream& in) {
  std::vector<Fault> v;
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream ls(line);
    std::string kind;
    long long start = 0, len = 0;
    if (!(ls >> kind) || kind[0] == '#') continue;
    if (kind == "fsync") {
      v.push_back({kSync, 0, 0});
      continue;
    }
    unsigned k = kind == "read" ? kRead : kind == "write" ? kWrite : kind == "rw" ? kRead | kWrite : 0;
    if (!k || !(ls >> start >> len)) {
      std::fprintf(stderr, "faultyfs: %s: ignoring bad line: %s\n", g_cfg.faults_path.c_str(), line.c_str());
      continue;
    }
    v.push_back({k, start, start + len});
  }
  return v;
}

// True when a request of `kind` over [off, off+len) must fail.
bool faulty(unsigned kind, off_t off, off_t len) {
  if (g_cfg.faults_path.empty()) return false;
  struct stat st {};
  std::string id;
  if (::stat(g_cfg.faults_path.c_str(), &st) == 0)
    id = std::to_string(st.st_ino) + ":" + std::to_string(st.st_size) + ":" +
         std::to_string(st.st_mtim.tv_sec) + "." + std::to_string(st.st_mtim.tv_nsec);
  std::lock_guard lock(g_faults_mu);
  if (id != g_faults_id) {
    std::ifstream in(g_cfg.faults_path);
    g_faults = in ? parse_faults(in) : std::vector<Fault>{};
    g_faults_id = id;
  }
  for (const Fault& f : g_faults)
    if ((f.kinds & kind) && (kind == kSync || (off < f.end && f.start < off + len))) {
      if (g_cfg.log)
        std::fprintf(stderr, "faultyfs: %s %lld bytes at %lld: EIO (injected)\n",
                     kind == kRead ? "read" : kind == kWrite ? "write" : "fsync",
                     static_cast<long long>(len), static_cast<long long>(off));
      return true;
    }
  return false;
}

int ff_getattr(const char* path, struct stat* st, struct fuse_file_info*) {
  if (std::strcmp(path, "/") == 0) {
    *st = {};
    st->st_mode = S_IFDIR | 0755;
    st->st_nlink = 2;
    return 0;
  }
  if (g_cfg.name != path) return -ENOENT;
  if (::fstat(g_cfg.fd, st) != 0) return -errno;
  st->st_mode = S_IFREG | 0644;
  return 0;
}

int ff_readdir(const char* path, void* buf, fuse_fill_dir_t fill, off_t, struct fuse_file_info*,
               enum fuse_readdir_flags) {
  if (std::strcmp(path, "/") != 0) return -ENOTDIR;
  fill(buf, ".", nullptr, 0, static_cast<fuse_fill_dir_flags>(0));
  fill(buf, "..", nullptr, 0, static_cast<fuse_fill_dir_flags>(0));
  fill(buf, g_cfg.name.c_str() + 1, nullptr, 0, static_cast<fuse_fill_dir_flags>(0));
  return 0;
}

int ff_open(const char* path, struct fuse_file_info* fi) {
  if (g_cfg.name != path) return -ENOENT;
  fi->direct_io = g_cfg.direct_io;
  return 0;
}

int ff_read(const char*, char* buf, size_t size, off_t off, struct fuse_file_info*) {
  if (faulty(kRead, off, static_cast<off_t>(size))) return -EIO;
  ssize_t r = ::pread(g_cfg.fd, buf, size, off);
  return r < 0 ? -errno : static_cast<int>(r);
}

// A write with O_DSYNC in its flags (RWF_DSYNC, or an O_DSYNC open) must be durable before
// it returns: the kernel leaves that to us for FUSE direct writes.
int ff_write(const char*, const char* buf, size_t size, off_t off, struct fuse_file_info* fi) {
  if (faulty(kWrite, off, static_cast<off_t>(size))) return -EIO;
  ssize_t r = ::pwrite(g_cfg.fd, buf, size, off);
  if (r < 0) return -errno;
  if (fi->flags & O_DSYNC) {
    if (faulty(kSync, 0, 0)) return -EIO;
    if (::fdatasync(g_cfg.fd) != 0) return -errno;
  }
  return static_cast<int>(r);
}

int ff_fsync(const char*, int datasync, struct fuse_file_info*) {
  if (faulty(kSync, 0, 0)) return -EIO;
  return (datasync ? ::fdatasync(g_cfg.fd) : ::fsync(g_cfg.fd)) == 0 ? 0 : -errno;
}

int ff_truncate(const char*, off_t size, struct fuse_file_info*) {
  return ::ftruncate(g_cfg.fd, size) == 0 ? 0 : -errno;
}

int ff_fallocate(const char*, int mode, off_t off, off_t len, struct fuse_file_info*) {
  if (faulty(kWrite, off, len)) return -EIO;
  return ::fallocate(g_cfg.fd, mode, off, len) == 0 ? 0 : -errno;
}

off_t ff_lseek(const char*, off_t off, int whence, struct fuse_file_info*) {
  off_t r = ::lseek(g_cfg.fd, off, whence);
  return r < 0 ? -errno : r;
}

int ff_statfs(const char*, struct statvfs* sv) { return ::fstatvfs(g_cfg.fd, sv) == 0 ? 0 : -errno; }

void* ff_init(struct fuse_conn_info*, struct fuse_config* cfg) {
  cfg->direct_io = g_cfg.direct_io;
  return nullptr;
}

struct fuse_operations make_operations() {
  struct fuse_operations ops {};
  ops.init = ff_init;
  ops.getattr = ff_getattr;
  ops.readdir = ff_readdir;
  ops.open = ff_open;
  ops.read = ff_read;
  ops.write = ff_write;
  ops.fsync = ff_fsync;
  ops.truncate = ff_truncate;
  ops.fallocate = ff_fallocate;
  ops.lseek = ff_lseek;
  ops.statfs = ff_statfs;
  return ops;
}

}  // namespace

int main(int argc, char** argv) {
  int i = 1;
  for (; i < argc && std::strncmp(argv[i], "--", 2) == 0; ++i) {
    std::string a = argv[i];
    if (a == "--direct-io") g_cfg.direct_io = true;
    else if (a == "--log") g_cfg.log = true;
    else if (a == "--faults" && i + 1 < argc) g_cfg.faults_path = argv[++i];
    else break;
  }
  if (argc - i < 2) {
    std::fputs(kUsage, stderr);
    return 2;
  }
  const char* backing = argv[i];
  g_cfg.fd = ::open(backing, O_RDWR | O_CLOEXEC);
  if (g_cfg.fd < 0) {
    std::fprintf(stderr, "faultyfs: open: %s: %s\n", backing, std::strerror(errno));
    return 1;
  }
  const char* slash = std::strrchr(backing, '/');
  g_cfg.name = std::string("/") + (slash ? slash + 1 : backing);
  // fuse_main gets: the mount point, in the foreground, multi-threaded, plus the caller's options.
  std::vector<char*> fargs = {argv[0], const_cast<char*>("-f"), argv[i + 1],
                              const_cast<char*>("-o"), const_cast<char*>("fsname=faultyfs,subtype=faultyfs")};
  for (int j = i + 2; j < argc; ++j) fargs.push_back(argv[j]);
  struct fuse_operations ops = make_operations();
  return fuse_main(static_cast<int>(fargs.size()), fargs.data(), &ops, nullptr);
}

// The run directory's rules; see run_dir.h.
#include "run_dir.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <memory>
#include <vector>

#include "loopdio/error.h"

namespace loopdio::cli {
namespace {

namespace fs = std::filesystem;

constexpr const char kPrivate[] = "private";
constexpr const char kAdvice[] = "; use a directory only root can write (LOOPDIO_RUN_DIR)";
constexpr const char kPrivateAdvice[] = " (loopdio does not change it: remove it)";

struct DirCloser {
  void operator()(DIR* d) const { ::closedir(d); }
};

std::string mode_string(mode_t m) {
  char buf[8];
  std::snprintf(buf, sizeof buf, "%04o", static_cast<unsigned>(m & 07777));
  return buf;
}

// Why `st` is not a run directory loopdio may trust, empty when it is.
std::string distrust(const struct stat& st) {
  if (!S_ISDIR(st.st_mode)) return "not a directory";
  if (st.st_uid != ::geteuid() && st.st_uid != 0)
    return "owned by uid " + std::to_string(st.st_uid) + ", not by " +
           (::geteuid() == 0 ? std::string("root")
                             : "uid " + std::to_string(::geteuid()) + " or root");
  if (st.st_mode & 022)
    return std::string("writable by ") + (st.st_mode & 002 ? "others" : "its group") + " (mode " +
           mode_string(st.st_mode) + ")";
  return "";
}

// Why `st`, a directory on the way from / to the run directory, is not one loopdio may pass
// through, empty when it is. Its owner or anyone who may write in it could swap what lies
// below for another directory or a link, so it must belong to root (or the effective user)
// and be writable by nobody else, unless it is a sticky directory of root's, like /tmp and
// /var/tmp, where others may add entries but not rename or remove root's. A symbolic link
// is never followed: whoever may change it chooses where root writes.
std::string distrust_parent(const struct stat& st) {
  if (S_ISLNK(st.st_mode)) return "a symbolic link (name the real directory)";
  if (S_ISDIR(st.st_mode) && (st.st_mode & S_ISVTX) && st.st_uid == 0) return "";
  return distrust(st);
}

UniqueFd open_dir_at(int at, const std::string& name, const std::string& path, const char* advice) {
  UniqueFd fd(::openat(at, name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
  if (!fd && (errno == ELOOP || errno == ENOTDIR))
    throw Error(path + ": refusing it: a symbolic link or not a directory" + advice);
  if (!fd && errno != ENOENT) throw sys_error(path);
  return fd;
}

std::string random_hex() {
  unsigned char b[8];
  if (::getrandom(b, sizeof b, 0) != static_cast<ssize_t>(sizeof b)) throw sys_error("getrandom");
  std::string s;
  for (unsigned char c : b) {
    s += "0123456789abcdef"[c >> 4];
    s += "0123456789abcdef"[c & 15];
  }
  return s;
}

void write_all(int fd, std::string_view data, const std::string& path) {
  while (!data.empty()) {
    ssize_t n = ::write(fd, data.data(), data.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw sys_error(path);
    data.remove_prefix(static_cast<std::size_t>(n));
  }
}

// At most `limit` bytes, up to end of file.
std::string read_up_to(int fd, std::size_t limit, const std::string& path) {
  std::string data(limit, '\0');
  std::size_t got = 0;
  while (got < limit) {
    ssize_t n = ::read(fd, data.data() + got, limit - got);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw sys_error(path);
    if (n == 0) break;
    got += static_cast<std::size_t>(n);
  }
  data.resize(got);
  return data;
}

// Opens the directory that holds `path` (absolute), checking each directory on the way from
// / with distrust_parent, each opened from the one before without following a link; `last`
// is set to the name of the run directory in it. Empty when one of them is missing. Throws
// loopdio::Error naming the first one loopdio may not trust, and why.
UniqueFd open_parent(const std::string& path, std::string& last) {
  fs::path p = fs::path(path).lexically_normal();
  if (!p.is_absolute()) throw Error(path + ": refusing the run directory: not an absolute path");
  std::vector<std::string> names;
  for (const fs::path& c : p.relative_path())
    if (!c.empty()) names.push_back(c.string());
  last = names.empty() ? "." : names.back();
  if (!names.empty()) names.pop_back();
  UniqueFd dir(::open("/", O_PATH | O_DIRECTORY | O_CLOEXEC));
  std::string walked = "/";
  for (std::size_t i = 0;; ++i) {
    if (!dir && errno == ENOENT) return dir;
    if (!dir) throw sys_error(walked);
    struct stat st {};
    if (::fstat(dir.get(), &st) != 0) throw sys_error(walked);
    if (std::string why = distrust_parent(st); !why.empty())
      throw Error(path + ": refusing the run directory: " + walked + " on its path is " + why +
                  kAdvice);
    if (i == names.size()) return dir;
    walked += (i ? "/" : "") + names[i];
    dir = UniqueFd(::openat(dir.get(), names[i].c_str(), O_PATH | O_NOFOLLOW | O_CLOEXEC));
  }
}

}  // namespace

RunDir::RunDir(std::string path) : path_(std::move(path)) {
  while (path_.size() > 1 && path_.back() == '/') path_.pop_back();
  std::string name;
  UniqueFd parent = open_parent(path_, name);
  if (!parent) return;
  fd_ = open_dir_at(parent.get(), name, path_, kAdvice);
  if (!fd_) return;
  struct stat st {};
  if (::fstat(fd_.get(), &st) != 0) throw sys_error(path_);
  if (std::string why = distrust(st); !why.empty())
    throw Error(path_ + ": refusing the run directory: " + why + kAdvice);
}

void RunDir::create() {
  if (fd_) return;
  std::string name;
  UniqueFd parent = open_parent(path_, name);
  if (!parent) errno = ENOENT;
  bool made = parent && ::mkdirat(parent.get(), name.c_str(), 0755) == 0;
  if (!made && errno != EEXIST)
    throw Error(
        sys_error(path_).what() +
        std::string(" (loopdio keeps its state there: run as root, or set LOOPDIO_RUN_DIR)"));
  *this = RunDir(path_);
  if (!fd_) throw Error(path_ + ": removed while loopdio was creating it");
  // Only a directory made just now gets its mode set (the umask may have narrowed it).
  if (made && ::fchmod(fd_.get(), 0755) != 0) throw sys_error("chmod " + path_);
}

bool RunDir::writable() const { return fd_ && ::faccessat(fd_.get(), ".", W_OK, AT_EACCESS) == 0; }

std::vector<std::string> RunDir::names(std::string_view suffix) const {
  std::vector<std::string> out;
  if (!fd_) return out;
  int fd = ::openat(fd_.get(), ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) throw sys_error(path_);
  std::unique_ptr<DIR, DirCloser> dir(::fdopendir(fd));
  if (!dir) {
    UniqueFd owner(fd);
    throw sys_error(path_);
  }
  while (struct dirent* e = ::readdir(dir.get())) {
    std::string_view n = e->d_name;
    if (n.size() > suffix.size() && n.substr(n.size() - suffix.size()) == suffix)
      out.emplace_back(n);
  }
  return out;
}

std::optional<std::string> RunDir::read(const std::string& base, std::size_t max) const {
  if (!fd_) return std::nullopt;
  // O_NONBLOCK: a FIFO planted under the name cannot hold the open up.
  UniqueFd fd(::openat(fd_.get(), base.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC));
  if (!fd && errno == ENOENT) return std::nullopt;
  if (!fd && errno == ELOOP) throw Error(file(base) + ": a symbolic link: not read");
  if (!fd) throw sys_error(file(base));
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) throw sys_error(file(base));
  if (!S_ISREG(st.st_mode)) throw Error(file(base) + ": not a regular file: not read");
  if (static_cast<std::size_t>(st.st_size) > max)
    throw Error(file(base) + ": larger than " + std::to_string(max) + " bytes: not read");
  std::string data = read_up_to(fd.get(), max + 1, file(base));
  if (data.size() > max)  // it grew since fstat
    throw Error(file(base) + ": larger than " + std::to_string(max) + " bytes: not read");
  return data;
}

UniqueFd RunDir::create_file(const std::string& base, mode_t mode) const {
  if (!fd_) throw Error(path_ + ": no such directory");
  UniqueFd fd(::openat(fd_.get(), base.c_str(),
                       O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode));
  if (!fd) throw sys_error(file(base));
  return fd;
}

void RunDir::write_atomic(const std::string& base, std::string_view data, mode_t mode) const {
  std::string tmp = "." + base + "." + random_hex() + ".tmp";
  try {
    UniqueFd fd = create_file(tmp, mode);
    write_all(fd.get(), data, file(tmp));
    if (::renameat(fd_.get(), tmp.c_str(), fd_.get(), base.c_str()) != 0)
      throw sys_error("rename " + file(tmp) + " " + file(base));
  } catch (...) {
    ::unlinkat(fd_.get(), tmp.c_str(), 0);
    throw;
  }
}

UniqueFd RunDir::open_lock() const {
  std::string path = file(".lock");
  UniqueFd fd(::openat(fd_.get(), ".lock", O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600));
  if (!fd && errno == ELOOP) throw Error(path + ": a symbolic link: refusing it");
  if (!fd) throw sys_error(path);
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) throw sys_error(path);
  if (!S_ISREG(st.st_mode)) throw Error(path + ": not a regular file: refusing it");
  return fd;
}

void RunDir::remove_inside(const std::string& path, mode_t type) const {
  if (!fd_ || path.empty()) return;
  fs::path p = fs::path(path).lexically_normal();
  std::string base = p.filename().string(), parent = p.parent_path().string();
  if (base.empty() || base == "." || base == "..") return;
  UniqueFd priv;
  int at = fd_.get();
  if (parent == path_ + "/" + kPrivate) {
    try {
      priv = open_private();
    } catch (const Error&) {
      return;  // not the directory loopdio made: nothing in it is loopdio's to remove
    }
    if (!priv) return;
    at = priv.get();
  } else if (parent != path_) {
    return;  // outside: never removed, whatever a state file says
  }
  struct stat st {};
  if (::fstatat(at, base.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0 || (st.st_mode & S_IFMT) != type)
    return;
  ::unlinkat(at, base.c_str(), 0);
}

UniqueFd RunDir::open_private() const {
  std::string path = file(kPrivate);
  UniqueFd fd = open_dir_at(fd_.get(), kPrivate, path, kPrivateAdvice);
  if (!fd) return fd;
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) throw sys_error(path);
  if (st.st_uid != ::geteuid() || (st.st_mode & 07777) != 0700)
    throw Error(path + ": refusing it: expected a directory of uid " + std::to_string(::geteuid()) +
                " with mode 0700, found uid " + std::to_string(st.st_uid) + " mode " +
                mode_string(st.st_mode) + kPrivateAdvice);
  return fd;
}

std::string RunDir::private_dir() const {
  if (!fd_) throw Error(path_ + ": no such directory");
  if (::mkdirat(fd_.get(), kPrivate, 0700) == 0) {
    UniqueFd fd = open_dir_at(fd_.get(), kPrivate, file(kPrivate), kPrivateAdvice);
    // Made just now: its mode is set whatever the umask.
    if (!fd || ::fchmod(fd.get(), 0700) != 0) throw sys_error("chmod " + file(kPrivate));
  } else if (errno != EEXIST) {
    throw sys_error(file(kPrivate));
  }
  if (!open_private()) throw Error(file(kPrivate) + ": removed while loopdio was creating it");
  return file(kPrivate);
}

}  // namespace loopdio::cli

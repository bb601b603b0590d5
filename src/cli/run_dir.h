// The run directory (/run/loopdio, or $LOOPDIO_RUN_DIR) and every file loopdio creates, reads
// or removes in it. Root works there on names that others could have planted, so the
// directory must belong to root (the effective user) and be writable by nobody else, and so
// must every directory on its path from / (sticky ones of root's, like /tmp, excepted), with
// no symbolic link on the way; it is never chmod-ed; every file is opened under the
// directory's descriptor without following a symbolic link, created O_EXCL, read only when
// regular and small; nothing outside is removed.
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "loopdio/unique_fd.h"

namespace loopdio::cli {

class RunDir {
 public:
  // Opens the directory when it exists. Throws loopdio::Error naming the path, the directory
  // at fault (it or one on its path) and the reason when it is not one loopdio may trust
  // (see above), whether or not it exists yet.
  explicit RunDir(std::string path);

  const std::string& path() const { return path_; }
  bool exists() const { return static_cast<bool>(fd_); }
  // path()/base.
  std::string file(const std::string& base) const { return path_ + "/" + base; }
  // Creates the directory with mode 0755 when it is missing, then opens it as above.
  void create();
  // True when the effective user may create files in it.
  bool writable() const;

  // The names of the entries that end with `suffix` (none when the directory is missing).
  std::vector<std::string> names(std::string_view suffix) const;
  // The contents of a regular file, nullopt when there is none. Throws loopdio::Error for a
  // symbolic link, anything but a regular file, or more than `max` bytes.
  std::optional<std::string> read(const std::string& base, std::size_t max) const;
  // A new file (O_CREAT | O_EXCL | O_NOFOLLOW), open for writing.
  UniqueFd create_file(const std::string& base, mode_t mode) const;
  // Replaces `base` atomically: a new temporary file with a random name, renamed over it.
  void write_atomic(const std::string& base, std::string_view data, mode_t mode) const;
  // The lock file .lock, created if missing, never through a symbolic link.
  UniqueFd open_lock() const;
  // Removes `path` when it lies directly inside this directory or its private/, and is of
  // `type` (S_IFSOCK, S_IFREG); leaves anything else where it is.
  void remove_inside(const std::string& path, mode_t type) const;

  // The private/ subdirectory (root's alone: mode 0700), created if missing. Throws
  // loopdio::Error when it exists as anything else; it is never chmod-ed.
  std::string private_dir() const;

 private:
  UniqueFd open_private() const;  // empty when missing

  std::string path_;
  UniqueFd fd_;
};

}  // namespace loopdio::cli

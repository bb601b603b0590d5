// Directory listings without malloc; see dir_entries.h.
#include "loopdio/dir_entries.h"

#include <dirent.h>
#include <fcntl.h>

#include <cstring>

#include "loopdio/error.h"
#include "loopdio/unique_fd.h"

namespace loopdio {

std::vector<std::string> dir_entries(int dirfd, const char* path, const std::string& what) {
  UniqueFd fd(::openat(dirfd, path, O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!fd) throw sys_error(what);
  std::vector<char> buf(64 * 1024);
  std::vector<std::string> names;
  for (;;) {
    const ssize_t n = ::getdents64(fd.get(), buf.data(), buf.size());
    if (n < 0) throw sys_error(what);
    if (n == 0) return names;
    for (ssize_t off = 0; off < n;) {
      const auto* e = reinterpret_cast<const struct dirent64*>(buf.data() + off);
      off += e->d_reclen;
      if (std::strcmp(e->d_name, ".") != 0 && std::strcmp(e->d_name, "..") != 0)
        names.emplace_back(e->d_name);
    }
  }
}

}  // namespace loopdio

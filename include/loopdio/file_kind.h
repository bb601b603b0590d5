// What kind of file a mode names, as messages say it: "a FIFO", "a directory". One wording
// for every refusal of a path that is the wrong kind of file.
#pragma once

#include <sys/stat.h>

namespace loopdio {

inline const char* file_kind(mode_t m) {
  if (S_ISREG(m)) return "a regular file";
  if (S_ISDIR(m)) return "a directory";
  if (S_ISLNK(m)) return "a symbolic link";
  if (S_ISFIFO(m)) return "a FIFO";
  if (S_ISSOCK(m)) return "a socket";
  if (S_ISCHR(m)) return "a character device";
  if (S_ISBLK(m)) return "a block device";
  return "a file of an unknown kind";
}

}  // namespace loopdio

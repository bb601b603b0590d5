// nosync.so: preloaded into a server, makes fsync and fdatasync succeed without doing
// anything, as a disk that ignores cache flushes would. test-multi-conn.sh runs its flush
// check against such a server to show that the check can fail.
#include <unistd.h>

int fsync(int fd) {
  (void)fd;
  return 0;
}

int fdatasync(int fd) {
  (void)fd;
  return 0;
}

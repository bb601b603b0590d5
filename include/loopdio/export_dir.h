// A directory of images served as one export each, named by file name (nbdkit's dir=
// mode). Every regular file directly in the directory is an export (block device nodes too,
// with devices=1); a file added later is served from the next connection on.
//
// An export is a file, not a name: it is found by what the name leads to when a connection
// asks (device and inode, never through a symbolic link), so two names of one file (hard
// links) share one export with one set of range locks, and a name whose file was replaced
// or deleted leads new connections to the new file while old ones keep theirs. An export is
// opened at its first connection and shared until its last closes; the opening (open,
// probe, trial reads: slow on a failing disk) runs outside the directory's lock, so one slow
// image delays only those who ask for it. Listing exports opens nothing.
#pragma once

#include <sys/types.h>

#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "loopdio/export.h"
#include "loopdio/unique_fd.h"

namespace loopdio {

class ExportDir {
 public:
  // Opens `path` (absolute) as the directory of exports. Throws loopdio::Error.
  ExportDir(std::string path, Options defaults, ServerShared& shared);

  const std::string& path() const { return path_; }

  struct Entry {
    std::string name;
    std::string description;  // the export's own when it is open or was, else from stat
    bool open = false;
    std::shared_ptr<Export> live;  // the open export of the file the name leads to
  };
  // The exports now, sorted by name: regular files (and, with devices=1, block devices)
  // directly in the directory; not symbolic links, hidden names, names that are not UTF-8 or
  // hold control characters (each such name is reported once, by a notice). Opens nothing.
  std::vector<Entry> list();
  std::vector<std::string> names();

  // Throws loopdio::Error when `name` cannot name an export in the directory: empty,
  // starting with '.' ("..", hidden files), holding '/', too long, not UTF-8, holding a
  // control character.
  static void check_name(std::string_view name);

  // The export the name leads to now, opened if no connection has it open (outside the
  // directory's lock). Throws loopdio::Error.
  std::shared_ptr<Export> acquire(const std::string& name);
  // Every open export.
  std::vector<std::shared_ptr<Export>> open_exports();
  // Switches direct I/O of the open export of the file `name` leads to (and of those still
  // open through that name after their file was replaced) now, and of its next opening.
  void set_direct_io(const std::string& name, bool on);

  // The limits export `name` opens with: set for it, or the server's defaults.
  ThrottleLimits limits_of(const std::string& name);
  // Changes them by `words` ("iops=500 bps=50M", "none": throttle_limits.h), for the export
  // open now and its next openings; the new limits. Throws loopdio::Error, changing nothing,
  // on bad words or a group that does not exist.
  ThrottleLimits set_limits(const std::string& name, const std::vector<std::string>& words);
  // Sets them from the limits file, before any connection.
  void configure_limits(const std::string& name, const ThrottleLimits& l);

  // The statistics of every export that has been opened, by name.
  std::vector<std::pair<std::string, std::shared_ptr<Stats>>> all_stats();

 private:
  using FileId = std::pair<dev_t, ino_t>;
  // What the name leads to, or why it cannot be served.
  struct stat stat_name(const std::string& name) const;
  Options options_for(const std::string& name);  // under mu_
  std::vector<std::shared_ptr<Export>> open_exports_of(const std::string& name,
                                                       std::unique_lock<std::mutex>& lock);
  std::unique_ptr<Export> open_new(const std::string& name, FileId id);

  const std::string path_;
  const Options defaults_;
  ServerShared& shared_;
  UniqueFd dirfd_;
  std::mutex mu_;  // protects everything below; never held across an open or a probe
  std::condition_variable opened_;                 // an opening in progress ended
  std::map<FileId, std::weak_ptr<Export>> open_;   // by the file they serve
  std::map<FileId, std::string> opening_;          // being opened now, and by which name
  std::map<std::string, std::shared_ptr<Stats>> stats_;
  std::map<std::string, DirectIo> direct_io_;      // set at run time, by name
  std::map<std::string, ThrottleLimits> limits_;   // set in the limits file or at run time
  std::map<FileId, std::string> descriptions_;     // of files opened before
  std::set<std::string> told_;                     // names skipped, already reported

  // Files whose export object still exists, until its destructor (which closes the file and
  // drops its writer's lock) has run. Its own mutex, taken last and never held while waiting
  // for mu_: the last reference to an export may be dropped by a thread holding mu_.
  std::mutex alive_mu_;
  std::condition_variable closed_;
  std::set<FileId> alive_;
};

}  // namespace loopdio

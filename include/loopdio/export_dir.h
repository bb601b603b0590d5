// A directory of images served as one export each, named by file name (nbdkit's dir=
// mode). Every regular file and block device node directly in the directory is an export;
// a file added later is served from the next connection on. An export is opened at its first
// connection and shared by all of them until the last closes; its statistics and a
// direct-I/O setting made through the control socket last for the server's life.
#pragma once

#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "loopdio/export.h"
#include "loopdio/unique_fd.h"

namespace loopdio {

class ExportDir {
 public:
  // Opens `path` (absolute) as the directory of exports. Throws loopdio::Error.
  ExportDir(std::string path, Options defaults, BouncePool& pool);

  const std::string& path() const { return path_; }

  // The names of the exports now, sorted: regular files and block devices directly in the
  // directory, not symbolic links, not names starting with '.', valid UTF-8.
  std::vector<std::string> list() const;

  // Throws loopdio::Error when `name` cannot name an export in the directory: empty,
  // starting with '.' ("..", hidden files), holding '/', too long, not UTF-8.
  static void check_name(std::string_view name);

  // The export `name`, opened now if no connection has it open. Throws loopdio::Error.
  std::shared_ptr<Export> acquire(const std::string& name);
  // The open export `name`, or null.
  std::shared_ptr<Export> find_open(const std::string& name);
  // The description of export `name`, without opening it for serving.
  std::string describe(const std::string& name);
  // Switches direct I/O of export `name` now if it is open, and at its next opening.
  void set_direct_io(const std::string& name, bool on);

  // The statistics of every export that has been opened, by name.
  std::vector<std::pair<std::string, std::shared_ptr<Stats>>> all_stats();

 private:
  Options options_for(const std::string& name);

  const std::string path_;
  const Options defaults_;
  BouncePool& pool_;
  UniqueFd dirfd_;
  std::mutex mu_;  // protects the maps below
  std::map<std::string, std::weak_ptr<Export>> open_;
  std::map<std::string, std::shared_ptr<Stats>> stats_;
  std::map<std::string, DirectIo> direct_io_;  // set at run time, by name
};

}  // namespace loopdio

// A directory of exports; see export_dir.h.
#include "loopdio/export_dir.h"

#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <sys/stat.h>

#include <algorithm>

#include "loopdio/control.h"
#include "loopdio/error.h"
#include "loopdio/json.h"

namespace loopdio {

ExportDir::ExportDir(std::string path, Options defaults, BouncePool& pool)
    : path_(std::move(path)), defaults_(std::move(defaults)), pool_(pool) {
  dirfd_.reset(::open(path_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!dirfd_) throw sys_error("dir=" + path_);
}

void ExportDir::check_name(std::string_view name) {
  std::string shown(name);
  if (name.empty()) throw Error("no export name given: this server serves a directory of exports");
  if (name[0] == '.') throw Error("export \"" + shown + "\": names starting with '.' are not served");
  if (name.find('/') != std::string_view::npos)
    throw Error("export \"" + shown + "\": a name may not hold '/'");
  if (name.size() > NAME_MAX) throw Error("export name too long");
  if (!is_utf8(name)) throw Error("export name is not valid UTF-8");
}

std::vector<std::string> ExportDir::list() const {
  std::vector<std::string> names;
  int fd = ::dup(dirfd_.get());  // fdopendir takes the fd; rewind from the start each time
  if (fd < 0) throw sys_error("dir=" + path_);
  DIR* d = ::fdopendir(fd);
  if (!d) {
    ::close(fd);
    throw sys_error("dir=" + path_);
  }
  ::rewinddir(d);
  while (struct dirent* e = ::readdir(d)) {
    std::string name = e->d_name;
    try {
      check_name(name);
    } catch (const Error&) {
      continue;
    }
    struct stat st {};
    if (::fstatat(dirfd_.get(), e->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0) continue;
    if (S_ISREG(st.st_mode) || S_ISBLK(st.st_mode)) names.push_back(std::move(name));
  }
  ::closedir(d);
  std::sort(names.begin(), names.end());
  return names;
}

Options ExportDir::options_for(const std::string& name) {
  Options o = defaults_;
  o.file = path_ + "/" + name;
  if (auto d = direct_io_.find(name); d != direct_io_.end()) o.direct_io = d->second;
  return o;
}

std::shared_ptr<Export> ExportDir::acquire(const std::string& name) {
  check_name(name);
  std::lock_guard lock(mu_);
  if (auto it = open_.find(name); it != open_.end())
    if (auto x = it->second.lock()) return x;
  // Nothing is kept for a name that does not open: clients cannot grow these maps.
  auto it = stats_.find(name);
  std::shared_ptr<Stats> stats = it != stats_.end() ? it->second : std::make_shared<Stats>();
  std::shared_ptr<Export> x = Export::open(options_for(name), pool_, stats, name, dirfd_.get());
  stats_[name] = stats;
  open_[name] = x;
  return x;
}

std::shared_ptr<Export> ExportDir::find_open(const std::string& name) {
  std::lock_guard lock(mu_);
  auto it = open_.find(name);
  return it == open_.end() ? nullptr : it->second.lock();
}

std::string ExportDir::describe(const std::string& name) {
  if (auto x = find_open(name)) return x->describe();
  Options o;
  {
    std::lock_guard lock(mu_);
    o = options_for(name);
  }
  return Backing::open_in(dirfd_.get(), name, o)->describe(to_string(o.engine));
}

void ExportDir::set_direct_io(const std::string& name, bool on) {
  check_name(name);
  if (auto x = find_open(name)) {
    switch_direct_io(x->backing(), x->gate(), on);
  } else {
    Options o;
    {
      std::lock_guard lock(mu_);
      o = options_for(name);
    }
    o.direct_io = DirectIo::kAuto;
    Backing::open_in(dirfd_.get(), name, o)->check_direct(on);  // it exists; and says why not
  }
  std::lock_guard lock(mu_);
  direct_io_[name] = on ? DirectIo::kOn : DirectIo::kOff;
}

std::vector<std::pair<std::string, std::shared_ptr<Stats>>> ExportDir::all_stats() {
  std::lock_guard lock(mu_);
  return {stats_.begin(), stats_.end()};
}

}  // namespace loopdio

// A directory of exports; see export_dir.h.
#include "loopdio/export_dir.h"

#include "loopdio/dir_entries.h"

#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <sys/stat.h>
#include <sys/statfs.h>

#include <algorithm>

#include "loopdio/control.h"
#include "loopdio/dir_entries.h"
#include "loopdio/error.h"
#include "loopdio/log.h"
#include "loopdio/probe.h"
#include "loopdio/safe_text.h"

namespace loopdio {
namespace {

// The description of a file no connection has opened yet: what statfs and statx say of it,
// without opening it (a device node is never opened by a listing; a file on a hung disk
// delays only this listing).
std::string unopened_description(int dirfd, const std::string& name, const std::string& path,
                                 const struct stat& st) {
  std::string kind = "block device";
  if (!S_ISBLK(st.st_mode)) {
    struct statfs sfs {};
    kind = (::statfs(path.c_str(), &sfs) == 0 ? fs_type_name(sfs.f_type) : "?") + " file";
  }
  std::string s = "loopdio: " + safe_encode(path) + " (" + kind + ", " +
                  human_size(static_cast<std::uint64_t>(st.st_size)) + "): ";
  struct statx sx {};
  if (::statx(dirfd, name.c_str(), AT_SYMLINK_NOFOLLOW, STATX_DIOALIGN, &sx) == 0 &&
      (sx.stx_mask & STATX_DIOALIGN) && sx.stx_dio_offset_align)
    s += "direct I/O possible, alignment " + std::to_string(sx.stx_dio_offset_align) + " (statx)";
  else
    s += "direct I/O to be probed";
  return s + "; not open yet";
}

}  // namespace

ExportDir::ExportDir(std::string path, Options defaults, ServerShared& shared)
    : path_(std::move(path)), defaults_(std::move(defaults)), shared_(shared) {
  dirfd_.reset(::open(path_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!dirfd_) throw sys_error("dir=" + safe_encode(path_));
}

void ExportDir::check_name(std::string_view name) {
  if (name.empty()) throw Error("no export name given: this server serves a directory of exports");
  if (!is_utf8(name)) throw Error("export name is not valid UTF-8");
  const std::string shown = safe_encode(name);
  if (has_control(name))
    throw Error("export \"" + shown + "\": a name may not hold control characters");
  if (name[0] == '.') throw Error("export \"" + shown + "\": names starting with '.' are not served");
  if (name.find('/') != std::string_view::npos)
    throw Error("export \"" + shown + "\": a name may not hold '/'");
  if (name.size() > NAME_MAX) throw Error("export name too long");
}

struct stat ExportDir::stat_name(const std::string& name) const {
  check_name(name);
  const std::string path = safe_encode(path_ + "/" + name);
  struct stat st {};
  if (::fstatat(dirfd_.get(), name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0)
    throw sys_error("export \"" + safe_encode(name) + "\": " + path);
  if (S_ISBLK(st.st_mode) && !defaults_.devices)
    throw Error("export \"" + safe_encode(name) + "\": " + path + " is a block device: a " +
                "directory's devices are served only with devices=1");
  if (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode))
    throw Error("export \"" + safe_encode(name) + "\": " + path + " is not a regular file" +
                (S_ISLNK(st.st_mode) ? " (a symbolic link: never followed)" : ""));
  return st;
}

std::vector<ExportDir::Entry> ExportDir::list() {
  std::vector<std::pair<std::string, struct stat>> found;
  std::vector<std::string> refused;
  for (std::string& name : dir_entries(dirfd_.get(), ".", "dir=" + safe_encode(path_))) {
    struct stat st {};
    try {
      st = stat_name(name);
    } catch (const Error& err) {
      if (name[0] != '.') refused.push_back(err.what());
      continue;
    }
    found.emplace_back(std::move(name), st);
  }
  std::sort(found.begin(), found.end(),
            [](const auto& a, const auto& b) { return a.first < b.first; });
  std::vector<Entry> out;
  std::lock_guard lock(mu_);
  for (const std::string& why : refused)
    if (told_.insert(why).second) notice("not served: " + why);
  std::map<FileId, std::string> kept;
  for (auto& [name, st] : found) {
    FileId id{st.st_dev, st.st_ino};
    Entry e;
    e.name = name;
    auto x = open_.find(id);
    std::shared_ptr<Export> live = x == open_.end() ? nullptr : x->second.lock();
    if (live) {
      e.open = true;
      e.description = live->describe();
      e.live = live;
    } else if (auto d = descriptions_.find(id); d != descriptions_.end()) {
      e.description = d->second;
    } else {
      e.description = unopened_description(dirfd_.get(), name, path_ + "/" + name, st);
    }
    if (auto d = descriptions_.find(id); d != descriptions_.end()) kept.insert(*d);
    out.push_back(std::move(e));
  }
  descriptions_ = std::move(kept);  // only files still in the directory
  return out;
}

std::vector<std::string> ExportDir::names() {
  std::vector<std::string> v;
  for (Entry& e : list()) v.push_back(std::move(e.name));
  return v;
}

Options ExportDir::options_for(const std::string& name) {
  Options o = defaults_;
  o.file = path_ + "/" + name;
  if (auto d = direct_io_.find(name); d != direct_io_.end()) o.direct_io = d->second;
  if (auto l = limits_.find(name); l != limits_.end()) o.limits = l->second;
  return o;
}

std::shared_ptr<Export> ExportDir::acquire(const std::string& name) {
  const struct stat st = stat_name(name);  // what the name leads to now
  const FileId id{st.st_dev, st.st_ino};
  std::unique_lock lock(mu_);
  for (;;) {
    if (auto it = open_.find(id); it != open_.end())
      if (auto x = it->second.lock()) return x;
    if (!opening_.count(id)) break;
    opened_.wait(lock);  // someone opens this very file now: its export will be ours
  }
  opening_[id] = name;
  lock.unlock();
  std::shared_ptr<Export> x;
  try {
    {  // the last export of this file may still be closing: its lock on the file goes last
      std::unique_lock alive(alive_mu_);
      closed_.wait(alive, [&] { return !alive_.count(id); });
    }
    std::unique_ptr<Export> made = open_new(name, id);
    std::lock_guard alive(alive_mu_);
    alive_.insert(id);
    // The export dies with its last connection; this directory outlives every connection.
    x = std::shared_ptr<Export>(made.release(), [this, id](Export* gone) {
      delete gone;
      std::lock_guard alive(alive_mu_);
      alive_.erase(id);
      closed_.notify_all();
    });
  } catch (...) {
    lock.lock();
    opening_.erase(id);
    opened_.notify_all();
    throw;
  }
  lock.lock();
  opening_.erase(id);
  open_[id] = x;
  descriptions_[id] = x->describe();
  std::erase_if(open_, [](const auto& kv) { return kv.second.expired(); });
  opened_.notify_all();
  return x;
}

// Opens the export outside the lock. Nothing is kept for a name that does not open:
// clients cannot grow the maps.
std::unique_ptr<Export> ExportDir::open_new(const std::string& name, FileId id) {
  Options o;
  std::shared_ptr<Stats> stats;
  {
    std::lock_guard lock(mu_);
    o = options_for(name);
    auto it = stats_.find(name);
    stats = it != stats_.end() ? it->second : std::make_shared<Stats>();
  }
  std::unique_ptr<Export> x = Export::open(o, shared_, stats, name, dirfd_.get());
  struct stat st {};
  if (::fstat(x->backing().fd(), &st) != 0 || FileId{st.st_dev, st.st_ino} != id)
    throw Error("export \"" + safe_encode(name) + "\": replaced while it was being opened; " +
                "try again", EAGAIN);
  std::lock_guard lock(mu_);
  stats_.emplace(name, stats);
  return x;
}

std::vector<std::shared_ptr<Export>> ExportDir::open_exports() {
  std::vector<std::shared_ptr<Export>> v;
  std::lock_guard lock(mu_);
  for (auto& [id, w] : open_)
    if (auto x = w.lock()) v.push_back(std::move(x));
  return v;
}

// Under mu_ (in `lock`): waits for an opening of `name` under way, then gives the open
// export of the file the name leads to, and those still open through the name after their
// file was replaced.
std::vector<std::shared_ptr<Export>> ExportDir::open_exports_of(const std::string& name,
                                                                std::unique_lock<std::mutex>& lock) {
  opened_.wait(lock, [&] {
    return std::none_of(opening_.begin(), opening_.end(),
                        [&](const auto& kv) { return kv.second == name; });
  });
  std::vector<std::shared_ptr<Export>> targets;
  struct stat st {};
  const bool exists = ::fstatat(dirfd_.get(), name.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0;
  for (auto& [id, w] : open_) {
    auto x = w.lock();
    if (x && ((exists && id == FileId{st.st_dev, st.st_ino}) || x->name() == name))
      targets.push_back(std::move(x));
  }
  return targets;
}

ThrottleLimits ExportDir::limits_of(const std::string& name) {
  std::lock_guard lock(mu_);
  auto it = limits_.find(name);
  return it != limits_.end() ? it->second : defaults_.limits;
}

ThrottleLimits ExportDir::set_limits(const std::string& name, const std::vector<std::string>& words) {
  check_name(name);
  std::vector<std::shared_ptr<Export>> targets;
  ThrottleLimits l;
  {
    std::unique_lock lock(mu_);
    auto it = limits_.find(name);
    l = parse_limits(it != limits_.end() ? it->second : defaults_.limits, words);
    if (!l.group.empty()) shared_.groups.get(l.group);  // it must exist
    limits_[name] = l;  // before the wait: an opening from now on takes it
    targets = open_exports_of(name, lock);
  }
  for (auto& x : targets) x->set_limits(l);
  return l;
}

void ExportDir::configure_limits(const std::string& name, const ThrottleLimits& l) {
  check_name(name);
  std::lock_guard lock(mu_);
  limits_[name] = l;
}

void ExportDir::set_direct_io(const std::string& name, bool on) {
  std::vector<std::shared_ptr<Export>> targets;
  {
    std::unique_lock lock(mu_);
    check_name(name);
    // Stored first, under the lock every opening reads it under: an opening that starts
    // from now on opens with it; one under way is waited for, then switched below.
    const DirectIo before = direct_io_.count(name) ? direct_io_[name] : defaults_.direct_io;
    direct_io_[name] = on ? DirectIo::kOn : DirectIo::kOff;
    targets = open_exports_of(name, lock);
    if (targets.empty()) {
      // Not open: it must exist, and be able to do what is asked.
      try {
        lock.unlock();
        Options o = defaults_;
        o.file = path_ + "/" + name;
        o.direct_io = DirectIo::kAuto;
        o.readonly = true;  // a look, not a writer: it must not take the writer's lock
        stat_name(name);
        Backing::open_in(dirfd_.get(), name, o)->check_direct(on);
      } catch (...) {
        if (!lock.owns_lock()) lock.lock();
        direct_io_[name] = before;
        throw;
      }
    }
  }
  for (auto& x : targets) switch_direct_io(x->backing(), x->gate(), on);
}

std::vector<std::pair<std::string, std::shared_ptr<Stats>>> ExportDir::all_stats() {
  std::lock_guard lock(mu_);
  return {stats_.begin(), stats_.end()};
}

}  // namespace loopdio

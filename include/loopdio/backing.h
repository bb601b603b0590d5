// The backing of one export: the opened file or block device, what the probe found, and what
// was decided from it and the user's options (direct I/O or not and why, alignment, block
// sizes, read-only). Shared by every connection; opened once before nbdkit forks.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "loopdio/aligned_io.h"
#include "loopdio/options.h"
#include "loopdio/probe.h"
#include "loopdio/unique_fd.h"

namespace loopdio {

constexpr std::uint32_t kMaxBlock = 32u << 20;  // advertised maximum request; split internally

class Backing {
 public:
  // Opens and probes o.file and applies the options. Throws loopdio::Error with a one-line
  // message naming the parameter, the path and the reason on any problem.
  static std::unique_ptr<Backing> open(const Options& o, const ProbeHooks& hooks = ProbeHooks::real());
  // The same for `name` in the directory open as `dirfd`, never following a symbolic link
  // (o.file is then the path for messages).
  static std::unique_ptr<Backing> open_in(int dirfd, const std::string& name, const Options& o);

  Backing(const Backing&) = delete;
  Backing& operator=(const Backing&) = delete;
  // Drops the writer's lock explicitly: an io_uring that registered the file keeps the open
  // file (and with it the lock) until the kernel tears the ring down, some time later.
  ~Backing();

  const Options& options() const { return opts_; }
  const ProbeResult& probe() const { return probe_; }
  const Geometry& geometry() const { return geo_; }
  int fd() const { return fd_.get(); }

  bool writable() const { return writable_; }
  const std::string& readonly_reason() const { return readonly_reason_; }

  bool direct() const { return direct_.load(std::memory_order_acquire); }
  // Why direct I/O is off; empty while it is on.
  std::string direct_reason() const;
  // Both at once, consistent with each other: on, or off and why.
  std::pair<bool, std::string> direct_state() const;
  IoMode mode() const;

  std::uint32_t min_block() const { return min_block_; }
  std::uint32_t preferred_block() const;
  std::uint32_t max_block() const { return kMaxBlock; }

  // What the export description and the log say: file, direct I/O (or why not), engine,
  // alignment.
  std::string describe(const char* engine) const;
  // The probe's findings and the decisions, one line each, for the log.
  std::vector<std::string> findings() const;

  // Throws loopdio::Error with the reason when direct I/O cannot be switched `on`.
  void check_direct(bool on) const;
  // Switches O_DIRECT on the fd. The caller has drained every request. Throws loopdio::Error
  // with the reason when the backing cannot do it.
  void set_direct(bool on);

 private:
  Backing() = default;
  void open_fd(int dirfd, const std::string& name);
  void finish_open(const ProbeHooks& hooks);
  void apply_geometry();
  void decide_direct();
  void lock_writer();

  Options opts_;
  ProbeResult probe_;
  Geometry geo_;
  UniqueFd fd_;
  bool writable_ = true;
  bool locked_ = false;  // holds the writer's lock
  std::string readonly_reason_;
  std::atomic<bool> direct_{false};
  mutable std::mutex reason_mu_;  // protects off_reason_: a switch writes it while a
                                  // handshake's export description reads it
  std::string off_reason_;        // why direct I/O is off
  std::uint32_t min_block_ = 512;
};

// "1.0 MiB", "4.0 GiB", "100 bytes": for messages.
std::string human_size(std::uint64_t bytes);

}  // namespace loopdio

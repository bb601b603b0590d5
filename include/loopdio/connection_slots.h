// The server's connection slots. Every connection holds one from the moment nbdkit accepts
// it until its thread ends: a handshake slot while it has no export open (negotiating,
// listing exports, or between NBD_OPT_INFO and NBD_OPT_GO), an open slot while it serves
// one. Both kinds are bounded, so neither idle half-open connections nor idle served ones
// can hold every slot, and the threads and descriptors they cost stay bounded. Only
// atomics: a connection's thread may end after the rest of the plugin is gone.
#pragma once

#include <atomic>

namespace loopdio {

class ConnectionSlots {
 public:
  void set_limits(unsigned max_open, unsigned max_handshakes) {
    max_open_.store(max_open);
    max_handshakes_.store(max_handshakes);
  }
  unsigned max_open() const { return max_open_.load(); }
  unsigned max_handshakes() const { return max_handshakes_.load(); }

  // A connection arrives: a handshake slot, or false when every one is taken.
  bool arrive() { return take(handshaking_, max_handshakes_.load()); }
  // It opens an export: from a handshake slot to an open slot, or false when every open
  // slot is taken (it keeps its handshake slot).
  bool open() {
    if (!take(open_, max_open_.load())) return false;
    handshaking_.fetch_sub(1);
    return true;
  }
  // Its export closes: back to a handshake slot (always granted: it held one before).
  // Returns whether it was the last connection serving an export.
  bool close() {
    handshaking_.fetch_add(1);
    return open_.fetch_sub(1) == 1;
  }
  // Its thread ends, with no export open.
  void depart() { handshaking_.fetch_sub(1); }

  unsigned handshaking() const { return handshaking_.load(); }
  unsigned open_now() const { return open_.load(); }

 private:
  static bool take(std::atomic<unsigned>& n, unsigned max) {
    unsigned v = n.load();
    do {
      if (v >= max) return false;
    } while (!n.compare_exchange_weak(v, v + 1));
    return true;
  }

  std::atomic<unsigned> max_open_{0}, max_handshakes_{0};
  std::atomic<unsigned> handshaking_{0}, open_{0};
};

}  // namespace loopdio

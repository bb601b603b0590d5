// Ctrl-C, SIGTERM and SIGHUP while loopdio sets something up or tears it down: instead of
// dying half-way (a server with no state file, a device with no server), loopdio notes the
// signal, and the step in progress either finishes or undoes itself.
#pragma once

namespace loopdio::cli {

class InterruptGuard {
 public:
  InterruptGuard();   // installs the handlers
  ~InterruptGuard();  // restores the previous ones
  InterruptGuard(const InterruptGuard&) = delete;
  InterruptGuard& operator=(const InterruptGuard&) = delete;

  static bool interrupted();
  // Throws loopdio::Error("interrupted") once a signal has arrived.
  static void check();
};

}  // namespace loopdio::cli

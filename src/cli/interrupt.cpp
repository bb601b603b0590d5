// Signals noted rather than obeyed; see interrupt.h.
#include "interrupt.h"

#include <signal.h>

#include <csignal>
#include <cstring>
#include <string>

#include "loopdio/error.h"

namespace loopdio::cli {
namespace {

volatile std::sig_atomic_t g_signal = 0;
constexpr int kSignals[] = {SIGINT, SIGTERM, SIGHUP};
struct sigaction g_old[3];

void note(int sig) { g_signal = sig; }

}  // namespace

InterruptGuard::InterruptGuard() {
  struct sigaction sa {};
  sa.sa_handler = note;
  sigemptyset(&sa.sa_mask);
  for (int i = 0; i < 3; ++i) ::sigaction(kSignals[i], &sa, &g_old[i]);
}

InterruptGuard::~InterruptGuard() {
  for (int i = 0; i < 3; ++i) ::sigaction(kSignals[i], &g_old[i], nullptr);
}

bool InterruptGuard::interrupted() { return g_signal != 0; }

void InterruptGuard::check() {
  if (g_signal) throw Error(std::string("interrupted by ") + ::strsignal(g_signal) + ": undone");
}

}  // namespace loopdio::cli

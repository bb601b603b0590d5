// The drain gate and the control commands: a switch waits for every request in flight and
// lets none start meanwhile; status reports the effective state; bad commands are refused.
#include <fcntl.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <atomic>
#include <stdexcept>
#include <chrono>
#include <thread>

#include "loopdio/service.h"
#include "loopdio/drain_gate.h"
#include "skip.h"

using namespace loopdio;
using namespace std::chrono_literals;

TEST(DrainGate, SwitchWaitsForRequestsInFlightAndHoldsNewOnes) {
  DrainGate gate;
  std::atomic<int> inside{0}, max_inside_during_switch{0};
  std::atomic<bool> stop{false}, switching{false};
  std::vector<std::thread> requests;
  for (int t = 0; t < 4; ++t)
    requests.emplace_back([&] {
      while (!stop) {
        DrainGate::Pass p(gate);
        ++inside;
        if (switching) max_inside_during_switch = std::max<int>(max_inside_during_switch, inside);
        std::this_thread::sleep_for(100us);
        --inside;
      }
    });
  for (int i = 0; i < 50; ++i) {
    gate.drained([&] {
      switching = true;
      EXPECT_EQ(inside.load(), 0) << "a request was in flight during the switch";
      std::this_thread::sleep_for(200us);
      EXPECT_EQ(inside.load(), 0) << "a request started during the switch";
      switching = false;
    });
  }
  stop = true;
  for (auto& th : requests) th.join();
  EXPECT_EQ(max_inside_during_switch.load(), 0);
  EXPECT_EQ(gate.in_flight(), 0u);
}

TEST(DrainGate, CountsItsPauses) {
  DrainGate gate;
  EXPECT_EQ(gate.drains(), 0u);
  auto ns = gate.drained([] {});
  EXPECT_EQ(gate.drains(), 1u);
  EXPECT_GE(gate.closed_ns(), static_cast<std::uint64_t>(ns.count()));
  // A failing action reopens the gate, and counts as a pause too.
  EXPECT_THROW(gate.drained([] { throw std::runtime_error("x"); }), std::runtime_error);
  EXPECT_EQ(gate.drains(), 2u);
  { DrainGate::Pass p(gate); }  // open again: does not wait
  EXPECT_EQ(gate.in_flight(), 0u);
}

TEST(Control, StatusSwitchAndRefusals) {
  char path[] = "control-test-XXXXXX";
  int fd = ::mkstemp(path);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::ftruncate(fd, 1 << 20), 0);
  ::close(fd);
  Options o;
  o.file = path;
  ConnectionSlots slots;
  Service service(o, slots);
  ::unlink(path);
  std::string st = service.control("status");
  EXPECT_NE(st.find("\"ok\":true"), std::string::npos) << st;
  EXPECT_NE(st.find("\"size\":1048576"), std::string::npos) << st;
  if (st.find("\"dio\":true") == std::string::npos)
    LOOPDIO_SKIP_OUTSIDE_CI("no O_DIRECT where the tests run");
  EXPECT_EQ(service.control("set direct-io off"), "{\"ok\":true,\"dio\":false}");
  EXPECT_NE(service.control("status").find("\"dio\":false"), std::string::npos);
  EXPECT_EQ(service.control("set direct-io on"), "{\"ok\":true,\"dio\":true}");
  EXPECT_NE(service.control("status").find("\"dio\":true"), std::string::npos);
  EXPECT_EQ(service.control("flush"), "{\"ok\":true}");
  EXPECT_NE(service.control("set direct-io maybe").find("\"ok\":false"), std::string::npos);
  EXPECT_NE(service.control("set direct-iox on").find("unknown command"), std::string::npos);
  EXPECT_NE(service.control("").find("unknown command"), std::string::npos);
  EXPECT_NE(service.control("metrics").find("loopdio_requests_total"), std::string::npos);
}

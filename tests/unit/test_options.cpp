// Parameter parsing: sizes with suffixes, and a clear refusal naming the parameter for every
// bad value.
#include <gtest/gtest.h>

#include "loopdio/error.h"
#include "loopdio/options.h"

using namespace loopdio;

namespace {
std::string refusal(std::string_view key, std::string_view value) {
  Options o;
  try {
    apply_option(o, key, value);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}
}  // namespace

TEST(Options, Sizes) {
  EXPECT_EQ(parse_size("offset", "0"), 0u);
  EXPECT_EQ(parse_size("offset", "4096"), 4096u);
  EXPECT_EQ(parse_size("offset", "4k"), 4096u);
  EXPECT_EQ(parse_size("offset", "4K"), 4096u);
  EXPECT_EQ(parse_size("offset", "1M"), 1u << 20);
  EXPECT_EQ(parse_size("offset", "1MiB"), 1u << 20);
  EXPECT_EQ(parse_size("offset", "2G"), 2ull << 30);
  EXPECT_EQ(parse_size("offset", "3T"), 3ull << 40);
  EXPECT_EQ(parse_size("offset", "512b"), 512u);
}

TEST(Options, BadSizesNameTheParameter) {
  for (const char* v : {"", "-1", "abc", "12x", "1.5M", "k", "99999999999999999999", "16E", " 1"}) {
    std::string m = refusal("offset", v);
    EXPECT_NE(m, "") << v;
    EXPECT_EQ(m.rfind(std::string("offset=") + v + ":", 0), 0u) << m;
  }
  EXPECT_NE(refusal("sizelimit", "0"), "");
}

TEST(Options, Choices) {
  Options o;
  apply_option(o, "directio", "1");
  EXPECT_EQ(o.direct_io, DirectIo::kOn);
  apply_option(o, "directio", "off");
  EXPECT_EQ(o.direct_io, DirectIo::kOff);
  apply_option(o, "directio", "auto");
  EXPECT_EQ(o.direct_io, DirectIo::kAuto);
  apply_option(o, "aio", "sync");
  EXPECT_EQ(o.engine, EngineKind::kSync);
  apply_option(o, "aio", "io_uring");
  EXPECT_EQ(o.engine, EngineKind::kIoUring);
  apply_option(o, "aio", "sync+libaio");
  EXPECT_EQ(o.engine, EngineKind::kSyncLibaio);
  EXPECT_STREQ(to_string(o.engine), "sync+libaio");
  apply_option(o, "aio", "SYNC+IO_URING");
  EXPECT_EQ(o.engine, EngineKind::kSyncIoUring);
  EXPECT_STREQ(to_string(o.engine), "sync+io_uring");
  apply_option(o, "sector-size", "4096");
  EXPECT_EQ(o.sector_size, 4096u);
  EXPECT_NE(refusal("directio", "maybe"), "");
  EXPECT_NE(refusal("aio", "posix"), "");
  EXPECT_NE(refusal("aio", "sync+sync"), "");
  EXPECT_NE(refusal("aio", "sync+"), "");
  EXPECT_NE(refusal("sector-size", "1000"), "");
  EXPECT_NE(refusal("sector-size", "8192"), "");
  EXPECT_NE(refusal("file", ""), "");
  EXPECT_NE(refusal("bogus", "1").find("unknown parameter \"bogus\""), std::string::npos);
}

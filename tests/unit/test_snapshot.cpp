// The snapshot command's argument, read strictly. Snapshots themselves need a filesystem
// that can clone: tests/integration/test-snapshot*.sh.
#include <gtest/gtest.h>

#include "loopdio/error.h"
#include "loopdio/snapshot.h"

using namespace loopdio;

namespace {

std::string refusal(std::string_view text) {
  try {
    parse_snapshot_request(text);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST(Snapshot, ParsesExportsAndPaths) {
  auto v = parse_snapshot_request(R"({"exports":[{"name":"a b.img","dest":"/s/a b.img"}]})");
  ASSERT_EQ(v.size(), 1u);
  EXPECT_EQ(v[0].name, "a b.img");
  EXPECT_EQ(v[0].dest, "/s/a b.img");
  // A path that is not UTF-8 comes as its bytes in hex.
  v = parse_snapshot_request(R"({"exports":[{"dest":"/s/?","dest-hex":"2f732fff"}]})");
  ASSERT_EQ(v.size(), 1u);
  EXPECT_EQ(v[0].name, "");
  EXPECT_EQ(v[0].dest, "/s/\xff");
}

TEST(Snapshot, RefusesWhatItDoesNotUnderstand) {
  EXPECT_NE(refusal("").find("not valid JSON"), std::string::npos);
  EXPECT_NE(refusal("[1]").find("expected {\"exports\""), std::string::npos);
  EXPECT_NE(refusal(R"({"exports":{}})").find("non-empty array"), std::string::npos);
  EXPECT_NE(refusal(R"({"exports":[]})").find("non-empty array"), std::string::npos);
  EXPECT_NE(refusal(R"({"exports":[1]})").find("must be an object"), std::string::npos);
  EXPECT_NE(refusal(R"({"exports":[{"name":"a"}]})").find("\"dest\""), std::string::npos);
  EXPECT_NE(refusal(R"({"exports":[{"dest":"/a","x":1}]})").find("unknown member \"x\""),
            std::string::npos);
  EXPECT_NE(refusal(R"({"exports":[{"dest":"/a"}],"all":true})").find("unknown member \"all\""),
            std::string::npos);
  EXPECT_NE(refusal(R"({"exports":[{"dest":"/a","name":3}]})").find("\"name\" must be a string"),
            std::string::npos);
}

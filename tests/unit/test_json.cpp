// Paths in JSON: any bytes survive a round trip, and what is written is valid JSON (UTF-8)
// whatever the path holds.
#include <gtest/gtest.h>

#include "loopdio/error.h"
#include "loopdio/json.h"

using namespace loopdio;

TEST(Json, Utf8PathsAreWrittenAsThey) {
  Json j;
  put_path(j, "file", "/srv/disk \xc3\xa9.img");
  EXPECT_EQ(dump_line(j), "{\"file\":\"/srv/disk \xc3\xa9.img\"}");
  EXPECT_EQ(get_path(j, "file"), "/srv/disk \xc3\xa9.img");
}

TEST(Json, AnyPathBytesSurviveARoundTrip) {
  const std::string path = std::string("/tmp/a\nb\tc\xff\xfe\x80 d\\\"e") + '\x01';
  Json j;
  put_path(j, "file", path);
  std::string text = dump_line(j);
  EXPECT_TRUE(is_utf8(text)) << text;
  EXPECT_EQ(text.find('\n'), std::string::npos) << "one line";
  EXPECT_NE(text.find("\"file-hex\""), std::string::npos) << text;
  Json back = parse_json(text, "test");
  EXPECT_EQ(get_path(back, "file"), path);
  // For people: the valid parts as they are, each bad byte as U+FFFD.
  EXPECT_EQ(back["file"].get<std::string>().find("\xef\xbf\xbd"), 10u);
}

TEST(Json, MalformedInputIsAnErrorNamingIt) {
  EXPECT_THROW(parse_json("{\"a\":", "control reply"), Error);
  Json j = Json::parse(R"({"file-hex":"2f7"})");
  EXPECT_THROW(get_path(j, "file"), Error);
  EXPECT_THROW(get_path(Json::object(), "file"), Error);
}

// `loopdio list`: every export started by loopdio, like `losetup -l`. The state file says
// where an export is; what it does (direct I/O on or off, the engine, the sector size, the
// connections) is asked of the running server through its control socket.
#include <algorithm>
#include <cctype>
#include <cstdio>
#include <iostream>

#include "args.h"
#include "cli.h"
#include "control_client.h"
#include "json.h"
#include "loopdio/error.h"
#include "state.h"

namespace loopdio::cli {
namespace {

using namespace std::chrono_literals;

const CommandHelp kHelp = {
    "list", "[--json]",
    "Lists every export started by loopdio (attached devices and served sockets), with the\n"
    "state each server reports now: NAME (device, socket or URI), BACK-FILE, OFFSET,\n"
    "SIZELIMIT (0: to the end), RO, DIO (direct I/O in effect), AIO (the engines in use,\n"
    "e.g. libaio+sync after a fallback; the one asked for while idle), LOG-SEC\n"
    "(minimum block size), CONNS (client connections now), PID (the server). An export\n"
    "whose server is gone is removed, not listed.\n"};

const char* const kColumns[] = {"name", "back-file", "offset", "sizelimit", "ro", "dio", "aio",
                                "log-sec", "conns", "pid"};

// One row: what the server says, or, when it does not answer, what the state file says
// with the live columns left null.
JsonObject row(const ExportState& s, bool& unanswered) {
  JsonObject r;
  r.set("name", s.display_name()).set("kind", s.kind);
  try {
    JsonObject st = control_call(s.control, "status", 5s);
    r.set("back-file", st.str("file")).set("offset", st.num("offset"));
    // served_readonly also counts nbdkit -r; the state file's read_only covers a server that
    // has had no connection yet.
    bool ro = st.opt_boolean("served_readonly").value_or(st.boolean("readonly")) || s.read_only;
    r.set("sizelimit", st.num_or("sizelimit", 0)).set("ro", ro);
    // The engines the connections really use (a fallback shows), else the one asked for.
    r.set("dio", st.boolean("dio")).set("aio", st.str_or("aio_in_use", st.str("aio")));
    r.set("log-sec", st.num("log_sec"));
    r.set("conns", st.num_or("connections", 0)).set("pid", st.num("pid"));
    if (auto engines = st.value("engines")) r.set("engines", *engines);  // connections by engine
  } catch (const Error& e) {
    std::fprintf(stderr, "loopdio: %s: %s\n", s.display_name().c_str(), e.what());
    unanswered = true;
    r.set("back-file", s.requested.file).set("offset", static_cast<std::int64_t>(s.requested.offset));
    r.set("sizelimit", static_cast<std::int64_t>(s.requested.sizelimit.value_or(0)));
    r.set("ro", s.read_only).set("dio", nullptr).set("aio", std::string(to_string(s.requested.engine)));
    r.set("log-sec", nullptr).set("conns", nullptr).set("pid", std::int64_t{s.pid});
  }
  r.set("uri", s.uri).set("control", s.control);
  return r;
}

std::string cell(const JsonObject& r, const char* key) {
  if (r.is_null(key)) return "-";
  std::string k = key;
  if (k == "ro" || k == "dio") return r.boolean(key) ? "1" : "0";
  if (k == "name" || k == "back-file" || k == "aio") return r.str(key);
  return std::to_string(r.num(key));
}

void print_table(const std::vector<JsonObject>& rows) {
  std::vector<std::vector<std::string>> cells;
  std::vector<std::string> header;
  for (const char* c : kColumns) {
    header.push_back(c);
    std::transform(header.back().begin(), header.back().end(), header.back().begin(), ::toupper);
  }
  cells.push_back(header);
  for (const JsonObject& r : rows) {
    std::vector<std::string> line;
    for (const char* c : kColumns) line.push_back(cell(r, c));
    cells.push_back(line);
  }
  std::vector<std::size_t> width(header.size(), 0);
  for (const auto& line : cells)
    for (std::size_t i = 0; i < line.size(); ++i) width[i] = std::max(width[i], line[i].size());
  for (const auto& line : cells) {
    std::string out;
    for (std::size_t i = 0; i < line.size(); ++i) {
      bool last = i + 1 == line.size();
      out += line[i] + (last ? "" : std::string(width[i] - line[i].size() + 1, ' '));
    }
    std::cout << out << "\n";
  }
}

}  // namespace

int run_list(const Args& args) {
  po::options_description visible("Options");
  visible.add_options()("json,J", "Print a JSON array of objects (keys as the columns, in lower case).");
  auto vm = parse_args(kHelp, args, visible, {}, {});
  if (!vm) return kExitOk;

  StateDir dir;
  StateLock lock(dir);
  bool unanswered = false;
  std::vector<JsonObject> rows;
  for (const ExportState& s : dir.live()) rows.push_back(row(s, unanswered));
  if (vm->count("json"))
    std::cout << json_array(rows) << std::endl;
  else if (!rows.empty())
    print_table(rows);
  return unanswered ? kExitFailure : kExitOk;
}

}  // namespace loopdio::cli

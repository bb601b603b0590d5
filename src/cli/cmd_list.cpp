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
#include "json_read.h"
#include "loopdio/error.h"
#include "loopdio/json.h"
#include "safe_text.h"
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
    "(minimum block size), CONNS (client connections now), PID (the server). A server of a\n"
    "directory shows a row per image in it, named by the export's URI; the live columns of\n"
    "an export no client has open are \"-\". An export\n"
    "whose server is gone is removed, not listed. In the table, control characters,\n"
    "bytes that are not UTF-8 and backslashes in paths are shown as \\xHH; --json gives\n"
    "a path that is not UTF-8 with U+FFFD, and its exact bytes under \"<key>-hex\".\n"};

const char* const kColumns[] = {"name", "back-file", "offset", "sizelimit", "ro", "dio", "aio",
                                "log-sec", "conns", "pid"};

// The image the server serves. A plugin that sends no "file-hex" writes a path that is not
// UTF-8 as raw bytes, which the reply parser replaced with U+FFFD: the state file has the
// exact bytes (the server was started with them).
std::string back_file(const Json& st, const ExportState& s) {
  if (!st.contains("file-hex") && !is_utf8(s.requested.file)) return s.requested.file;
  return get_path(st, "file");
}

// The columns one export's status gives (a server's, or one export of a directory's).
Json export_columns(const Json& st, const ExportState& s) {
  Json r;
  std::string what = "control socket " + s.control;
  put_path(r, "back-file", back_file(st, s));
  r["offset"] = member<std::int64_t>(st, "offset", what);
  r["sizelimit"] = opt_member<std::int64_t>(st, "sizelimit", what).value_or(0);
  // served_readonly also counts nbdkit -r; the state file's read_only covers a server that
  // has had no connection yet.
  auto served_ro = opt_member<bool>(st, "served_readonly", what);
  r["ro"] = served_ro.value_or(member<bool>(st, "readonly", what)) || s.read_only;
  r["dio"] = member<bool>(st, "dio", what);
  // The engines the connections really use (a fallback shows), else the one asked for.
  auto in_use = opt_member<std::string>(st, "aio_in_use", what);
  r["aio"] = in_use ? *in_use : member<std::string>(st, "aio", what);
  r["log-sec"] = member<std::int64_t>(st, "log_sec", what);
  r["conns"] = opt_member<std::int64_t>(st, "connections", what).value_or(0);
  if (st.contains("engines")) r["engines"] = st["engines"];  // connections by engine
  if (st.contains("limits")) r["limits"] = st["limits"];     // throttle limits (--json only)
  if (st.contains("throttled_seconds")) r["throttled-seconds"] = st["throttled_seconds"];
  return r;
}

// An export of a directory that no connection has open: its path, nothing live.
Json closed_columns(const Json& e, const ExportState& s) {
  Json r;
  put_path(r, "back-file", get_path(e, "file"));
  r["offset"] = 0;
  r["sizelimit"] = 0;
  r["ro"] = s.read_only;
  r["dio"] = nullptr;
  r["aio"] = to_string(s.requested.engine);
  r["log-sec"] = nullptr;
  r["conns"] = 0;
  if (e.contains("limits")) r["limits"] = e["limits"];
  return r;
}

// The rows the server reports: one, or one per export of a directory. Throws
// loopdio::Error when it does not answer.
std::vector<Json> live_rows(const ExportState& s) {
  Json st = control_call(s.control, "status", 5s);
  std::string what = "control socket " + s.control;
  auto pid = member<std::int64_t>(st, "pid", what);
  std::vector<Json> rows;
  if (!st.contains("exports")) {
    Json r;
    put_path(r, "name", s.display_name());
    r.update(export_columns(st, s));
    r["pid"] = pid;
    rows.push_back(std::move(r));
    return rows;
  }
  for (const Json& e : st.at("exports")) {
    Json r;
    std::string name = get_path(e, "name");
    put_path(r, "name", export_uri(s, name));
    put_path(r, "export", name);
    r.update(member<bool>(e, "open", what) ? export_columns(e, s) : closed_columns(e, s));
    r["pid"] = pid;
    rows.push_back(std::move(r));
  }
  return rows;
}

// What the state file says, with the columns only the server knows left null.
Json state_columns(const ExportState& s) {
  Json r;
  put_path(r, "back-file", image_of(s.requested));
  r["offset"] = s.requested.offset;
  r["sizelimit"] = s.requested.sizelimit.value_or(0);
  r["ro"] = s.read_only;
  r["dio"] = nullptr;
  r["aio"] = to_string(s.requested.engine);
  r["log-sec"] = nullptr;
  r["conns"] = nullptr;
  r["pid"] = s.pid;
  return r;
}

std::vector<Json> rows_of(const ExportState& s, bool& unanswered) {
  std::vector<Json> rows;
  try {
    rows = live_rows(s);
  } catch (const Error& e) {
    std::fprintf(stderr, "loopdio: %s: %s\n", safe_encode(s.display_name()).c_str(),
                 safe_encode(e.what()).c_str());
    unanswered = true;
    Json r;
    put_path(r, "name", s.display_name());
    r.update(state_columns(s));
    rows.push_back(std::move(r));
  }
  for (Json& r : rows) {
    r["kind"] = s.kind;
    put_path(r, "uri", r.contains("export") ? get_path(r, "name") : s.uri);
    put_path(r, "control", s.control);
  }
  return rows;
}

// One cell of the table, safely encoded: a path is shown from its exact bytes.
std::string cell(const Json& r, const std::string& key) {
  const Json& v = r.at(key);
  if (v.is_null()) return "-";
  if (v.is_boolean()) return v.get<bool>() ? "1" : "0";
  if (key == "name" || key == "back-file") return safe_encode(get_path(r, key));
  if (v.is_string()) return safe_encode(v.get<std::string>());
  return v.dump();
}

void print_table(const std::vector<Json>& rows) {
  std::vector<std::vector<std::string>> cells;
  std::vector<std::string> header;
  for (const char* c : kColumns) {
    header.push_back(c);
    std::transform(header.back().begin(), header.back().end(), header.back().begin(), ::toupper);
  }
  cells.push_back(header);
  for (const Json& r : rows) {
    std::vector<std::string> line;
    for (const char* c : kColumns) line.push_back(cell(r, c));
    cells.push_back(line);
  }
  std::vector<std::size_t> width(header.size(), 0);
  for (const auto& line : cells)
    for (std::size_t i = 0; i < line.size(); ++i)
      width[i] = std::max(width[i], display_width(line[i]));
  for (const auto& line : cells) {
    std::string out;
    for (std::size_t i = 0; i < line.size(); ++i) {
      bool last = i + 1 == line.size();
      out += line[i] + (last ? "" : std::string(width[i] - display_width(line[i]) + 1, ' '));
    }
    std::cout << out << "\n";
  }
}

// A JSON array, one object a line.
void print_json(const std::vector<Json>& rows) {
  if (rows.empty()) {
    std::cout << "[]" << std::endl;
    return;
  }
  std::cout << "[\n";
  for (std::size_t i = 0; i < rows.size(); ++i)
    std::cout << "  " << dump_line(rows[i]) << (i + 1 < rows.size() ? ",\n" : "\n");
  std::cout << "]" << std::endl;
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
  std::vector<Json> rows;
  for (const ExportState& s : dir.live())
    for (Json& r : rows_of(s, unanswered)) rows.push_back(std::move(r));
  if (vm->count("json"))
    print_json(rows);
  else if (!rows.empty())
    print_table(rows);
  return unanswered ? kExitFailure : kExitOk;
}

}  // namespace loopdio::cli

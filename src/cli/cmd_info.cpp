// `loopdio info`: what any NBD export offers (loopdio's or not), through libnbd: size,
// block sizes, flags and the description (loopdio's says whether direct I/O is on and
// why not). The connection is made with libnbd's asynchronous API so that an export that
// does not answer is reported after --timeout instead of hanging.
#include <libnbd.h>
#include <poll.h>

#include <cstdlib>
#include <iostream>
#include <memory>

#include "args.h"
#include "cli.h"
#include "loopdio/backing.h"
#include "loopdio/error.h"
#include "loopdio/json.h"
#include "safe_text.h"

namespace loopdio::cli {
namespace {

const CommandHelp kHelp = {
    "info", "[options] URI",
    "Prints the size, block sizes, flags and description of an NBD export, e.g.\n"
    "nbd://host:10809, nbd+unix:///?socket=/srv/disk.sock, or nbds://... with\n"
    "tls-psk-file=FILE in the query.\n"};

struct HandleCloser {
  void operator()(struct nbd_handle* h) const { nbd_close(h); }
};
using Handle = std::unique_ptr<struct nbd_handle, HandleCloser>;

[[noreturn]] void nbd_failed(const std::string& uri) {
  const char* e = nbd_get_error();
  throw Error(uri + ": " + (e ? e : "libnbd failed"), nbd_get_errno());
}

Handle connect(const std::string& uri, int timeout_s) {
  Handle h(nbd_create());
  if (!h) nbd_failed(uri);
  if (nbd_set_uri_allow_local_file(h.get(), true) == -1 || nbd_set_full_info(h.get(), true) == -1)
    nbd_failed(uri);
  if (nbd_aio_connect_uri(h.get(), uri.c_str()) == -1) nbd_failed(uri);
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(timeout_s);
  while (nbd_aio_is_connecting(h.get())) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0)
      throw Error(uri + ": the export does not answer (no handshake within " + std::to_string(timeout_s) + " s)");
    if (nbd_poll(h.get(), static_cast<int>(left.count())) == -1) nbd_failed(uri);
  }
  if (!nbd_aio_is_ready(h.get())) nbd_failed(uri);
  return h;
}

std::string take_string(char* s) {
  std::string r = s ? s : "";
  std::free(s);
  return r;
}

Json describe(struct nbd_handle* h, const std::string& uri) {
  Json j;
  put_path(j, "uri", uri);
  put_path(j, "export-name", take_string(nbd_get_export_name(h)));
  char* canonical = nbd_get_canonical_export_name(h);
  if (canonical)
    put_path(j, "canonical-name", take_string(canonical));
  else
    j["canonical-name"] = nullptr;
  int64_t size = nbd_get_size(h);
  if (size < 0) nbd_failed(uri);
  j["size"] = size;
  j["block-minimum"] = nbd_get_block_size(h, LIBNBD_SIZE_MINIMUM);
  j["block-preferred"] = nbd_get_block_size(h, LIBNBD_SIZE_PREFERRED);
  j["block-maximum"] = nbd_get_block_size(h, LIBNBD_SIZE_MAXIMUM);
  j["read-only"] = nbd_is_read_only(h) == 1;
  j["rotational"] = nbd_is_rotational(h) == 1;
  j["can-flush"] = nbd_can_flush(h) == 1;
  j["can-fua"] = nbd_can_fua(h) == 1;
  j["can-multi-conn"] = nbd_can_multi_conn(h) == 1;
  j["can-trim"] = nbd_can_trim(h) == 1;
  j["can-zero"] = nbd_can_zero(h) == 1;
  j["can-fast-zero"] = nbd_can_fast_zero(h) == 1;
  j["can-cache"] = nbd_can_cache(h) == 1;
  j["can-df"] = nbd_can_df(h) == 1;
  // The description names the image, whose path may be any bytes.
  char* desc = nbd_get_export_description(h);
  if (desc)
    put_path(j, "description", take_string(desc));
  else
    j["description"] = nullptr;
  const char* proto = nbd_get_protocol(h);
  j["protocol"] = proto ? proto : "?";
  j["tls"] = nbd_get_tls_negotiated(h) == 1;
  return j;
}

void print_human(const Json& j) {
  auto yes = [&](const char* k) { return j.at(k).get<bool>(); };
  auto num = [&](const char* k) { return j.at(k).get<std::int64_t>(); };
  std::string flags;
  for (const char* k : {"can-flush", "can-fua", "can-multi-conn", "can-trim", "can-zero",
                        "can-fast-zero", "can-cache", "can-df"})
    if (yes(k)) flags += std::string(flags.empty() ? "" : " ") + (k + 4);
  if (yes("rotational")) flags += " rotational";
  std::string name =
      get_path(j, j.at("canonical-name").is_null() ? "export-name" : "canonical-name");
  std::string desc = j.at("description").is_null() ? "(none)" : safe_encode(get_path(j, "description"));
  std::cout << "uri:          " << safe_encode(get_path(j, "uri")) << "\n"
            << "export name:  \"" << safe_encode(name) << "\"\n"
            << "size:         " << num("size") << " ("
            << human_size(static_cast<std::uint64_t>(num("size"))) << ")\n"
            << "block sizes:  minimum " << num("block-minimum") << ", preferred " << num("block-preferred")
            << ", maximum " << num("block-maximum") << "\n"
            << "read-only:    " << (yes("read-only") ? "yes" : "no") << "\n"
            << "flags:        " << (flags.empty() ? "none" : flags) << "\n"
            << "protocol:     " << j.at("protocol").get<std::string>()
            << (yes("tls") ? ", TLS" : ", no TLS") << "\n"
            << "description:  " << desc << "\n";
}

}  // namespace

int run_info(const Args& args) {
  po::options_description visible("Options");
  visible.add_options()
      ("json,J", "Print one JSON object.")
      ("timeout", po::value<int>()->value_name("SECONDS")->default_value(10),
       "Give up on an export that has not completed the handshake by then.");
  po::options_description hidden;
  hidden.add_options()("uri", po::value<std::string>());
  po::positional_options_description pos;
  pos.add("uri", 1);
  auto vm = parse_args(kHelp, args, visible, hidden, pos);
  if (!vm) return kExitOk;
  if (!vm->count("uri")) throw UsageError("info: which export? (loopdio info URI)");
  int timeout = vm->at("timeout").as<int>();
  if (timeout < 1) throw UsageError("info: --timeout: expected at least 1 second");

  std::string uri = vm->at("uri").as<std::string>();
  Handle h = connect(uri, timeout);
  Json j = describe(h.get(), uri);
  nbd_shutdown(h.get(), 0);
  if (vm->count("json"))
    std::cout << dump_line(j) << std::endl;
  else
    print_human(j);
  return kExitOk;
}

}  // namespace loopdio::cli

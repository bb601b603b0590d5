#!/usr/bin/env bash
# Live statistics: a known workload of every NBD command, then every counter checked to the
# request through the control socket's `stats` (requests, bytes, errors by errno,
# read-modify-writes, bounced bytes, latency histograms), and the `metrics` text parsed by
# the Prometheus project's own parser (python3-prometheus-client) with the same numbers.
source "$(dirname "$0")/lib.sh"
require_root
require nbdkit

mnt=$(make_fs ext4 128M)
random_file "$mnt/s.img" $((8 << 20))
start_server -- file="$mnt/s.img" control="$T/ctl"

$PYTHON - "$URI" "$T/ctl" <<'PY' || fail "statistics"
import json, socket, sys, time, nbd
from prometheus_client.parser import text_string_to_metric_families

uri, ctl = sys.argv[1:]

def control(cmd):
    s = socket.socket(socket.AF_UNIX); s.connect(ctl); s.sendall(cmd.encode() + b"\n")
    buf = b""
    while not buf.endswith(b"\n"):
        buf += s.recv(1 << 20)
    return json.loads(buf)

h = nbd.NBD(); h.set_strict_mode(0); h.add_meta_context("base:allocation"); h.connect_uri(uri)
for k in range(10): h.pread(4096, k * 4096)                          # read: 10, 40960 bytes
for k in range(4): h.pwrite(b"u" * 1000, 100 + k * 8192)             # 4 read-modify-writes
for k in range(3): h.pwrite(b"a" * 8192, (k + 16) * 65536)           # write: 7, 28576 bytes
for k in range(2): h.flush()                                         # flush: 2
for k in range(3): h.trim(65536, (k + 32) * 65536)                   # trim: 3, 196608 bytes
for k in range(2): h.zero(65536, (k + 48) * 65536)                   # zero: 2 done
try:                                                                 # + 1 refused: ENOTSUP
    h.zero(100, 5000, nbd.CMD_FLAG_FAST_ZERO)
    raise AssertionError("a fast zero of 100 bytes was accepted")
except nbd.Error as e:
    assert e.errno == "ENOTSUP", e
h.cache(4096, 0)                                                     # cache: 1, 4096 bytes
for k in range(2): h.block_status(65536, k * 65536, lambda *a: 0)    # block_status: 2
h.shutdown()

want = {"read": (10, 40960, 0), "write": (7, 28576, 0), "flush": (2, 0, 0),
        "trim": (3, 196608, 0), "zero": (3, 131072, 1), "cache": (1, 4096, 0),
        "block_status": (2, 131072, 0)}
# nbdkit closes a connection after the client's shutdown returns, on a thread of its own:
# the export counts it until then. Asked again until it is gone (30 s on a loaded machine).
deadline = time.monotonic() + 30
while True:
    st = control("stats")
    assert st["ok"], st
    (x,) = st["exports"]
    if x["connections"] == 0 or time.monotonic() > deadline:
        break
    time.sleep(0.02)
for cmd, (n, nbytes, errors) in want.items():
    got = x["commands"][cmd]
    assert (got["requests"], got["bytes"], got["errors"]) == (n, nbytes, errors), (cmd, got)
    assert sum(got["buckets"]) == n, (cmd, got["buckets"])
    assert n == 0 or 0 < got["p50_us"] <= got["p99_us"] <= got["p999_us"], (cmd, got)
    assert got["latency_ns"] > 0, (cmd, got)
assert x["errors"] == {"EOPNOTSUPP": 1}, x["errors"]  # Linux: ENOTSUP is EOPNOTSUPP
assert x["read_modify_writes"] == 4, x["read_modify_writes"]
assert 4000 <= x["bounced_bytes"] <= 40960 + 28576, x["bounced_bytes"]
assert x["fallbacks"] == 0, x["fallbacks"]
assert x["in_flight"] == 0 and x["connections"] == 0, x
print("stats: every counter as the workload made it:",
      ", ".join(f"{c} {x['commands'][c]['requests']}" for c in want),
      f"| rmw {x['read_modify_writes']} bounced {x['bounced_bytes']} errors {x['errors']}")

text = control("metrics")["text"]
families = {f.name: f for f in text_string_to_metric_families(text)}
def sample(family, name, **labels):
    for s in families[family].samples:
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
            return s.value
    raise AssertionError(f"no sample {name} {labels}")
for cmd, (n, nbytes, errors) in want.items():
    assert sample("loopdio_requests", "loopdio_requests_total", command=cmd) == n, cmd
    assert sample("loopdio_bytes", "loopdio_bytes_total", command=cmd) == nbytes, cmd
    assert families["loopdio_request_duration_seconds"].type == "histogram"
    h_name = "loopdio_request_duration_seconds"
    assert sample(h_name, h_name + "_count", command=cmd) == n, cmd
    assert sample(h_name, h_name + "_bucket", command=cmd, le="+Inf") == n, cmd
assert sample("loopdio_errors", "loopdio_errors_total", errno="EOPNOTSUPP") == 1
assert sample("loopdio_read_modify_writes", "loopdio_read_modify_writes_total") == 4
assert families["loopdio_requests_in_flight"].type == "gauge"
print(f"metrics: {len(families)} families parsed by prometheus_client, the same numbers")
PY
stop_server
pass "statistics counted to the request; Prometheus text parsed"

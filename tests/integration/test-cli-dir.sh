#!/usr/bin/env bash
# The loopdio command with a directory of images: `loopdio serve DIR` serves each image by
# its name and says so; `loopdio list` shows a row per export; `loopdio set --direct-io`
# switches one export and not its neighbours; `loopdio stat` reports a known workload to the
# request (counters, --json, --prometheus parsed by the Prometheus client library, and the
# per-interval rates while I/O runs).
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/cli_lib.sh"
require_root
require nbdkit

LOOPDIO=$LOOPDIO_BUILD/loopdio
export LOOPDIO_RUN_DIR=$T/run
mnt=$(make_fs ext4 256M)
d=$mnt/vms
mkdir "$d"
random_file "$d/vm1.img" $((16 << 20))
random_file "$d/vm2.img" $((16 << 20))
sock=$T/dir.sock

serve_until_ready "$T/serve.out" "$LOOPDIO" serve --unix "$sock" "$d"
grep -q "^serving the images in $d (2 now), each by its name, on nbd+unix:///NAME?socket=$sock" \
  "$T/serve.out" || { cat "$T/serve.out"; fail "serve DIR: where"; }
grep -q "^export vm1.img: loopdio: $d/vm1.img (ext4 file, 16.0 MiB): direct I/O possible, alignment 512 (statx); not open yet" "$T/serve.out" ||
  { cat "$T/serve.out"; fail "serve DIR: descriptions"; }

vm1="nbd+unix:///vm1.img?socket=$sock"
vm2="nbd+unix:///vm2.img?socket=$sock"
"$LOOPDIO" list >"$T/list" || fail "list"
awk -v a="$vm1" -v b="$vm2" -v d="$d" '$1 == a && $2 == d "/vm1.img" { x++ }
  $1 == b && $2 == d "/vm2.img" { y++ } END { exit !(x == 1 && y == 1) }' "$T/list" ||
  { cat "$T/list"; fail "list: one row per export"; }

# A known workload on vm1, through a connection that stays open while list and set look.
$PYTHON - "$sock" <<'PY' &
import sys, time, nbd
h = nbd.NBD(); h.set_strict_mode(0); h.set_export_name("vm1.img"); h.connect_unix(sys.argv[1])
for k in range(50): h.pwrite(b"w" * 4096, k * 4096)
for k in range(30): h.pread(8192, k * 8192)
for k in range(5): h.pwrite(b"u" * 100, 1 + k * 4096)      # 5 read-modify-writes
h.flush()
open(sys.argv[1] + ".done", "w").close()
time.sleep(30)
PY
client=$!
at_exit "kill $client"
wait_until 20 test -e "$sock.done" || fail "the workload did not finish"

"$LOOPDIO" list --json >"$T/list.json"
$PYTHON - "$T/list.json" <<'PY' || fail "list --json with a connection open"
import json, sys
rows = {r["export"]: r for r in json.load(open(sys.argv[1]))}
assert rows["vm1.img"]["conns"] == 1 and rows["vm1.img"]["dio"] is True, rows["vm1.img"]
assert rows["vm2.img"]["dio"] is None and rows["vm2.img"]["conns"] == 0, rows["vm2.img"]
PY

# set: one export, not the other; a directory server needs the export named.
"$LOOPDIO" set --direct-io=off "$vm1" || fail "set vm1 off"
"$LOOPDIO" list --json | grep '"export":"vm1.img"' | grep -q '"dio":false' || fail "vm1 still on"
expect_error 1 "serves a directory: name one of its exports" "$LOOPDIO" set --direct-io=off "$sock"
"$LOOPDIO" set --direct-io=on "$vm1" || fail "set vm1 on"
pass "serve DIR, list per export, set per export"

# stat: every counter of the workload, as totals, JSON and Prometheus text.
"$LOOPDIO" stat "$vm1" >"$T/stat" || fail "stat"
cat "$T/stat"
awk -v e="$vm1" '$1 == e && $2 == 30 && $3 == 55 { ok = 1 } END { exit !ok }' "$T/stat" ||
  fail "stat: reads 30, writes 55"
"$LOOPDIO" stat --json >"$T/stat.json" || fail "stat --json"
"$LOOPDIO" stat --prometheus >"$T/metrics.prom" || fail "stat --prometheus"
$PYTHON - "$T/stat.json" "$T/metrics.prom" "$vm1" <<'PY' || fail "stat numbers"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
stats = {e["export"]: e for e in json.load(open(sys.argv[1]))}
x = stats[sys.argv[3]]
assert x["commands"]["read"]["requests"] == 30 and x["commands"]["read"]["bytes"] == 30 * 8192
assert x["commands"]["write"]["requests"] == 55 and x["commands"]["write"]["bytes"] == 50 * 4096 + 500
assert x["commands"]["flush"]["requests"] == 1 and x["read_modify_writes"] == 5, x
families = {f.name: f for f in text_string_to_metric_families(open(sys.argv[2]).read())}
reads = [s.value for s in families["loopdio_requests"].samples
         if s.labels == {"export": sys.argv[3], "command": "read"}]
assert reads == [30], reads
PY
pass "stat: the workload counted to the request; --json and --prometheus agree"

# stat --interval while I/O runs: rates, not totals.
$PYTHON - "$sock" <<'PY' &
import sys, time, nbd
h = nbd.NBD(); h.set_export_name("vm2.img"); h.connect_unix(sys.argv[1])
end = time.time() + 4
while time.time() < end: h.pread(4096, 0)
PY
load=$!
at_exit "kill $load"
"$LOOPDIO" stat --interval 1 --count 2 --json "$vm2" >"$T/rates" || fail "stat --interval"
wait $load
$PYTHON - "$T/rates" <<'PY' || { cat "$T/rates"; fail "stat --interval: no reads per second"; }
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1])]
assert len(lines) == 2, lines
assert all(l["r/s"] > 10 and l["w/s"] == 0 and l["r_p99_ms"] > 0 for l in lines), lines
print("  r/s:", [round(l["r/s"]) for l in lines])
PY
kill $client 2>/dev/null || true
wait $client 2>/dev/null || true
stop_serve
pass "stat --interval: reads per second while a client reads"

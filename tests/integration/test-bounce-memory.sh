#!/usr/bin/env bash
# The bounce buffers are bounded: 4 connections with 16 unaligned 32 MiB reads in flight each
# (offsets 4096*k+1, so every read goes through a bounce buffer) read the right data, and the
# server's peak RSS (VmHWM) stays within
#   its RSS at start + connections x threads x 32 MiB + bounce-total + 64 MiB,
# where the second term is nbdkit's own: each worker thread keeps a zero-filled request
# buffer as large as the largest request it served, which the plugin cannot change. Timeline:
# every worker thread kept a bounce buffer of its own of up to 8 MiB for its whole life, so
# 4 connections' 64 threads held 512 MiB on top (513 MiB measured), and nothing bounded it. Now requests that need more bounce memory wait for it (never fail).
# Run with bounce-total=16M bounce-per-connection=8M, where the old buffers would show, on
# libaio and io_uring, and with the defaults (numbers printed).
source "$(dirname "$0")/lib.sh"
require_root
require nbdkit

mnt=$(make_fs ext4 512M)
img=$mnt/bounce.img
random_file "$img" $((160 << 20))
conns=4 threads=16 req=$((32 << 20))

rss_kib() { awk -v k="$1:" '$1 == k { print $2 }' "/proc/$SERVER_PID/status"; }

run() {  # ENGINE BOUNCE-TOTAL-MIB [plugin parameters...]
  local engine=$1 total_mib=$2 base peak nbdkit_mib bound what
  shift 2
  what="$engine ${*:-(default bounce sizes)}"
  start_server --threads $threads -- file="$img" aio="$engine" "$@"
  assert_engine "$URI" "$engine"
  base=$(rss_kib VmRSS)
  $PYTHON - "$URI" "$img" $conns $req <<'PY' || fail "$what: reads"
import sys, nbd, nbdtest
uri, path, conns, req = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
handles = [nbdtest.connect(uri, strict=False) for _ in range(conns)]
reads = []  # (handle, cookie, buffer, offset)
for c, h in enumerate(handles):
    for k in range(16):
        off = c * (32 << 20) + 4096 * k + 1
        buf = nbd.Buffer(req)
        reads.append((h, h.aio_pread(buf, off), buf, off))
with open(path, "rb") as f:
    for h, cookie, buf, off in reads:
        while not h.aio_command_completed(cookie):
            h.poll(-1)
        f.seek(off)
        if buf.to_bytearray() != f.read(req):
            raise AssertionError(f"the 32 MiB read at {off} returned wrong data")
for h in handles:
    h.shutdown()
print(f"  {len(reads)} unaligned 32 MiB reads, {conns} connections, all data right")
PY
  peak=$(rss_kib VmHWM)
  nbdkit_mib=$((conns * threads * req >> 20))
  bound=$((base + (nbdkit_mib + total_mib + 64) * 1024))
  echo "$what: peak RSS $((peak >> 10)) MiB (VmHWM); bound $((bound >> 10)) MiB =" \
    "$((base >> 10)) at start + $nbdkit_mib nbdkit's buffers ($conns x $threads x 32)" \
    "+ $total_mib bounce-total + 64 slack; beyond nbdkit's buffers: $(((peak - base) / 1024 - nbdkit_mib)) MiB"
  stop_server
  [ "$peak" -le "$bound" ] || fail "$what: peak RSS $((peak >> 10)) MiB above $((bound >> 10)) MiB"
}

run libaio 16 bounce-total=16M bounce-per-connection=8M
run io_uring 16 bounce-total=16M bounce-per-connection=8M
pass "bounce-total=16M: peak RSS within nbdkit's buffers + 16 MiB + 64 MiB"
run libaio 64
pass "defaults (bounce-total 64M): peak RSS within nbdkit's buffers + 64 MiB + 64 MiB"

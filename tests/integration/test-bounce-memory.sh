#!/usr/bin/env bash
# The bounce buffers are bounded: connections with 16 unaligned 4 MiB reads in flight each
# (offsets 4096*k+1, so every read goes through bounce buffers) read the right data, and the
# bounce pool's own peak (`status` on the control socket: bytes leased + kept for reuse)
# stays within bounce-total, and within the connections' bounce-per-connection where that is
# the smaller. The image's disk is slowed to 32 MiB/s for the server alone (a blkio cgroup
# on its loop device) and the reads are all sent while the server is stopped, so that they
# sit in the plugin together, asking for bounce memory: otherwise nbdkit's own work (zeroing
# a request buffer, sending the reply) dwarfs the plugin's and the pool rarely sees two
# requests at once. Timeline: every worker thread kept a bounce buffer of its own of up to
# 8 MiB for its whole life, so 4 connections' 64 threads held 512 MiB on top (513 MiB
# measured), and nothing bounded it. Now requests that need more bounce memory wait for it
# (never fail). The server's peak RSS is printed and only coarsely bounded: nbdkit's own
# request buffers (connections x threads x 4 MiB, zero-filled, which the plugin cannot
# change) dwarf the bounce memory there.
source "$(dirname "$0")/lib.sh"
require_root
require nbdkit lsblk findmnt

mnt=$(make_fs ext4 512M)
img=$mnt/bounce.img
random_file "$img" $((160 << 20))
threads=16 req=$((4 << 20)) rate=$((32 << 20))

# The slow disk: a cgroup whose reads from the loop device under $mnt are throttled.
disk=$(lsblk -dno MAJ:MIN "$(findmnt -no SOURCE "$mnt")" | tr -d ' ')
if [ -d /sys/fs/cgroup/blkio ]; then  # cgroup v1
  cg=$(mktemp -d /sys/fs/cgroup/blkio/loopdio-test.XXXXXX)
  echo "$disk $rate" >"$cg/blkio.throttle.read_bps_device"
elif grep -qw io /sys/fs/cgroup/cgroup.subtree_control 2>/dev/null; then  # cgroup v2
  cg=$(mktemp -d /sys/fs/cgroup/loopdio-test.XXXXXX)
  echo "$disk rbps=$rate" >"$cg/io.max"
else
  skip "no blkio (cgroup v1) or io (cgroup v2) controller to slow the disk with"
fi
# Runs after every server is gone (cleanups run last first); an exiting server's threads
# may keep the cgroup busy a moment longer.
at_exit "wait_until 10 rmdir $cg"

rss_kib() { awk -v k="$1:" '$1 == k { print $2 }' "/proc/$SERVER_PID/status"; }

# CONNECTIONS: 16 unaligned 4 MiB reads in flight on each, data checked. They are all sent
# while the server is stopped (SIGSTOP): libnbd sends a command only between replies, so
# otherwise a fast server answers each before the next arrives, one at a time.
reads() {
  $PYTHON - "$URI" "$img" "$1" $req "$SERVER_PID" <<'PY'
import os, signal, sys, nbd, nbdtest
uri, path, conns, req, pid = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:])
handles = [nbdtest.connect(uri, strict=False) for _ in range(conns)]
reads = []  # (handle, cookie, buffer, offset)
os.kill(pid, signal.SIGSTOP)
try:
    for c, h in enumerate(handles):
        for k in range(16):
            off = c * (32 << 20) + 4096 * k + 1  # 16 reads within 32 MiB of their own
            buf = nbd.Buffer(req)
            reads.append((h, h.aio_pread(buf, off), buf, off))
    assert all(h.aio_in_flight() == 16 for h in handles), "not every read was sent"
finally:
    os.kill(pid, signal.SIGCONT)
with open(path, "rb") as f:
    for h, cookie, buf, off in reads:
        while not h.aio_command_completed(cookie):
            h.poll(-1)
        f.seek(off)
        if buf.to_bytearray() != f.read(req):
            raise AssertionError(f"the {req >> 20} MiB read at {off} returned wrong data")
for h in handles:
    h.shutdown()
print(f"  {len(reads)} unaligned {req >> 20} MiB reads, {conns} connections, all data right")
PY
}

# check_pool CTL CONNECTIONS TOTAL-MIB PER-CONNECTION-MIB: the pool's peak from `status`
# (leased + kept for reuse) within bounce-total, at least one 4 MiB window (the reads did go
# through it), and the bound pressed: requests waited, or the peak reached it. When the
# connections' bounce-per-connection add up to less than bounce-total, that is the bound
# that must act: requests waited, and the peak stays below twice the connections' share
# (their leases, plus the small buffers of the reads' last blocks kept for reuse), where
# without it the reads would take up to bounce-total.
check_pool() {
  $PYTHON - "$@" <<'PY'
import json, sys
from control_client import ask
ctl, conns, total_mib, per_mib = sys.argv[1], *map(int, sys.argv[2:])
MIB = 1 << 20
(reply,) = ask(ctl, "status")
b = json.loads(reply)["bounce"]
# The server's idea of its bounds must be the parameters given (or the documented defaults).
assert (b["total"], b["per_connection"]) == (total_mib * MIB, per_mib * MIB), b
share = conns * per_mib * MIB
print(f"  bounce pool: peak {b['peak'] / MIB:.1f} MiB, bounce-total {total_mib} MiB, "
      f"{conns} x bounce-per-connection {per_mib} MiB, {b['waits']} waits")
assert b["peak"] <= total_mib * MIB, f"bounce pool peak {b['peak']} above bounce-total"
assert b["peak"] >= 4 * MIB, f"bounce pool peak {b['peak']}: the reads did not go through it"
assert b["leased"] == 0, f"{b['leased']} bytes still leased after every read was answered"
if share < total_mib * MIB:
    assert b["waits"] > 0, "no request waited: bounce-per-connection never acted"
    assert b["peak"] < 2 * share, f"bounce pool peak {b['peak']}: bounce-per-connection not kept"
else:
    assert b["waits"] > 0 or b["peak"] == total_mib * MIB, "the reads never pressed the bound"
PY
}

run() {  # ENGINE CONNECTIONS TOTAL-MIB PER-CONNECTION-MIB [plugin parameters...]
  local engine=$1 conns=$2 total_mib=$3 per_mib=$4 base peak nbdkit_mib bound what ctl
  shift 4
  what="$engine, $conns connections, ${*:-(default bounce sizes)}"
  ctl=$T/ctl-$engine-$conns-$total_mib-$per_mib
  start_server --threads $threads -- file="$img" aio="$engine" control="$ctl" "$@"
  assert_engine "$URI" "$engine"
  echo "$SERVER_PID" >"$cg/cgroup.procs"  # every thread of it, io_uring's workers too
  base=$(rss_kib VmRSS)
  reads "$conns" || fail "$what: reads"
  check_pool "$ctl" "$conns" "$total_mib" "$per_mib" || fail "$what: bounce pool"
  peak=$(rss_kib VmHWM)
  nbdkit_mib=$((conns * threads * req >> 20))
  bound=$((base + (nbdkit_mib + total_mib + 64) * 1024))
  echo "$what: peak RSS $((peak >> 10)) MiB (VmHWM), coarse bound $((bound >> 10)) MiB =" \
    "$((base >> 10)) at start + $nbdkit_mib nbdkit's buffers ($conns x $threads x $((req >> 20)))" \
    "+ $total_mib bounce-total + 64 slack"
  stop_server
  [ "$peak" -le "$bound" ] || fail "$what: peak RSS $((peak >> 10)) MiB above $((bound >> 10)) MiB"
}

run libaio 4 16 8 bounce-total=16M bounce-per-connection=8M
run io_uring 4 16 8 bounce-total=16M bounce-per-connection=8M
pass "bounce-total=16M, 4 connections: the bounce pool's peak within 16 MiB"
run libaio 1 128 4 bounce-total=128M bounce-per-connection=4M
pass "bounce-per-connection=4M, 1 connection: requests waited, the pool's peak below 8 MiB"
run libaio 4 64 16
pass "defaults, 4 connections: the bounce pool's peak within bounce-total (64 MiB)"

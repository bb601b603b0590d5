#!/usr/bin/env bash
# A noisy neighbour cannot hold up a quiet one. One server, dir= with two exports on two
# filesystems: a on ext4 on a loop device of its own, which the blkio controller makes
# slow for the server (32 MiB/s each way), b on a tmpfs of its own. Export a gets the worst
# load a client can send: 8 connections x 16 reads and writes in flight, 1-64 MiB, half
# unaligned; the server closes a connection that sends more than 32 MiB (the client opens
# another), and requests fail with ENOMEM once the memory budget is full (counted, expected).
# Export b serves 4 KiB reads and writes at depth 1, every read checked against a shadow;
# measured alone first (a idle), then under a's load, then while a's disk hangs (throttled to
# 1 byte/s) for 15 s. Under load and during the hang none of b's requests takes 200 ms or
# fails, its p99 stays under 20 ms, its data verifies, newcomers to b are served within 5 s
# (one that nbdkit drops, or whose first read fails with ENOMEM while a's buffers hold the
# whole of memory-max, tries again: up to 5 times, counted), and status, stats and metrics on
# the control socket, asked every 0.5 s, answer within 1 s (a flush asked during the hang may
# wait for a's disk). Released, a's connections all complete requests
# again. b's p99 against alone is printed, not asserted at 3x: on 2 CPUs it came out 5-16x
# alone, and 9-11x with a's load served by a second server that shares nothing with b
# (LOOPDIO_NOISY_REFERENCE=1), so the CPU time nbdkit spends on requests it refuses (each
# buffer allocated and zeroed, each refused write's payload read 8 KiB at a time, before any
# plugin sees the request) is what b loses, wherever a is served.
#
# What is measured is what the server's clients share inside it (memory, bounce buffers, AIO
# contexts, slots, locks, the server's own CPU time), not the machine: the test runs in a cpu
# cgroup with the most weight cgroup v1 gives, so that other processes on a busy machine do
# not decide the numbers; in it the server and, apart from it, the quiet client have equal
# shares, and the noisy client (not the server) the weight of nice -n 19. b is on tmpfs,
# whose I/O runs in the server's threads, not in the kernel workers that a loop device's I/O
# waits for (these compete with the whole machine). The numbers are printed, with where the
# slowest quiet requests' time went (running, waiting for a CPU, or neither: waiting for I/O
# or a lock).
source "$(dirname "$0")/lib.sh"
require_root
require nbdkit findmnt
blkio=/sys/fs/cgroup/blkio
memcg=/sys/fs/cgroup/memory
cpucg=/sys/fs/cgroup/cpu
[ -f $blkio/blkio.throttle.read_bps_device ] || kernel_lacks "no cgroup v1 blkio throttle at $blkio"
[ -f $memcg/memory.limit_in_bytes ] || kernel_lacks "no cgroup v1 memory controller at $memcg"
[ -f $cpucg/cpu.shares ] || kernel_lacks "no cgroup v1 cpu controller at $cpucg"

# tmpfs_dir MIB: a tmpfs of its own; prints its mount point.
tmpfs_dir() {
  local d
  d=$(mktemp -d "$T/tmpfs.XXXX")
  mount -t tmpfs -o size="$1M" tmpfs "$d"
  at_exit "umount -l $d"
  echo "$d"
}

# loop_fs MIB: ext4 on a loop device of its own, whose image lives in a tmpfs of its own (no
# host disk, no writeback shared with anything); prints the mount point.
loop_fs() {
  local store mnt dev
  store=$(tmpfs_dir $(($1 + 16)))
  truncate -s "$1M" "$store/disk.img"
  dev=$(losetup -f --show "$store/disk.img")
  at_exit "losetup -d $dev"
  mkfs.ext4 -q -F "$dev"
  mnt=$(mktemp -d "$T/mnt.XXXX")
  mount "$dev" "$mnt"
  at_exit "umount -l $mnt"
  echo "$mnt"
}

slow_bps=$((32 << 20))
mnt_a=$(loop_fs 300)
mnt_b=$(tmpfs_dir 80)
dev_a=$(findmnt -n -o MAJ:MIN --target "$mnt_a" | tr -d ' ')
# Written, not allocated: reads of unwritten extents would never reach the disk.
dd if=/dev/zero of="$mnt_a/a.img" bs=1M count=256 oflag=direct status=none
random_file "$mnt_b/b.img" $((64 << 20))
dir=$T/exports
mkdir "$dir"
for x in a b; do
  mnt=mnt_$x
  touch "$dir/$x"
  mount --bind "${!mnt}/$x.img" "$dir/$x"
  at_exit "umount $dir/$x"
done

# The server's cgroups: blkio (a's throttle), memory (a server that does not bound its
# memory is stopped at 3 GiB, not by the host's OOM killer), cpu: the test's CPU group (the
# most weight cgroup v1 gives) holds two equal halves, the server and the clients it
# measures with (the quiet client, the poller), as if these ran on a machine of their own,
# and the noisy client with the weight of nice 19 (it gets what they leave).
cg=loopdio-noisy.$$
groups="$cpucg/$cg/server $cpucg/$cg/clients $cpucg/$cg/noisy $cpucg/$cg $blkio/$cg $memcg/$cg"
mkdir $blkio/$cg $memcg/$cg $cpucg/$cg $cpucg/$cg/server $cpucg/$cg/clients $cpucg/$cg/noisy
# A group can go only once its processes have: a few seconds after the server is killed.
remove_groups() {
  local i
  for i in $(seq 100); do
    rmdir $groups 2>/dev/null || true
    [ -n "$(ls -d $groups 2>/dev/null)" ] || return 0
    sleep 0.1
  done
}
at_exit remove_groups
echo $((3 << 30)) >$memcg/$cg/memory.limit_in_bytes
echo 262144 >$cpucg/$cg/cpu.shares
echo 15 >$cpucg/$cg/noisy/cpu.shares
echo "$dev_a $slow_bps" >$blkio/$cg/blkio.throttle.read_bps_device
echo "$dev_a $slow_bps" >$blkio/$cg/blkio.throttle.write_bps_device
cat >"$T/in-server-cgroups" <<EOF
#!/bin/sh
for c in $blkio/$cg $memcg/$cg $cpucg/$cg/server; do echo \$\$ >\$c/cgroup.procs || exit 1; done
exec "\$@"
EOF
cat >"$T/in-clients-cgroup" <<EOF
#!/bin/sh
echo \$\$ >$cpucg/$cg/clients/cgroup.procs && exec "\$@"
EOF
chmod +x "$T/in-server-cgroups" "$T/in-clients-cgroup"

# LOOPDIO_NOISY_REFERENCE=1: the noisy load goes to a second server in the same cgroups,
# which shares nothing in loopdio with the quiet export's: what is left is the machine's.
noisy_sock=()
if [ -n "${LOOPDIO_NOISY_REFERENCE:-}" ]; then
  SERVER_WRAPPER=$T/in-server-cgroups start_server -- dir="$dir"
  noisy_sock=(--noisy-sock "$SOCK")
fi
SERVER_WRAPPER=$T/in-server-cgroups start_server -- dir="$dir" control="$T/ctl"
# First at exit: a's disk released, so that the server can end.
for rw in read write; do at_exit "echo '$dev_a 0' >$blkio/$cg/blkio.throttle.${rw}_bps_device"; done
grep -qx "$SERVER_PID" $blkio/$cg/cgroup.procs || fail "the server is not in $blkio/$cg"

rc=0
"$T/in-clients-cgroup" $PYTHON "$TESTS_DIR/neighbours.py" run --sock "$SOCK" --ctl "$T/ctl" \
  --blkio $blkio/$cg --dev "$dev_a" --noisy-cpu $cpucg/$cg/noisy --tmp "$T" \
  "${noisy_sock[@]}" || rc=$?
$PYTHON - "$T/ctl" <<'PY' || rc=1
import json, sys, control_client
r = json.loads(control_client.ask(sys.argv[1], "status")[0])["memory_reserve"]
print(f"server's reserve for its own work: {r['size'] >> 20} MiB, at most {r['peak'] >> 10} KiB "
      f"used; {r['fallbacks']} allocations malloc refused were served from it, {r['refused']} "
      "were not")
PY
echo "server's memory cgroup: peak $(($(cat $memcg/$cg/memory.max_usage_in_bytes) >> 20)) MiB," \
  "limit reached $(cat $memcg/$cg/memory.failcnt) times; its messages (numbers elided):"
sed -E 's/[0-9]+/N/g' "$SERVER_LOG" | sort | uniq -c | sort -rn | head -12
[ $rc -eq 0 ] || fail "the quiet export was held up by the noisy one (numbers above)"
stop_server
pass "a noisy export on a slow, then hung, disk did not hold up the quiet one"

#!/usr/bin/env bash
# Regression: fallback notices were lost when nbdkit ran in the background (its default)
# without -v. They went to stderr and nbdkit_debug, and a backgrounded nbdkit points stderr
# at /dev/null: a kernel feature switched off at run time (here: hole punching, which ramfs
# refuses) left no trace anywhere. Now they go to syslog when stderr leads nowhere, and to
# stderr otherwise (the foreground, systemd's journal).
# syslog is caught by a socket of the test's own mounted over /dev/log in a private mount
# namespace, so the host's logger (if any) is left alone.
source "$(dirname "$0")/lib.sh"
require_root
require nbdkit unshare

mnt=$(mktemp -d "$T/ramfs.XXXX")
mount -t ramfs ramfs "$mnt"
at_exit "umount -l $mnt"
truncate -s 8M "$mnt/disk.img"

# /dev/log must exist to be mounted over; a placeholder when the host has no logger.
if [ ! -e /dev/log ]; then
  touch /dev/log
  at_exit "rm -f /dev/log"
fi
$PYTHON - "$T/log.sock" "$T/syslog.txt" <<'PY' &
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
with open(sys.argv[2], "ab", buffering=0) as out:
    while True:
        out.write(s.recv(65536) + b"\n")
PY
listener=$!
at_exit "kill $listener"
for _ in $(seq 100); do [ -S "$T/log.sock" ] && break; sleep 0.05; done

trim() {  # a trim makes the plugin try to punch a hole, which ramfs refuses
  $PYTHON -c '
import sys, nbd
h = nbd.NBD(); h.connect_uri(sys.argv[1]); h.trim(1 << 20, 0); h.shutdown()' "$1"
}

# The background: no -f, no -v.
unshare -m --propagation private sh -c '
  mount --bind "$1" /dev/log && exec nbdkit -P "$2" -U "$3" "$4" file="$5"' \
  _ "$T/log.sock" "$T/pid" "$T/bg.sock" "$PLUGIN" "$mnt/disk.img" ||
  fail "nbdkit did not start in the background"
at_exit "kill \$(cat $T/pid)"
trim "nbd+unix:///?socket=$T/bg.sock" || fail "trim in the background"
for _ in $(seq 50); do grep -q "punching holes" "$T/syslog.txt" 2>/dev/null && break; sleep 0.1; done
grep -a "loopdio: punching holes (fallocate) is not supported by the backing: switched off" \
  "$T/syslog.txt" || { cat "$T/syslog.txt" 2>/dev/null; fail "the notice did not reach syslog"; }
pass "in the background, a fallback notice reaches syslog"

# The foreground: stderr, as systemd's journal reads it.
cp "$mnt/disk.img" "$mnt/fg.img"  # its own image: the background server holds the first
start_server -- file="$mnt/fg.img"
trim "$URI" || fail "trim in the foreground"
grep "loopdio: punching holes (fallocate) is not supported by the backing: switched off" \
  "$SERVER_LOG" || { cat "$SERVER_LOG"; fail "the notice did not reach stderr"; }
stop_server
pass "in the foreground, a fallback notice reaches stderr"

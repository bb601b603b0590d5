#!/usr/bin/env bash
# Regression: `nbdkit -r` served a read-only export but still opened the image read-write.
# nbdkit tells a plugin that clients may not write only when each connection opens, too late
# for the image opened once before; readonly=1 opens it O_RDONLY, and -r without it says so.
source "$(dirname "$0")/lib.sh"
require_root
require nbdkit nbdinfo

mnt=$(make_fs ext4 64M)
random_file "$mnt/ro.img" $((1 << 20))

# The access mode of the server's descriptor for PATH: 0 read-only, 2 read-write.
access_mode() {
  local fd
  for fd in /proc/"$SERVER_PID"/fd/*; do
    [ "$(readlink "$fd")" = "$1" ] || continue
    awk '/^flags:/ { print substr($2, length($2)) % 4; exit }' "/proc/$SERVER_PID/fdinfo/${fd##*/}"
    return
  done
  echo none
}

start_server -r -- file="$mnt/ro.img" readonly=1
nbdinfo --json "$URI" | grep -q '"is_read_only": true' || fail "readonly=1: export not read-only"
[ "$(access_mode "$mnt/ro.img")" = 0 ] || fail "readonly=1: the image is open read-write"
nbdinfo "$URI" | grep -q "read-only (readonly=1)" || fail "the description does not say why"
stop_server
pass "readonly=1 opens the image read-only"

start_server -r -- file="$mnt/ro.img"
nbdinfo --json "$URI" | grep -q '"is_read_only": true' || fail "nbdkit -r: export not read-only"
grep -q "nbdkit -r: clients may not write, but the image is open read-write; readonly=1 opens it read-only" \
  "$SERVER_LOG" || { cat "$SERVER_LOG"; fail "nbdkit -r without readonly=1 is not told"; }
stop_server
pass "nbdkit -r without readonly=1 says how to open the image read-only"

#!/usr/bin/env bash
# Every bad parameter and backing: nbdkit must exit non-zero with one clear error line that
# names the problem, and never crash. The table in docs/loopdio.md lists the same cases.
source "$(dirname "$0")/lib.sh"
require_root
require nbdkit setpriv mkfs.xfs losetup

img=$T/disk.img
truncate -s 1M "$img"
mkfifo "$T/fifo"
mkdir "$T/ramfs"
mount -t ramfs ramfs "$T/ramfs"
at_exit "umount -l $T/ramfs"
truncate -s 1M "$T/ramfs/disk.img"
xfs=$(make_fs xfs4k 512M)
truncate -s 1M "$xfs/disk.img"
install -m 600 /dev/null "$T/secret.img"
chmod 711 "$T"

# expect_refusal "what the message must contain" [nbdkit prefix...] -- plugin parameters...
expect_refusal() {
  local want=$1 pre=()
  shift
  while [ $# -gt 0 ] && [ "$1" != -- ]; do pre+=("$1"); shift; done
  shift
  local rc=0
  "${pre[@]}" timeout 20 nbdkit -U - "$PLUGIN" "$@" --run true >"$T/out" 2>&1 || rc=$?
  [ $rc -ne 0 ] || fail "accepted: $*"
  [ $rc -lt 128 ] && [ $rc -ne 124 ] || { cat "$T/out"; fail "crashed or hung (exit $rc): $*"; }
  grep -qF -- "$want" "$T/out" || { cat "$T/out"; fail "message for '$*' lacks '$want'"; }
  [ "$(grep -c error "$T/out")" -eq 1 ] || { cat "$T/out"; fail "not one error line: $*"; }
  echo "refused: $* -> $(grep error "$T/out")"
}

expect_refusal "file=PATH or dir=DIR is required" --
expect_refusal "file=: empty path" -- file=
expect_refusal "No such file or directory" -- file="$T/missing.img"
expect_refusal "is a directory" -- file="$T"
expect_refusal "is a FIFO" -- file="$T/fifo"
expect_refusal "is a character device" -- file=/dev/null
expect_refusal "Permission denied" setpriv --reuid=65534 --regid=65534 --clear-groups -- file="$T/secret.img"
expect_refusal 'unknown parameter "bogus"' -- file="$img" bogus=1
expect_refusal "directio=maybe: expected auto, 1 (on) or 0 (off)" -- file="$img" directio=maybe
expect_refusal "directio=: expected" -- file="$img" directio=
expect_refusal "aio=posix: expected libaio, io_uring, sync, sync+libaio or sync+io_uring" -- file="$img" aio=posix
expect_refusal "offset=-1: not a size" -- file="$img" offset=-1
expect_refusal "offset=abc: not a size" -- file="$img" offset=abc
expect_refusal "offset=: empty value" -- file="$img" offset=
expect_refusal "offset=12q: not a size: unknown suffix" -- file="$img" offset=12q
expect_refusal "offset=99999999999999999999: too large" -- file="$img" offset=99999999999999999999
expect_refusal "offset=64E: too large" -- file="$img" offset=64E
expect_refusal "offset=2097152: at or beyond the end of $img" -- file="$img" offset=2M
expect_refusal "offset=1048576: at or beyond the end" -- file="$img" offset=1M
expect_refusal "sizelimit=2097152: reaches past the end of $img" -- file="$img" sizelimit=2M
expect_refusal "sizelimit=1048576: reaches past the end" -- file="$img" offset=512 sizelimit=1M
expect_refusal "sizelimit=0: must be greater than zero" -- file="$img" sizelimit=0
expect_refusal "offset=100 is not a multiple of the direct-I/O alignment (512 bytes)" -- file="$img" offset=100 directio=1
expect_refusal "offset=512 is not a multiple of the direct-I/O alignment (4096 bytes)" -- file="$xfs/disk.img" offset=512 directio=1
expect_refusal "sector-size=1000: expected 512, 1024, 2048 or 4096" -- file="$img" sector-size=1000
expect_refusal "sector-size=8192: expected" -- file="$img" sector-size=8192
expect_refusal "sector-size=512: $xfs/disk.img needs direct I/O in multiples of 4096 bytes" -- file="$xfs/disk.img" sector-size=512
expect_refusal "directio=1: not possible: $T/ramfs/disk.img: ramfs refuses O_DIRECT" -- file="$T/ramfs/disk.img" directio=1
expect_refusal "control=$T/disk.img: exists and is not a socket (a regular file)" -- file="$img" control="$img"
expect_refusal "control=$T/nodir/ctl: bind: No such file or directory" -- file="$img" control="$T/nodir/ctl"
expect_refusal "path too long for a Unix socket" -- file="$img" control="$T/$(printf 'x%.0s' $(seq 120))"
expect_refusal "max-connections=0: expected 1 to 4096 connections" -- file="$img" max-connections=0
expect_refusal "bounce-total=100k: must be at least 1M" -- file="$img" bounce-total=100k
expect_refusal "max-handshakes=0: expected 1 to 4096 connections" -- file="$img" max-handshakes=0
expect_refusal "max-connections-per-export=65 is larger than max-connections=64" -- \
  file="$img" max-connections-per-export=65
expect_refusal "memory-max=100M: must be at least 512M" -- file="$img" memory-max=100M
expect_refusal "memory-max=-1: not a size" -- file="$img" memory-max=-1
expect_refusal "is more than a quarter of memory-max=" -- file="$img" memory-max=512M bounce-total=256M
expect_refusal "aio-events=8: expected 16 to 1048576 events" -- file="$img" aio-events=8
expect_refusal "devices= applies to dir=" -- file="$img" devices=1
# One writer per image: a second server on an image another one serves.
nbdkit -f -U "$T/first.sock" "$PLUGIN" file="$img" 2>"$T/first.log" &
first=$!
at_exit "kill $first"
wait_until 10 test -S "$T/first.sock" || fail "the first server did not start"
expect_refusal "served by another process already" -- file="$img"
kill $first
wait $first || true
expect_refusal "bounce-per-connection=33554432 is larger than bounce-total=16777216" -- file="$img" bounce-total=16M bounce-per-connection=32M
expect_refusal "readonly=maybe: expected 1 (yes) or 0 (no)" -- file="$img" readonly=maybe
expect_refusal "file= and dir= exclude each other" -- file="$img" dir="$T"
expect_refusal "offset= and sizelimit= apply to one image (file=), not to dir=" -- dir="$T" offset=4096
expect_refusal "default-export= applies to dir=" -- file="$img" default-export=x
expect_refusal "dir=$T/missing: No such file or directory" -- dir="$T/missing"
expect_refusal "dir=$img: Not a directory" -- dir="$img"

# What is accepted: a fallback that is announced, not refused.
nbdkit -U - "$PLUGIN" file="$T/ramfs/disk.img" --run 'nbdinfo "$uri"' >"$T/out" 2>&1 ||
  fail "directio=auto on ramfs must serve buffered"
grep -q "direct I/O off (.*ramfs refuses O_DIRECT" "$T/out" || { cat "$T/out"; fail "fallback not in the description"; }
grep -q "loopdio: direct I/O off, serving buffered" "$T/out" || fail "fallback not logged"
nbdkit -U - "$PLUGIN" file="$xfs/disk.img" sector-size=512 directio=0 --run true ||
  fail "sector-size=512 with directio=0 must be accepted"
nbdkit -U - "$PLUGIN" file="$img" offset=100 --run 'nbdinfo "$uri"' >"$T/out" 2>&1 || fail "offset=100 auto"
grep -q "direct I/O off (offset=100 is not a multiple" "$T/out" || { cat "$T/out"; fail "offset fallback"; }
pass "every bad input refused with its reason"

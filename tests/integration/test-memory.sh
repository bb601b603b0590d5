#!/usr/bin/env bash
# Memory stays flat: after a whole 256 MiB image is read through loopdio with direct I/O
# (nbdcopy: 4 connections, 256 KiB requests), the image holds at most 1% of its pages in the
# page cache, where nbdkit's own file plugin leaves nearly all of it cached; and the server's
# own peak RSS (VmHWM) stays within
#   its RSS at start + 4 connections x 16 threads x 256 KiB (nbdkit's request buffers,
#   one per worker thread) + 64 MiB (bounce-total, the most the bounce buffers may hold)
#   + 32 MiB slack,
# about 120 MiB: well below the image, so a server that kept what it read would fail.
# libaio and io_uring; prints every number.
source "$(dirname "$0")/lib.sh"
require_root
require nbdkit nbdcopy fincore

mnt=$(make_fs ext4 1G)
img=$mnt/mem.img
random_file "$img" $((256 << 20))
conns=4 threads=16 req=$((256 << 10))

drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }
read_all() { nbdcopy --connections=$conns --request-size=$req -- "$URI" null: || fail "nbdcopy from $URI"; }
rss_kib() { awk -v k="$1:" '$1 == k { print $2 }' "/proc/$SERVER_PID/status"; }

for engine in libaio io_uring; do
  drop_caches
  start_server --threads $threads -- file="$img" directio=1 aio=$engine
  assert_engine "$URI" "$engine"
  base=$(rss_kib VmRSS)
  read_all
  peak=$(rss_kib VmHWM)
  stop_server
  pct=$(cached_percent "$img")
  buffers=$((conns * threads * req >> 10))
  bound=$((base + buffers + (64 + 32) * 1024))
  echo "loopdio ($engine, directio=1): $pct% of the image in the page cache after reading it all"
  echo "  server peak RSS $((peak >> 10)) MiB (VmHWM); bound $((bound >> 10)) MiB = $((base >> 10))" \
    "at start + $((buffers >> 10)) nbdkit's buffers ($conns x $threads x 256 KiB) + 64 bounce-total + 32 slack"
  awk -v p="$pct" 'BEGIN { exit !(p <= 1.0) }' || fail "loopdio left $pct% cached"
  [ "$peak" -le "$bound" ] || fail "$engine: peak RSS $((peak >> 10)) MiB above $((bound >> 10)) MiB"
done

drop_caches
nbdkit -U - file file="$img" --run "nbdcopy --connections=$conns --request-size=$req -- \"\$uri\" null:" ||
  fail "reading through the file plugin"
base=$(cached_percent "$img")
echo "nbdkit file plugin:            $base% of the image in the page cache after reading it all"
awk -v p="$base" 'BEGIN { exit !(p >= 50) }' ||
  fail "the file plugin cached only $base%: this test cannot tell the two apart"
pass "after a full read: loopdio <= 1% of the image cached and its RSS bounded; file plugin $base% cached"

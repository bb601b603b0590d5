#!/usr/bin/env bash
# Memory stays flat: after a whole image is read through loopdio with direct I/O, the image
# holds at most 1% of its pages in the page cache, where nbdkit's own file plugin leaves
# nearly all of it cached. Prints both numbers.
source "$(dirname "$0")/lib.sh"
require_root
require nbdkit nbdcopy fincore

mnt=$(make_fs ext4 1G)
img=$mnt/mem.img
fio_fill() { head -c $((256 << 20)) /dev/urandom >"$1"; }
fio_fill "$img"

read_all() {
  sync
  echo 3 >/proc/sys/vm/drop_caches
  nbdkit -U - "$@" --run 'nbdcopy -- "$uri" null:' || fail "reading through $*"
  cached_percent "$img"
}

for engine in libaio io_uring; do
  pct=$(read_all "$PLUGIN" file="$img" directio=1 aio=$engine)
  echo "loopdio ($engine, directio=1): $pct% of the image in the page cache after reading it all"
  awk -v p="$pct" 'BEGIN { exit !(p <= 1.0) }' || fail "loopdio left $pct% cached"
done
base=$(read_all file file="$img")
echo "nbdkit file plugin:            $base% of the image in the page cache after reading it all"
awk -v p="$base" 'BEGIN { exit !(p >= 50) }' ||
  fail "the file plugin cached only $base%: this test cannot tell the two apart"
pass "page cache after a full read: loopdio <= 1%, file plugin $base%"

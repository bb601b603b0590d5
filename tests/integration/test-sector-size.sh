#!/usr/bin/env bash
# sector-size= sets the advertised minimum block size: accepted when it is a multiple of the
# backing's direct-I/O alignment, refused with the needed alignment otherwise. On a file on
# ext4 (alignment 512) and loop block devices with 512- and 4096-byte sectors.
source "$(dirname "$0")/lib.sh"
require_root
require nbdkit nbdinfo losetup

mnt=$(make_fs ext4 512M)
truncate -s 32M "$mnt/f.img" "$mnt/l512.img" "$mnt/l4k.img"
l512=$(losetup -f --show "$mnt/l512.img")
at_exit "losetup -d $l512"
l4k=$(losetup --sector-size 4096 -f --show "$mnt/l4k.img")
at_exit "losetup -d $l4k"

minimum() {
  nbdkit -U - "$PLUGIN" "$@" --run 'nbdinfo --json "$uri"' |
    $PYTHON -c 'import json,sys; print(json.load(sys.stdin)["exports"][0]["block_size_minimum"])'
}
accepts() {  # accepts WANT-MIN parameters...
  local want=$1 got
  shift
  got=$(minimum "$@") || fail "refused: $*"
  [ "$got" = "$want" ] || fail "$*: minimum block size $got, want $want"
  echo "accepted: $* -> minimum $got"
}
refuses() {  # refuses MESSAGE parameters...
  local want=$1
  shift
  if nbdkit -U - "$PLUGIN" "$@" --run true 2>"$T/err"; then fail "accepted: $*"; fi
  grep -qF "$want" "$T/err" || { cat "$T/err"; fail "$*: message lacks '$want'"; }
  echo "refused: $* -> $(cat "$T/err")"
}

for s in 512 1024 2048 4096; do accepts $s file="$mnt/f.img" sector-size=$s; done
accepts 512 file="$mnt/f.img"
for s in 512 1024 2048 4096; do accepts $s file="$l512" sector-size=$s; done
accepts 4096 file="$l4k"
accepts 4096 file="$l4k" sector-size=4096
for s in 512 1024 2048; do
  refuses "sector-size=$s: $l4k needs direct I/O in multiples of 4096 bytes" file="$l4k" sector-size=$s
done
accepts 512 file="$l4k" sector-size=512 directio=0
refuses "sector-size=3000: expected 512, 1024, 2048 or 4096" file="$mnt/f.img" sector-size=3000

# Data still round-trips with a sector size above the alignment.
start_server -- file="$mnt/f.img" sector-size=4096
qemu-io -f raw "$URI" -c "write -P 0x42 4096 8192" -c "read -P 0x42 4096 8192" >"$T/q" || fail "qemu-io"
grep -q "Pattern verification failed" "$T/q" && fail "sector-size=4096 data"
pass "sector-size accepted and refused as the backing needs"

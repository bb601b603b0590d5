#!/usr/bin/env bash
# When the kernel refuses io_uring (here: kernel.io_uring_disabled=2), aio=io_uring falls
# back to libaio, says so on stderr and in the export description, and serves data.
source "$(dirname "$0")/lib.sh"
require_root
require nbdkit nbdinfo qemu-io

knob=/proc/sys/kernel/io_uring_disabled
[ -w $knob ] || kernel_lacks "no $knob: this kernel cannot switch io_uring off"
old=$(cat $knob)
at_exit "echo $old > $knob"
echo 2 >$knob

mnt=$(make_fs ext4 128M)
truncate -s 16M "$mnt/u.img"
start_server -- file="$mnt/u.img" aio=io_uring
nbdinfo "$URI" >"$T/info"
grep -q "engine libaio" "$T/info" || { cat "$T/info"; fail "the description does not name libaio"; }
qemu-io -f raw "$URI" -c "write -P 0x7e 1000 70000" -c "read -P 0x7e 1000 70000" >"$T/q" || fail "qemu-io"
grep -q "Pattern verification failed" "$T/q" && fail "data through the fallback engine"
stop_server
grep -q "io_uring refused (io_uring_queue_init: Operation not permitted): the export uses libaio instead" "$SERVER_LOG" ||
  { cat "$SERVER_LOG"; fail "the fallback was not logged"; }
echo "$old" >$knob
pass "io_uring refused by the kernel: libaio used, logged and described"

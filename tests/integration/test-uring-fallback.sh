#!/usr/bin/env bash
# When the kernel refuses io_uring, aio=io_uring falls back to libaio, says so on stderr and in
# the export description, and serves data. The refusal comes from tests/tools' no-io-uring, a
# seccomp filter around nbdkit alone that fails io_uring_setup as a kernel built without
# io_uring does (ENOSYS) and as kernel.io_uring_disabled=2 does (EPERM): it works on any
# kernel with seccomp (kernel.io_uring_disabled needs Linux 6.6) and, unlike that sysctl,
# leaves every other process on the machine alone. Without the filter the same server uses
# io_uring, so the test tells the two apart.
source "$(dirname "$0")/lib.sh"
require_root
require nbdkit nbdinfo qemu-io
NO_URING=${LOOPDIO_BUILD:?set LOOPDIO_BUILD to the build directory}/tests/tools/no-io-uring
[ -x "$NO_URING" ] || fail "$NO_URING is not built (tests/tools/CMakeLists.txt)"
rc=0
"$NO_URING" EPERM true || rc=$?
[ $rc -ne 77 ] || kernel_lacks "no seccomp filters (prctl PR_SET_SECCOMP: EINVAL)"
[ $rc -eq 0 ] || fail "no-io-uring does not run"

mnt=$(make_fs ext4 128M)
truncate -s 16M "$mnt/u.img"

start_server -- file="$mnt/u.img" aio=io_uring
assert_engine "$URI" io_uring
stop_server
pass "without the filter: engine io_uring"

declare -A message=([ENOSYS]="Function not implemented" [EPERM]="Operation not permitted")
for err in ENOSYS EPERM; do
  SERVER_WRAPPER="$NO_URING $err" start_server -- file="$mnt/u.img" aio=io_uring
  assert_engine "$URI" libaio
  nbdinfo "$URI" | grep description: | sed 's/^[[:space:]]*/  /'
  qemu-io -f raw "$URI" -c "write -P 0x7e 1000 70000" -c "read -P 0x7e 1000 70000" >"$T/q" ||
    fail "$err: qemu-io"
  grep -q "Pattern verification failed" "$T/q" && fail "$err: data through the fallback engine"
  stop_server
  grep -q "io_uring refused (io_uring_queue_init: ${message[$err]}): the export uses libaio instead" "$SERVER_LOG" ||
    { cat "$SERVER_LOG"; fail "$err: the fallback was not logged"; }
  pass "io_uring_setup fails with $err: libaio used, logged and described"
done

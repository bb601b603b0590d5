# Sourced by every integration test: scratch space on a real filesystem, filesystems of the
# test's choosing (ext4, xfs on a 4K-sector loop device, tmpfs), a real nbdkit loading the
# built plugin, and cleanup on every exit. A tool that is missing fails the test in CI
# (CI=true) and skips it (exit 77) elsewhere; only a kernel that truly lacks a feature (found
# by asking the kernel, never by a missing file alone) skips it everywhere, with the reason.
set -euo pipefail
shopt -s inherit_errexit

: "${LOOPDIO_PLUGIN:?run through ctest, or set LOOPDIO_PLUGIN to build/loopdio.so}"
PLUGIN=$LOOPDIO_PLUGIN
TESTS_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export PYTHONPATH="$TESTS_DIR${PYTHONPATH:+:$PYTHONPATH}"
ENGINES=${LOOPDIO_ENGINES:-libaio io_uring sync sync+libaio}

PYTHON=/usr/bin/python3  # Debian's, which has the libnbd bindings
export PYTHONDONTWRITEBYTECODE=1  # no __pycache__ left in the source tree

T=$(mktemp -d /var/tmp/loopdio-test.XXXXXX)
# A test writes only under $T: anything new in the working directory (ctest's build/tests)
# when it ends fails it.
_cwd_before=$(LC_ALL=C ls -A)
# Cleanup commands go to a file, so that functions run in $(...) subshells can add theirs.
_on_exit() {
  local rc=$? left
  if [ -f "$T/.cleanup" ]; then
    tac "$T/.cleanup" | while read -r cmd; do eval "$cmd" >/dev/null 2>&1 || true; done
  fi
  rm -rf "$T"
  left=$(LC_ALL=C comm -13 <(echo "$_cwd_before") <(LC_ALL=C ls -A) | tr '\n' ' ')
  if [ -n "$left" ] && [ $rc -ne 77 ]; then
    echo "FAIL: the test left files in $PWD: $left" >&2
    [ $rc -ne 0 ] || rc=1
  fi
  exit $rc
}
trap _on_exit EXIT
at_exit() { echo "$*" >>"$T/.cleanup"; }

fail() { echo "FAIL: $*" >&2; exit 1; }
pass() { echo "ok: $*"; }
skip() {
  if [ "${CI:-}" = true ]; then fail "in CI nothing may be skipped: $*"; fi
  echo "SKIP: $*" >&2
  exit 77
}
# Only for a kernel that truly lacks a feature, as the kernel itself answered (ENOSYS, a
# filesystem absent from /proc/filesystems): skipped everywhere, CI included, with the reason.
kernel_lacks() { echo "SKIP (kernel): $*" >&2; exit 77; }

require() {
  local t
  for t in "$@"; do command -v "$t" >/dev/null || skip "$t is not installed (scripts/deps.sh)"; done
}
require_root() { [ "$(id -u)" -eq 0 ] || skip "needs root (loop devices, mounts)"; }

# make_fs KIND SIZE [MOUNT-OPTIONS]: a fresh filesystem mounted under $T; prints the mount
# point. The loop devices are buffered (no --direct-io): the image file under them is their
# volatile cache, which a flush writes out.
#   ext4   ext4 on a 512-byte-sector loop device
#   xfs    xfs on a 512-byte-sector loop device (reflink=1: mkfs.xfs's default)
#   xfs4k  xfs on a 4096-byte-sector loop device (a 4K-native backing)
#   btrfs  btrfs on a 512-byte-sector loop device (at least 128M)
#   tmpfs  tmpfs
make_fs() {
  local kind=$1 size=${2:-512M} mnt dev opts=${3:+-o $3}
  mnt=$(mktemp -d "$T/mnt-$kind.XXXX")
  case $kind in
    tmpfs)
      mount -t tmpfs -o size="$size"${3:+,$3} tmpfs "$mnt"
      ;;
    ext4 | xfs | xfs4k | btrfs)
      truncate -s "$size" "$mnt.img"
      if [ "$kind" = xfs4k ]; then
        dev=$(losetup --sector-size 4096 -f --show "$mnt.img")
        at_exit "losetup -d $dev"
        mkfs.xfs -q -f -s size=4096 "$dev"
      elif [ "$kind" = btrfs ]; then
        dev=$(losetup -f --show "$mnt.img")
        at_exit "losetup -d $dev"
        mkfs.btrfs -q -f "$dev" >/dev/null
      elif [ "$kind" = xfs ]; then
        dev=$(losetup -f --show "$mnt.img")
        at_exit "losetup -d $dev"
        mkfs.xfs -q -f "$dev"
      else
        dev=$(losetup -f --show "$mnt.img")
        at_exit "losetup -d $dev"
        mkfs.ext4 -q -F "$dev"
      fi
      mount $opts "$dev" "$mnt"
      ;;
    *) fail "make_fs: unknown kind $kind" ;;
  esac
  at_exit "umount -l $mnt"
  echo "$mnt"
}

# start_server [nbdkit options...] -- [plugin parameters...]: starts nbdkit in the background
# with the built plugin on a Unix socket; sets SOCK, URI, SERVER_PID, SERVER_LOG.
# SERVER_WRAPPER (a command nbdkit runs under) and SERVER_PRELOAD (a library preloaded into
# it), set for one call, change how that server runs.
start_server() {
  local opts=() _nservers
  while [ $# -gt 0 ] && [ "$1" != -- ]; do opts+=("$1"); shift; done
  [ "${1:-}" = -- ] && shift
  # Counted in a file: a server started in a subshell must not reuse another's names.
  _nservers=$(($(cat "$T/.nservers" 2>/dev/null || echo 0) + 1))
  echo $_nservers >"$T/.nservers"
  SOCK=$T/nbd$_nservers.sock
  SERVER_LOG=$T/server$_nservers.log
  URI="nbd+unix:///?socket=$SOCK"
  # LOOPDIO_PRELOAD: the sanitizer runtime a sanitized plugin needs, for nbdkit alone.
  local preload="${LOOPDIO_PRELOAD:-} ${SERVER_PRELOAD:-}"
  preload=$(echo $preload)
  env ${preload:+LD_PRELOAD="$preload"} \
    ${SERVER_WRAPPER:-} nbdkit -f -U "$SOCK" "${opts[@]}" "$PLUGIN" "$@" 2>"$SERVER_LOG" &
  SERVER_PID=$!
  at_exit "kill $SERVER_PID; wait $SERVER_PID"
  local i
  for i in $(seq 200); do
    [ -S "$SOCK" ] && return 0
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then
      cat "$SERVER_LOG" >&2
      fail "nbdkit did not start: $*"
    fi
    sleep 0.05
  done
  fail "nbdkit did not create $SOCK"
}

# Stops the server; fails when it died on its own (a crash, a sanitizer report).
stop_server() {
  kill -0 "$SERVER_PID" 2>/dev/null || { cat "$SERVER_LOG" >&2; fail "nbdkit died"; }
  kill "$SERVER_PID"
  if [ -n "${LOOPDIO_PRELOAD:-}" ]; then
    # With a sanitizer preloaded, nbdkit can hang in a library destructor (p11-kit's) on
    # the way out; the report, if any, is already in the log by then.
    local i
    for i in $(seq 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$SERVER_PID" 2>/dev/null || true
  fi
  local rc=0
  wait "$SERVER_PID" || rc=$?
  [ -n "${LOOPDIO_PRELOAD:-}" ] && [ $rc -eq 137 ] && rc=0
  # nbdkit exits 0 on SIGTERM; a sanitizer that found something exits otherwise.
  [ $rc -eq 0 ] || [ $rc -eq 143 ] || { cat "$SERVER_LOG" >&2; fail "nbdkit exited with $rc"; }
  if grep -qE "ERROR: (Address|Thread|Undefined)Sanitizer|WARNING: ThreadSanitizer|runtime error:" "$SERVER_LOG"; then
    cat "$SERVER_LOG" >&2
    fail "sanitizer report"
  fi
}

# A file of random bytes: random_file PATH SIZE
random_file() { head -c "$2" /dev/urandom >"$1"; }

# Pages of PATH in the page cache, in percent.
cached_percent() {
  fincore -b -n -o RES,SIZE "$1" | awk '{ if ($2 > 0) printf "%.2f\n", 100 * $1 / $2; else print 0 }'
}

# wait_until SECONDS COMMAND...: true as soon as COMMAND is, false when the time is up.
wait_until() {
  local deadline=$((SECONDS + $1))
  shift
  until "$@"; do
    [ $SECONDS -lt $deadline ] || return 1
    sleep 0.1
  done
}

# The export description a new connection gets (it names the engine in use).
export_description() {
  $PYTHON -c 'import sys, nbd
h = nbd.NBD(); h.set_full_info(True); h.connect_uri(sys.argv[1])
print(h.get_export_description()); h.shutdown()' "$1"
}

# assert_engine URI ENGINE: a new connection really uses ENGINE. aio=io_uring falls back to
# libaio when the kernel refuses io_uring, and libaio to sync when fs.aio-max-nr is used up,
# so a test that asked for an engine and never looked would pass on the fallback. When the
# kernel itself refuses io_uring (built without it, or kernel.io_uring_disabled), the test is
# skipped with that reason; any other refusal fails.
assert_engine() {
  local desc why
  desc=$(export_description "$1") || fail "assert_engine: no connection to $1"
  case "$desc, " in
    *"engine $2, "*) return 0 ;;
  esac
  if [ "$2" = io_uring ] && why=$(uring_refused_by_kernel); then kernel_lacks "io_uring: $why"; fi
  fail "engine $2 was asked for, the export says: $desc"
}

# Prints why, and succeeds, when this kernel refuses io_uring_setup as a kernel policy or
# lack (ENOSYS, or EPERM with kernel.io_uring_disabled set); fails when io_uring works here.
uring_refused_by_kernel() {
  $PYTHON - <<'PY'
import ctypes, errno, os, sys
libc = ctypes.CDLL(None, use_errno=True)
params = ctypes.create_string_buffer(120)  # struct io_uring_params, zeroed
fd = libc.syscall(425, 1, params)          # io_uring_setup(1, &params), x86_64 and generic
if fd >= 0:
    os.close(fd)
    sys.exit(1)
e = ctypes.get_errno()
try:
    disabled = open("/proc/sys/kernel/io_uring_disabled").read().strip()
except OSError:
    disabled = "absent"
if e == errno.ENOSYS or (e == errno.EPERM and disabled != "0"):
    print(f"io_uring_setup: {os.strerror(e)} (kernel.io_uring_disabled: {disabled})")
    sys.exit(0)
sys.exit(1)
PY
}

# What a server holds, from /proc: open fds, AIO contexts (their rings are mapped as [aio]).
server_fds() { ls "/proc/${1:-$SERVER_PID}/fd" | wc -l; }
aio_contexts() { grep -c '/\[aio\]' "/proc/${1:-$SERVER_PID}/maps" || true; }
aio_nr() { cat /proc/sys/fs/aio-nr; }

# Processes other than the server that hold AIO contexts now.
other_aio_holders() {
  local f pid
  for f in /proc/[0-9]*/maps; do
    pid=${f#/proc/}
    pid=${pid%/maps}
    [ "$pid" != "$SERVER_PID" ] || continue
    grep -qs '/\[aio\]' "$f" && echo -n "$pid "
  done
  true
}

# expect_aio_nr WANT WHAT: fs.aio-nr comes back to WANT within 10 s (nbdkit closes a
# connection, and the plugin its AIO context, asynchronously). fs.aio-nr counts every
# process's contexts: outside CI (where tests run one at a time) a difference is excused,
# and printed, when other processes hold contexts; the server's own must be gone anyway.
expect_aio_nr() {
  local want=$1 what=$2 others
  wait_until 10 eval '[ "$(aio_nr)" -eq '"$want"' ]' && return 0
  others=$(other_aio_holders)
  if [ "${CI:-}" != true ] && [ -n "$others" ]; then
    echo "  $what: fs.aio-nr $(aio_nr), was $want; processes $others hold AIO contexts: not compared"
    return 0
  fi
  fail "$what: fs.aio-nr is $(aio_nr), was $want"
}

# expect_fds WANT WHAT: the server's open fds come back to WANT within 10 s.
expect_fds() {
  wait_until 10 eval '[ "$(server_fds)" -eq '"$1"' ]' ||
    { ls -l "/proc/$SERVER_PID/fd" >&2; fail "$2: the server holds $(server_fds) fds, was $1"; }
}

# Sourced by every integration test: scratch space on a real filesystem, filesystems of the
# test's choosing (ext4, xfs on a 4K-sector loop device, tmpfs), a real nbdkit loading the
# built plugin, and cleanup on every exit. A tool that is missing fails the test in CI
# (CI=true) and skips it (exit 77) elsewhere; a kernel that lacks a feature skips it with the
# reason printed.
set -euo pipefail
shopt -s inherit_errexit

: "${LOOPDIO_PLUGIN:?run through ctest, or set LOOPDIO_PLUGIN to build/loopdio.so}"
PLUGIN=$LOOPDIO_PLUGIN
TESTS_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export PYTHONPATH="$TESTS_DIR${PYTHONPATH:+:$PYTHONPATH}"
ENGINES=${LOOPDIO_ENGINES:-libaio io_uring sync}

PYTHON=/usr/bin/python3  # Debian's, which has the libnbd bindings

T=$(mktemp -d /var/tmp/loopdio-test.XXXXXX)
# Cleanup commands go to a file, so that functions run in $(...) subshells can add theirs.
_on_exit() {
  local rc=$?
  if [ -f "$T/.cleanup" ]; then
    tac "$T/.cleanup" | while read -r cmd; do eval "$cmd" >/dev/null 2>&1 || true; done
  fi
  rm -rf "$T"
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
# Only for a kernel that truly lacks a feature: skipped everywhere, with the reason.
kernel_lacks() { echo "SKIP (kernel): $*" >&2; exit 77; }

require() {
  local t
  for t in "$@"; do command -v "$t" >/dev/null || skip "$t is not installed (scripts/deps.sh)"; done
}
require_root() { [ "$(id -u)" -eq 0 ] || skip "needs root (loop devices, mounts)"; }

# make_fs KIND SIZE: a fresh filesystem mounted under $T; prints the mount point.
#   ext4   ext4 on a 512-byte-sector loop device
#   xfs4k  xfs on a 4096-byte-sector loop device (a 4K-native backing)
#   tmpfs  tmpfs
make_fs() {
  local kind=$1 size=${2:-512M} mnt dev
  mnt=$(mktemp -d "$T/mnt-$kind.XXXX")
  case $kind in
    tmpfs)
      mount -t tmpfs -o size="$size" tmpfs "$mnt"
      ;;
    ext4 | xfs4k)
      truncate -s "$size" "$mnt.img"
      if [ "$kind" = xfs4k ]; then
        dev=$(losetup --sector-size 4096 -f --show "$mnt.img")
        at_exit "losetup -d $dev"
        mkfs.xfs -q -f -s size=4096 "$dev"
      else
        dev=$(losetup -f --show "$mnt.img")
        at_exit "losetup -d $dev"
        mkfs.ext4 -q -F "$dev"
      fi
      mount "$dev" "$mnt"
      ;;
    *) fail "make_fs: unknown kind $kind" ;;
  esac
  at_exit "umount -l $mnt"
  echo "$mnt"
}

# start_server [nbdkit options...] -- [plugin parameters...]: starts nbdkit in the background
# with the built plugin on a Unix socket; sets SOCK, URI, SERVER_PID, SERVER_LOG.
_nservers=0
start_server() {
  local opts=()
  while [ $# -gt 0 ] && [ "$1" != -- ]; do opts+=("$1"); shift; done
  [ "${1:-}" = -- ] && shift
  _nservers=$((_nservers + 1))
  SOCK=$T/nbd$_nservers.sock
  SERVER_LOG=$T/server$_nservers.log
  URI="nbd+unix:///?socket=$SOCK"
  # LOOPDIO_PRELOAD: the sanitizer runtime a sanitized plugin needs, for nbdkit alone.
  env ${LOOPDIO_PRELOAD:+LD_PRELOAD="$LOOPDIO_PRELOAD"} \
    nbdkit -f -U "$SOCK" "${opts[@]}" "$PLUGIN" "$@" 2>"$SERVER_LOG" &
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

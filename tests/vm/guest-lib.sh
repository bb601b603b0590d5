# Sourced by the guest scenarios, which tests/vm/init.sh runs inside the VM on the host's
# root: step logging, the virtio disk as a fresh ext4, and attach/detach of an image on
# /dev/nbd0 (the `loopdio` command when it was built, else nbdkit and nbd-client).
set -euo pipefail
shopt -s inherit_errexit
trap 'echo "FAIL: line $LINENO: $BASH_COMMAND (exit $?)"' ERR

step() { echo "== [$(cut -d" " -f1 /proc/uptime)] $*"; }
fail() { echo "FAIL: $*"; exit 1; }

# disk_mount DEV DIR: a new ext4 on the guest's virtio disk (not on 9p, which takes any
# O_DIRECT alignment and would hide misaligned I/O).
disk_mount() {
  mkfs.ext4 -q -F "$1"
  mkdir -p "$2"
  mount "$1" "$2"
}

# serve_tcp IMAGE: `loopdio serve --port 10809 IMAGE` in the background, once it serves;
# sets serve_pid.
serve_tcp() {
  "$LOOPDIO_CLI" serve --port 10809 "$1" >/tmp/serve.out 2>/tmp/serve.err &
  serve_pid=$!
  for _ in $(seq 100); do
    grep -q '^serving ' /tmp/serve.out && break
    kill -0 $serve_pid 2>/dev/null || { cat /tmp/serve.err; fail "loopdio serve exited"; }
    sleep 0.1
  done
  step "$(cat /tmp/serve.out)"
}

NBD_DEV=/dev/nbd0
LOOPDIO_CLI=$(dirname "$LOOPDIO_PLUGIN")/loopdio
# The host test's nbdkit (/usr/local/sbin/nbdkit where Debian's is too old) comes first on
# PATH, where `loopdio attach` looks for it too: 1.32.4 to 1.33.9 abort when a client hangs up
# with requests queued.
PATH=$(dirname "$NBDKIT"):$PATH
nbdkit_version=$(nbdkit --version | awk '$1 == "nbdkit" { print $2 }')
dpkg --compare-versions "$nbdkit_version" ge 1.34 || fail "$NBDKIT is nbdkit $nbdkit_version (< 1.34)"

# attach IMAGE BLOCKSIZE [directio=V|aio=V...]: IMAGE served by the plugin on $NBD_DEV,
# whose block size (the kernel client's request granularity) is BLOCKSIZE. `loopdio attach`
# when it was built; it never lets the client go below the image's alignment, so a smaller
# BLOCKSIZE (read-modify-write under a real client) takes nbdkit and nbd-client directly.
attach() {
  local disk
  disk=$(basename "$(findmnt -no SOURCE -T "$1")")
  if [ -x "$LOOPDIO_CLI" ] && [ "$2" -ge "$(cat "/sys/block/$disk/queue/logical_block_size")" ]; then
    ATTACHED_BY=cli
    attach_cli "$@"
  else
    ATTACHED_BY=nbd-client
    attach_nbd_client "$@"
  fi
}

detach() {
  if [ "$ATTACHED_BY" = cli ]; then
    "$LOOPDIO_CLI" detach "$NBD_DEV"
  else
    detach_nbd_client
  fi
}

attach_cli() {
  local image=$1 bs=$2 kv args=()
  shift 2
  for kv in "$@"; do
    case $kv in
      directio=1) args+=(--direct-io on) ;;
      directio=0) args+=(--direct-io off) ;;
      *) args+=("--${kv%%=*}" "${kv#*=}") ;;
    esac
  done
  "$LOOPDIO_CLI" attach "${args[@]}" --sector-size "$bs" "$image" "$NBD_DEV"
}

attach_nbd_client() {
  local image=$1 bs=$2
  shift 2
  nbdkit --log=stderr -U /run/loopdio.sock -P /run/loopdio.pid "$LOOPDIO_PLUGIN" \
    file="$image" "$@"
  nbd-client -unix /run/loopdio.sock "$NBD_DEV" -b "$bs"
}

detach_nbd_client() {
  local pid
  nbd-client -d "$NBD_DEV"
  pid=$(cat /run/loopdio.pid)
  kill "$pid"
  for _ in $(seq 100); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  fail "nbdkit $pid did not exit"
}

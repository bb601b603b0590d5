# Guest scenario of test-vm-partition-queue-limits.sh: /dev/vda (discard and write zeroes,
# one MBR partition) served by the plugin as /dev/vda1 and, as the control, whole: each must
# advertise trim and fast zero and carry both to the device (trim-zero.py). The disk's byte
# ranges trimmed are printed (TRIMMED NAME OFFSET LENGTH) for the host to find as holes.
source "$VM_LIB"
q=/sys/block/vda/queue
step "kernel $(uname -r), $(command -v nbdkit) $nbdkit_version, plugin $LOOPDIO_PLUGIN"
step "vda: discard_max_bytes $(cat $q/discard_max_bytes), write_zeroes_max_bytes $(cat $q/write_zeroes_max_bytes); vda1 has a queue/ of its own: $([ -d /sys/block/vda/vda1/queue ] && echo yes || echo no)"
[ "$(cat $q/discard_max_bytes)" -gt 0 ] || fail "vda offers no discard: the test's disk is wrong"
[ "$(cat $q/write_zeroes_max_bytes)" -gt 0 ] || fail "vda offers no write zeroes: the test's disk is wrong"
[ -b /dev/vda1 ] || fail "no /dev/vda1: the partition table was not read"

mib=1048576
failed=()
# serve DEVICE START TRIM ZERO: the plugin on DEVICE (which begins START bytes into vda),
# checked with a trim of 2 MiB at TRIM bytes of the export and a fast zero of 2 MiB at ZERO.
serve() {
  local dev=$1 start=$2 trim=$3 zero=$4 name=${1#/dev/} pid info
  local sock=/run/$name.sock
  nbdkit --log=stderr -U "$sock" -P "/run/$name.pid" "$LOOPDIO_PLUGIN" file="$dev" directio=1
  pid=$(cat "/run/$name.pid")
  info=$(nbdinfo "nbd+unix:///?socket=$sock")
  step "$dev: $(echo "$info" | sed -n 's/^\s*description: //p')"
  echo "$info" | grep -E '^\s*can_(trim|zero|fast_zero):'
  echo "$info" | grep -q 'can_trim: true' || failed+=("$dev: nbdinfo shows no can_trim: true")
  echo "$info" | grep -q 'can_fast_zero: true' || failed+=("$dev: nbdinfo shows no can_fast_zero: true")
  python3 "$(dirname "$VM_LIB")/trim-zero.py" "nbd+unix:///?socket=$sock" $trim $zero \
    $((2 * mib)) || failed+=("$dev: trim-zero.py")
  echo "TRIMMED $name $((start + trim)) $((2 * mib))"
  kill "$pid"
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  fail "nbdkit $pid did not exit"
}
serve /dev/vda1 $(($(cat /sys/block/vda/vda1/start) * 512)) $((8 * mib)) $((16 * mib))
# The control: the whole disk, past the partition.
serve /dev/vda 0 $((40 * mib)) $((48 * mib))
[ ${#failed[@]} -eq 0 ] || fail "$(printf '%s; ' "${failed[@]}")"
step "trim and fast zero advertised and carried out on /dev/vda1 and /dev/vda"

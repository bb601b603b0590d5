# Guest scenario of test-vm-nbd-client-tcp.sh: `loopdio serve --port 10809 IMAGE` on the
# guest's loopback and the kernel client as the README and docs/cli.md write it,
# `nbd-client localhost /dev/nbd0`, then with -C 4: ext4 made on the device, the host's files
# ($DATA) copied in, checked cold after a disconnect and reconnect, and by e2fsck -fn.
source "$VM_LIB"
step "kernel $(uname -r), $(command -v nbdkit) $nbdkit_version, vda logical block $(cat /sys/block/vda/queue/logical_block_size), nbd -b $NBD_BS"
[ -x "$LOOPDIO_CLI" ] || fail "no loopdio command at $LOOPDIO_CLI"
ip link set lo up
disk_mount /dev/vda /mnt/disk
img=/mnt/disk/loopdio.img
truncate -s 512M "$img"

serve_tcp "$img"
desc=$(nbdinfo nbd://localhost | sed -n 's/^\s*description: //p')
step "export description: $desc"
case $desc in
  *"direct I/O on, alignment $NBD_BS "*"engine sync+libaio"*) ;;
  *) fail "expected direct I/O on, alignment $NBD_BS, engine sync+libaio (the default)" ;;
esac

# The client as documented: the block size only where the backing is 4K-native.
client_args=(localhost /dev/nbd0)
[ "$NBD_BS" = 512 ] || client_args+=(-b "$NBD_BS")

nbd_free() { ! [ -e /sys/block/nbd0/pid ]; }
disconnect() {
  nbd-client -d /dev/nbd0
  for _ in $(seq 100); do nbd_free && return 0; sleep 0.1; done
  fail "/dev/nbd0 still connected after nbd-client -d"
}
connect() {
  nbd-client "${client_args[@]}" "$@"
  [ "$(cat /sys/block/nbd0/queue/logical_block_size)" = "$NBD_BS" ] || fail "nbd0 block size"
}
conns() { "$LOOPDIO_CLI" list --json | python3 -c 'import json, sys; print(json.load(sys.stdin)[0]["conns"])'; }
now() { cut -d" " -f1 /proc/uptime; }
took() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
mib=$(($(du -sk "$DATA" | cut -f1) / 1024))

for c in 1 4; do
  extra=()
  [ $c = 1 ] || extra=(-C $c)
  step "nbd-client ${client_args[*]} ${extra[*]}"
  connect "${extra[@]}"
  [ "$(conns)" = $c ] || fail "the server counts $(conns) connections, expected $c"
  mkfs.ext4 -q -F /dev/nbd0
  mkdir -p /mnt/nbd
  mount /dev/nbd0 /mnt/nbd
  t=$(now)
  cp -r "$DATA" /mnt/nbd/data
  sync
  umount /mnt/nbd
  write_s=$(took "$t")
  disconnect
  echo 3 >/proc/sys/vm/drop_caches

  connect "${extra[@]}"
  t=$(now)
  e2fsck -fn /dev/nbd0 >/tmp/fsck.out 2>&1 || { cat /tmp/fsck.out; fail "e2fsck -fn /dev/nbd0"; }
  fsck_s=$(took "$t")
  mount -o ro /dev/nbd0 /mnt/nbd
  t=$(now)
  (cd /mnt/nbd/data && sha256sum -c --quiet "$SUMS") || fail "checksums after reconnecting"
  verify_s=$(took "$t")
  umount /mnt/nbd
  disconnect
  echo "TIMING C=$c files=$(wc -l <"$SUMS") MiB=$mib write=${write_s}s e2fsck=${fsck_s}s verify=${verify_s}s"
done

kill $serve_pid
wait $serve_pid || fail "loopdio serve exited with $? on SIGTERM"
step "every file verified cold with 1 and 4 connections"

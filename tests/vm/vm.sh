# Sourced by the VM tests after lib.sh: fetches Debian's kernel (cached by version), builds an
# initramfs of busybox and the modules a guest needs, and boots qemu (TCG, no network) with a
# guest scenario script run on the host's root, read-only over 9p, and raw disks of the test.
VM_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
VM_CACHE=${LOOPDIO_VM_CACHE:-/var/cache/loopdio-vm}
# 256 MiB: with the modules of every scenario (xfs among them) 128 MiB left the guest so
# little that its OOM killer took nbdkit at 14 MiB resident.
VM_MEMORY=${VM_MEMORY:-256M}
VM_TIMEOUT=${VM_TIMEOUT:-180}  # the host kills qemu then; the guest gives up 20 s earlier
# In load order after dependencies; ext4 needs crc32c through the crypto API (a soft
# dependency, absent from modules.dep).
VM_MODULES=(virtio_pci virtio_blk 9pnet_virtio 9p overlay crc32c_generic ext4 xfs loop nbd)
# One virtio-blk disk each (/dev/vda, /dev/vdb, ...): "SOURCE:LOGICAL_BLOCK_SIZE[:OPTIONS]".
# SOURCE is a raw image file, or nbd-unix=SOCKET: an NBD export that qemu's own NBD driver
# reaches on a Unix socket of the host. OPTIONS (discard=unmap,...) go to the drive.
VM_DISKS=()

vm_require() {
  require_root
  require qemu-system-x86_64 busybox apt-get apt-cache dpkg-deb flock timeout pgrep
  if ! [ -x /bin/busybox ] || ! file_is_static /bin/busybox; then
    skip "busybox-static is not installed"
  fi
}
file_is_static() { ! LC_ALL=C ldd "$1" >/dev/null 2>&1; }

# vm_kernel: Debian's current linux-image-*-amd64, unpacked under $VM_CACHE/VERSION once;
# sets VM_KVER and VM_KROOT.
vm_kernel() {
  local pkg ver
  _vm_resolve_kernel || { apt-get update -qq >/dev/null 2>&1 || true; _vm_resolve_kernel; } ||
    skip "apt-cache cannot resolve linux-image-amd64 to a kernel package"
  VM_KVER=${pkg#linux-image-}
  VM_KROOT=$VM_CACHE/${VM_KVER}_$ver
  [ -f "$VM_KROOT/.complete" ] && return 0
  mkdir -p "$VM_CACHE"
  (
    flock 9
    [ -f "$VM_KROOT/.complete" ] && exit 0
    _vm_unpack_kernel "$pkg" "$ver"
  ) 9>"$VM_CACHE/.lock"
}

# Sets pkg (linux-image-6.1.0-N-amd64) and ver, the version apt would download.
_vm_resolve_kernel() {
  pkg=$(apt-cache depends linux-image-amd64 2>/dev/null |
    awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ { print $2; exit }')
  [ -n "$pkg" ] || return 1
  ver=$(apt-cache policy "$pkg" 2>/dev/null | awk '$1 == "Candidate:" { print $2 }')
  [ -n "$ver" ] && [ "$ver" != "(none)" ]
}

_vm_unpack_kernel() {
  local pkg=$1 ver=$2 tmp
  tmp=$(mktemp -d "$VM_CACHE/.fetch.XXXXXX")
  echo "vm: fetching $pkg $ver into $VM_CACHE" >&2
  (cd "$tmp" && apt-get download -q -o APT::Sandbox::User=root "$pkg=$ver" >/dev/null) ||
    { rm -rf "$tmp"; fail "apt-get download $pkg=$ver"; }
  dpkg-deb -x "$tmp"/*.deb "$tmp/root" || { rm -rf "$tmp"; fail "dpkg-deb -x $pkg"; }
  rm -f "$tmp"/*.deb
  # The package ships no modules.dep (the postinst makes it); busybox's depmod writes it.
  busybox depmod -b "$tmp/root" "$VM_KVER" || { rm -rf "$tmp"; fail "depmod $VM_KVER"; }
  [ -f "$tmp/root/boot/vmlinuz-$VM_KVER" ] || { rm -rf "$tmp"; fail "$pkg has no vmlinuz"; }
  rm -rf "$VM_KROOT"
  mv "$tmp/root" "$VM_KROOT"
  rmdir "$tmp"
  touch "$VM_KROOT/.complete"
  # Older kernels are no longer what linux-image-amd64 points at.
  find "$VM_CACHE" -mindepth 1 -maxdepth 1 -type d ! -path "$VM_KROOT" -exec rm -rf {} +
}

# vm_module_order NAME...: the modules' paths from modules.dep, each after its dependencies.
vm_module_order() {
  local dep=$VM_KROOT/lib/modules/$VM_KVER/modules.dep
  awk -v want="$*" '
    { sub(":", "", $1); deps[$1] = ""
      for (i = 2; i <= NF; i++) deps[$1] = deps[$1] " " $i
      n = split($1, p, "/"); name = p[n]; sub(/\.ko(\.[a-z]+)?$/, "", name); byname[name] = $1 }
    function visit(m,   d, k, i) {
      if (m in seen) return
      seen[m] = 1
      k = split(deps[m], d, " ")
      for (i = 1; i <= k; i++) visit(d[i])
      print m
    }
    END {
      n = split(want, w, " ")
      for (i = 1; i <= n; i++) {
        if (!(w[i] in byname)) { print "no module " w[i] > "/dev/stderr"; exit 1 }
        visit(byname[w[i]])
      }
    }' "$dep"
}

# vm_initramfs: $T/initramfs.cpio with busybox, $VM_DIR/init.sh as /init and the modules of
# VM_MODULES (in load order, listed in /etc/modules.order); sets VM_INITRD.
vm_initramfs() {
  local root=$T/initramfs m mods
  rm -rf "$root"
  mkdir -p "$root"/{bin,dev,proc,sys,etc,lib/modules,host,rw,newroot}
  cp /bin/busybox "$root/bin/busybox"
  ln -s busybox "$root/bin/sh"
  cp "$VM_DIR/init.sh" "$root/init"
  chmod 755 "$root/init"
  mods=$(vm_module_order "${VM_MODULES[@]}") || fail "modules for the guest"
  for m in $mods; do
    cp "$VM_KROOT/lib/modules/$VM_KVER/$m" "$root/lib/modules/"
    basename "$m" >>"$root/etc/modules.order"
  done
  VM_INITRD=$T/initramfs.cpio
  (cd "$root" && find . | busybox cpio -o -H newc >"$VM_INITRD" 2>/dev/null) || fail "cpio"
}

# vm_setup: the kernel and the initramfs, once per test.
vm_setup() {
  vm_require
  vm_kernel
  vm_initramfs
}

# vm_prepare NAME SCENARIO [VAR=VALUE...]: $T/vm-NAME/env for the guest (the scenario, the
# plugin, the test's nbdkit, the variables), and the qemu command line in VM_CMD; the console
# goes to VM_LOG.
vm_prepare() {
  local scenario=$2 dir=$T/vm-$1 i=0 d kv src bs opts
  shift 2
  rm -rf "$dir"
  mkdir -p "$dir"
  {
    printf 'VM_SCENARIO=%q\nVM_LIB=%q\nLOOPDIO_PLUGIN=%q\nNBDKIT=%q\n' "$VM_DIR/$scenario" \
      "$VM_DIR/guest-lib.sh" "$(realpath "$PLUGIN")" "$(command -v nbdkit)"
    for kv in "$@"; do printf '%s=%q\n' "${kv%%=*}" "${kv#*=}"; done
  } >"$dir/env"
  VM_LOG=$dir/console.log
  # no_timer_check: under TCG on a loaded host the timer may tick too late for the kernel's
  # boot-time IO-APIC timer check, which then panics ("IO-APIC + timer doesn't work!").
  VM_CMD=(qemu-system-x86_64 -accel tcg -cpu max -smp 2 -m "$VM_MEMORY"
    -nodefaults -no-user-config -display none -nic none -no-reboot
    -serial "file:$VM_LOG"
    -kernel "$VM_KROOT/boot/vmlinuz-$VM_KVER" -initrd "$VM_INITRD"
    -append "console=ttyS0 panic=-1 quiet mitigations=off no_timer_check rdinit=/init vm_dir=$dir vm_timeout=$((VM_TIMEOUT - 20))"
    -virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap)
  for d in "${VM_DISKS[@]}"; do
    IFS=: read -r src bs opts <<<"$d"
    case $src in
      nbd-unix=*) VM_CMD+=(-blockdev "driver=nbd,node-name=d$i,server.type=unix,server.path=${src#nbd-unix=}${opts:+,$opts}") ;;
      *) VM_CMD+=(-drive "file=$src,if=none,id=d$i,format=raw,cache=none${opts:+,$opts}") ;;
    esac
    VM_CMD+=(-device "virtio-blk-pci,drive=d$i,logical_block_size=$bs,physical_block_size=$bs")
    i=$((i + 1))
  done
}

# vm_run NAME SCENARIO [VAR=VALUE...]: boots, runs the scenario to the end and powers off;
# fails with the guest's console when the scenario does not report PASS.
vm_run() {
  local rc=0 start=$SECONDS
  vm_prepare "$@"
  timeout -s KILL "$VM_TIMEOUT" "${VM_CMD[@]}" </dev/null >"$T/vm-$1/qemu.out" 2>&1 || rc=$?
  if ! vm_result_is PASS; then
    vm_show_log "$1"
    [ $rc -eq 137 ] && fail "$1: the VM did not finish within $VM_TIMEOUT s"
    fail "$1: the guest did not pass (qemu exit $rc)"
  fi
  VM_SECONDS=$((SECONDS - start))
}

# vm_start NAME SCENARIO [VAR=VALUE...]: boots in the background, for a test that kills the
# VM: VM_PID is qemu itself (under timeout, in case the test dies first), and vm_kill sends
# it SIGKILL, the nearest thing to pulling the power cord.
vm_start() {
  vm_prepare "$@"
  timeout -s KILL "$VM_TIMEOUT" "${VM_CMD[@]}" </dev/null >"$T/vm-$1/qemu.out" 2>&1 &
  VM_WAITER=$!
  at_exit "_vm_reap $VM_WAITER"
  VM_PID=
  while [ -z "$VM_PID" ] && kill -0 "$VM_WAITER" 2>/dev/null; do
    VM_PID=$(pgrep -P "$VM_WAITER") || sleep 0.05
  done
  [ -n "$VM_PID" ] || { vm_show_log "$1"; fail "$1: qemu did not start"; }
  at_exit "_vm_reap $VM_PID"
}
vm_kill() {
  kill -KILL "$VM_PID" 2>/dev/null || true
  wait "$VM_WAITER" 2>/dev/null || true
}
# Kills PID only while it is still this test's (its command line names $T).
_vm_reap() { grep -qF "$T" "/proc/$1/cmdline" 2>/dev/null && kill -KILL "$1"; }

# vm_wait_for REGEX SECONDS: waits until the console shows a line matching REGEX.
vm_wait_for() {
  local deadline=$((SECONDS + $2))
  while [ $SECONDS -lt $deadline ]; do
    vm_console | grep -Eq "$1" && return 0
    vm_result_is FAIL && return 1
    kill -0 "$VM_PID" 2>/dev/null || return 1
    sleep 0.2
  done
  return 1
}

vm_console() { [ -f "$VM_LOG" ] && tr -d '\r' <"$VM_LOG"; }
# The nbdkit the guest ran and its version, from the scenario's first step.
vm_nbdkit() { vm_console | sed -n 's/^== \[.*\] kernel [^,]*, \([^,]*\),.*/\1/p'; }
vm_result_is() { vm_console | grep -q "^LOOPDIO-VM: $1"; }
vm_show_log() {
  echo "---- guest console ($1) ----" >&2
  vm_console >&2 || true
  cat "$T/vm-$1/qemu.out" >&2 2>/dev/null || true
  echo "---- end of guest console ----" >&2
}

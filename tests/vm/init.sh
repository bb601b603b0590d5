#!/bin/sh
# /init of the test VM (busybox): loads the modules, mounts the host's root read-only over 9p
# under a tmpfs overlay, runs the scenario named in $vm_dir/env (vm_dir= on the kernel command
# line) in it, prints "LOOPDIO-VM: PASS" or "LOOPDIO-VM: FAIL ..." and powers off.
/bin/busybox --install -s /bin
export PATH=/bin

finish() {
  echo "LOOPDIO-VM: $*"
  sync
  poweroff -f
}

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
# For a scenario that runs short of memory: what it started with.
echo "== memory: $(grep -E 'MemTotal|MemAvailable' /proc/meminfo | tr -s ' ' | tr '\n' ' ')"
for m in $(cat /etc/modules.order); do
  insmod "/lib/modules/$m" || finish "FAIL insmod $m"
done
mount -t 9p -o ro,trans=virtio,version=9p2000.L,msize=512000,cache=loose hostroot /host ||
  finish "FAIL mount 9p"
mount -t tmpfs -o size=48m,mode=755 tmpfs /rw
mkdir /rw/upper /rw/work
mount -t overlay -o lowerdir=/host,upperdir=/rw/upper,workdir=/rw/work overlay /newroot ||
  finish "FAIL mount overlay"
mount -t proc proc /newroot/proc
mount -t sysfs sysfs /newroot/sys
mount -t devtmpfs devtmpfs /newroot/dev
ln -s /proc/self/fd /newroot/dev/fd
mkdir /newroot/dev/shm
mount -t tmpfs -o mode=1777 tmpfs /newroot/dev/shm
# /tmp stays the overlay's (writable, and showing the host's): the source tree and the build
# may live under the host's /tmp, and the guest runs its scenario and the plugin from there.
mount -t tmpfs -o mode=755 tmpfs /newroot/run
# Thread stacks and AIO rings reserve more than the guest's memory would allow under the heuristic.
sysctl -q -w vm.overcommit_memory=1

# A scenario stuck on a dead device still ends in a report, and the host gets the console.
(
  sleep "${vm_timeout:-150}"
  echo "LOOPDIO-VM: FAIL the scenario did not finish within ${vm_timeout:-150} s"
  ps -o pid,stat,args | grep -v ' \[' # the user processes
  poweroff -f
) &
[ -f "/newroot$vm_dir/env" ] || finish "FAIL no $vm_dir/env on the host root"
chroot /newroot /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
  /bin/bash -c 'set -a; . "$1/env"; set +a; exec /bin/bash "$VM_SCENARIO"' scenario "$vm_dir"
rc=$?
[ $rc -eq 0 ] && finish PASS
finish "FAIL scenario exit $rc"

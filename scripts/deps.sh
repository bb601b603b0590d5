#!/usr/bin/env bash
# Installs, with apt-get, every Debian package loopdio needs to build, test and benchmark.
# Idempotent: packages already present are left alone. Needs root (or sudo).
set -euo pipefail

packages=(
  # build
  build-essential cmake pkg-config nbdkit-plugin-dev libaio-dev liburing-dev libnbd-dev
  libboost-program-options-dev googletest libgtest-dev libfuse3-dev
  # run and test
  nbdkit libnbd-bin python3-libnbd nbd-client qemu-utils fio xfsprogs e2fsprogs util-linux
  fuse3 gnutls-bin systemd systemd-container procps psmisc kmod strace
  # the kernel-client test: a Debian kernel booted under qemu
  qemu-system-x86 busybox-static cpio
  # benchmark plots
  python3-matplotlib
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null

#!/usr/bin/env bash
# Installs, with apt-get, every Debian package loopdio needs to build, test and benchmark,
# then a supported nbdkit (scripts/nbdkit.sh: Debian 12's 1.32.5 is not one, so it is built
# once from Debian 13's source package). Idempotent: what is present is left alone. Needs
# root (or sudo).
set -euo pipefail

packages=(
  # build
  build-essential cmake pkg-config libaio-dev liburing-dev libnbd-dev nlohmann-json3-dev
  libboost-program-options-dev googletest libgtest-dev libfuse3-dev
  # what scripts/nbdkit.sh needs to build nbdkit from source
  dpkg-dev autoconf automake libtool libgnutls28-dev zlib1g-dev
  # run and test
  libnbd-bin python3-libnbd nbd-client qemu-utils fio xfsprogs btrfs-progs e2fsprogs util-linux
  fuse3 gnutls-bin systemd systemd-container procps psmisc kmod strace
  python3-prometheus-client
  # the kernel-client test: a Debian kernel booted under qemu
  qemu-system-x86 busybox-static cpio
  # benchmark plots
  python3-matplotlib
  # the man pages (made from docs/*.md), the Debian package's checks and its completion's test
  pandoc lintian bash-completion
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
if [ ${#missing[@]} -gt 0 ]; then
  echo "deps: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
$SUDO "$(dirname "$0")/nbdkit.sh" >/dev/null


#!/usr/bin/env bash
# Makes sure a supported nbdkit (>= 1.34) is installed, and prints the path of its binary.
# nbdkit 1.32.4 to 1.33.9 abort when a client hangs up with requests queued (fixed upstream
# in 1.33.10), and Debian 12 ships 1.32.5: where the distribution's candidate is older than
# 1.34, nbdkit is built once from Debian 13's source package (a deb-src entry in a private
# apt configuration; no binary of another release is ever installed) into /usr/local, and
# found there on later runs. Idempotent; needs root. `scripts/deps.sh` calls it.
set -euo pipefail

min=1.34
prefix=/usr/local
cache=/var/cache/loopdio/nbdkit
source_suite=${LOOPDIO_NBDKIT_SUITE:-trixie}

ver_ge() { dpkg --compare-versions "$1" ge "$2"; }

# The version of an nbdkit binary, or nothing.
version_of() { "$1" --version 2>/dev/null | awk '$1 == "nbdkit" { print $2; exit }'; }

supported_nbdkit() {  # prints the supported nbdkit the build and tests will use, if any
  local bin v
  for bin in "$prefix/sbin/nbdkit" /usr/sbin/nbdkit /usr/bin/nbdkit; do
    [ -x "$bin" ] || continue
    v=$(version_of "$bin")
    [ -n "$v" ] && ver_ge "$v" "$min" || continue
    # Its plugin headers and pkg-config file must come with it.
    if [ "$bin" = "$prefix/sbin/nbdkit" ]; then
      [ -f "$prefix/lib/pkgconfig/nbdkit.pc" ] || continue
    else
      dpkg-query -W -f='${Status}' nbdkit-plugin-dev 2>/dev/null | grep -q "ok installed" || continue
    fi
    echo "$bin"
    return 0
  done
  return 1
}

if bin=$(supported_nbdkit); then
  echo "$bin"
  exit 0
fi

export DEBIAN_FRONTEND=noninteractive
candidate=$(apt-cache policy nbdkit 2>/dev/null | awk '/Candidate:/ { print $2 }')
if [ -n "$candidate" ] && [ "$candidate" != "(none)" ] && ver_ge "${candidate#*:}" "$min"; then
  echo "nbdkit: installing the distribution's nbdkit $candidate" >&2
  apt-get install -y -qq --no-install-recommends nbdkit nbdkit-plugin-dev >/dev/null
  supported_nbdkit
  exit 0
fi

echo "nbdkit: the distribution offers nbdkit ${candidate:-none}; loopdio needs >= $min" \
     "(1.32.4-1.33.9 abort when a client hangs up early)." >&2
echo "nbdkit: building nbdkit from Debian's $source_suite source package into $prefix" \
     "(once; about two minutes)" >&2
# What nbdkit's configure needs for the parts loopdio uses (TLS among them).
apt-get install -y -qq --no-install-recommends build-essential pkg-config dpkg-dev \
  libgnutls28-dev zlib1g-dev >/dev/null

mkdir -p "$cache/lists/partial"
echo "deb-src http://deb.debian.org/debian $source_suite main" >"$cache/sources.list"
apt_src=(-o Dir::Etc::sourcelist="$cache/sources.list" -o Dir::Etc::sourceparts=-
         -o Dir::State::Lists="$cache/lists" -o APT::Get::List-Cleanup=0)
apt-get -qq "${apt_src[@]}" update
work=$(mktemp -d "$cache/build.XXXXXX")
trap 'rm -rf "$work"' EXIT
(cd "$work" && apt-get -qq "${apt_src[@]}" source --download-only nbdkit >/dev/null 2>&1)
tarball=$(ls "$work"/nbdkit_*.orig.tar.* | head -n 1)
[ -f "$tarball" ] || { echo "nbdkit: no source tarball was downloaded" >&2; exit 1; }
tar -xf "$tarball" -C "$work"
src=$(find "$work" -mindepth 1 -maxdepth 1 -type d -name 'nbdkit-*' | head -n 1)
start=$(date +%s)
(
  cd "$src"
  ./configure --prefix="$prefix" --disable-perl --disable-python --disable-ocaml \
    --disable-rust --disable-tcl --disable-lua --disable-golang --disable-torrent \
    --disable-vddk --without-libguestfs --without-manpages --without-curl --without-ssh \
    --without-libvirt --without-libblkio --without-iso >"$work/configure.log" 2>&1 ||
    { tail -n 30 "$work/configure.log" >&2; exit 1; }
  make -j "$(nproc)" >"$work/make.log" 2>&1 || { tail -n 30 "$work/make.log" >&2; exit 1; }
  make install >"$work/install.log" 2>&1 || { tail -n 30 "$work/install.log" >&2; exit 1; }
)
ldconfig
echo "nbdkit: built and installed $(version_of "$prefix/sbin/nbdkit") in" \
     "$(($(date +%s) - start)) s" >&2
supported_nbdkit || { echo "nbdkit: the build did not give a usable nbdkit" >&2; exit 1; }

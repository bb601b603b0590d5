#!/usr/bin/env bash
# Makes sure a supported nbdkit (>= 1.34) is installed, and prints the path of its binary.
# Debian 12 ships 1.32.5, which aborts when a client hangs up with requests queued: there
# nbdkit is built from one pinned Debian 13 source package (its .dsc, with Debian's patches)
# into /usr/local, with a stamp that says so. Idempotent; needs root. `scripts/deps.sh` calls it.
set -euo pipefail

min=1.34
prefix=${LOOPDIO_NBDKIT_PREFIX:-/usr/local}  # another prefix only to try a build
cache=/var/cache/loopdio/nbdkit

# The one source package built, with the SHA-256 sums apt verified against trixie's signed
# Sources index. A newer nbdkit is taken only by raising these together, on purpose.
pin_suite=trixie
pin_version=1.42.3-1
pin_dsc_sha256=761beaa628bcc445d8b91263576a53787e2584bcc650c66ec26cbc255e3388b9
pin_orig_sha256=cc6e451f7f6e33243ade6a5451465734bbd90142b84630bde0e0747f5656c2eb
pin_debian_sha256=02eecbb15ba1165b47c7bc8e5589096b623d0fa21d2e02ce6121f545b0ba7be4
# Debian patches not applied (the README's "Which nbdkit" says why): none.
pin_left_out=()
# Raise when the configure options or steps below change: an nbdkit built otherwise is redone.
recipe=1

upstream=${pin_version%-*}
dsc=nbdkit_$pin_version.dsc
stamp=$prefix/share/loopdio/nbdkit-origin
# The stamp's line that an installed nbdkit must carry to be reused.
identity="pin=nbdkit_$pin_version recipe=$recipe dsc=$pin_dsc_sha256 orig=$pin_orig_sha256"
identity+=" debian=$pin_debian_sha256 left-out=$(IFS=,; echo "${pin_left_out[*]}")"

ver_ge() { dpkg --compare-versions "$1" ge "$2"; }
refuse() { echo "nbdkit: $*" >&2; exit 1; }

# The version of an nbdkit binary, or nothing.
version_of() { "$1" --version 2>/dev/null | awk '$1 == "nbdkit" { print $2; exit }'; }

pinned_build_installed() {  # the prefix holds the pinned build, headers and pkg-config file
  [ -x "$prefix/sbin/nbdkit" ] && [ "$(version_of "$prefix/sbin/nbdkit")" = "$upstream" ] &&
    [ -f "$prefix/lib/pkgconfig/nbdkit.pc" ] && [ -f "$stamp" ] && grep -qxF "$identity" "$stamp"
}

distribution_nbdkit() {  # prints a distribution nbdkit >= $min with its plugin headers, if any
  local bin v
  for bin in /usr/sbin/nbdkit /usr/bin/nbdkit; do
    [ -x "$bin" ] || continue
    v=$(version_of "$bin")
    [ -n "$v" ] && ver_ge "$v" "$min" || continue
    dpkg-query -W -f='${Status}' nbdkit-plugin-dev 2>/dev/null | grep -q "ok installed" || continue
    echo "$bin"
    return 0
  done
  return 1
}

if pinned_build_installed; then
  echo "$prefix/sbin/nbdkit"
  exit 0
fi
# An nbdkit in the prefix shadows the distribution's (PATH, pkg-config): one that is not the
# pinned build (an older recipe, an unpatched or another version) is rebuilt in place.
if [ -e "$prefix/sbin/nbdkit" ]; then
  echo "nbdkit: $prefix/sbin/nbdkit ($(version_of "$prefix/sbin/nbdkit")) is not the pinned" \
       "build of Debian's nbdkit $pin_version; rebuilding it" >&2
else
  if bin=$(distribution_nbdkit); then
    echo "$bin"
    exit 0
  fi
  export DEBIAN_FRONTEND=noninteractive
  candidate=$(apt-cache policy nbdkit 2>/dev/null | awk '/Candidate:/ { print $2 }')
  if [ -n "$candidate" ] && [ "$candidate" != "(none)" ] && ver_ge "${candidate#*:}" "$min"; then
    echo "nbdkit: installing the distribution's nbdkit $candidate" >&2
    apt-get install -y -qq --no-install-recommends nbdkit nbdkit-plugin-dev >/dev/null
    distribution_nbdkit
    exit 0
  fi
  echo "nbdkit: the distribution offers nbdkit ${candidate:-none}; loopdio needs >= $min" \
       "(1.32.4-1.33.9 abort when a client hangs up early)." >&2
fi
echo "nbdkit: building Debian's nbdkit $pin_version source package into $prefix" \
     "(once; a few minutes)" >&2
export DEBIAN_FRONTEND=noninteractive
# What nbdkit's configure needs for the parts loopdio uses (TLS among them); autotools
# because Debian's patches change configure.ac and Makefile.am (Debian runs autoreconf too).
apt-get install -y -qq --no-install-recommends build-essential pkg-config dpkg-dev \
  autoconf automake libtool libgnutls28-dev zlib1g-dev >/dev/null

mkdir -p "$cache/lists/partial"
echo "deb-src http://deb.debian.org/debian $pin_suite main" >"$cache/sources.list"
apt_src=(-o Dir::Etc::sourcelist="$cache/sources.list" -o Dir::Etc::sourceparts=-
         -o Dir::State::Lists="$cache/lists" -o APT::Get::List-Cleanup=0)
apt-get -qq "${apt_src[@]}" update
work=$(mktemp -d "$cache/build.XXXXXX")
trap 'rm -rf "$work"' EXIT
(cd "$work" && apt-get -qq "${apt_src[@]}" source --download-only "nbdkit=$pin_version" \
   >"$work/download.log" 2>&1) ||
  refuse "$pin_suite no longer offers the pinned nbdkit $pin_version (it offers" \
         "$(apt-cache "${apt_src[@]}" showsrc nbdkit 2>/dev/null |
            awk '/^Version:/ { print $2; exit }')): raise the pin in scripts/nbdkit.sh on purpose"

check_sum() {  # check_sum FILE SHA256
  [ -f "$work/$1" ] || refuse "$1 was not downloaded"
  [ "$(sha256sum <"$work/$1" | cut -d' ' -f1)" = "$2" ] ||
    refuse "$1 does not have the pinned SHA-256 $2; refusing to build it"
}
check_sum "$dsc" "$pin_dsc_sha256"
check_sum "nbdkit_$upstream.orig.tar.gz" "$pin_orig_sha256"
check_sum "nbdkit_$pin_version.debian.tar.xz" "$pin_debian_sha256"

# Unpack with the packaging, then apply the series ourselves to leave out pin_left_out.
src=$work/nbdkit-$upstream
dpkg-source --skip-patches -x "$work/$dsc" "$src" >"$work/unpack.log" 2>&1 ||
  { tail -n 5 "$work/unpack.log" >&2; refuse "dpkg-source could not unpack $dsc"; }
applied=()
while read -r patch _; do
  case $patch in '' | '#'*) continue ;; esac
  [[ " ${pin_left_out[*]} " = *" $patch "* ]] && continue
  patch -d "$src" -p1 --batch --forward --quiet <"$src/debian/patches/$patch" \
    >>"$work/patch.log" 2>&1 || refuse "Debian's patch $patch does not apply to $upstream"
  applied+=("$patch")
done <"$src/debian/patches/series"
total=$(grep -cvE '^[[:space:]]*(#|$)' "$src/debian/patches/series")

start=$(date +%s)
(
  cd "$src"
  autoreconf -fi >"$work/autoreconf.log" 2>&1 || { tail -n 30 "$work/autoreconf.log" >&2; exit 1; }
  ./configure --prefix="$prefix" MKE2FS=/sbin/mke2fs --disable-perl --disable-python \
    --disable-ocaml --disable-rust --disable-tcl --disable-lua --disable-golang \
    --disable-torrent --disable-vddk --without-libguestfs --without-manpages --without-curl \
    --without-ssh --without-libvirt --without-libblkio --without-iso \
    >"$work/configure.log" 2>&1 || { tail -n 30 "$work/configure.log" >&2; exit 1; }
  make -j "$(nproc)" >"$work/make.log" 2>&1 || { tail -n 30 "$work/make.log" >&2; exit 1; }
  # Installed into a staging directory first: the real install below is then one short step.
  make install DESTDIR="$work/stage" >"$work/stage.log" 2>&1 ||
    { tail -n 30 "$work/stage.log" >&2; exit 1; }
) || refuse "building nbdkit $pin_version failed (the lines above say where)"
[ "$(version_of "$work/stage$prefix/sbin/nbdkit")" = "$upstream" ] ||
  refuse "the build did not give nbdkit $upstream"

if [ ${#applied[@]} -eq "$total" ]; then
  origin="Debian $pin_version source with its $total patches"
else
  origin="Debian $pin_version source with ${#applied[@]} of its $total patches"
fi
rm -f "$stamp"  # a half-done install must not pass for the pinned build
(cd "$src" && make install >"$work/install.log" 2>&1) ||
  { tail -n 30 "$work/install.log" >&2; refuse "make install into $prefix failed"; }
[ "$prefix" != /usr/local ] || ldconfig
mkdir -p "$(dirname "$stamp")"
cat >"$stamp.tmp" <<EOF
# The nbdkit in $prefix: built by loopdio's scripts/nbdkit.sh from Debian's source package.
# loopdio's CMake reads origin= for \`loopdio --version\`; nbdkit.sh reuses the build only
# while the pin= line matches the script's pin.
version=$upstream
debian-version=$pin_version
origin=$origin
patches-applied=${applied[*]}
patches-left-out=${pin_left_out[*]}
installed=$(date -u +%Y-%m-%dT%H:%M:%SZ)
$identity
EOF
mv "$stamp.tmp" "$stamp"
echo "nbdkit: built and installed nbdkit $upstream ($origin) in $prefix in" \
     "$(($(date +%s) - start)) s" >&2
pinned_build_installed || refuse "the installed nbdkit does not match the pin"
echo "$prefix/sbin/nbdkit"

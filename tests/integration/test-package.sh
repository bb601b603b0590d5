#!/usr/bin/env bash
# The Debian package as a user gets it: made by CPack from this build tree into $T, lintian
# clean, installed with apt-get; nbdkit loopdio, loopdio, the man pages and the completion
# used from the installed files; purged (also when the test fails), and every file it had
# installed gone. Needs root: it installs into the system, and leaves it as it found it.
source "$(dirname "$0")/lib.sh"
require_root
require cpack dpkg-deb dpkg-query apt-get lintian nbdkit nbdinfo man pkg-config unshare
[ -f /usr/share/bash-completion/bash_completion ] ||
  skip "bash-completion is not installed (scripts/deps.sh)"

: "${LOOPDIO_BUILD:?run through ctest}"
SRC=${LOOPDIO_SOURCE:-$(cd "$TESTS_DIR/../.." && pwd)}
export DEBIAN_FRONTEND=noninteractive

installed() { [ "$(dpkg-query -W -f='${db:Status-Abbrev}' loopdio 2>/dev/null)" = "ii " ]; }
installed && fail "the loopdio package is installed already: this test installs and purges its own"
git_status() { git -C "$SRC" status --porcelain 2>/dev/null || true; }
status_before=$(git_status)

# --- Made from the build tree, into $T: `cmake --build build --target package` does the same
# into build/.
cpack --config "$LOOPDIO_BUILD/CPackConfig.cmake" -B "$T/pkg" >"$T/cpack.log" 2>&1 ||
  { cat "$T/cpack.log"; fail "cpack"; }
version=$("$LOOPDIO_BUILD/loopdio" --version | awk 'NR == 1 { print $2 }')
# One version, from CMake's project version, in the command and the plugin, with the nbdkit
# both were built against.
dump=$(nbdkit "$LOOPDIO_BUILD/loopdio.so" --dump-plugin)
grep -qx "loopdio_version=$version" <<<"$dump" || fail "--dump-plugin: not version $version: $dump"
built=$(awk -F= '$1 == "loopdio_nbdkit_version" { print $2 }' <<<"$dump")
"$LOOPDIO_BUILD/loopdio" --version | grep -qx "loopdio $version (built against nbdkit $built)" ||
  fail "loopdio --version: $("$LOOPDIO_BUILD/loopdio" --version), plugin built against nbdkit $built"
pass "loopdio --version and --dump-plugin: $version, built against nbdkit $built"
# And where that nbdkit came from, the same in both: the stamp's origin when
# scripts/nbdkit.sh built it (cmake/NbdkitOrigin.cmake).
origin=$(sed -n 's/^loopdio_nbdkit_origin=//p' <<<"$dump")
[ -n "$origin" ] || fail "--dump-plugin: no loopdio_nbdkit_origin: $dump"
"$LOOPDIO_BUILD/loopdio" --version | grep -qxF "nbdkit $built ($origin)" ||
  fail "loopdio --version: $("$LOOPDIO_BUILD/loopdio" --version), the plugin's origin $origin"
nbdkit_prefix=$(pkg-config --variable=prefix nbdkit)
stamp=$nbdkit_prefix/share/loopdio/nbdkit-origin
if [ -f "$stamp" ]; then
  want="$(sed -n 's/^origin=//p' "$stamp"), $nbdkit_prefix"
  [ "$origin" = "$want" ] || fail "nbdkit's origin: $origin; $stamp says $want"
fi
pass "loopdio --version and --dump-plugin: nbdkit $built ($origin)"
deb=$T/pkg/loopdio_${version}_amd64.deb
[ -f "$deb" ] || { ls "$T/pkg"; fail "no loopdio_${version}_amd64.deb (loopdio --version: $version)"; }
[ "$(git_status)" = "$status_before" ] || fail "making the package changed the source tree"
pass "cpack: $(basename "$deb")"

field() { dpkg-deb -f "$deb" "$1"; }
[ "$(field Version)" = "$version" ] || fail "Version: $(field Version), loopdio --version: $version"
for lib in libc6 libstdc++6 libaio1 libnbd0; do
  [[ ", $(field Depends)," == *", $lib "* ]] || fail "Depends: $(field Depends): no $lib"
done
pass "Depends: $(field Depends)"

# The nbdkit the plugin is for: a packaged one is a dependency, one built from source is
# checked by the preinst, which must refuse when it is missing.
nbdkit_bin=$(pkg-config --variable=prefix nbdkit)/sbin/nbdkit
plugindir=$(pkg-config --variable=plugindir nbdkit)
dpkg-deb -e "$deb" "$T/control"
if owner=$(dpkg-query --search "$nbdkit_bin" 2>/dev/null); then
  [[ $(field Depends) == *"${owner%%:*} (>= 1.34)"* ]] || fail "no dependency on ${owner%%:*}"
  pass "Depends on ${owner%%:*} (>= 1.34)"
else
  [ -x "$T/control/preinst" ] || fail "no preinst to check $nbdkit_bin"
  if unshare -m --propagation private sh -c 'mount --bind /bin/false "$1" && "$2" install' \
       _ "$nbdkit_bin" "$T/control/preinst" >"$T/preinst.out" 2>&1; then
    fail "the preinst accepts a missing $nbdkit_bin"
  fi
  grep -q "needs nbdkit 1.34 or later at $nbdkit_bin" "$T/preinst.out" ||
    { cat "$T/preinst.out"; fail "the preinst's refusal does not say what is needed"; }
  "$T/control/preinst" install || fail "the preinst refuses $nbdkit_bin: $("$nbdkit_bin" --version)"
  pass "preinst: needs $nbdkit_bin >= 1.34 (refuses without it, accepts $("$nbdkit_bin" --version))"
fi

lintian --fail-on error,warning "$deb" >"$T/lintian.out" 2>&1 ||
  { cat "$T/lintian.out"; fail "lintian"; }
grep -v '^running with root' "$T/lintian.out" || true
pass "lintian: no errors, no warnings (the kept ones are overridden, each with its reason)"

# --- Installed with apt-get: loopdio alone (a missing dependency is scripts/deps.sh's job,
# and anything else apt-get installed would outlive the purge).
(cd "$T/pkg" && apt-get install -s "./$(basename "$deb")") >"$T/simulate.out" 2>&1 ||
  { cat "$T/simulate.out"; fail "apt-get install -s"; }
others=$(awk '$1 == "Inst" && $2 != "loopdio" { print $2 }' "$T/simulate.out" | tr '\n' ' ')
[ -z "$others" ] || fail "apt-get would install $others as well: run scripts/deps.sh"

dirs_before=$T/dirs-before
dpkg-deb -c "$deb" | awk '{ print $NF }' | sed 's#^\./#/#; s#/$##' | grep -v '^$' |
  while read -r f; do [ ! -d "$f" ] || echo "$f"; done >"$dirs_before"
at_exit "dpkg --purge loopdio"
(cd "$T/pkg" && apt-get install -y "./$(basename "$deb")") >"$T/install.out" 2>&1 ||
  { cat "$T/install.out"; fail "apt-get install ./$(basename "$deb")"; }
installed || fail "apt-get install left loopdio $(dpkg-query -W -f='${db:Status-Abbrev}' loopdio)"
dpkg -L loopdio >"$T/files"
pass "apt-get install ./$(basename "$deb")"

[ "$(command -v loopdio)" = /usr/bin/loopdio ] || fail "loopdio is $(command -v loopdio)"
grep -qx "$plugindir/nbdkit-loopdio-plugin.so" "$T/files" ||
  fail "the package has no $plugindir/nbdkit-loopdio-plugin.so"
dump=$(nbdkit loopdio --dump-plugin) || fail "nbdkit loopdio --dump-plugin"
grep -qx "path=$plugindir/nbdkit-loopdio-plugin.so" <<<"$dump" ||
  fail "nbdkit loopdio is not the installed plugin: $(grep ^path= <<<"$dump")"
if plugin_version=$(sed -n 's/^loopdio_version=//p' <<<"$dump") && [ -n "$plugin_version" ]; then
  [ "$plugin_version" = "$version" ] || fail "plugin $plugin_version, package $version"
fi
pass "nbdkit loopdio is $plugindir/nbdkit-loopdio-plugin.so"

mnt=$(make_fs ext4 64M)
img=$mnt/disk.img
truncate -s 16M "$img"
desc=$(nbdkit -U - loopdio file="$img" --run 'nbdinfo --json "$uri"' |
       $PYTHON -c 'import json, sys; print(json.load(sys.stdin)["exports"][0]["description"])') ||
  fail "nbdkit loopdio file=$img"
[[ $desc == *"direct I/O on"* ]] || fail "nbdkit loopdio: $desc"
pass "nbdkit loopdio file=...: $desc"

# loopdio serve and list, from /usr/bin.
sock=$T/serve.sock
loopdio serve -U "$sock" "$img" >"$T/serve.out" 2>&1 &
serve_pid=$!
at_exit "kill $serve_pid; wait $serve_pid"
# Ready once it says so: its state (what list reads) is written then, not when nbdkit binds.
wait_until 30 grep -q '^serving ' "$T/serve.out" || { cat "$T/serve.out"; fail "loopdio serve did not start"; }
list=$(loopdio list) || fail "loopdio list: $list"
# The export's line, by the header's column names: NAME and BACK-FILE as served, DIO on.
row=$(awk -v s="$sock" -v i="$img" 'NR == 1 { for (c = 1; c <= NF; c++) col[$c] = c; next }
  $col["NAME"] == s && $col["BACK-FILE"] == i && $col["DIO"] == 1' <<<"$list")
[ -n "$row" ] || { echo "$list"; fail "loopdio list does not show $sock serving $img, DIO 1"; }
pass "loopdio serve, loopdio list: $row"

# Man pages, as man finds them, and without warnings (lintian checked them too).
pages=$(man -w nbdkit-loopdio-plugin loopdio) || fail "man -w nbdkit-loopdio-plugin loopdio"
for p in $pages; do
  grep -qx "$p" "$T/files" || fail "man -w found $p, which is not the package's"
done
pass "man -w: $(tr '\n' ' ' <<<"$pages")"

# Bash completion, loaded the way bash-completion loads it, for the first word after each.
complete_words() {
  bash -c '
    source /usr/share/bash-completion/bash_completion
    _completion_loader loopdio
    line=$1
    read -r -a COMP_WORDS <<<"$line"
    [[ $line == *" " ]] && COMP_WORDS+=("")
    COMP_LINE=$line COMP_POINT=${#line} COMP_CWORD=$((${#COMP_WORDS[@]} - 1))
    complete -p loopdio >&2
    _loopdio loopdio "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD - 1]}"
    printf "%s\n" "${COMPREPLY[@]}"
  ' _ "$1" 2>"$T/complete.err"
}
expect_words() {  # expect_words LINE WORD...: completing LINE offers every WORD
  local line=$1 got
  shift
  got=$(complete_words "$line")
  grep -q -- "-F _loopdio loopdio" "$T/complete.err" ||
    { cat "$T/complete.err"; fail "bash-completion did not load loopdio's completion"; }
  for w in "$@"; do
    grep -qx -- "$w" <<<"$got" || fail "completing '$line': no '$w' in: $(tr '\n' ' ' <<<"$got")"
  done
  pass "completing '$line': $(tr '\n' ' ' <<<"$got")"
}
expect_words "loopdio " serve attach detach list set snapshot info stat
expect_words "loopdio serve --" --unix --port --read-only --direct-io --aio --sector-size --help
expect_words "loopdio serve --direct-io " on off auto
expect_words "loopdio set --direct-io=on " "$sock"

kill "$serve_pid"
wait "$serve_pid" || fail "loopdio serve exited with $? on SIGTERM"

# --- Purged: nothing of it is left.
apt-get purge -y loopdio >"$T/purge.out" 2>&1 || { cat "$T/purge.out"; fail "apt-get purge"; }
status=$(dpkg-query -W -f='${Status}' loopdio 2>/dev/null || true)
[[ -z $status || $status == *" not-installed" ]] || fail "loopdio is still: $status"
left=""
while read -r f; do
  # A directory that was there before (/usr, or /lib, a link to usr/lib) stays.
  [ "$f" = /. ] || grep -qx -- "$f" "$dirs_before" && continue
  [ ! -e "$f" ] && [ ! -L "$f" ] || left="$left $f"
done <"$T/files"
[ -z "$left" ] || fail "left after the purge:$left"
pass "apt-get purge loopdio: all $(wc -l <"$T/files") paths gone (but directories that were there before)"

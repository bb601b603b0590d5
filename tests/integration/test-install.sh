#!/usr/bin/env bash
# `cmake --install` puts the plugin, as nbdkit-loopdio-plugin.so, into the plugin directory of
# the nbdkit it was built against, and the service's ExecStart names that nbdkit (>= 1.34), so
# that `nbdkit loopdio file=...` and the unit both work. Checked on a staged install (DESTDIR),
# run inside a private mount namespace, so the machine's own nbdkit directory is never touched.
source "$(dirname "$0")/lib.sh"
require_root
require nbdkit cmake unshare dpkg

: "${LOOPDIO_BUILD:?run through ctest}"
DESTDIR=$T/stage cmake --install "$LOOPDIO_BUILD" >"$T/install.log" || { cat "$T/install.log"; fail "cmake --install"; }

# The nbdkit the unit runs: by absolute path, installed, supported.
unit=$(find "$T/stage" -name 'loopdio@.service')
[ -n "$unit" ] && [ -f "$(dirname "$unit")/loopdio@.socket" ] || { cat "$T/install.log"; fail "no units installed"; }
nbdkit=$(sed -n 's/^ExecStart=\([^ ]*\) .*/\1/p' "$unit")
[ -x "$nbdkit" ] || fail "ExecStart names $nbdkit, which is not installed"
config=$("$nbdkit" --dump-config)
version=$(sed -n 's/^version=//p' <<<"$config")
dpkg --compare-versions "$version" ge 1.34 || fail "ExecStart: $nbdkit is nbdkit $version (< 1.34)"
grep -qx "Environment=PLUGIN=loopdio .*" "$unit" || fail "the unit does not default to PLUGIN=loopdio"
echo "${unit#"$T/stage"}: ExecStart runs $nbdkit (nbdkit $version), PLUGIN=loopdio"

# The plugin went where that nbdkit looks for plugins by name.
plugindir=$(sed -n 's/^plugindir=//p' <<<"$config")
staged=$T/stage$plugindir/nbdkit-loopdio-plugin.so
[ -f "$staged" ] || { cat "$T/install.log"; fail "no $staged ($nbdkit's plugindir is $plugindir)"; }
echo "installed: $plugindir/nbdkit-loopdio-plugin.so"
# The README's `nbdkit loopdio` must find the same nbdkit.
[ "$(command -v nbdkit)" = "$nbdkit" ] || fail "nbdkit on PATH is $(command -v nbdkit), not $nbdkit"

# The namespace's plugin directory: nbdkit's own plugins plus the staged one; `nbdkit
# loopdio` as the README has it, then the unit's nbdkit with the unit's plugin name.
mkdir "$T/plugins"
cp -a "$plugindir"/. "$T/plugins/"
cp "$staged" "$T/plugins/"
truncate -s 8M "$T/disk.img"
unshare -m --propagation private bash -c '
  set -e
  mount --bind "$1" "$2"
  nbdkit -U - loopdio file="$3" --run "nbdinfo \"\$uri\"" | grep description
  "$4" -U - loopdio file="$3" --run "nbdinfo \"\$uri\"" | grep description
' _ "$T/plugins" "$plugindir" "$T/disk.img" "$nbdkit" >"$T/out" || { cat "$T/out"; fail "nbdkit loopdio"; }
[ "$(grep -c "loopdio: $T/disk.img" "$T/out")" = 2 ] || { cat "$T/out"; fail "nbdkit loopdio did not serve"; }
cat "$T/out"
pass "cmake --install gives nbdkit loopdio, and a unit that runs $nbdkit $version"

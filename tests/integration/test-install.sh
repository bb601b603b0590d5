#!/usr/bin/env bash
# `cmake --install` puts the plugin into nbdkit's plugin directory as
# nbdkit-loopdio-plugin.so, so that `nbdkit loopdio file=...` works. Checked with a staged
# install (DESTDIR), then inside a private mount namespace whose plugin directory holds the
# staged plugin, so the machine's own nbdkit directory is never touched.
source "$(dirname "$0")/lib.sh"
require_root
require nbdkit cmake unshare pkg-config

: "${LOOPDIO_BUILD:?run through ctest}"
plugindir=$(pkg-config --variable=plugindir nbdkit)
DESTDIR=$T/stage cmake --install "$LOOPDIO_BUILD" >"$T/install.log" || { cat "$T/install.log"; fail "cmake --install"; }
staged=$T/stage$plugindir/nbdkit-loopdio-plugin.so
[ -f "$staged" ] || { cat "$T/install.log"; fail "no $staged"; }
echo "installed: $plugindir/nbdkit-loopdio-plugin.so"

# The namespace's plugin directory: nbdkit's own plugins plus the staged one.
mkdir "$T/plugins"
cp -a "$plugindir"/. "$T/plugins/"
cp "$staged" "$T/plugins/"
truncate -s 8M "$T/disk.img"
unshare -m --propagation private bash -c '
  set -e
  mount --bind "$1" "$2"
  nbdkit -U - loopdio file="$3" --run "nbdinfo \"\$uri\"" | grep description
' _ "$T/plugins" "$plugindir" "$T/disk.img" >"$T/out" || { cat "$T/out"; fail "nbdkit loopdio"; }
grep -q "loopdio: $T/disk.img" "$T/out" || { cat "$T/out"; fail "nbdkit loopdio did not serve"; }
cat "$T/out"
pass "cmake --install gives nbdkit loopdio"

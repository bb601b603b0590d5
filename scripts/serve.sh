#!/usr/bin/env bash
# The main job: install what is missing (scripts/deps.sh), build the plugin and the command
# (scripts/build.sh), then serve IMAGE, or a 1 GiB demo image with ext4 inside
# (build/demo.img, made once), with `loopdio serve` on nbd://localhost:10809 (loopback only)
# until Ctrl-C. loopdio prints the URI and the export's description (direct I/O, alignment,
# engine), and exits non-zero with a one-line reason when the server cannot start (the port
# is busy, say).
#   scripts/serve.sh [IMAGE] [loopdio serve options...]   e.g. scripts/serve.sh disk.img --aio=io_uring
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
"$top/scripts/deps.sh"
"$top/scripts/build.sh" --target=loopdio_cli  # the command and the plugin it runs
build=${LOOPDIO_BUILD_DIR:-$top/build}  # where build.sh built

image=
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then
  image=$1
  shift
fi
if [ -z "$image" ]; then
  image=$build/demo.img
  if [ ! -f "$image" ]; then
    echo "serve: creating the demo image $image (1 GiB, ext4 inside)"
    rm -f "$image.tmp"
    truncate -s 1G "$image.tmp"
    mkfs.ext4 -q -F -L loopdio-demo "$image.tmp"
    mv "$image.tmp" "$image"
  fi
fi
exec "$build/loopdio" serve "$@" -- "$image"

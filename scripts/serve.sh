#!/usr/bin/env bash
# The main job: install what is missing, build, then serve an image with the plugin on
# nbd://localhost (TCP 10809) and a Unix socket, show with nbdinfo that direct I/O is in use,
# and keep serving until Ctrl-C. Without an image, a 1 GiB demo image is created.
#   scripts/serve.sh [IMAGE] [plugin parameters...]     e.g. scripts/serve.sh disk.img aio=io_uring
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
"$top/scripts/deps.sh"
"$top/scripts/build.sh"
build=${LOOPDIO_BUILD_DIR:-$top/build}

image=${1:-}
[ $# -gt 0 ] && shift
if [ -z "$image" ]; then
  image=${LOOPDIO_DEMO_IMAGE:-$build/demo.img}
  if [ ! -f "$image" ]; then
    echo "serve: creating demo image $image (1 GiB, ext4 inside)"
    truncate -s 1G "$image"
    mkfs.ext4 -q -L loopdio-demo "$image"
  fi
fi

sock=${LOOPDIO_SOCKET:-$build/loopdio.sock}
rm -f "$sock"
port=${LOOPDIO_PORT:-10809}  # 0: no TCP, the Unix socket only
tcp=(-p "$port")
[ "$port" = 0 ] && tcp=()
nbdkit -f --exit-with-parent -U "$sock" "${tcp[@]}" "$build/loopdio.so" file="$image" "$@" &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null; rm -f "$sock"' EXIT INT TERM
for _ in $(seq 100); do [ -S "$sock" ] && break; kill -0 $server 2>/dev/null || exit 1; sleep 0.05; done

nbdinfo "nbd+unix:///?socket=$sock"
echo
echo "serving $image on ${tcp:+nbd://localhost:$port and }nbd+unix:///?socket=$sock"
echo "(Ctrl-C stops)"
wait $server

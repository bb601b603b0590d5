#!/usr/bin/env bash
# The README's first command: scripts/serve.sh builds, creates a demo image when none is
# given, serves it and shows with nbdinfo that direct I/O is in use.
source "$(dirname "$0")/lib.sh"
require_root
require nbdkit nbdinfo mkfs.ext4

: "${LOOPDIO_BUILD:?run through ctest}" "${LOOPDIO_SOURCE:?run through ctest}"
out=$T/serve.out
# The same build directory as the suite's, so the build step has nothing to do; the demo
# image goes into a scratch copy of the build directory's path.
LOOPDIO_BUILD_DIR=$LOOPDIO_BUILD LOOPDIO_SOCKET=$T/serve.sock LOOPDIO_PORT=0 \
  LOOPDIO_DEMO_IMAGE=$T/demo.img setsid "$LOOPDIO_SOURCE/scripts/serve.sh" >"$out" 2>&1 &
pid=$!
at_exit "kill -- -$pid"
for _ in $(seq 600); do
  grep -q "^serving " "$out" && break
  kill -0 $pid 2>/dev/null || { cat "$out"; fail "serve.sh exited"; }
  sleep 0.2
done
grep -q "^serving " "$out" || { cat "$out"; fail "serve.sh did not start serving"; }
grep -q "description: loopdio: $T/demo.img (.*): direct I/O on" "$out" || { cat "$out"; fail "nbdinfo shows no direct I/O"; }
nbdinfo "nbd+unix:///?socket=$T/serve.sock" | grep -q "export-size: 1073741824" || fail "demo export"
sed -n '/description/p;/^serving/p' "$out"
pass "scripts/serve.sh serves a demo image with direct I/O"

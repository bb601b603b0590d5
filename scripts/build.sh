#!/usr/bin/env bash
# Configures and builds loopdio into build/ (or $LOOPDIO_BUILD_DIR), with warnings as errors.
# Extra arguments go to cmake's configure step (e.g. -DLOOPDIO_SANITIZE=address,undefined).
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
build=${LOOPDIO_BUILD_DIR:-$top/build}
cmake -S "$top" -B "$build" -DCMAKE_BUILD_TYPE=${LOOPDIO_BUILD_TYPE:-RelWithDebInfo} "$@" >/dev/null
cmake --build "$build" -j "$(nproc)"

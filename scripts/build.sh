#!/usr/bin/env bash
# Configures and builds loopdio into build/ (or $LOOPDIO_BUILD_DIR), with warnings as errors
# (LOOPDIO_WERROR, off for a plain cmake build).
# Arguments --target=NAME build only that target (and what it needs); the others go to
# cmake's configure step (e.g. -DLOOPDIO_SANITIZE=address,undefined).
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
build=${LOOPDIO_BUILD_DIR:-$top/build}
configure=() targets=()
for a in "$@"; do
  case $a in
    --target=*) targets+=(--target "${a#--target=}") ;;
    *) configure+=("$a") ;;
  esac
done
cmake -S "$top" -B "$build" -DCMAKE_BUILD_TYPE=${LOOPDIO_BUILD_TYPE:-RelWithDebInfo} \
  -DLOOPDIO_WERROR=ON "${configure[@]}" >/dev/null
cmake --build "$build" -j "$(nproc)" "${targets[@]}"

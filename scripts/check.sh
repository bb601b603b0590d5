#!/usr/bin/env bash
# The whole test suite: install what is missing, build (warnings are errors), run the unit
# and integration tests, then the sanitizer builds. Run as root: the integration tests make
# loop devices and filesystems. `.ci/run` calls exactly this.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
"$top/scripts/deps.sh"
"$top/scripts/build.sh"
build=${LOOPDIO_BUILD_DIR:-$top/build}
cd "$build"
ctest --output-on-failure --timeout 1200 ${LOOPDIO_CTEST_ARGS:-}

#!/usr/bin/env bash
# The whole test suite: install what is missing, make a Release build (what users build;
# warnings are errors), run the unit and integration tests, then an ASan+UBSan build and a
# TSan build, each running the unit tests and the data-integrity integration tests. Run as
# root: the integration tests make loop devices and filesystems. `.ci/run` calls exactly this.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
"$top/scripts/deps.sh"

run_suite() {  # run_suite BUILD-DIR CTEST-ARGS... [-- CMAKE-ARGS...]
  local dir=$1 ctest_args=() cmake_args=()
  shift
  while [ $# -gt 0 ] && [ "$1" != -- ]; do ctest_args+=("$1"); shift; done
  [ "${1:-}" = -- ] && shift
  cmake_args=("$@")
  echo "=== $(basename "$dir"): build ${cmake_args[*]}"
  LOOPDIO_BUILD_DIR=$dir "$top/scripts/build.sh" "${cmake_args[@]}"
  echo "=== $(basename "$dir"): ctest ${ctest_args[*]}"
  (cd "$dir" && ctest --output-on-failure --timeout 1200 "${ctest_args[@]}")
}

build=${LOOPDIO_BUILD_DIR:-$top/build}
run_suite "$build" ${LOOPDIO_CTEST_ARGS:-} -- -DCMAKE_BUILD_TYPE=Release
[ "${LOOPDIO_SKIP_SANITIZERS:-}" = 1 ] && exit 0
# The sanitized builds run the unit and data tests: they need the plugin, the unit tests and
# the tests' own tools, not the command.
sanitized=(--target=loopdio_plugin --target=loopdio_unit_tests --target=nosync --target=no-io-uring)
run_suite "$build-asan" -L "unit|data" -- -DLOOPDIO_SANITIZE=address,undefined "${sanitized[@]}"
run_suite "$build-tsan" -L "unit|data" -- -DLOOPDIO_SANITIZE=thread "${sanitized[@]}"
echo "=== all tests passed"

#!/usr/bin/env bash
# Every CMake build type builds for a user: a fresh `git clone` of the source tree is
# configured with only -DCMAKE_BUILD_TYPE (Debug, RelWithDebInfo, MinSizeRel; Release is the
# suite's own main build, with warnings as errors, which scripts/check.sh makes first), so
# warnings are not errors (LOOPDIO_WERROR is off unless asked for), and the plugin and the
# command build. Each optimisation level warns differently (GCC 12 once warned of restrict
# at -O3 only, which stopped every Release build while the -O2 CI build passed): any
# compiler warning fails the test too, since the project's own builds treat them as errors.
# The builds run at normal priority: niced, beside a CPU hog (stress-ng --cpu 2) they got a
# few percent of the CPUs and took more than the test's 45 minutes.
source "$(dirname "$0")/lib.sh"
require git cmake
src=${LOOPDIO_SOURCE:?run through ctest, or set LOOPDIO_SOURCE to the source tree}
git -C "$src" rev-parse --verify -q HEAD >/dev/null || skip "$src is not a git checkout"

git clone -q "$src" "$T/src"
echo "cloned $(git -C "$T/src" log -1 --format='%h %s')"
for type in Debug RelWithDebInfo MinSizeRel; do
  build=$T/build-$type log=$T/$type.log start=$SECONDS
  cmake -S "$T/src" -B "$build" -DCMAKE_BUILD_TYPE=$type >"$log" 2>&1 ||
    { tail -n 20 "$log" >&2; fail "$type: cmake configure failed"; }
  grep -qx 'LOOPDIO_WERROR:BOOL=OFF' "$build/CMakeCache.txt" ||
    fail "$type: LOOPDIO_WERROR is not off by default: $(grep LOOPDIO_WERROR "$build/CMakeCache.txt")"
  cmake --build "$build" -j "$(nproc)" --target loopdio_plugin loopdio_cli >>"$log" 2>&1 ||
    { grep -E 'error|warning' "$log" | head -n 20 >&2; fail "$type: build failed"; }
  # The flags the compiler really got, from the plugin's compile command.
  flags=$(cat "$build"/CMakeFiles/loopdio_plugin.dir/flags.make)
  [[ $flags != *-Werror* ]] || fail "$type: a user's build compiles with -Werror"
  [ -f "$build/loopdio.so" ] && [ -x "$build/loopdio" ] || fail "$type: no loopdio.so or loopdio"
  if grep -E '(warning|error): ' "$log" >"$T/warnings"; then
    head -n 20 "$T/warnings" >&2
    fail "$type: $(wc -l <"$T/warnings") compiler warnings (errors in the project's own builds)"
  fi
  "$build/loopdio" --version >/dev/null || fail "$type: loopdio --version failed"
  pass "$type: configured and built from a fresh clone without -Werror, no warnings" \
    "($((SECONDS - start)) s)"
  rm -rf "$build"
done

#!/usr/bin/env bash
# A C++ compiler that reuses objects across the builds of one scripts/test.sh run: clippy's
# check, the test build, the no-default build and the template crate each run torch-sys's,
# lightning-sys's and lightning-dist's build scripts again (cargo shares none of those build
# script runs between a check and a build), and each compiled the same C++ against libtorch's
# headers again. scripts/test.sh sets CXX to this script; the real compiler is
# $LIGHTNING_RS_REAL_CXX. An object is keyed by the compiler's version, the arguments (without
# the output path) and the preprocessed source (so every header's content counts); a miss
# compiles as usual and stores the object; anything but `-c ... -o OUT` passes through.
set -euo pipefail
real="${LIGHTNING_RS_REAL_CXX:-c++}"
cache="${LIGHTNING_RS_CXX_CACHE:?LIGHTNING_RS_CXX_CACHE is not set}"
out="" compiling=0 skip=0
keep=()
for a in "$@"; do
  if [ "$skip" = 1 ]; then out="$a"; skip=0; continue; fi
  case "$a" in
    -o) skip=1 ;;
    -c) compiling=1; keep+=("$a") ;;
    *) keep+=("$a") ;;
  esac
done
if [ "$compiling" = 0 ] || [ -z "$out" ]; then
  exec "$real" "$@"
fi
pre=()
for a in "${keep[@]}"; do [ "$a" = -c ] || pre+=("$a"); done
key="$( { "$real" --version; printf '%s\n' "${keep[@]}"; "$real" "${pre[@]}" -E -o - ; } \
  | sha256sum | cut -d' ' -f1)" || exec "$real" "$@"
mkdir -p "$cache"
if [ -f "$cache/$key.o" ]; then
  cp "$cache/$key.o" "$out"
  exit 0
fi
"$real" "$@"
tmp="$cache/$key.o.$$"
cp "$out" "$tmp" && mv -f "$tmp" "$cache/$key.o"

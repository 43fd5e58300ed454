#!/usr/bin/env bash
# device-pack.sh: build the cuda-tagged test binaries here and gather, in one
# folder, everything they need on a GPU machine that has no Go, no headers
# and no libzmq: the binaries, the shared libraries they load (libzmq.so.5
# and its dependencies), benchratio, and device-check.sh to run them.
#
# Usage: scripts/device-pack.sh [DIR]         (default DIR: .cache/device)
#   DEVICE_PKGS="./sdk/transfer/cuda ./sdk/transfer/twoproc" (the default)
#
# For each package it builds NAME.test (for benchmarks) and NAME-race.test
# (for tests, under -race). glibc and the NVIDIA driver (libcuda, libnvidia-*)
# are never copied: the GPU machine's own must be used.
# Then, on the GPU machine: bash DIR/device-check.sh
set -euo pipefail

cd "$(dirname "$0")/.."
DIR=${1:-.cache/device}
PKGS=${DEVICE_PKGS:-./sdk/transfer/cuda ./sdk/transfer/twoproc}
GO=${GO:-go}

eval "$(scripts/cuda-deps.sh --env)"
rm -rf "$DIR"
mkdir -p "$DIR"

bins=()
for pkg in $PKGS; do
  name=$(basename "$pkg")
  echo "device-pack: $pkg -> $DIR/$name.test, $DIR/$name-race.test"
  # Without symbol tables (-s -w): a device run carries 64 MiB at most.
  "$GO" test -c -tags cuda -ldflags='-s -w' -o "$DIR/$name.test" "$pkg"
  "$GO" test -c -race -tags cuda -ldflags='-s -w' -o "$DIR/$name-race.test" "$pkg"
  bins+=("$DIR/$name.test" "$DIR/$name-race.test")
done
"$GO" build -o "$DIR/benchratio" ./supervisor/internal/benchratio
cp scripts/device-check.sh "$DIR/"

# Shared libraries: what the binaries load, plus libzmq.so.5 and what it
# loads (the transfer manager's tests need it), minus glibc and the driver.
skip='^(linux-vdso|ld-linux|libc\.so|libm\.so|libpthread\.so|libdl\.so|librt\.so|libresolv\.so|libutil\.so|libcuda\.so|libnvidia)'
# (awk reads all of ldconfig's output: exiting early would end ldconfig
# with SIGPIPE, which pipefail turns into a failure.)
zmq=$(ldconfig -p | awk '/libzmq\.so\.5 .*x86-64/ && !p { p = $NF } END { print p }')
if [ -z "$zmq" ]; then
  echo "device-pack: libzmq.so.5 is not installed here; run make deps first" >&2
  exit 1
fi
libs=$( { ldd "${bins[@]}" "$zmq" 2>/dev/null; echo "libzmq.so.5 => $zmq (0)"; } |
  awk '$2 == "=>" && $3 ~ /^\// { print $1, $3 }' | sort -u)
# The C++ runtime goes to fallback/: device-check.sh uses it only where the
# GPU machine has none, as an older copy could shadow what its driver needs.
mkdir -p "$DIR/fallback"
while read -r soname path; do
  [[ $soname =~ $skip ]] && continue
  case $soname in
    libstdc++.so.*|libgcc_s.so.*) cp -L "$path" "$DIR/fallback/$soname" ;;
    *) cp -L "$path" "$DIR/$soname" ;;
  esac
done <<<"$libs"

echo "device-pack: ready in $DIR ($(du -sh "$DIR" | cut -f1)):"
(cd "$DIR" && find . -type f -printf '  %-30P %10s\n' | sort)
size=$(du -sk "$DIR" | cut -f1)
if [ "$size" -gt $((60 * 1024)) ]; then
  echo "device-pack: warning: $DIR is over 60 MiB; a device run carries 64 MiB at most" >&2
fi

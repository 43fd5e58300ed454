#!/usr/bin/env bash
# cuda-deps.sh: fetch what `go build -tags cuda` needs on a machine without
# CUDA, without touching the machine's apt configuration.
#
# It downloads cuda.h (Debian's nvidia-cuda-dev) and libcuda.so.1 (libcuda1),
# both from Debian 12's non-free component, with a private sources list, and
# unpacks them into $CACHE/root. Nothing is installed and nothing under /etc
# or /var is written. libcuda.so.1 is only linked against here: at run time
# the GPU machine's own driver library is used, never this one.
#
# Usage: scripts/cuda-deps.sh [CACHE]      (default CACHE: .cache/cuda)
# Then build with the flags it prints last, or source them:
#   eval "$(scripts/cuda-deps.sh --env)"
#
# Re-running is cheap: it does nothing once $CACHE/root holds both files.
set -euo pipefail

print_env=0
if [ "${1:-}" = "--env" ]; then print_env=1; shift; fi
CACHE=${1:-${CUDA_CACHE:-.cache/cuda}}
mkdir -p "$CACHE"
CACHE=$(cd "$CACHE" && pwd)
ROOT=$CACHE/root
LIBDIR=$ROOT/usr/lib/x86_64-linux-gnu
PACKAGES=(nvidia-cuda-dev libcuda1)

say() { [ "$print_env" = 1 ] && echo "$*" >&2 || echo "$*"; }

if [ ! -f "$ROOT/usr/include/cuda.h" ] || [ ! -e "$LIBDIR/libcuda.so.1" ]; then
  if [ "$(uname -m)" != x86_64 ]; then
    echo "cuda-deps: this fetches x86_64 (amd64) libraries; on $(uname -m) build on an x86_64 machine instead" >&2
    exit 1
  fi
  for tool in apt-get dpkg-deb; do
    command -v "$tool" >/dev/null || { echo "cuda-deps: $tool is required (a Debian or Ubuntu machine)" >&2; exit 1; }
  done
  mkdir -p "$CACHE/lists/partial" "$CACHE/archives/partial" "$CACHE/apt-cache" "$ROOT"
  keyring=/usr/share/keyrings/debian-archive-keyring.gpg
  signed=""
  [ -f "$keyring" ] && signed="[signed-by=$keyring] "
  echo "deb ${signed}http://deb.debian.org/debian bookworm main contrib non-free non-free-firmware" >"$CACHE/sources.list"
  apt_opts=(
    -o "Dir::Etc::SourceList=$CACHE/sources.list"
    -o "Dir::Etc::SourceParts=/dev/null"
    -o "Dir::State::Lists=$CACHE/lists"
    -o "Dir::Cache=$CACHE/apt-cache"
    -o "Dir::Cache::Archives=$CACHE/archives"
    -o "APT::Architecture=amd64"
    -o "APT::Architectures=amd64"
    -o "Debug::NoLocking=1"
    -o "APT::Sandbox::User=$(id -un)"
  )
  say "cuda-deps: apt-get update (private sources list in $CACHE)"
  apt-get "${apt_opts[@]}" update -qq >&2
  say "cuda-deps: apt-get download ${PACKAGES[*]}"
  (cd "$CACHE/archives" && apt-get "${apt_opts[@]}" download "${PACKAGES[@]}" >&2)
  # Unpack into a staging folder and keep only the two files the build
  # needs: nvidia-cuda-dev alone unpacks to about 2.7 GB.
  stage=$CACHE/stage
  rm -rf "$stage" && mkdir -p "$stage"
  for pkg in "${PACKAGES[@]}"; do
    deb=$(ls -t "$CACHE/archives/${pkg}"_*.deb 2>/dev/null | head -n1)
    [ -n "$deb" ] || { echo "cuda-deps: apt-get download did not fetch $pkg" >&2; exit 1; }
    dpkg-deb -x "$deb" "$stage"
  done
  [ -f "$stage/usr/include/cuda.h" ] || { echo "cuda-deps: cuda.h is not in nvidia-cuda-dev any more; look in $stage" >&2; exit 1; }
  # Debian's libcuda1 puts the library under nvidia/current and leaves
  # /usr/lib/<triplet>/libcuda.so.1 to update-alternatives.
  lib=$(find "$stage/usr/lib/x86_64-linux-gnu" -name 'libcuda.so.[0-9]*.*' -type f | head -n1)
  [ -n "$lib" ] || { echo "cuda-deps: libcuda.so.<version> is not in libcuda1 any more; look in $stage" >&2; exit 1; }
  mkdir -p "$ROOT/usr/include" "$LIBDIR"
  cp "$stage/usr/include/cuda.h" "$ROOT/usr/include/"
  cp "$lib" "$LIBDIR/"
  ln -sfn "$(basename "$lib")" "$LIBDIR/libcuda.so.1"
  rm -rf "$stage"
  # The package lists (about 50 MB) and the .debs (about 780 MB) are not
  # needed any more; CUDA_DEPS_KEEP_DEBS=1 keeps the .debs.
  rm -rf "$CACHE/lists" "$CACHE/apt-cache"
  [ "${CUDA_DEPS_KEEP_DEBS:-0}" = 1 ] || rm -rf "$CACHE/archives"
fi
# The linker looks for the unversioned name, which Debian ships in another
# package (or as a dangling link); point it at libcuda.so.1.
if [ ! -e "$LIBDIR/libcuda.so" ]; then
  ln -sfn libcuda.so.1 "$LIBDIR/libcuda.so"
fi

if [ "$print_env" = 1 ]; then
  printf 'export CGO_CFLAGS=%q\n' "-I$ROOT/usr/include"
  printf 'export CGO_LDFLAGS=%q\n' "-L$LIBDIR"
else
  echo "cuda-deps: ready in $ROOT"
  echo "  CGO_CFLAGS=-I$ROOT/usr/include CGO_LDFLAGS=-L$LIBDIR go build -tags cuda ./..."
fi

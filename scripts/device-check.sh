#!/usr/bin/env bash
# device-check.sh: on a GPU machine, run the cuda-tagged tests and benchmarks
# from the binaries scripts/device-pack.sh built elsewhere, in one go and in
# under 5 minutes, and print a summary.
#
# Usage: bash .cache/device/device-check.sh [DIR]
#   DIR: the packed folder (default: this script's folder). It holds
#   NAME-race.test (tests, under -race), NAME.test (benchmarks), benchratio
#   and the shared libraries (libzmq.so.5 and its dependencies); the GPU
#   machine's own libcuda.so.1 is used.
# Results go to $OUT, or ./device-results: env.txt, tests.log, bench.txt,
# summary.txt (four files, whatever the number of packages).
# Exit status: 0 when every test passed (skips included), 1 otherwise.
set -uo pipefail
shopt -s nullglob

DIR=$(cd "${1:-$(dirname "$0")}" && pwd)
RES=${OUT:-./device-results}
mkdir -p "$RES"
RES=$(cd "$RES" && pwd)
libpath=$DIR
# fallback/ holds the C++ runtime libzmq was built with: used only if this
# machine lacks one, since an older copy could shadow what its driver needs.
for so in "$DIR"/fallback/*.so*; do
  if ! ldconfig -p 2>/dev/null | grep -q "^[[:space:]]*$(basename "$so") .*x86-64"; then
    libpath=$libpath:$DIR/fallback
    break
  fi
done
export LD_LIBRARY_PATH="$libpath${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
TEST_LIMIT=${TEST_LIMIT:-120}   # seconds for all tests of one package
BENCH_LIMIT=${BENCH_LIMIT:-120} # seconds for all benchmarks of one package
BENCHTIME=${BENCHTIME:-1s}

plain=()
for f in "$DIR"/*.test; do
  [[ $f == *-race.test ]] || plain+=("$f")
done
if [ ${#plain[@]} -eq 0 ]; then
  echo "device-check: no *.test binaries in $DIR; build them with scripts/device-pack.sh" >&2
  exit 1
fi

{
  echo "date: $(date -u +%FT%TZ)"
  echo "host: $(uname -srm)"
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | sed 's/^/gpu: /'
  else
    echo "gpu: no nvidia-smi on this machine"
  fi
  ldd "${plain[0]}" 2>&1 | grep -E 'libcuda|not found' | sed 's/^[[:space:]]*/lib: /'
} >"$RES/env.txt"
cat "$RES/env.txt"

: >"$RES/tests.log"
: >"$RES/bench.txt"
failed=0
for bin in "${plain[@]}"; do
  name=$(basename "$bin" .test)
  tbin=$DIR/$name-race.test
  [ -x "$tbin" ] || tbin=$bin
  echo "== $name: tests ($(basename "$tbin"), limit ${TEST_LIMIT}s)" | tee -a "$RES/tests.log"
  timeout -k 5 "$TEST_LIMIT" "$tbin" -test.v -test.count=1 -test.timeout="$((TEST_LIMIT - 5))s" >>"$RES/tests.log" 2>&1
  rc=$?
  if [ "$rc" -ne 0 ] && [ "$tbin" != "$bin" ] && grep -q 'ThreadSanitizer' "$RES/tests.log"; then
    echo "== $name: the race detector cannot run here; tests again without -race" | tee -a "$RES/tests.log"
    timeout -k 5 "$TEST_LIMIT" "$bin" -test.v -test.count=1 -test.timeout="$((TEST_LIMIT - 5))s" >>"$RES/tests.log" 2>&1
    rc=$?
  fi
  echo "== $name: tests exit status $rc" | tee -a "$RES/tests.log"
  [ "$rc" -eq 0 ] || failed=1

  echo "== $name: benchmarks (limit ${BENCH_LIMIT}s)"
  timeout -k 5 "$BENCH_LIMIT" "$bin" -test.run='^$' -test.bench=. -test.benchtime="$BENCHTIME" -test.count=1 \
    -test.timeout="$((BENCH_LIMIT - 5))s" >>"$RES/bench.txt" 2>&1
  brc=$?
  echo "== $name: benchmarks exit status $brc" >>"$RES/bench.txt"
  [ "$brc" -eq 0 ] || failed=1
done

{
  echo "device-check summary"
  sed 's/^/  /' "$RES/env.txt"
  pass=$(grep -cE '^\s*--- PASS' "$RES/tests.log")
  fail=$(grep -cE '^\s*--- FAIL' "$RES/tests.log")
  skip=$(grep -cE '^\s*--- SKIP' "$RES/tests.log")
  echo "tests: $pass passed, $fail failed, $skip skipped (subtests included)"
  grep -E '^\s*--- SKIP' "$RES/tests.log" | grep -v 'TestHelperProcess' | sed 's/^\s*/  /'
  # each failed test with the lines it logged
  awk '/^=== (RUN|CONT|PAUSE|NAME)/ { buf = ""; next }
       /^\s*--- FAIL/ { printf "%s  %s\n", buf, $0; buf = ""; next }
       /^\s*--- (PASS|SKIP)/ { buf = ""; next }
       { buf = buf "    " $0 "\n" }' "$RES/tests.log" | grep -vE '^\s*(FAIL|== .*)$'
  if grep -q 'Error in initialization' "$RES/tests.log" "$RES/bench.txt"; then
    echo "  the CUDA driver did not initialise (gorgonia.org/cu exits in its init): is there a GPU and a driver?"
  fi
  grep -h 'error while loading shared libraries' "$RES/tests.log" "$RES/bench.txt" | sort -u | sed 's/^/  /'
  grep -hE '^(panic:|fatal error:|== .* exit status [1-9])' "$RES/tests.log" "$RES/bench.txt" | sed 's/^/  /'
  echo
  echo "benchmarks:"
  grep -E '^Benchmark' "$RES/bench.txt" | sed 's/^/  /'
  if [ -x "$DIR/benchratio" ] && grep -q '^Benchmark' "$RES/bench.txt"; then
    "$DIR/benchratio" <"$RES/bench.txt"
  fi
  echo
  if [ "$failed" -eq 0 ]; then echo "device-check: ok"; else echo "device-check: FAILED (see tests.log and bench.txt in $RES)"; fi
} | tee "$RES/summary.txt"
exit "$failed"

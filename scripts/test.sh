#!/usr/bin/env bash
# Install the package with its test extras and run the whole test suite.
# This is the README's test command; .ci/run calls it in a fresh venv.
set -euo pipefail
cd "$(dirname "$0")/.."
T0=$(date +%s)
# The torch-free native tests (C++ unit tests, nvcc compile) need no Python package:
# they build while pip installs, which mostly waits on downloads and unpacking on one
# core (measured alone on the 2-core CI box, 2026-11-28: pip's torch and extras ~60 s,
# ctest 84 s; the extension's -O3 build after them, 183 s, is the longest step).
CTEST_PID=""
if [ -f CMakeLists.txt ] && [ -f scripts/ctest.sh ]; then
  CTEST_LOG=$(mktemp)
  bash scripts/ctest.sh > "$CTEST_LOG" 2>&1 &
  CTEST_PID=$!
  trap 'kill "$CTEST_PID" 2>/dev/null || true' EXIT  # pip failed: do not leave it running
fi
python -m pip install -q torch==2.13.0 2>/dev/null || python -m pip install -q "torch>=2.4"
python -m pip install -q "setuptools>=77" wheel ninja  # 77: pyproject's SPDX license
python -m pip install -q --no-build-isolation -e ".[test,demo]"
if [ -n "$CTEST_PID" ]; then
  rc_ctest=0
  wait "$CTEST_PID" || rc_ctest=$?
  trap - EXIT
  cat "$CTEST_LOG"
  rm -f "$CTEST_LOG"
  if [ "$rc_ctest" -ne 0 ]; then echo "scripts/ctest.sh failed (exit $rc_ctest)" >&2; exit "$rc_ctest"; fi
fi
echo "test.sh: installed, built and C++-tested in $(( $(date +%s) - T0 )) s"
# Two lanes.  Most tests run on two xdist workers: CPU-bound (the Triton interpreter,
# the simulator) or waiting on their own processes, they overlap well on two cores.
# The tests marked `serial` assert a rate or a measured bandwidth, which another test's
# load would bend (and netbench's compare the host's list of namespaces): they run
# afterwards, alone.
set +e
python -m pytest -q -ra -n "${MONIQUA_TEST_WORKERS:-2}" -m "not serial" "$@"
rc_parallel=$?
python -m pytest -q -ra -m serial "$@"
rc_serial=$?
echo "test.sh: both pytest lanes done at $(( $(date +%s) - T0 )) s"
# Third lane: the version-sensitive tests again under the GPU machines' torch 2.11 and
# Triton 3.6, in a venv of their own (scripts/compat.sh: ~3 GB of wheels, ~6 min here).
rc_compat=0
if [ "${MONIQUA_COMPAT:-1}" != 0 ]; then
  bash scripts/compat.sh
  rc_compat=$?
fi
set -e
if [ "$rc_parallel" -eq 5 ] && [ "$rc_serial" -eq 5 ]; then
  echo "pytest collected no tests" >&2; exit 1
fi
for rc in "$rc_parallel" "$rc_serial"; do
  if [ "$rc" -ne 0 ] && [ "$rc" -ne 5 ]; then exit "$rc"; fi
done
if [ "$rc_compat" -ne 0 ]; then echo "scripts/compat.sh failed (exit $rc_compat)" >&2; exit "$rc_compat"; fi
exit 0

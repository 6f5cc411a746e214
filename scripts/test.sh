#!/usr/bin/env bash
# Install the package with its test extras and run the whole test suite.
# This is the README's test command; .ci/run calls it in a fresh venv.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q torch==2.13.0 2>/dev/null || python -m pip install -q "torch>=2.4"
python -m pip install -q setuptools wheel ninja
python -m pip install -q --no-build-isolation -e ".[test,demo]"
if [ -f CMakeLists.txt ] && [ -f scripts/ctest.sh ]; then bash scripts/ctest.sh; fi
set +e
python -m pytest -q -ra "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi
exit "$rc"

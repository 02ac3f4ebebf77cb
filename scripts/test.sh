#!/usr/bin/env bash
# Installs the test dependencies, builds and installs the wheel, then runs every Rust and
# Python test. Exits non-zero on the first failure. Works on a fresh machine with Rust and
# Python 3.9+.
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m pip install --quiet --upgrade pip
python3 -m pip install ".[test]"

cargo test -p deltackpt --release
python3 -m pytest -q tests

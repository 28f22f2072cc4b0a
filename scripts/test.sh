#!/usr/bin/env bash
# Install everything the test suite needs into .venv, then run the whole suite.
# Works on a brand-new Debian machine with only Python 3.11+: nothing else needs to be set up first.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
exec .venv/bin/python -m pytest "$@"

#!/usr/bin/env bash
# Install everything the test suite needs into .venv, then run the whole suite.
# Works on a brand-new Debian machine with only Python 3.11+: nothing else needs to be set up first.
set -euo pipefail
cd "$(dirname "$0")/.."
# The browser tests drive Debian's chromium through Playwright (`playwright install` is not used).
if [ ! -x /usr/bin/chromium ]; then
    APT="env DEBIAN_FRONTEND=noninteractive apt-get"; [ "$(id -u)" -ne 0 ] && APT="sudo $APT"
    $APT install -y -q chromium >/dev/null || { $APT update -q >/dev/null && $APT install -y -q chromium >/dev/null; }
fi
# The store tests run on SQLite and on a real PostgreSQL server that the tests start on loopback in a
# temporary directory, from Debian's postgresql package (initdb and postgres in /usr/lib/postgresql/*/bin).
if ! compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
    APT="env DEBIAN_FRONTEND=noninteractive apt-get"; [ "$(id -u)" -ne 0 ] && APT="sudo $APT"
    $APT install -y -q postgresql >/dev/null || { $APT update -q >/dev/null && $APT install -y -q postgresql >/dev/null; }
fi
python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
exec .venv/bin/python -m pytest "$@"

#!/usr/bin/env bash
# Install everything the test suite needs into .venv, then run the whole suite.
# Works on a brand-new Debian machine with only Python 3.11+: nothing else needs to be set up first.
set -euo pipefail
cd "$(dirname "$0")/.."
APT="env DEBIAN_FRONTEND=noninteractive apt-get"; [ "$(id -u)" -ne 0 ] && APT="sudo $APT"
apt_install() {  # a brand-new machine may have no package lists yet: update once, then retry
    $APT install -y -q "$@" >/dev/null || { $APT update -q >/dev/null && $APT install -y -q "$@" >/dev/null; }
}
# The browser tests drive Debian's chromium through Playwright (`playwright install` is not used).
[ -x /usr/bin/chromium ] || apt_install chromium
# The store tests run on SQLite and on a real PostgreSQL server that the tests start on loopback in a
# temporary directory, from Debian's postgresql package (initdb and postgres in /usr/lib/postgresql/*/bin).
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || apt_install postgresql
# The DMARC report import reads the rua mailbox over IMAP: the tests start Debian's Dovecot on loopback.
[ -x /usr/sbin/dovecot ] || apt_install dovecot-imapd
python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
exec .venv/bin/python -m pytest "$@"

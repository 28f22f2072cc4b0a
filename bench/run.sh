#!/usr/bin/env bash
# Run every benchmark; the figures go to stdout, to be copied into bench/README.md.
# Needs the project installed (the README's test command does it) and Knot DNS (installed here if missing).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
if ! command -v knotd >/dev/null && [ ! -x /usr/sbin/knotd ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q knot >/dev/null || {
        apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q knot >/dev/null; }
fi
echo "## Whole scan, end to end (bench/bench_scan.py, about 15 minutes)"
"$PY" bench/bench_scan.py
echo "## DNS scan (bench/bench_dns.py)"
"$PY" bench/bench_dns.py --domains 1000 10000 --rtt 0 10
echo "## Report (bench/bench_report.py)"
"$PY" bench/bench_report.py --browser
echo "## Drift (bench/bench_drift.py)"
"$PY" bench/bench_drift.py
echo "## Provider scan (bench/bench_providers.py, about 11 minutes)"
"$PY" bench/bench_providers.py --mailboxes 10000 100000 --rate 300 200

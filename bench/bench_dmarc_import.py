"""Benchmark: `mailwarden dmarc import` of a year of aggregate reports, the whole command in a fresh process.

Generates report files (RFC 9990 XML, a third of them gzip-compressed, a tenth as zip) for 30 domains
from 25 receivers, each naming 1 to 20 sources, into a temporary folder; serves the sources' PTR zone
from the project's loopback DNS server; then runs `mailwarden dmarc import` in a fresh process under
`/usr/bin/time`-style accounting (wall time and peak RSS from the child's rusage), and a second time to
show that a repeated import skips everything. Nothing leaves loopback.

    python bench/bench_dmarc_import.py                 # 10,000 files, about a minute
    python bench/bench_dmarc_import.py --files 1000    # a quick look
"""

from __future__ import annotations

import argparse
import gzip
import io
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
import zipfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dns.zone

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scanner.loopback.zoneserver import ZoneServer  # noqa: E402
from tests.dmarc_fixtures import Row, report_xml  # noqa: E402

RECEIVERS = [f"receiver{n}.example" for n in range(25)]
DOMAINS = [f"client{n}.example" for n in range(30)]


def generate(folder: Path, files: int, seed: int = 7) -> tuple[int, int]:
    """Write ``files`` report files; returns (files, records)."""
    rng = random.Random(seed)
    # a year of a portfolio's mail comes from a few thousand sources (its senders' hosts, forwarders, spoofers)
    pool = [f"127.{rng.randrange(1, 3)}.{rng.randrange(256)}.{rng.randrange(1, 255)}" for _ in range(2_000)]
    start = datetime(2025, 12, 1, tzinfo=UTC)
    records = 0
    for n in range(files):
        receiver, domain = RECEIVERS[n % len(RECEIVERS)], DOMAINS[(n // len(RECEIVERS)) % len(DOMAINS)]
        begin = start + timedelta(days=(n // (len(RECEIVERS) * len(DOMAINS))) % 365)
        rows = [Row(rng.choice(pool), rng.randrange(1, 500),
                    rng.choice(("pass", "pass", "fail")), rng.choice(("pass", "fail")))
                for _ in range(rng.randrange(1, 21))]
        records += len(rows)
        data = report_xml(receiver, f"{n:08d}", domain, begin, begin + timedelta(days=1), rows)
        name = f"{receiver}!{domain}!{int(begin.timestamp())}!{n}.xml"
        if n % 10 == 0:
            buffer = io.BytesIO()
            with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
                archive.writestr(name, data)
            (folder / f"{name}.zip").write_bytes(buffer.getvalue())
        elif n % 3 == 0:
            (folder / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / name).write_bytes(data)
    return files, records


def run(command: list[str], cwd: Path) -> tuple[float, float, str]:
    """Run a command in a fresh process; its wall time (s), its peak RSS (MB) and its stdout."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    clock = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - clock
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}): {done.stderr[-2000:]}")
    # ru_maxrss of the children is the largest so far; each measured command is the biggest child yet
    return wall, max(peak, before) / 1024, done.stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=10_000)
    args = parser.parse_args()
    mailwarden = str(Path(sys.executable).parent / "mailwarden")
    with tempfile.TemporaryDirectory(prefix="mw-bench-dmarc-") as temp, ZoneServer() as server:
        work = Path(temp)
        reports = work / "reports"
        reports.mkdir()
        clock = time.perf_counter()
        files, records = generate(reports, args.files)
        generated = time.perf_counter() - clock
        size = sum(p.stat().st_size for p in reports.iterdir())
        ptr = "\n".join(f"{b}.{c} IN PTR out-{b}-{c}.mta.example." for b in range(256) for c in range(1, 255, 17))
        server.add_zone(dns.zone.from_text(
            "$ORIGIN 127.in-addr.arpa.\n$TTL 300\n@ IN SOA ns1.example. h.example. 1 3600 600 86400 300\n"
            f"@ IN NS ns1.example.\n{ptr}\n", origin="127.in-addr.arpa", relativize=False))
        (work / "mailwarden.toml").write_text(f'''
[store]
url = "sqlite:///{work / 'store.db'}"
[dns]
nameservers = ["{server.nameserver}"]
timeout = 2.0
[dmarc_reports]
paths = ["reports"]
[[tenants]]
name = "portfolio"
domains = [{", ".join(f'"{d}"' for d in DOMAINS)}]
''', encoding="utf-8")
        env_note = f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs"
        first = run([mailwarden, "dmarc", "import", "--config", str(work / "mailwarden.toml")], work)
        second = run([mailwarden, "dmarc", "import", "--config", str(work / "mailwarden.toml")], work)
        sources = run([mailwarden, "dmarc", "sources", "--config", str(work / "mailwarden.toml"), "--format", "csv"],
                      work)
        store_mb = (work / "store.db").stat().st_size / 1e6
    print(f"generated {files} files ({size / 1e6:.1f} MB, {records} records) in {generated:.1f} s; {env_note}")
    print("| measure | value |\n| --- | --- |")
    print(f"| first import (whole command, fresh process): wall | {first[0]:.1f} s |")
    print(f"| first import: peak RSS | {first[1]:.0f} MB |")
    print(f"| first import says | {first[2]} |")
    print(f"| repeated import (everything skipped): wall | {second[0]:.1f} s |")
    print(f"| repeated import says | {second[2]} |")
    print(f"| `dmarc sources --format csv` over the store: wall | {sources[0]:.1f} s "
          f"({len(sources[2].splitlines()) - 1} rows) |")
    print(f"| store size after import | {store_mb:.1f} MB |")


if __name__ == "__main__":
    main()

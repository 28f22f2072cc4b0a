"""End-to-end benchmark: the real `mailwarden scan` (and `mailwarden report`) in a fresh process, every output written.

    python bench/bench_scan.py                          # everything below, about 15 minutes on 2 cores
    python bench/bench_scan.py --only dns --domains 2000 --checkdmarc-sample 500   # a quick look

What it measures, each command in its own process (wall time, CPU time and its largest process's peak RSS from
rusage, and its process tree's peak summed RSS every 100 ms and summed PSS every 500 ms; the summed RSS counts a page
that two processes share twice, the PSS shares it out between them):

- ``dns``: N DNS-only domains (bench_dns.py's estate: tenants of 20, providers, senders, faults, MTA-STS
  policies over HTTPS) served by Knot DNS on loopback (``--server inprocess``: the project's ZoneServer);
  `mailwarden scan` with a SQLite store, then `mailwarden report --format html --format json --format csv`
  re-rendering that run. checkdmarc's serial ``check_domains`` runs on the same domains before and after
  the scan (``--checkdmarc-sample K``: on the first K domains, extrapolated to N, and labelled so).
- ``mailboxes``: export files (the ``files`` provider) of M mailboxes in one tenant with 1,000 domains,
  M/5 forwards and a roster of M people (``--mailboxes 100000 10000``), the domains served as above.

Prints Markdown rows to stdout for bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_dns  # noqa: E402  (the estate generator, Knot and the policy server)

ROOT = Path(__file__).resolve().parent.parent
MAILWARDEN = str(Path(sys.executable).with_name("mailwarden"))
PROFILE: list[str] = []
"""With --profile: the commands run under cProfile, writing <command>.prof in the work directory."""


@dataclass(frozen=True, slots=True)
class Measured:
    """One command as run: wall seconds, CPU seconds (user + system), peak RSS in MB of its largest process
    (rusage) and of its process tree summed (sampled), exit status, and the tree's peak summed PSS (sampled)."""

    seconds: float
    cpu: float
    rss_mb: float
    status: int
    load: float
    tree_mb: float
    pss_mb: float

    @property
    def peak(self) -> str:
        """The peaks as the tables show them: RSS of the largest process / the tree's summed, then the tree's PSS."""
        return f"{self.rss_mb:.0f} / {self.tree_mb:.0f} MB | {self.pss_mb:.0f} MB"


TREE_SAMPLE = 0.1
"""Seconds between samples of a command's process tree's summed RSS. Sampled every 20 ms (until 2026-12-07), the
sampler's own reading of /proc took enough of the two cores to make the 100,000-mailbox scan 5.5 s slower (67.1
and 67.5 s against 61.8 and 62.0 s unsampled, 08:59); every 100 ms, 0.5–0.9 s, with the same peaks (317–319 MB
RSS, 288–290 MB PSS)."""

PSS_EVERY = 5
"""One sample in this many also sums the tree's PSS (every half second): the kernel walks a process's page tables
to answer smaps_rollup, holding its memory map's lock; statm is a counter."""


def tree_memory(pid: int, pss_too: bool = True) -> tuple[int, int]:
    """Bytes resident in ``pid`` and every process below it, summed, and (``pss_too``) their proportional set size
    (PSS: a page shared by k processes counts 1/k in each), summed (Linux /proc; 0 once they have exited)."""
    rss = pss = 0
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            rss += int(Path(f"/proc/{current}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
            if pss_too:
                rollup = Path(f"/proc/{current}/smaps_rollup").read_text()
                pss += int(rollup[rollup.index("\nPss:") + 5:].split(None, 1)[0]) * 1024
            for task in Path(f"/proc/{current}/task").iterdir():
                pending.extend(int(child) for child in (task / "children").read_text().split())
        except (OSError, ValueError, IndexError):  # it exited between two reads
            continue
    return rss, pss


def timed(command: list[str], cwd: Path, log: Path) -> Measured:
    """Run a command in a fresh process and measure it by its own rusage (os.wait4; the CPU time includes the
    children it waited for, the peak RSS is its largest process's) and by sampling its process tree's summed
    RSS and PSS every ``TREE_SAMPLE`` seconds."""
    load = os.getloadavg()[0]
    if PROFILE:
        command = [sys.executable, "-m", "cProfile", "-o", str(log.with_suffix(".prof")), *command]
    peak = [0, 0]
    done = threading.Event()
    start = time.perf_counter()
    with log.open("wb") as out:
        process = subprocess.Popen(command, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)

        def sample() -> None:
            count = 0
            while not done.wait(TREE_SAMPLE):
                rss, pss = tree_memory(process.pid, pss_too=count % PSS_EVERY == 0)
                peak[:] = max(peak[0], rss), max(peak[1], pss)
                count += 1

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _, status, usage = os.wait4(process.pid, 0)
        done.set()
        sampler.join()
    seconds = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    return Measured(seconds, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, process.returncode, load,
                    max(peak[0] / 2**20, usage.ru_maxrss / 1024), peak[1] / 2**20)


def sizes(directory: Path) -> str:
    """The outputs' sizes in MB."""
    return " / ".join(f"{(directory / name).stat().st_size / 1e6:.1f}"
                      for name in ("findings.json", "findings.csv", "report.html"))


def counts(directory: Path) -> dict[str, int]:
    """Findings by status, from findings.csv."""
    found: dict[str, int] = {}
    with (directory / "findings.csv").open(encoding="utf-8", newline="") as handle:
        for row in csv.DictReader(handle):
            found[row["status"]] = found.get(row["status"], 0) + 1
    return found


def serve_zones(estate: bench_dns.Estate, workdir: Path, server: str) -> tuple[list[subprocess.Popen[bytes]], object,
                                                                                   int, Path]:
    """Knot (or the in-process server) and the MTA-STS policy server; returns them, the DNS port and the CA bundle."""
    port = bench_dns.free_port()
    dns = (bench_dns.start_knot if server == "knot" else bench_dns.start_inprocess)(workdir, estate.zones, port)
    policy_server, ca_bundle = bench_dns.start_policy_server(estate, workdir)
    return [dns], policy_server, port, ca_bundle


def base_config(workdir: Path, port: int, policy_port: int, ca_bundle: Path) -> str:
    """The config's common part: the store, DNS on loopback, the policy server, the self-hosted sender."""
    return (f'[store]\nurl = "sqlite:///{workdir / "mailwarden.db"}"\n\n'
            f'[dns]\nnameservers = ["127.0.0.1:{port}"]\ntimeout = 3.0\nconcurrency = 256\n'
            f'\n[mta_sts]\nport = {policy_port}\nca_bundle = "{ca_bundle}"\ntimeout = 10.0\n'
            '\n[senders.mailcow]\ntitle = "mailcow (self-hosted)"\ndkim_selectors = ["dkim"]\n'
            'mx_patterns = ["mail.d*.test"]\nreturn_path = "customer"\n')


def checkdmarc(domains: list[str], port: int, workdir: Path) -> dict[str, float]:
    """checkdmarc's serial check_domains on these domains, in a fresh process (bench_dns.py's child)."""
    (workdir / "domains.json").write_text(json.dumps(domains))
    return bench_dns._child("checkdmarc", [str(workdir / "domains.json"), str(port), "1", str(len(domains))])


def bench_dns_scan(n: int, server: str, sample: int | None, workdir: Path) -> list[str]:
    """The DNS-only estate: checkdmarc, `mailwarden scan`, checkdmarc again, then `mailwarden report`."""
    estate = bench_dns.generate(n)
    processes, policy_server, port, ca_bundle = serve_zones(estate, workdir, server)
    try:
        config = workdir / "mailwarden.toml"
        config.write_text(base_config(workdir, port, policy_server.port, ca_bundle) + "".join(  # type: ignore[attr-defined]
            f'\n[[tenants]]\nname = "{t["name"]}"\ndomains = {json.dumps(t["domains"])}\n'
            f'senders = {json.dumps(t["senders"])}\ndkim_selectors = {json.dumps(t["dkim_selectors"])}\n'
            for t in estate.tenants))
        domains = [d for t in estate.tenants for d in t["domains"]]  # type: ignore[attr-defined]
        checked = domains[:sample] if sample else domains
        before = checkdmarc(checked, port, workdir)
        scan = timed([MAILWARDEN, "scan", "--config", str(config), "--out", str(workdir / "out")], workdir,
                     workdir / "scan.log")
        after = checkdmarc(checked, port, workdir)
        if scan.status != 0:
            raise RuntimeError((workdir / "scan.log").read_text()[-3000:])
        report = timed([MAILWARDEN, "report", "--config", str(config), "--format", "html", "--format", "json",
                        "--format", "csv", "--out", str(workdir / "report")], workdir, workdir / "report.log")
        if report.status != 0:
            raise RuntimeError((workdir / "report.log").read_text()[-3000:])
        found = counts(workdir / "out")
        per_domain = (before["seconds"] + after["seconds"]) / 2 / len(checked)
        label = "" if len(checked) == n else f" (measured on {len(checked):,} domains, x {n / len(checked):g})"
        serial = per_domain * n
        print(f"  dns {n}: findings {found}; checkdmarc {before['seconds']:.1f} s and {after['seconds']:.1f} s on "
              f"{len(checked)} domains", file=sys.stderr)
        return [
            f"| {n:,} DNS-only domains | `mailwarden scan` | {scan.seconds:.1f} s | {scan.cpu:.1f} s | "
            f"{scan.peak} | {sum(found.values()):,} | {sizes(workdir / 'out')} | {scan.load:.1f} |",
            f"| {n:,} DNS-only domains | checkdmarc serial, mean of before and after{label} | {serial:.1f} s "
            f"(x {serial / scan.seconds:.1f} mailwarden) | | {max(before['rss_mb'], after['rss_mb']):.0f} MB | | | | "
            f"{before['load']:.1f} |",
            f"| {n:,} DNS-only domains | `mailwarden report` (html, json, csv) | {report.seconds:.1f} s | "
            f"{report.cpu:.1f} s | {report.peak} | {sum(found.values()):,} | {sizes(workdir / 'report')} | "
            f"{report.load:.1f} |",
        ]
    finally:
        policy_server.stop()  # type: ignore[attr-defined]
        for process in processes:
            process.terminate()
            process.wait()


def write_export(directory: Path, mailboxes: int, domains: list[str], seed: int = 11) -> Path:
    """Export files of one tenant: mailboxes, forwards (a fifth as many), invites, domains; returns the roster file.

    90 % user mailboxes (the rest shared, role, resource and alias), 5 % suspended or disabled, 2 % pending
    with an invite; a forward for a fifth of the mailboxes, half of them outside the tenant; a roster with
    every user mailbox's person (5 % of them left) plus people without a mailbox, as many as the mailboxes.
    """
    rng = random.Random(seed)
    today = datetime(2026, 11, 25, tzinfo=UTC)
    directory.mkdir(parents=True)
    addresses = [f"u{i:06d}@{domains[i % len(domains)]}" for i in range(mailboxes)]
    users: list[str] = []
    with (directory / "mailboxes.csv").open("w", newline="", encoding="utf-8") as handle:
        out = csv.writer(handle)
        out.writerow(["address", "display_name", "kind", "status", "created", "last_login", "owners", "delegates"])
        for i, address in enumerate(addresses):
            kind = rng.choices(["user", "shared", "role", "resource", "alias"], [90, 5, 3, 1, 1])[0]
            status = rng.choices(["active", "suspended", "disabled", "pending"], [93, 3, 2, 2])[0]
            created = today - timedelta(days=rng.randrange(30, 2000))
            login = "" if rng.random() < 0.08 else (today - timedelta(days=rng.randrange(0, 300))).isoformat()
            owners = ";".join(rng.sample(addresses, 2)) if kind in ("shared", "role", "resource") else ""
            delegates = addresses[rng.randrange(mailboxes)] if rng.random() < 0.03 else ""
            out.writerow([address, f"Person {i}", kind, status, created.date().isoformat(), login, owners, delegates])
            if kind == "user":
                users.append(address)
    with (directory / "forwards.csv").open("w", newline="", encoding="utf-8") as handle:
        out = csv.writer(handle)
        out.writerow(["mailbox", "target", "mechanism"])
        for address in rng.sample(addresses, mailboxes // 5):
            target = (f"x{rng.randrange(10**6)}@partner{rng.randrange(500)}.test" if rng.random() < 0.5
                      else addresses[rng.randrange(mailboxes)])
            out.writerow([address, target, rng.choice(["auto_forward", "inbox_rule", "redirect"])])
    with (directory / "invites.csv").open("w", newline="", encoding="utf-8") as handle:
        out = csv.writer(handle)
        out.writerow(["address", "sent", "expires"])
        for address in rng.sample(addresses, mailboxes // 50):
            sent = today - timedelta(days=rng.randrange(1, 30))
            out.writerow([address, sent.isoformat(), (sent + timedelta(days=14)).isoformat()])
    with (directory / "domains.csv").open("w", newline="", encoding="utf-8") as handle:
        out = csv.writer(handle)
        out.writerow(["domain", "catch_all"])
        for domain in domains:
            out.writerow([domain, f"u000000@{domain}" if rng.random() < 0.02 else ""])
    roster = directory.parent / "roster.csv"
    with roster.open("w", newline="", encoding="utf-8") as handle:
        out = csv.writer(handle)
        out.writerow(["email", "name", "left"])
        for n, address in enumerate(users + [f"former{i}@{domains[i % len(domains)]}"
                                             for i in range(mailboxes - len(users))]):
            left = (today - timedelta(days=rng.randrange(1, 400))).date().isoformat() if rng.random() < 0.05 else ""
            out.writerow([address, f"Person {n}", left])
    return roster


def mailbox_estate(count: int, seed: int = 5) -> bench_dns.Estate:
    """``count`` domains of one Google Workspace tenant (MX, SPF, DMARC, a 2048-bit key at selector google), 5 %
    without DMARC and 5 % at p=none; the sender zones as in bench_dns.py; no MTA-STS."""
    rng = random.Random(seed)
    lines = [bench_dns.SOA.format(o="test")]
    domains = []
    for i in range(count):
        d = f"m{i:04d}"
        domains.append(f"{d}.test")
        lines.append(f"{d} IN MX 1 aspmx.l.google.com.\n{d} IN MX 5 alt1.aspmx.l.google.com.\n"
                     f'{d} IN TXT "v=spf1 include:_spf.google.com -all"\n')
        fault = rng.random()
        if fault >= 0.05:
            lines.append(f'_dmarc.{d} IN TXT "v=DMARC1; p={"none" if fault < 0.1 else "quarantine"}; '
                         f'rua=mailto:dmarc@{d}.test"\n')
        key = bench_dns._key(rng, 2048)
        lines.append(f"google._domainkey.{d} IN TXT {bench_dns._txt(f'v=DKIM1; k=rsa; p={key}')}\n")
    zones = {"test": "$ORIGIN test.\n$TTL 300\n" + "".join(lines)}
    for origin, body in bench_dns.SENDER_ZONES.items():
        zones[origin] = f"$ORIGIN {origin}.\n$TTL 300\n" + bench_dns.SOA.format(o=origin) + body
    return bench_dns.Estate(zones, [{"name": "estate", "domains": domains, "senders": ["google"]}], {}, {})


def bench_mailbox_scan(mailboxes: int, server: str, workdir: Path) -> list[str]:
    """One files tenant with 1,000 domains and ``mailboxes`` mailboxes: `mailwarden scan`."""
    estate = mailbox_estate(1000)
    processes, policy_server, port, ca_bundle = serve_zones(estate, workdir, server)
    try:
        domains = list(estate.tenants[0]["domains"])  # type: ignore[call-overload]
        roster = write_export(workdir / "export", mailboxes, domains)
        config = workdir / "mailwarden.toml"
        config.write_text(base_config(workdir, port, policy_server.port, ca_bundle) + (  # type: ignore[attr-defined]
            f'\n[policy]\ninactive_days = 90\n\n[[tenants]]\nname = "estate"\nprovider = "files"\nexport = "export"\n'
            f'roster = "{roster.name}"\ndomains = {json.dumps(domains)}\nsenders = ["google"]\n'))
        scan = timed([MAILWARDEN, "scan", "--config", str(config), "--out", str(workdir / "out")], workdir,
                     workdir / "scan.log")
        if scan.status != 0:
            raise RuntimeError((workdir / "scan.log").read_text()[-3000:])
        found = counts(workdir / "out")
        print(f"  mailboxes {mailboxes}: findings {found}", file=sys.stderr)
        return [f"| {mailboxes:,} mailboxes, {mailboxes // 5:,} forwards, 1,000 domains, roster {mailboxes:,} | "
                f"`mailwarden scan` | {scan.seconds:.1f} s | {scan.cpu:.1f} s | {scan.peak} | "
                f"{sum(found.values()):,} | {sizes(workdir / 'out')} | {scan.load:.1f} |"]
    finally:
        policy_server.stop()  # type: ignore[attr-defined]
        for process in processes:
            process.terminate()
            process.wait()


def main() -> None:
    """Parse arguments and run the chosen benchmarks."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=["dns", "mailboxes"], help="run only one of the two")
    parser.add_argument("--domains", type=int, default=10000)
    parser.add_argument("--mailboxes", type=int, nargs="+", default=[100000, 10000])
    parser.add_argument("--checkdmarc-sample", type=int, help="time checkdmarc on the first K domains only")
    parser.add_argument("--server", choices=["knot", "inprocess"], default="knot")
    parser.add_argument("--keep", type=Path, help="work in this directory and keep it (stores, outputs, logs)")
    parser.add_argument("--profile", action="store_true", help="run the commands under cProfile (slower)")
    args = parser.parse_args()
    if args.profile:
        PROFILE.append("on")
    if args.server == "knot" and not (shutil.which("knotd") or os.path.exists("/usr/sbin/knotd")):
        sys.exit("knotd is not installed: apt-get install -y knot (or use --server inprocess)")
    print("| estate | command | wall time | CPU time | peak RSS (process / tree) | peak PSS (tree) | findings | findings.json / .csv / report.html (MB) | load |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    if args.only in (None, "dns"):
        with _workdir(args.keep, f"dns-{args.domains}") as work:
            for row in bench_dns_scan(args.domains, args.server, args.checkdmarc_sample, work):
                print(row, flush=True)
    if args.only in (None, "mailboxes"):
        for count in args.mailboxes:
            with _workdir(args.keep, f"mailboxes-{count}") as work:
                for row in bench_mailbox_scan(count, args.server, work):
                    print(row, flush=True)


@contextlib.contextmanager
def _workdir(keep: Path | None, name: str) -> Iterator[Path]:
    """A temporary directory, or ``keep/name`` (emptied first) when the results are to be kept."""
    if keep is None:
        with tempfile.TemporaryDirectory(prefix="mw-bench-scan-") as tmp:
            yield Path(tmp)
        return
    work = keep.resolve() / name
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    yield work


if __name__ == "__main__":
    main()

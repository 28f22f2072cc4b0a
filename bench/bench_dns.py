"""DNS scan benchmark: mailwarden's DNS collection and checks against checkdmarc, over the same synthetic domains.

    python bench/bench_dns.py --domains 1000 10000 --rtt 0 10

Serves N synthetic domains (a mix of providers, senders and faults) from Knot DNS on loopback (the
in-process server with --server inprocess), optionally behind a relay that adds round-trip time,
and times, each in a fresh process: mailwarden (collect + every DNS check), checkdmarc's
check_domains serially, and checkdmarc one domain per call in a 32-thread pool. Prints a Markdown
table row per measurement: domains/s, DNS queries per domain (counted on the wire, client side) and
peak RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import random
import re
import resource
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import textwrap
import time
import tomllib
from dataclasses import dataclass, replace
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SENDER_ZONES = {
    "google.com": '_spf IN TXT "v=spf1 include:_netblocks.google.com ~all"\n'
    '_netblocks IN TXT "v=spf1 ip4:127.1.0.0/16 ip4:127.2.0.0/16 ~all"\n'
    "aspmx.l IN A 127.3.0.1\nalt1.aspmx.l IN A 127.3.0.2\n",
    "outlook.com": 'spf.protection IN TXT "v=spf1 include:spfd.protection.outlook.com -all"\n'
    'spfd.protection IN TXT "v=spf1 ip4:127.4.0.0/16 -all"\n*.mail.protection IN A 127.4.1.1\n',
    "sendgrid.net": '@ IN TXT "v=spf1 ip4:127.5.0.0/16 ~all"\n',
    "mcsv.net": 'servers IN TXT "v=spf1 ip4:127.6.0.0/16 ~all"\n',
    "mailgun.org": '@ IN TXT "v=spf1 include:_spf.mailgun.org ~all"\n_spf IN TXT "v=spf1 ip4:127.7.0.0/16 ~all"\n',
    "mtasv.net": 'spf IN TXT "v=spf1 ip4:127.8.0.0/16 ~all"\n',
    "amazonses.com": '@ IN TXT "v=spf1 ip4:127.9.0.0/16 -all"\n',
    "zendesk.com": 'mail IN TXT "v=spf1 ip4:127.10.0.0/16 ~all"\n',
    "trekmail.net": 'spf IN TXT "v=spf1 ip4:127.11.0.0/16 -all"\nmail IN A 127.11.0.1\n',
}
SPF_INCLUDES = {  # catalogue name: the SPF include its customers publish (DKIM selectors come from the catalogue)
    "google": "_spf.google.com",
    "microsoft": "spf.protection.outlook.com",
    "sendgrid": "sendgrid.net",
    "mailchimp": "servers.mcsv.net",
    "mailgun": "mailgun.org",
    "postmark": "spf.mtasv.net",
    "amazon-ses": "amazonses.com",
    "zendesk": "mail.zendesk.com",
    "trekmail": "spf.trekmail.net",
}
MTA_STS_MX = {  # the policy's mx patterns for each inbound service (RFC 8461 §3.2)
    "google": ("aspmx.l.google.com", "*.aspmx.l.google.com"),
    "microsoft": ("*.mail.protection.outlook.com",),
    "trekmail": ("mail.trekmail.net",),
}
TOOLS = ("mailwarden", "checkdmarc-serial", "checkdmarc-threads")
POLICY_ADDRESS = "127.0.0.1"  # where every mta-sts.<domain> points: the bench's PolicyServer
SOA = "@ IN SOA ns1.{o}. hostmaster.{o}. 1 3600 600 86400 300\n@ IN NS ns1.{o}.\nns1 IN A 127.0.0.53\n"


def _key(rng: random.Random, bits: int) -> str:
    """A distinct RSA public key of ``bits`` bits, base64 DER, as every domain's selector has its own key.

    Only the public half is published, so a random odd modulus of the right size stands in for a real
    key pair (generating thousands of RSA key pairs would take minutes); parsers see a well-formed key.
    """
    modulus = rng.getrandbits(bits) | (1 << (bits - 1)) | 1
    key = rsa.RSAPublicNumbers(65537, modulus).public_key()
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(der).decode("ascii")


def _txt(value: str) -> str:
    """A TXT value as quoted strings of at most 255 characters."""
    return " ".join(f'"{value[i:i + 255]}"' for i in range(0, len(value), 255))


def catalogue_selectors() -> dict[str, tuple[str, ...]]:
    """Each catalogue sender's DKIM selectors, from config/senders.toml (what mailwarden looks up)."""
    catalogue = tomllib.loads((ROOT / "config" / "senders.toml").read_text())["senders"]
    return {name: tuple(entry.get("dkim_selectors", ())) for name, entry in catalogue.items()}


@dataclass(frozen=True, slots=True)
class Estate:
    """The generated test data: zones, tenants, and the MTA-STS policy each policy host serves."""

    zones: dict[str, str]
    tenants: list[dict[str, object]]
    policies: dict[str, str]  # policy host -> policy text
    policy_hosts: dict[str, list[str]]  # tenant -> its policy hosts (one certificate each)


def generate(n: int, seed: int = 7) -> Estate:
    """N domains in tenants of 20, each tenant with one inbox provider and a few bulk senders, and ~30 % faults.

    Configuration is right except for the deliberate faults drawn per domain: over the SPF lookup limit,
    ?all, an SPF typo, no SPF, two SPF records, no DMARC, p=none, a declared sender's DKIM key missing,
    a 1024-bit key, an MTA-STS policy naming the wrong MX, MTA-STS without TLS-RPT.
    """
    rng = random.Random(seed)
    selectors = catalogue_selectors()
    lines = [SOA.format(o="test")]
    tenants: list[dict[str, object]] = []
    policies: dict[str, str] = {}
    policy_hosts: dict[str, list[str]] = {}
    for start in range(0, n, 20):
        tenant = f"t{start // 20:04d}"
        mailbox = rng.choices(["google", "microsoft", "trekmail", "self"], [40, 30, 20, 10])[0]
        extra = [s for s, p in (("sendgrid", .15), ("mailchimp", .1), ("mailgun", .05), ("postmark", .05),
                                ("amazon-ses", .05), ("zendesk", .05)) if rng.random() < p]
        senders = (["mailcow"] if mailbox == "self" else [mailbox]) + extra
        # Senders without catalogue selectors: the tenant names its own (Amazon SES Easy DKIM tokens are
        # per identity; TrekMail shows the selector in its dashboard).
        own: dict[str, tuple[str, ...]] = {}
        if "amazon-ses" in senders:
            own["amazon-ses"] = tuple(f"{rng.getrandbits(128):032x}" for _ in range(3))
        if "trekmail" in senders:
            own["trekmail"] = (f"tm{rng.randrange(1, 10)}",)
        domains = []
        for i in range(start, min(n, start + 20)):
            d = f"d{i:05d}"
            domain = f"{d}.test"
            domains.append(domain)
            fault = rng.random()
            if mailbox == "google":
                lines.append(f"{d} IN MX 1 aspmx.l.google.com.\n{d} IN MX 5 alt1.aspmx.l.google.com.\n")
            elif mailbox == "microsoft":
                lines.append(f"{d} IN MX 0 {d}-test.mail.protection.outlook.com.\n")
            elif mailbox == "trekmail":
                lines.append(f"{d} IN MX 10 mail.trekmail.net.\n")
            else:
                lines.append(f"{d} IN MX 10 mail.{d}.test.\nmail.{d} IN A 127.12.{i // 250 % 250}.{i % 250 + 1}\n")
            includes = [f"include:{SPF_INCLUDES[s]}" for s in senders if s in SPF_INCLUDES]
            if fault < 0.05:  # over the lookup limit
                includes += ["include:sendgrid.net", "include:servers.mcsv.net", "include:mailgun.org",
                             "include:spf.mtasv.net", "a", "mx", "a:x.test", "exists:%{i}.x.test"]
            spf = " ".join(["v=spf1", *(["mx"] if mailbox == "self" else []), *includes,
                            "?all" if 0.05 <= fault < 0.08 else "-all"])
            if 0.08 <= fault < 0.10:
                spf = spf.replace("include:", "inclde:", 1) if includes else "v=spf1 a:bad..name -all"
            if not 0.10 <= fault < 0.14:  # 4 % publish no SPF
                lines.append(f"{d} IN TXT {_txt(spf)}\n")
            if 0.14 <= fault < 0.16:
                lines.append(f'{d} IN TXT "v=spf1 -all"\n')  # a second SPF record
            lines.append(f'{d} IN TXT "google-site-verification=abc{i}"\n')
            if not 0.16 <= fault < 0.26:  # 10 % publish no DMARC
                policy = "none" if 0.26 <= fault < 0.36 else rng.choice(["quarantine", "reject"])
                lines.append(f'_dmarc.{d} IN TXT "v=DMARC1; p={policy}; rua=mailto:dmarc@{d}.test"\n')
            for s in senders:
                # Keys are published as TXT under the domain: Knot, being authoritative only, does not follow a
                # CNAME into another zone as the recursive resolver in front of a real scanner would.
                for selector in own.get(s) or selectors.get(s, ()):
                    if 0.36 <= fault < 0.41:
                        continue  # DKIM missing
                    key = _key(rng, 1024 if 0.41 <= fault < 0.44 else 2048)
                    lines.append(f"{selector}._domainkey.{d} IN TXT {_txt(f'v=DKIM1; k=rsa; p={key}')}\n")
            if fault > 0.8:  # 20 % publish MTA-STS (RFC 8461) with its policy host, and TLS-RPT (RFC 8460)
                lines.append(f'_mta-sts.{d} IN TXT "v=STSv1; id=2026{i}"\nmta-sts.{d} IN A {POLICY_ADDRESS}\n')
                if fault < 0.985:  # else MTA-STS without TLS-RPT
                    lines.append(f'_smtp._tls.{d} IN TXT "v=TLSRPTv1; rua=mailto:tls@{d}.test"\n')
                patterns = MTA_STS_MX.get(mailbox, (f"mail.{domain}",))
                if 0.97 <= fault < 0.985:  # the policy still names the previous provider
                    patterns = ("mx.old-provider.example",)
                policies[f"mta-sts.{domain}"] = (
                    f"version: STSv1\nmode: {'enforce' if fault > 0.9 else 'testing'}\n"
                    + "".join(f"mx: {p}\n" for p in patterns) + "max_age: 604800\n")
                policy_hosts.setdefault(tenant, []).append(f"mta-sts.{domain}")
        tenants.append({"name": tenant, "domains": domains, "senders": senders,
                        "dkim_selectors": sorted({x for v in own.values() for x in v})})
    zones = {"test": "$ORIGIN test.\n$TTL 300\n" + "".join(lines)}
    for origin, body in SENDER_ZONES.items():
        zones[origin] = f"$ORIGIN {origin}.\n$TTL 300\n" + SOA.format(o=origin) + body
    return Estate(zones, tenants, policies, policy_hosts)


def free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = tcp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port


def start_knot(workdir: Path, zones: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    """Knot DNS serving the zones on 127.0.0.1:port."""
    knotd = shutil.which("knotd") or "/usr/sbin/knotd"
    (workdir / "zones").mkdir(exist_ok=True)
    for origin, text in zones.items():
        (workdir / "zones" / f"{origin}.zone").write_text(text)
    conf = textwrap.dedent(f"""\
        server:
            rundir: "{workdir}"
            listen: 127.0.0.1@{port}
            udp-workers: 1
            tcp-workers: 1
            background-workers: 1
        database:
            storage: "{workdir}/db"
        template:
          - id: default
            storage: "{workdir}/zones"
            file: "%s.zone"
            semantic-checks: off
            zonefile-load: whole
            journal-content: none
        zone:
        """) + "".join(f"  - domain: {origin}.\n" for origin in zones)
    (workdir / "knot.conf").write_text(conf)
    process = subprocess.Popen([knotd, "-c", str(workdir / "knot.conf")], stdout=subprocess.DEVNULL,
                               stderr=open(workdir / "knot.log", "wb"))
    _wait_for(port, "test.")
    return process


def start_inprocess(workdir: Path, zones: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    """The project's own ZoneServer, in its own process."""
    (workdir / "zones").mkdir(exist_ok=True)
    for origin, text in zones.items():
        (workdir / "zones" / f"{origin}.zone").write_text(text)
    code = ("import sys,time; from pathlib import Path; from scanner.loopback.zoneserver import ZoneServer; "
            f"s=ZoneServer(port={port}); s.load_directory(Path({str(workdir / 'zones')!r})); s.start(); "
            "time.sleep(10**6)")
    process = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT)
    _wait_for(port, "test.")
    return process


def start_relay(port: int, target: int, rtt_ms: float, *, dns_probe: bool = True) -> subprocess.Popen[bytes]:
    """A UDP/TCP relay on 127.0.0.1:port that adds ``rtt_ms`` of round-trip time before reaching ``target``."""
    process = subprocess.Popen([sys.executable, str(Path(__file__).parent / "relay.py"), str(port), str(target),
                                str(rtt_ms)])
    if dns_probe:
        _wait_for(port, "test.")
    else:
        _wait_for_tcp(port)
    return process


def start_policy_server(estate: Estate, workdir: Path) -> tuple[object, Path]:
    """The MTA-STS policies over HTTPS on loopback (one certificate per tenant, chosen by SNI), and the CA bundle."""
    from scanner.loopback.policyserver import LoopbackCA, PolicyServer

    ca = LoopbackCA("mailwarden bench CA")
    contexts = {}
    for hosts in estate.policy_hosts.values():
        context = ca.server_context(hosts)
        contexts.update(dict.fromkeys(hosts, context))
    default = ca.server_context(["mta-sts.invalid"])
    server = PolicyServer(estate.policies, default)
    record = default.sni_callback

    def choose(sock: ssl.SSLObject, name: str | None, context: ssl.SSLContext) -> None:
        record(sock, name, context)  # type: ignore[misc]
        sock.context = contexts.get((name or "").lower(), default)

    default.sni_callback = choose  # type: ignore[assignment]
    server.start()
    return server, ca.write(workdir / "ca.pem")


def _wait_for_tcp(port: int, deadline: float = 30.0) -> None:
    start = time.monotonic()
    while time.monotonic() - start < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on TCP port {port}")


def _wait_for(port: int, name: str, deadline: float = 120.0) -> None:
    import dns.message
    import dns.query

    start = time.monotonic()
    while time.monotonic() - start < deadline:
        try:
            dns.query.udp(dns.message.make_query(name, "SOA"), "127.0.0.1", port=port, timeout=0.5)
            return
        except Exception:
            time.sleep(0.2)
    raise RuntimeError(f"no DNS server answered on port {port}")


def measure_mailwarden(config_path: Path) -> dict[str, object]:
    """In this process: collect + evaluate every DNS check for every tenant; count wire queries."""
    from collections import Counter
    from datetime import UTC, datetime

    import scanner.collect
    from checks.evaluate import evaluate
    from checks.registry import load_checks
    from scanner.collect import collect
    from scanner.config import load_config
    from scanner.pipeline import paused_gc, policy_of, senders_of
    from scanner.model import Coverage, Fact, FactState

    clients: list[scanner.collect.DnsClient] = []

    class Counted(scanner.collect.DnsClient):  # type: ignore[misc, valid-type]
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)
            clients.append(self)

    scanner.collect.DnsClient = Counted  # type: ignore[misc]
    config = load_config(config_path)
    checks = [c for c in load_checks() if any(f.value.startswith("dns.") for f in c.meta.requires)
              or c.meta.scope.value == "domain"]
    start, start_cpu = time.perf_counter(), time.process_time()
    with paused_gc():  # as run_scan does
        collection = asyncio.run(collect(config))
    collected, collected_cpu = time.perf_counter(), time.process_time()
    # As a scan without imported DMARC aggregate reports says (scanner/aggregate/store.py with_traffic).
    no_reports = tuple(Coverage(t.name, Fact.DMARC_REPORTS, FactState.UNSUPPORTED, "no reports imported")
                       for t in collection.inventory.tenants)
    inventory = replace(collection.inventory, coverage=collection.inventory.coverage + no_reports)
    with paused_gc():
        findings = evaluate(inventory, checks, policy=policy_of(config), senders=senders_of(config),
                            now=datetime.now(UTC))
    seconds = time.perf_counter() - start
    cpu = time.process_time() - start_cpu
    domains = len(collection.inventory.domains)
    errors = Counter(f"{f.check}: {re.sub(r'd[0-9]{5}', 'dNNNNN', f.reason)[:200]}"
                     for f in findings if f.status.value == "error")
    return {"seconds": seconds, "collect_seconds": collected - start, "cpu_seconds": cpu,
            "collect_cpu_seconds": collected_cpu - start_cpu, "domains": domains,
            "queries": sum(c.wire_queries for c in clients), "findings": len(findings), "checks": len(checks),
            "errors": sum(errors.values()), "error_reasons": dict(errors.most_common(20)),
            "statuses": dict(Counter(f.status.value for f in findings)),
            "failing": dict(sorted(Counter(f.check for f in findings if f.status.value == "fail").items()))}


def measure_checkdmarc(domains: list[str], port: int, threads: int) -> dict[str, float]:
    """In this process: checkdmarc over the domains, serially or one call per domain in a thread pool."""
    import dns.nameserver
    import dns.query
    import dns.resolver
    from checkdmarc import check_domains

    queries = [0]
    for name in ("udp", "tcp"):
        original = getattr(dns.query, name)

        def counted(*args: object, _original=original, **kwargs: object) -> object:
            queries[0] += 1
            return _original(*args, **kwargs)

        setattr(dns.query, name, counted)

    def resolver() -> dns.resolver.Resolver:
        r = dns.resolver.Resolver(configure=False)
        r.nameservers = [dns.nameserver.Do53Nameserver("127.0.0.1", port)]
        r.timeout = r.lifetime = 2.0
        return r

    start = time.perf_counter()
    if threads <= 1:
        check_domains(domains, resolver=resolver(), timeout=2.0, skip_tls=True)
    else:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(lambda d: check_domains([d], resolver=resolver(), timeout=2.0, skip_tls=True), domains))
    return {"seconds": time.perf_counter() - start, "domains": len(domains), "queries": queries[0]}


def _child(kind: str, args: list[str]) -> dict[str, float]:
    """Run one measurement in a fresh process, so peak RSS is its own."""
    done = subprocess.run([sys.executable, __file__, "--child", kind, *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=3600)
    if done.returncode != 0:
        raise RuntimeError(f"{kind} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(n: int, rtt: float, server: str, workdir: Path, checkdmarc_serial_max: int,
        tools: tuple[str, ...] = TOOLS) -> list[str]:
    """All measurements for N domains at one RTT, as Markdown table rows."""
    estate = generate(n)
    port = free_port()
    processes = [(start_knot if server == "knot" else start_inprocess)(workdir, estate.zones, port)]
    policy_server, ca_bundle = start_policy_server(estate, workdir)
    target, policy_port = port, policy_server.port  # type: ignore[attr-defined]
    try:
        if rtt > 0:
            target = free_port()
            processes.append(start_relay(target, port, rtt))
            policy_port = free_port()
            processes.append(start_relay(policy_port, policy_server.port, rtt, dns_probe=False))  # type: ignore[attr-defined]
        config = workdir / "bench.toml"
        config.write_text(
            f'[dns]\nnameservers = ["127.0.0.1:{target}"]\ntimeout = 3.0\nconcurrency = 256\n'
            f'\n[mta_sts]\nport = {policy_port}\nca_bundle = "{ca_bundle}"\ntimeout = 10.0\n'
            # The operator's own mail servers, as they would declare them, so mx.unexpected can judge them.
            + '\n[senders.mailcow]\ntitle = "mailcow (self-hosted)"\ndkim_selectors = ["dkim"]\n'
            'mx_patterns = ["mail.d*.test"]\nreturn_path = "customer"\n'
            + "".join(f'\n[[tenants]]\nname = "{t["name"]}"\ndomains = {json.dumps(t["domains"])}\n'
                      f'senders = {json.dumps(t["senders"])}\ndkim_selectors = {json.dumps(t["dkim_selectors"])}\n'
                      for t in estate.tenants)
        )
        domains = [d for t in estate.tenants for d in t["domains"]]  # type: ignore[attr-defined]
        (workdir / "domains.json").write_text(json.dumps(domains))
        rows = []
        results = []
        if "mailwarden" in tools:
            results.append(("mailwarden", _child("mailwarden", [str(config)])))
        serial = domains[:checkdmarc_serial_max] if rtt > 0 else domains
        if "checkdmarc-serial" in tools:
            results.append((f"checkdmarc serial{'' if len(serial) == n else f' (first {len(serial):,})'}",
                            _child("checkdmarc", [str(workdir / "domains.json"), str(target), "1", str(len(serial))])))
        if "checkdmarc-threads" in tools:
            results.append(("checkdmarc 32 threads",
                            _child("checkdmarc", [str(workdir / "domains.json"), str(target), "32", str(n)])))
        for name, r in results:
            rows.append(f"| {n:,} | {rtt:g} ms | {name} | {r['domains'] / r['seconds']:,.0f} | "
                        f"{r['seconds']:,.1f} s | {r['queries'] / r['domains']:.1f} | {r['rss_mb']:,.0f} MB | "
                        f"{r['load']:.1f} |"
                        + (f" {r.get('errors', 0)} errors of {r.get('findings', 0)} results |" if "findings" in r
                           else " |"))
            if "failing" in r:
                print(f"  {n:,} domains, {rtt:g} ms, {name}: collect {r['collect_seconds']:.1f} s "
                      f"(CPU {r['collect_cpu_seconds']:.1f} s), evaluate {r['seconds'] - r['collect_seconds']:.1f} s "
                      f"(CPU {r['cpu_seconds'] - r['collect_cpu_seconds']:.1f} s); statuses {r['statuses']}; "
                      f"failing {r['failing']}",
                      file=sys.stderr)
            for reason, count in r.get("error_reasons", {}).items():  # type: ignore[union-attr]
                print(f"  {n:,} domains, {rtt:g} ms, {name}: {count} x {reason}", file=sys.stderr)
        return rows
    finally:
        policy_server.stop()  # type: ignore[attr-defined]
        for process in processes:
            process.terminate()
            process.wait()


def main() -> None:
    """Parse arguments; run the measurements (or, with --child, one of them)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--domains", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--rtt", type=float, nargs="+", default=[0.0, 10.0], help="added round-trip time, ms")
    parser.add_argument("--server", choices=["knot", "inprocess"], default="knot")
    parser.add_argument("--checkdmarc-serial-max", type=int, default=500,
                        help="with added RTT, time serial checkdmarc on at most this many domains (it is slow)")
    parser.add_argument("--tools", nargs="+", choices=TOOLS, default=list(TOOLS), help="what to measure")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, *rest = args.child
        load = os.getloadavg()[0]  # the 1-minute load average as the measurement starts
        if kind == "mailwarden":
            result = measure_mailwarden(Path(rest[0]))
        else:
            domains = json.loads(Path(rest[0]).read_text())[: int(rest[3])]
            result = measure_checkdmarc(domains, int(rest[1]), int(rest[2]))
        result["rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        result["load"] = load
        print(json.dumps(result))
        return
    if args.server == "knot" and not (shutil.which("knotd") or os.path.exists("/usr/sbin/knotd")):
        sys.exit("knotd is not installed: apt-get install -y knot (or use --server inprocess)")
    print("| domains | added RTT | tool | domains/s | time | DNS queries/domain | peak RSS | load | |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for n in args.domains:
        for rtt in args.rtt:
            with tempfile.TemporaryDirectory(prefix="mw-bench-") as tmp:
                for row in run(n, rtt, args.server, Path(tmp), args.checkdmarc_serial_max, tuple(args.tools)):
                    print(row, flush=True)


if __name__ == "__main__":
    main()

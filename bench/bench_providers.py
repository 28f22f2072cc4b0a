"""Provider scan benchmark: the Google, Graph and TrekMail adapters against rate-limited contract servers on
loopback, scanned into the store as ``mailwarden scan`` does.

    python bench/bench_providers.py --mailboxes 10000 100000 --rate 300 200 --trekmail-rate 100

Each run splits the mailboxes evenly between a Google Workspace contract server, a Microsoft Graph
contract server (TLS) and a TrekMail contract server (``--providers`` picks fewer), each in its own
process, each enforcing a request rate (a token bucket; excess requests get the provider's throttle reply:
Google 403 userRateLimitExceeded without Retry-After, Graph 429 with Retry-After: 1, TrekMail 429
rate_limited with Retry-After: 1) and the real page sizes (Directory users 500, Graph /users 500 with
signInActivity, TrekMail per_page 100). Every adapter also reads the persistence surfaces (Google tokens,
asps and recovery fields; Graph grants and authentication methods; TrekMail app passwords and devices). The estate is written straight into the servers' state. A fresh process scans both
tenants into a SQLite store with ``record_scan`` (collect, stage page by page, judge and record; the
report is not rendered) and reports the crawl's and the rest's time and its peak RSS (ru_maxrss).

The floor is the time the rate limits allow: the requests the adapters must make (token grants,
listing pages, per-user calls), less the one second of requests the full token bucket grants at once,
divided by the rate, for the slower of the two servers. The figures
come out as Markdown table rows for bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import dns.zone

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scanner.loopback.zoneserver import ZoneServer  # noqa: E402

DOMAINS = ("gw.bench.example", "m365.bench.example", "trek.bench.example")
PROVIDERS = ("google", "graph", "trekmail")
APP_PASSWORD_EVERY = 40  # one mailbox in 40 holds an app password (and on Google an OAuth grant that reads mail)
FORWARDING_EVERY = 50  # one mailbox in 50 forwards mail outside (2%): Gmail then needs two more reads
NOW = "2026-11-20T08:00:00Z"


def serve_google(users: int, rate: float, workdir: Path) -> tuple[Any, dict[str, Any]]:
    """A Google Workspace contract server holding ``users`` users; returns the server and the tenant's settings."""
    from tests.contract import google
    from tests.contract.server import ContractServer

    key = google.test_key()
    space = google.Workspace(key, page_size=500)
    space.domains = [{"domainName": "gw.bench.example", "verified": True, "isPrimary": True,
                      "creationTime": "1612345678901", "domainAliases": []}]
    space.admin = "admin@gw.bench.example"
    space.users[space.admin] = {"id": "1", "primaryEmail": space.admin, "name": {"fullName": "Admin"},
                                "suspended": False, "archived": False, "isMailboxSetup": False,
                                "creationTime": "2020-01-01T00:00:00.000Z", "lastLoginTime": NOW}
    for i in range(users - 1):
        address = f"user{i:06d}@gw.bench.example"
        space.users[address] = {
            "id": f"10470{i:012d}", "primaryEmail": address, "name": {"fullName": f"User {i}"},
            "suspended": i % 97 == 0, "archived": False, "isAdmin": False, "isMailboxSetup": True,
            "creationTime": "2024-03-01T09:00:00.000Z",
            "lastLoginTime": "1970-01-01T00:00:00.000Z" if i % 31 == 0 else NOW, "orgUnitPath": "/"}
        if i % FORWARDING_EVERY == 0:
            mail = space.mail.setdefault(address, google.Mail())
            target = f"u{i}@elsewhere.test"
            mail.addresses.append({"forwardingEmail": target, "verificationStatus": "accepted"})
            mail.auto = {"enabled": True, "emailAddress": target, "disposition": "leaveInInbox"}
        if i % APP_PASSWORD_EVERY == 0:
            space.asps[address] = [{"codeId": i, "name": "Phone", "creationTime": "1735689600000",
                                    "lastTimeUsed": "1764000000"}]
            space.oauth_tokens[address] = [{"clientId": f"{i}.apps.test", "displayText": "Mail app",
                                            "scopes": ["https://mail.google.com/"]}]
    server = ContractServer(space, throttled=space.throttled).start()
    space.token_url = f"{server.url}/token"
    key_file = workdir / "google-sa.json"
    key_file.write_text(json.dumps(key.info(space.token_url)), encoding="utf-8")
    tenant = (f'\n[[tenants]]\nname = "gw"\nprovider = "google"\ncredentials = "file:{key_file}"\n'
              f'domains = ["gw.bench.example"]\n[tenants.google]\nadmin = "{space.admin}"\n'
              f'customer_id = "{google.CUSTOMER_ID}"\ndirectory_url = "{server.url}"\ngmail_url = "{server.url}"\n'
              f'cloudidentity_url = "{server.url}"\n')
    suspended = len(range(0, users - 1, 97))
    forwarding = len([i for i in range(0, users - 1, FORWARDING_EVERY) if i % 97])
    # token for the admin (directory), (invitations), (policies) and (security); domains; the policies page (none
    # set, so no org units are read); user and group pages; invitations page; per user not suspended (a suspended
    # user's Gmail settings are not read): a token as that user, forwardingAddresses, delegates (+ autoForwarding,
    # filters when forwarding); per user: tokens, asps and the recovery fields (the admin too).
    needed = 4 + 1 + 1 + math.ceil(users / 500) + 1 + 1 + 3 * (users - 1 - suspended) + 2 * forwarding + 3 * users
    return server, {"tenant": tenant, "needed": needed}


def serve_graph(users: int, rate: float, workdir: Path) -> tuple[Any, dict[str, Any]]:
    """A Microsoft Graph contract server (TLS) holding ``users`` users; returns the server and the tenant's settings."""
    from tests.contract import microsoft

    ca = microsoft.LoopbackCa.create()
    state = microsoft.GraphState(page_size=500)
    state.domains = ["m365.bench.example", microsoft.INITIAL_DOMAIN]
    for i in range(users):
        uid = f"6f1c2a9e-0000-4000-8000-{i:012d}"
        address = f"user{i:06d}@m365.bench.example"
        state.users[uid] = {
            "id": uid, "mail": address, "userPrincipalName": address, "displayName": f"User {i}",
            "accountEnabled": i % 97 != 0, "userType": "Member", "createdDateTime": "2024-03-01T09:00:00Z",
            "externalUserState": None, "externalUserStateChangeDateTime": None,
            "signInActivity": {"lastSignInDateTime": NOW, "lastNonInteractiveSignInDateTime": NOW,
                               "lastSuccessfulSignInDateTime": NOW if i % 31 else None},
        }
        rules = [{"id": f"AQAAAJ5d{i}0=", "displayName": "file newsletters", "sequence": 1, "isEnabled": True,
                  "hasError": False, "isReadOnly": False, "conditions": {},
                  "actions": {"moveToFolder": "AAMkAD-newsletters", "stopProcessingRules": False}}]
        if i % FORWARDING_EVERY == 0:
            rules.append(microsoft._rule(f"AQAAAJ5d{i}1=", "to home", 2, {"forwardTo": [f"u{i}@elsewhere.test"]}))
        state.rules[uid] = rules
        if i % 211 == 0:
            state.purposes[uid] = "shared"
    server = microsoft.GraphServer(state, ca.server_context())
    server.start()
    (workdir / "ca.pem").write_bytes(ca.ca_pem)
    (workdir / "ms-secret").write_text(microsoft.CLIENT_SECRET, encoding="utf-8")
    tenant = (f'\n[[tenants]]\nname = "m365"\nprovider = "microsoft"\ncredentials = "file:{workdir / "ms-secret"}"\n'
              f'domains = ["m365.bench.example"]\n[tenants.microsoft]\ntenant_id = "{microsoft.TENANT_ID}"\n'
              f'client_id = "{microsoft.CLIENT_ID}"\ngraph_url = "{server.url}/v1.0"\nlogin_url = "{server.url}"\n')
    # OpenID discovery, token, domains, user pages; per user: mailboxSettings, inbox rules, oauth2PermissionGrants,
    # email and phone methods; the tenant-wide consents.
    needed = 1 + 1 + 1 + math.ceil(users / 500) + 5 * users + 1
    return server, {"tenant": tenant, "needed": needed, "ca": str(workdir / "ca.pem")}


def serve_trekmail(users: int, rate: float, workdir: Path) -> tuple[Any, dict[str, Any]]:
    """A TrekMail contract server holding ``users`` mailboxes; returns the server and the tenant's settings."""
    from tests.contract import trekmail
    from tests.contract.server import ContractServer
    from scanner.model import MailboxStatus

    state = trekmail.TrekState()
    state.domains[1] = {"id": 1, "name": "trek.bench.example", "status": "active",
                        "catch_all": {"enabled": False, "destination": None}}
    shared = 0
    for i in range(users):
        address = f"user{i:06d}@trek.bench.example"
        kind = "shared" if i % 211 == 0 else "regular"
        shared += kind == "shared"
        target = [f"u{i}@elsewhere.test"] if i % FORWARDING_EVERY == 0 else []
        state.mailboxes[1000 + i] = {
            "id": 1000 + i, "email": address, "domain_id": 1, "domain": "trek.bench.example", "type": kind,
            "status_model": MailboxStatus.SUSPENDED if i % 97 == 0 else MailboxStatus.ACTIVE,
            "forwarding": {"enabled": bool(target), "targets": target, "keep_copy": True}, "rules": [], "sieve": "",
            "members": [{"id": i, "email": f"user{i + 1:06d}@trek.bench.example", "can_read": True,
                         "can_send": True}] if kind == "shared" else [],
            "app_passwords": [{"id": i, "name": "Phone", "created_at": "2026-01-05T10:00:00.000000Z",
                               "last_used_at": NOW, "revoked_at": None, "active": True}]
            if i % APP_PASSWORD_EVERY == 0 and kind != "shared" else []}
    server = ContractServer(trekmail.trek_app(state), throttled=trekmail.throttled(state)).start()
    (workdir / "trek-token").write_text(trekmail.TOKEN, encoding="utf-8")
    tenant = (f'\n[[tenants]]\nname = "trek"\nprovider = "trekmail"\ncredentials = "file:{workdir / "trek-token"}"\n'
              f'domains = ["trek.bench.example"]\n[tenants.trekmail]\nurl = "{server.url}"\n')
    # domains page, the domain record, devices, mailbox pages (100 each), forwarding addresses; per mailbox:
    # forwarding, rules, sieve, and app passwords (a regular mailbox) or members (a shared one).
    needed = 1 + 1 + 1 + math.ceil(users / 100) + 1 + 4 * users
    return server, {"tenant": tenant, "needed": needed}


def child_serve(provider: str, users: int, rate: float, workdir: Path) -> None:
    """Run one contract server until stdin closes; report request counts on each line read."""
    serve = {"google": serve_google, "graph": serve_graph, "trekmail": serve_trekmail}[provider]
    server, info = serve(users, rate, workdir)
    throttled = [0]
    original = server.throttled

    def counted(request: Any) -> Any:
        throttled[0] += 1
        return original(request)

    server.throttled = counted
    server.faults.rate_limit = rate
    server.faults.burst = rate
    print(json.dumps(info), flush=True)
    for _ in sys.stdin:
        cpu = resource.getrusage(resource.RUSAGE_SELF)
        print(json.dumps({"requests": len(server.log), "throttled": throttled[0],
                          "cpu": cpu.ru_utime + cpu.ru_stime}), flush=True)
    server.stop()


def child_scan(config_path: Path) -> None:
    """Scan the config into its store as ``mailwarden scan`` does (collect, stage, judge, record; no report
    rendering); print the figures and the peak RSS."""
    import sqlalchemy as sa

    from scanner.config import load_config
    from scanner.pipeline import record_scan
    from scanner.store.database import Store, run_findings

    config = load_config(config_path)
    store = Store(config.store.url)
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    recorded = record_scan(config, store=store)
    elapsed = time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_SELF)
    scope = store.run(recorded.run_id).scope["tenants"]
    with store.engine.connect() as conn:
        forwarding = conn.execute(sa.select(sa.func.count()).select_from(run_findings).where(
            run_findings.c.run_id == recorded.run_id, run_findings.c.check_id == "forwarding.external",
            run_findings.c.status == "fail")).scalar_one()
    tenants = [{"tenant": name, "mailboxes": t["mailboxes"], "problems": len(t["problems"]),
                "failed": sum(1 for g in t["gaps"] if g["state"] == "failed"),
                "first_problem": t["problems"][0][:300] if t["problems"] else "",
                "findings": sum(t["findings"].values())} for name, t in scope.items()]
    print(json.dumps({"seconds": elapsed, "collect_seconds": recorded.collect_seconds,
                      "judge_seconds": recorded.judge_seconds, "tenants": tenants, "forwarding": forwarding,
                      "baseline_mb": baseline / 1024, "peak_mb": usage.ru_maxrss / 1024,
                      "cpu": usage.ru_utime + usage.ru_stime}))


def _start(provider: str, users: int, rate: float, workdir: Path) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    child = subprocess.Popen(
        [sys.executable, __file__, "--child", "serve", provider, str(users), str(rate), str(workdir)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert child.stdout is not None
    line = child.stdout.readline()
    if not line:
        raise SystemExit(f"the {provider} contract server did not start")
    return child, json.loads(line)


def _stats(child: subprocess.Popen[str]) -> dict[str, Any]:
    assert child.stdin is not None and child.stdout is not None
    child.stdin.write("stats\n")
    child.stdin.flush()
    return json.loads(child.stdout.readline())


def measure(mailboxes: int, rates: dict[str, float], concurrency: int, providers: tuple[str, ...] = PROVIDERS
            ) -> dict[str, Any]:
    """One run: start the servers, collect in a fresh process, return the figures."""
    shares = {p: mailboxes // len(providers) for p in providers}
    shares[providers[-1]] += mailboxes - sum(shares.values())
    with tempfile.TemporaryDirectory(prefix="mw-bench-") as directory, ZoneServer() as zones:
        for domain in DOMAINS:  # the tenants' DNS, on loopback like everything else
            zones.add_zone(dns.zone.from_text(
                f"$ORIGIN {domain}.\n$TTL 300\n@ IN SOA ns1 hostmaster 1 3600 600 86400 300\n@ IN NS ns1\n"
                "ns1 IN A 127.0.0.53\n@ IN MX 10 mx\nmx IN A 127.0.0.25\n"
                '@ IN TXT "v=spf1 ip4:127.0.0.25 -all"\n_dmarc IN TXT "v=DMARC1; p=reject"\n',
                origin=domain, relativize=False))
        workdir = Path(directory)
        started: dict[str, tuple[subprocess.Popen[str], dict[str, Any]]] = {}
        try:
            for name in providers:
                (workdir / name).mkdir()
                started[name] = _start(name, shares[name], rates[name], workdir / name)
            ca = started["graph"][1]["ca"] if "graph" in started else ""
            config = workdir / "mailwarden.toml"
            config.write_text(
                f'[store]\nurl = "sqlite:///{workdir / "mw.db"}"\n'
                f'[dns]\nnameservers = ["{zones.nameserver}"]\n'
                f'[http]\nconcurrency = {concurrency}\n' + (f'ca_bundle = "{ca}"\n' if ca else "")
                + "".join(info["tenant"] for _, info in started.values()), encoding="utf-8")
            before = {name: _stats(child) for name, (child, _) in started.items()}
            done = subprocess.run([sys.executable, __file__, "--child", "scan", str(config)],
                                  capture_output=True, text=True, cwd=ROOT)
            if done.returncode != 0:
                raise SystemExit(f"the scanning process failed:\n{done.stderr[-3000:]}")
            scan = json.loads(done.stdout)
            after = {name: _stats(child) for name, (child, _) in started.items()}
        finally:
            for child, _ in started.values():
                assert child.stdin is not None
                child.stdin.close()
                child.wait(timeout=30)
    servers = {}
    for name, (_, info) in started.items():
        served = after[name]["requests"] - before[name]["requests"] - (after[name]["throttled"] - before[name]["throttled"])
        servers[name] = {"needed": info["needed"], "served": served,
                         "throttled": after[name]["throttled"] - before[name]["throttled"],
                         "cpu": after[name]["cpu"] - before[name]["cpu"],
                         # the token bucket starts full (one second of requests), which the floor discounts
                         "floor": max(0.0, info["needed"] - rates[name]) / rates[name] if rates[name] else 0.0}
    floor = max(s["floor"] for s in servers.values())
    return {"mailboxes": mailboxes, "rates": rates, "concurrency": concurrency, "scan": scan, "servers": servers,
            "floor": floor, "shares": shares}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mailboxes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--rate", type=float, nargs=2, default=[300.0, 200.0], metavar=("GOOGLE", "GRAPH"),
                        help="requests/s the Google and the Graph server allow (0: unlimited)")
    parser.add_argument("--trekmail-rate", type=float, default=100.0,
                        help="requests/s the TrekMail server allows (TrekMail publishes no number; 0: unlimited)")
    parser.add_argument("--providers", nargs="+", choices=PROVIDERS, default=list(PROVIDERS),
                        help="the contract servers to split the mailboxes between")
    parser.add_argument("--concurrency", type=int, default=16, help="[http] concurrency per tenant")
    parser.add_argument("--json", action="store_true", help="print the raw figures too")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        role, *rest = args.child
        if role == "serve":
            child_serve(rest[0], int(rest[1]), float(rest[2]), Path(rest[3]))
        else:
            child_scan(Path(rest[0]))
        return
    rates = {"google": args.rate[0], "graph": args.rate[1], "trekmail": args.trekmail_rate}
    providers = tuple(args.providers)
    names = " + ".join({"google": "Google", "graph": "Graph", "trekmail": "TrekMail"}[p] for p in providers)
    print(f"| mailboxes | rate limits (req/s, {names}) | requests needed | served | throttled "
          "| floor (s) | crawl (s) | x floor | mailboxes/s | judge + record (s) | findings | peak RSS (MB) "
          "| scanner CPU (s) | server CPU (s) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for mailboxes in args.mailboxes:
        result = measure(mailboxes, rates, args.concurrency, providers)
        scan, servers = result["scan"], result["servers"]

        def each(key: str) -> str:
            return " + ".join(f"{servers[p][key]:,}" if key != "cpu" else f"{servers[p][key]:.0f}" for p in providers)

        seen = sum(t["mailboxes"] for t in scan["tenants"])
        crawl = scan["collect_seconds"]
        ratio = crawl / result["floor"] if result["floor"] else float("nan")
        print(f"| {mailboxes:,} | {' + '.join(f'{rates[p]:g}' for p in providers)} | {each('needed')} "
              f"| {each('served')} | {each('throttled')} "
              f"| {result['floor']:.1f} | {crawl:.1f} | {ratio:.2f} | {seen / crawl:,.0f} | {scan['judge_seconds']:.1f} "
              f"| {sum(t['findings'] for t in scan['tenants']):,} | {scan['peak_mb']:.0f} | {scan['cpu']:.0f} "
              f"| {each('cpu')} |", flush=True)
        # Google's admin has no mailbox of its own (no forwarding), and its suspended users (one in 97) are not
        # read (their forwards are a coverage gap); every other tenant forwards one in 50.
        expected = sum(len([i for i in range(0, n - 1, FORWARDING_EVERY) if i % 97]) if p == "google"
                       else len(range(0, n, FORWARDING_EVERY)) for p, n in result["shares"].items())
        if seen != mailboxes or scan["forwarding"] != expected:
            print(f"  ! saw {seen:,} mailboxes and {scan['forwarding']:,} forwarding outside (expected {expected:,})",
                  file=sys.stderr)
        for tenant in scan["tenants"]:
            if tenant["problems"] or tenant["failed"]:
                print(f"  ! {tenant['tenant']}: {tenant['problems']} problems, {tenant['failed']} failed facts: "
                      f"{tenant['first_problem']}", file=sys.stderr)
        if args.json:
            print(json.dumps(result), file=sys.stderr)

if __name__ == "__main__":
    main()

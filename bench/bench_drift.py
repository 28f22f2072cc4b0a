"""Drift benchmark: weekly runs over a large estate with ~1% of objects changing per run.

Inventories are generated directly (no network, no adapter) and driven through the same code a scan
uses: ``snapshot_items`` -> ``Store.stage`` a page at a time (as the adapters' pages come in during a
scan's crawl) -> ``Store.commit_snapshot`` (the run's diff: delta + change log, when collection ends)
-> ``Store.changes``.
Run: ``python bench/bench_drift.py`` (defaults: 52 runs, 100,000 mailboxes, 2,000 domains, 1%).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scanner.adapters.base import PAGE  # noqa: E402

from scanner.model import (  # noqa: E402
    DnsAnswer,
    DnsFacts,
    Domain,
    Forward,
    ForwardMechanism,
    Inventory,
    Mailbox,
    MailboxStatus,
    Outcome,
)
from scanner.pipeline import snapshot_items  # noqa: E402
from scanner.store.database import CONFIG_SCOPE, Store  # noqa: E402

START = datetime(2025, 11, 3, 6, 0, tzinfo=UTC)


def _dns(name: str, policy: str, mx: str) -> DnsFacts:
    return DnsFacts({
        "mx": DnsAnswer(name, "MX", Outcome.ANSWER, (f"10 {mx}.",)),
        "txt": DnsAnswer(name, "TXT", Outcome.ANSWER, ("v=spf1 ip4:127.0.0.10 include:_spf.sender.test -all",)),
        "dmarc": DnsAnswer(f"_dmarc.{name}", "TXT", Outcome.ANSWER, (f"v=DMARC1; p={policy}; rua=mailto:d@{name}",)),
        "dkim:s1": DnsAnswer(f"s1._domainkey.{name}", "TXT", Outcome.ANSWER, ("v=DKIM1; k=rsa; p=MIIBIjANBgkq" + "A" * 380,)),
        "mta_sts": DnsAnswer(f"_mta-sts.{name}", "TXT", Outcome.ANSWER, ("v=STSv1; id=20251101",)),
    })


def _estate(mailboxes: int, domains: int) -> tuple[list[Domain], list[Mailbox]]:
    tenants = max(1, domains // 10)
    doms = [Domain(f"d{i}.example", f"t{i % tenants}", dns=_dns(f"d{i}.example", "reject", f"mx{i}.example"))
            for i in range(domains)]
    boxes = []
    for i in range(mailboxes):
        domain = doms[i % domains]
        boxes.append(Mailbox(domain.tenant, f"user{i}@{domain.name}", display_name=f"User {i}",
                             created=START - timedelta(days=400), last_login=START - timedelta(days=i % 60)))
    return doms, boxes


def _mutate(rng: random.Random, doms: list[Domain], boxes: list[Mailbox], share: float, run: int) -> int:
    """Change about ``share`` of all objects in place; returns how many objects changed."""
    changed = 0
    for _ in range(max(1, int(len(doms) * share))):
        i = rng.randrange(len(doms))
        d = doms[i]
        policy = rng.choice(["none", "quarantine", "reject"])
        doms[i] = replace(d, dns=_dns(d.name, policy, rng.choice([f"mx{i}.example", f"mx{i}b.example"])))
        changed += 1
    for _ in range(max(1, int(len(boxes) * share))):
        i = rng.randrange(len(boxes))
        m = boxes[i]
        roll = rng.random()
        if roll < 0.4:
            forwards = () if m.forwards else (Forward(f"x{run}@outside.test", ForwardMechanism.INBOX_RULE),)
            boxes[i] = replace(m, forwards=forwards)
        elif roll < 0.7:
            boxes[i] = replace(m, display_name=f"{m.display_name} ({run})")
        elif roll < 0.9:
            boxes[i] = replace(m, status=rng.choice(list(MailboxStatus)))
        else:  # a leaver's mailbox deleted, a new hire's created
            boxes[i] = Mailbox(m.tenant, f"hire{run}-{i}@{m.domain}", display_name="New hire", created=START)
        changed += 1
    return changed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=52)
    parser.add_argument("--mailboxes", type=int, default=100_000)
    parser.add_argument("--domains", type=int, default=2_000)
    parser.add_argument("--change", type=float, default=0.01, help="share of objects changed per run")
    parser.add_argument("--store", type=Path, help="SQLite file to use (default: a temporary one)")
    args = parser.parse_args()

    rng = random.Random(6)
    doms, boxes = _estate(args.mailboxes, args.domains)
    tenants = sorted({d.tenant for d in doms})
    with tempfile.TemporaryDirectory() as temp:
        path = args.store or Path(temp) / "bench.db"
        store = Store(f"sqlite:///{path}")
        diff_times: list[float] = []
        stage_times: list[float] = []
        sizes: list[int] = []
        changed_per_run: list[int] = []
        total = time.perf_counter()
        for run in range(args.runs):
            if run:
                changed_per_run.append(_mutate(rng, doms, boxes, args.change, run))
            run_id = f"bench-{run:03d}"
            started = START + timedelta(weeks=run)
            store.start_run(run_id, started, "bench", "bench")
            inventory = Inventory(domains=tuple(doms), mailboxes=tuple(boxes))
            t = time.perf_counter()
            page: list[tuple[str, str, object, str]] = []
            for item in snapshot_items(inventory):
                page.append(item)
                if len(page) == PAGE:
                    store.stage(run_id, page)
                    page = []
            store.stage(run_id, page)
            staged = time.perf_counter() - t
            t = time.perf_counter()
            store.commit_snapshot(run_id, complete=(*tenants, CONFIG_SCOPE))
            elapsed = time.perf_counter() - t
            store.finish_run(run_id, started, "complete", {})
            if run:
                diff_times.append(elapsed)
                stage_times.append(staged)
            sizes.append(path.stat().st_size)
            print(f"run {run + 1:2}/{args.runs}: staged {staged:5.2f} s, diff {elapsed:5.2f} s, "
                  f"store {sizes[-1] / 2**20:7.1f} MiB", file=sys.stderr, flush=True)
        last = START + timedelta(weeks=args.runs - 1)
        busiest = max(doms, key=lambda d: len(store.changes(domain=d.name)))
        query: list[float] = []
        for _ in range(20):
            t = time.perf_counter()
            found = store.changes(domain=busiest.name, since=last - timedelta(days=7))
            query.append(time.perf_counter() - t)
        history: list[float] = []
        for _ in range(20):
            t = time.perf_counter()
            everything = store.changes(domain=busiest.name)
            history.append(time.perf_counter() - t)
        versions, bodies = store.version_count(), store.object_count()
        with store.engine.connect() as conn:
            log_rows = conn.exec_driver_sql("select count(*) from changes").scalar()
        store.close()
        wall = time.perf_counter() - total

    growth = (sizes[-1] - sizes[0]) / max(1, args.runs - 1)
    objects = args.mailboxes + args.domains
    print(f"""
| measure | value |
| --- | --- |
| estate | {args.mailboxes:,} mailboxes, {args.domains:,} domains, {len(tenants)} tenants, {args.runs} weekly runs |
| objects changed per run | {statistics.mean(changed_per_run):,.0f} of {objects:,} ({args.change:.1%}) |
| store size after run 1 | {sizes[0] / 2**20:.1f} MiB |
| store size after run {args.runs} | {sizes[-1] / 2**20:.1f} MiB |
| growth per run | {growth / 2**10:,.0f} KiB ({growth / max(1, statistics.mean(changed_per_run)):,.0f} bytes per changed object) |
| object versions stored | {versions:,} (a full snapshot per run would be {objects * args.runs:,} rows) |
| distinct bodies | {bodies:,} |
| change-log rows | {log_rows:,} |
| staging the run's objects, 500 a page (spread over a scan's crawl), median / max | {statistics.median(stage_times):.2f} s / {max(stage_times):.2f} s |
| one run's diff (delta + new bodies + change log, when collection ends), median / max | {statistics.median(diff_times):.2f} s / {max(diff_times):.2f} s |
| both together, median / max | {statistics.median([a + b for a, b in zip(stage_times, diff_times, strict=True)]):.2f} s / {max(a + b for a, b in zip(stage_times, diff_times, strict=True)):.2f} s |
| `changes --since 7d` on one domain ({busiest.name}, {len(found)} rows), median / max | {statistics.median(query) * 1000:.1f} ms / {max(query) * 1000:.1f} ms |
| `changes` on that domain, whole history ({len(everything)} rows), median / max | {statistics.median(history) * 1000:.1f} ms / {max(history) * 1000:.1f} ms |
| whole benchmark | {wall:.0f} s |
""")


if __name__ == "__main__":
    main()

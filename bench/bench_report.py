"""Report benchmark: report.html generation time and size at 2,000 domains and 100,000 findings per run.

Builds a synthetic store directly (no collection): N tenants, their domains with DNS answers as a run
snapshots them (MX, apex TXT, DMARC, two DKIM selectors), mailboxes with display names, and findings
over two weekly runs (the report reads the previous run for its trend and "resolved" list). Then it
times Store reads and rendering, and optionally opens the result in headless Chromium.

    python bench/bench_report.py [--domains 2000] [--findings 100000] [--browser]
    python bench/bench_report.py --open DIR/report.html     # time an existing report in Chromium only
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

from checks.evaluate import fingerprint
from reports.html import render_report
from scanner.model import (
    DnsAnswer, DnsFacts, Domain, Finding, Inventory, Mailbox, Outcome, Remediation, Severity, Status,
)
from scanner.pipeline import snapshot_items, write_outputs
from scanner.store.database import Store

DOMAIN_CHECKS = [
    ("dmarc.missing", Severity.HIGH), ("dmarc.policy_weak", Severity.MEDIUM), ("spf.missing", Severity.HIGH),
    ("spf.too_many_lookups", Severity.MEDIUM), ("dkim.weak_key", Severity.MEDIUM), ("dkim.missing", Severity.HIGH),
    ("mx.missing", Severity.LOW), ("mta_sts.missing", Severity.LOW), ("tlsrpt.missing", Severity.INFO),
    ("catchall.enabled", Severity.MEDIUM),
]
MAILBOX_CHECKS = [
    ("forwarding.external", Severity.HIGH, "forwarding.disable"), ("account.inactive", Severity.MEDIUM, "account.suspend"),
    ("mailbox.no_owner", Severity.LOW, None), ("delegate.external", Severity.HIGH, "delegate.remove"),
]
KEY = "MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA" + "x" * 330 + "IDAQAB"
STATUSES = [Status.PASS] * 70 + [Status.FAIL] * 20 + [Status.ERROR] * 5 + [Status.EXCEPTED] * 3 + [Status.UNSUPPORTED] * 2


def _domain(tenant: str, name: str) -> Domain:
    def answer(qname: str, rdtype: str, *records: str) -> DnsAnswer:
        return DnsAnswer(qname, rdtype, Outcome.ANSWER if records else Outcome.NXDOMAIN, tuple(records))
    return Domain(name, tenant, dns=DnsFacts({
        "mx": answer(name, "MX", f"10 mx1.{name}.", f"20 mx2.{name}."),
        "txt": answer(name, "TXT", "v=spf1 include:_spf.google.com ~all", "google-site-verification=abc123"),
        "dmarc": answer(f"_dmarc.{name}", "TXT", f"v=DMARC1; p=none; rua=mailto:dmarc@{name}"),
        "dkim:google": answer(f"google._domainkey.{name}", "TXT", f"v=DKIM1; k=rsa; p={KEY}"),
        "dkim:s1": answer(f"s1._domainkey.{name}", "TXT"),
    }))


def estate(domains: int, findings: int, tenants: int) -> Inventory:
    """Tenants' domains (with DNS answers) and enough mailboxes for the findings wanted."""
    per_domain_mailboxes = max(1, (findings - domains * len(DOMAIN_CHECKS)) // (domains * len(MAILBOX_CHECKS)))
    all_domains, mailboxes = [], []
    for d in range(domains):
        tenant = f"tenant{d % tenants:02d}"
        name = f"client{d:04d}.example"
        all_domains.append(_domain(tenant, name))
        for m in range(per_domain_mailboxes):
            mailboxes.append(Mailbox(tenant, f"user{m:02d}@{name}", display_name=f"User {m} of {name}"))
    return Inventory(domains=tuple(all_domains), mailboxes=tuple(mailboxes))


def generate(inventory: Inventory, total: int, seed: int) -> Iterator[Finding]:
    """Exactly ``total`` findings: every domain check per domain, then mailbox checks until the total."""
    rng = random.Random(seed)
    count = 0
    for domain in inventory.domains:
        for check, severity in DOMAIN_CHECKS:
            status = rng.choice(STATUSES)
            evidence: dict[str, object] = {"looked_up": f"_dmarc.{domain.name}", "records_seen": [
                f"v=DMARC1; p=none; rua=mailto:dmarc@{domain.name}"]}
            if status is Status.FAIL:
                evidence["publish"] = f'_dmarc.{domain.name}. TXT "v=DMARC1; p=quarantine; rua=mailto:dmarc@{domain.name}"'
            yield Finding(id=fingerprint(check, domain.tenant, domain.name), check=check, status=status,
                          severity=severity, tenant=domain.tenant, domain=domain.name, subject=domain.name,
                          title=f"{check} title", evidence=evidence,
                          reason="DNS lookup timed out" if status is Status.ERROR else "")
            count += 1
    for mailbox in inventory.mailboxes:
        for check, severity, action in MAILBOX_CHECKS:
            if count >= total:
                return
            status = rng.choice(STATUSES)
            remediation = Remediation(action, {"subject": mailbox.address}) if action and status in (
                Status.FAIL, Status.EXCEPTED) else None
            yield Finding(id=fingerprint(check, mailbox.tenant, mailbox.address), check=check, status=status,
                          severity=severity, tenant=mailbox.tenant, domain=mailbox.domain, subject=mailbox.address,
                          title=f"{check} title", evidence={"targets": [f"someone{count}@elsewhere.test"]},
                          remediation=remediation)
            count += 1


def build_store(path: Path, domains: int, findings: int, tenants: int) -> tuple[Store, str, int]:
    """Two weekly runs over the same estate; returns the store, the second run's id and the findings per run."""
    store = Store(f"sqlite:///{path}")
    inventory = estate(domains, findings, tenants)
    start = datetime(2026, 11, 16, 6, tzinfo=UTC)
    run_id, produced = "", 0
    for week in range(2):
        run_id, when = f"bench-{week}", start + timedelta(days=7 * week)
        store.start_run(run_id, when, "0" * 64, "bench")
        store.save_snapshot(run_id, snapshot_items(inventory))
        rows = list(generate(inventory, findings, seed=week))
        produced = len(rows)
        store.record_findings(run_id, rows, when, sorted({d.tenant for d in inventory.domains}))
        scope = {t: {"state": "complete", "problems": [], "mailboxes": 0, "domains": 0, "gaps": []}
                 for t in sorted({d.tenant for d in inventory.domains})}
        store.finish_run(run_id, when, "complete", {"tenants": scope})
    return store, run_id, produced


# The first frame (requestAnimationFrame) in which each part of the report is on the page, in ms since the
# epoch, recorded by the page itself: Playwright's own waits poll at backed-off intervals (up to 500 ms
# apart) and queue behind the page's loading, so they time their polling rather than the page. A part
# shows no earlier than the first contentful paint: Chromium runs frames before it without presenting them.
SHOWN_AT = """
window.__shown = {};
(() => {
  const parts = {
    fix_first: () => document.querySelector("#fix-list li.cause"),
    first_rows: () => document.querySelector("#findings-body tr.finding"),
    // the page is parsed and its DOMContentLoaded listeners have run: every finding is read, filters work
    interactive: () => document.readyState !== "loading" && document.querySelector("#findings-body tr.finding"),
  };
  const frame = () => requestAnimationFrame(() => {
    for (const [name, shown] of Object.entries(parts))
      if (!(name in window.__shown) && shown()) window.__shown[name] = performance.timeOrigin + performance.now();
    if (Object.keys(window.__shown).length < Object.keys(parts).length) frame();
  });
  frame();
})();
"""


def open_in_browser(report: Path, tenant: str = "tenant03", search: str = "user07@client0042") -> dict[str, float]:
    """Seconds until the fix-first list, the table's first rows and working filters show; then a filter and a search."""
    from playwright.sync_api import sync_playwright

    args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=args)
        page = browser.new_page()
        page.add_init_script(SHOWN_AT)
        began = time.time()
        page.goto(report.as_uri(), timeout=120_000, wait_until="load")
        page.wait_for_function("() => Object.keys(window.__shown).length === 3", timeout=120_000)
        at = page.evaluate("() => window.__shown")
        painted = page.evaluate(
            "() => performance.timeOrigin + performance.getEntriesByName('first-contentful-paint')[0].startTime")
        shown = {f"{name}_s": max(at[name], painted) / 1000 - began for name in ("fix_first", "first_rows", "interactive")}
        began = time.perf_counter()
        page.select_option("#f-tenant", tenant)
        filtered = time.perf_counter() - began
        began = time.perf_counter()
        page.fill("#f-search", search)
        page.locator("#findings-count").filter(has_text="matching").wait_for()
        page.wait_for_timeout(200)  # the search input is debounced by 150 ms
        searched = time.perf_counter() - began - 0.2
        browser.close()
    return {**shown, "tenant_filter_s": filtered, "search_s": searched}


def main() -> int:
    """Build the store, time the report three times, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--domains", type=int, default=2000)
    parser.add_argument("--findings", type=int, default=100_000)
    parser.add_argument("--tenants", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--browser", action="store_true", help="also open the report in headless Chromium")
    parser.add_argument("--open", type=Path, metavar="REPORT",
                        help="only open this report.html (say, a bench_scan.py --keep run's) in headless Chromium, "
                             "filtering on its first tenant and searching for its first domain")
    options = parser.parse_args()
    if options.open:
        page = options.open.read_text(encoding="utf-8")
        start = page.index('id="report-first">') + len('id="report-first">')
        first = json.loads(page[start:page.index("</script>", start)])
        print(f"{options.open}: {options.open.stat().st_size / 1e6:.1f} MB")
        figures = open_in_browser(options.open.resolve(), min(t for t in first["tenants"] if t),
                                  min(d for d in first["domains"] if d))
        print("chromium: " + ", ".join(f"{k} {v:.2f}" for k, v in figures.items()))
        return 0
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        began = time.perf_counter()
        store, run_id, produced = build_store(work / "bench.db", options.domains, options.findings, options.tenants)
        print(f"store built in {time.perf_counter() - began:.1f} s: {options.domains} domains, "
              f"{produced} findings per run, 2 runs")
        reads, renders, totals, cpu = [], [], [], []
        for _ in range(options.repeat):
            began, began_cpu = time.perf_counter(), time.process_time()
            run = store.run(run_id)
            events = store.lifecycle_events(run_id)
            reads.append(time.perf_counter() - began)
            began = time.perf_counter()
            render_report(store, run, events, work / "report.html")
            renders.append(time.perf_counter() - began)
            # CPU time of this process: what the wall time would be on an idle machine (the work is one thread)
            cpu.append(time.process_time() - began_cpu)
        for _ in range(options.repeat):
            began = time.perf_counter()
            write_outputs(store, run_id, work / "out")
            totals.append(time.perf_counter() - began)
        size = (work / "report.html").stat().st_size
        print(f"read this run and its lifecycle events (the report streams its findings): median {statistics.median(reads):.2f} s")
        print(f"render_report (history, snapshot, exceptions, HTML): median {statistics.median(renders):.2f} s")
        print(f"report generation total (read + render): median "
              f"{statistics.median(reads) + statistics.median(renders):.2f} s (target < 10 s)")
        print(f"report generation CPU time (read + render, this process): median {statistics.median(cpu):.2f} s")
        print(f"write_outputs (json + csv + html + manifest): median {statistics.median(totals):.2f} s")
        print(f"report.html: {size / 1e6:.1f} MB; findings.json {(work / 'out' / 'findings.json').stat().st_size / 1e6:.1f} MB; "
              f"findings.csv {(work / 'out' / 'findings.csv').stat().st_size / 1e6:.1f} MB")
        if options.browser:
            figures = open_in_browser(work / "report.html")
            print("chromium: " + ", ".join(f"{k} {v:.2f}" for k, v in figures.items()))
        store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""report.html sized for people: passes, alike findings and DNS answers grow the page by little per domain."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from playwright.sync_api import expect

from checks.evaluate import fingerprint
from scanner.model import DnsAnswer, DnsFacts, Domain, Finding, Inventory, Outcome, Severity, Status
from scanner.pipeline import snapshot_items, write_outputs
from scanner.store.database import Store
from tests.reports.test_browser import Watched, browser, watched  # noqa: F401 - the browser fixtures

NOW = datetime(2026, 11, 25, 6, tzinfo=UTC)
PASSING = [f"pass.check{n:02d}" for n in range(30)]
"""As at DNS scale: most checks pass on most domains, one subject (the domain) each."""
UNSUPPORTED = ["dmarc_reports.volume", "dmarc_reports.unaligned_sources", "dmarc_reports.spoofing"]
REASON = "no DMARC aggregate reports were imported for this domain"


def _domain(name: str) -> Domain:
    def answer(qname: str, rdtype: str, *records: str) -> DnsAnswer:
        return DnsAnswer(qname, rdtype, Outcome.ANSWER if records else Outcome.NXDOMAIN, tuple(records))
    return Domain(name, "acme", dns=DnsFacts({
        "mx": answer(name, "MX", "1 aspmx.l.google.com."),
        "txt": answer(name, "TXT", "v=spf1 include:_spf.google.com -all"),
        "dmarc": answer(f"_dmarc.{name}", "TXT", f"v=DMARC1; p=reject; rua=mailto:dmarc@{name}"),
        "dkim:google": answer(f"google._domainkey.{name}", "TXT"),
        "dkim:s1": answer(f"s1._domainkey.{name}", "TXT"),
    }))


def _findings(name: str) -> list[Finding]:
    def finding(check: str, status: Status, **extra: object) -> Finding:
        return Finding(id=fingerprint(check, "acme", name), check=check, status=status, severity=Severity.MEDIUM,
                       tenant="acme", domain=name, subject=name, title=f"{check} title", **extra)  # type: ignore[arg-type]
    return ([finding(check, Status.PASS, evidence={"record": f"v=DMARC1; p=reject; rua=mailto:dmarc@{name}"})
             for check in PASSING]
            + [finding(check, Status.UNSUPPORTED, reason=REASON) for check in UNSUPPORTED]
            + [finding("mta_sts.missing", Status.FAIL, evidence={"looked_up": f"_mta-sts.{name}"})])


def _report(folder: Path, count: int) -> Path:
    """A stored run over ``count`` domains, each with 30 passes, 3 alike unsupported findings and one failure."""
    names = [f"d{n:05d}.test" for n in range(count)]
    folder.mkdir(exist_ok=True)
    store = Store(f"sqlite:///{folder / 's.db'}")
    store.start_run("r1", NOW, "d" * 64, "test")
    store.save_snapshot("r1", snapshot_items(Inventory(domains=tuple(_domain(n) for n in names))))
    store.record_findings("r1", [f for n in names for f in _findings(n)], NOW, ["acme"])
    store.finish_run("r1", NOW, "complete", {"tenants": {}})
    write_outputs(store, "r1", folder / "out")
    store.close()
    return folder / "out" / "report.html"


def test_the_page_grows_by_little_per_domain_of_passes_and_alike_findings(tmp_path: Path) -> None:
    small, large = _report(tmp_path / "a", 100), _report(tmp_path / "b", 1100)
    per_domain = (large.stat().st_size - small.stat().st_size) / 1000
    # Each domain adds 30 passes, 3 unsupported findings alike but for their subject, one failure and 5 DNS
    # answers: about 480 bytes. With one row per pass, each unsupported finding whole and every domain's
    # answers written out, it was about 2,600 bytes (measured on the renderer before the compaction).
    assert per_domain < 600, per_domain
    html = large.read_text(encoding="utf-8")
    start = html.index('id="report-data">') + len('id="report-data">')
    data = json.loads(html[start:html.index("</script>", start)])
    # one group per check, every subject: the unsupported findings and the failures that differ only by the
    # domain they name
    assert sorted(len(group[9]) for group in data["groups"]) == [1100] * 4
    assert sum(len(p[3]) for p in data["passes"]) == 30 * 1100 and all(p[4] == 1 for p in data["passes"])
    # the answers that differ only by the domain's name (its DMARC record, the selectors without a key) are
    # stored once: one each for the MX, apex TXT, DMARC and two DKIM lookups
    assert len(data["answers"]) == 5
    # every finding is in findings.json, whole
    assert len(json.loads((large.parent / "findings.json").read_text(encoding="utf-8"))) == 34 * 1100


def test_a_domains_passes_and_grouped_findings_show_when_asked(tmp_path: Path, watched: Watched) -> None:
    report = _report(tmp_path, 300)
    page = watched.page
    page.goto(report.as_uri())
    expect(page.locator("#findings-count")).to_contain_text(f"of {300 * 4} matching findings")
    page.select_option("#f-domain", "d00123.test")
    page.select_option("#f-status", "pass")
    expect(page.locator("#findings-count")).to_contain_text("of 30 matching rows (30 passes counted")
    checks = page.locator("#findings-body tr.finding td:nth-child(3) code").all_inner_texts()
    assert sorted(checks) == PASSING
    assert set(page.locator("#findings-body tr.finding td:nth-child(6)").all_inner_texts()) == {"1 subject passes"}

    page.click("#f-reset")
    page.fill("#f-search", "d00222.test")
    page.select_option("#f-status", "unsupported")
    expect(page.locator("#findings-count")).to_contain_text("of 3 matching findings")
    page.click("#findings-body tr.finding >> nth=0")
    assert REASON in page.inner_text("#findings-body tr.detail")
    # a failure grouped with the others of its check names its own domain in its evidence
    page.select_option("#f-status", "fail")
    expect(page.locator("#findings-count")).to_contain_text("of 1 matching findings")
    page.click("#findings-body tr.finding >> nth=0")
    assert "_mta-sts.d00222.test" in page.inner_text("#findings-body tr.detail")

    page.goto(report.as_uri() + "#domain=d00042.test")
    expect(page.locator("#domain-view-title")).to_have_text("d00042.test")
    records = page.inner_text("#domain-records")
    assert "_dmarc.d00042.test" in records and "rua=mailto:dmarc@d00042.test" in records
    assert "s1._domainkey.d00042.test" in records
    page.fill("#d-search", "d00042.test")
    row = page.locator("#domain-index-body tr").first.locator("td").all_inner_texts()
    assert row[0] == "d00042.test" and row[1] == "acme" and "30" in row and "3" in row
    assert watched.problems == [] and watched.requests == []

"""report.html's Exceptions section: rendered from the run's snapshot, escaped, with what each exception covers."""

from __future__ import annotations

import tracemalloc
from datetime import UTC, date, datetime
from dataclasses import replace
from pathlib import Path

from checks.evaluate import fingerprint
from scanner.model import Finding, Inventory, PolicyException, Severity, Status
from reports.html import PageData, table_rows
from scanner.pipeline import render_outputs, snapshot_items, write_outputs
from scanner.store.database import PassCount, Store

NOW = datetime(2026, 11, 25, 6, tzinfo=UTC)


def _report(tmp_path: Path, exceptions: tuple[PolicyException, ...], findings: list[Finding]) -> str:
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    store.start_run("r1", NOW, "d" * 64, "test")
    store.save_snapshot("r1", snapshot_items(Inventory(exceptions=exceptions)))
    store.record_findings("r1", findings, NOW, ["acme"])
    store.finish_run("r1", NOW, "complete", {"tenants": {}})
    write_outputs(store, "r1", tmp_path / "out")
    store.close()
    html = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    return html[html.index('<table id="exceptions"'):html.index("<h2>Findings</h2>")]


def _finding(check: str, subject: str, status: Status, item: str = "") -> Finding:
    return Finding(id=fingerprint(check, "acme", subject, item), check=check, status=status, severity=Severity.HIGH,
                   tenant="acme", domain="acme.example", subject=subject, title=check, item=item)


def test_exceptions_show_what_they_cover_and_escape_their_text(tmp_path: Path) -> None:
    exceptions = (
        PolicyException("forwarding.external", "ceo@acme.example", "<script>alert(1)</script>", "it@acme.example",
                        date(2027, 1, 31)),
        PolicyException("forwarding.external", "cfo@acme.example", "old", "it@acme.example", date(2026, 1, 31)),
    )
    section = _report(tmp_path, exceptions, [
        _finding("forwarding.external", "ceo@acme.example", Status.EXCEPTED),
        _finding("forwarding.external", "cfo@acme.example", Status.FAIL),
    ])
    assert "<script>" not in section and "&lt;script&gt;alert(1)&lt;/script&gt;" in section
    assert '<div class="excepted">excepted: ceo@acme.example</div>' in section
    assert 'data-subject="ceo@acme.example" data-expired="no"' in section
    # no exception.expired finding in this run: the expiry date is compared with the run's start
    assert 'data-subject="cfo@acme.example" data-expired="yes"' in section
    assert '<span class="fail">expired 2026-01-31</span>' in section


def test_expiry_follows_the_runs_exception_expired_finding(tmp_path: Path) -> None:
    exception = PolicyException("catchall.enabled", "acme.example", "intake", "it@acme.example", date(2026, 12, 1))
    section = _report(tmp_path, (exception,), [
        _finding("exception.expired", "acme", Status.FAIL, item="catchall.enabled/acme.example"),
    ])
    assert 'data-expired="yes"' in section  # judged as of the run's evaluation date, not the render date
    assert "no finding" in section


def test_no_exceptions_renders_an_empty_section(tmp_path: Path) -> None:
    section = _report(tmp_path, (), [])
    assert "<tr data-check=" not in section


HOSTILE = '</script><script>alert("x")</script><!--<script>'


def _hostile_store(tmp_path: Path) -> Path:
    """A stored run whose evidence, subject, display name and DNS records carry script-closing text."""
    from scanner.model import DnsAnswer, DnsFacts, Domain, Mailbox, Outcome, Remediation

    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    store.start_run("r1", NOW, "d" * 64, "test")
    inventory = Inventory(
        domains=(Domain("acme.example", "acme", dns=DnsFacts({"txt": DnsAnswer(
            "acme.example", "TXT", Outcome.ANSWER, (HOSTILE,))})),),
        mailboxes=(Mailbox("acme", "ann@acme.example", display_name=HOSTILE),),
    )
    store.save_snapshot("r1", snapshot_items(inventory))
    findings = [
        Finding(id=fingerprint("dmarc.missing", "acme", "acme.example"), check="dmarc.missing", status=Status.FAIL,
                severity=Severity.HIGH, tenant="acme", domain="acme.example", subject="acme.example",
                title="Domain publishes no DMARC record",
                evidence={"records_seen": [HOSTILE], "publish": f'_dmarc.acme.example. TXT "{HOSTILE}"'}),
        Finding(id=fingerprint("forwarding.external", "acme", "ann@acme.example"), check="forwarding.external",
                status=Status.FAIL, severity=Severity.HIGH, tenant="acme", domain="acme.example",
                subject="ann@acme.example", title="Mailbox forwards mail outside the tenant",
                evidence={"targets": [HOSTILE]}, reason=HOSTILE,
                remediation=Remediation("forwarding.disable", {"subject": "ann@acme.example"})),
    ]
    store.record_findings("r1", findings, NOW, ["acme"])
    store.finish_run("r1", NOW, "complete", {"tenants": {"acme": {
        "state": "complete", "problems": [HOSTILE], "mailboxes": 1, "domains": 1,
        "gaps": [{"fact": "mailbox.owners", "state": "unsupported", "reason": HOSTILE, "subject": ""}]}}})
    write_outputs(store, "r1", tmp_path / "out")
    store.close()
    return tmp_path / "out" / "report.html"


def test_script_closing_text_never_leaves_the_data_block(tmp_path: Path) -> None:
    import json

    html = _hostile_store(tmp_path).read_text(encoding="utf-8")
    assert HOSTILE not in html
    assert html.count("</script>") == 3 and html.count("<script") == 3  # the first page's rows, the script, the data
    assert "<!--" not in html
    start = html.index('<script type="application/json" id="report-data">') + len(
        '<script type="application/json" id="report-data">')
    data = json.loads(html[start:html.index("</script>", start)])
    by_check = {data["checks"][row[1]][0]: row for row in data["findings"]}
    assert by_check["dmarc.missing"][9]["records_seen"] == [HOSTILE]  # exact once parsed back
    assert by_check["forwarding.external"][8] == HOSTILE
    assert data["names"]["ann@acme.example"] == HOSTILE
    assert data["answers"][data["dns"]["acme.example"][3][0]][4] == [HOSTILE]  # names no domain: kept whole
    start = html.index('id="report-first">') + len('id="report-first">')
    first = json.loads(html[start:html.index("</script>", start)])
    rows = table_rows(data)
    assert first["findings"] == [rows[i] for i in first["first"]] and first["names"] == data["names"]
    # the server-rendered parts (problems, coverage) are HTML-escaped
    assert "&lt;/script&gt;&lt;script&gt;alert(&#34;x&#34;)" in html


def test_action_change_is_embedded_with_the_finding(tmp_path: Path) -> None:
    import json

    html = _hostile_store(tmp_path).read_text(encoding="utf-8")
    start = html.index('id="report-data">') + len('id="report-data">')
    data = json.loads(html[start:html.index("</script>", start)])
    change = next(row[10] for row in data["findings"] if row[10] and row[10][0] != "dns.publish")
    assert change[0] == "forwarding.disable" and HOSTILE in change[1]
    assert '<template id="remediation-link">' in html


def test_trend_and_resolved_span_runs(tmp_path: Path) -> None:
    from datetime import timedelta

    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    failing = _finding("forwarding.external", "ann@acme.example", Status.FAIL)
    for index, status in enumerate((Status.FAIL, Status.FAIL, Status.PASS)):
        run_id, when = f"r{index}", NOW + timedelta(days=7 * index)
        store.start_run(run_id, when, "d" * 64, "test")
        store.record_findings(run_id, [replace(failing, status=status)], when, ["acme"])
        store.finish_run(run_id, when, "complete", {"tenants": {}})
    write_outputs(store, "r2", tmp_path / "out")
    store.close()
    html = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    # open failures and errors per run, each point labelled with its run's number and time
    assert html.count('<circle class="dot-failing"') == 3 and html.count('<circle class="dot-error"') == 3
    assert "run 1 · 11-25 06:00: 1 failing" in html and "run 3 · 12-09 06:00: 0 failing" in html
    table = html[html.index('<table id="trend-table"'):]
    table = table[:table.index("</table>")]
    assert '<td data-label="run">run 3 · 12-09 06:00</td><td data-label="open failures">0</td>' in table
    assert '<td data-label="resolved">1</td>' in table
    resolved = html[html.index('<ul id="resolved-list"'):]
    assert "ann@acme.example" in resolved[:resolved.index("</ul>")]


def test_two_runs_on_one_day_get_different_labels(tmp_path: Path) -> None:
    from datetime import timedelta

    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    failing = _finding("forwarding.external", "ann@acme.example", Status.FAIL)
    for index in range(2):
        run_id, when = f"r{index}", NOW + timedelta(hours=3 * index)
        store.start_run(run_id, when, "d" * 64, "test")
        store.record_findings(run_id, [failing], when, ["acme"])
        store.finish_run(run_id, when, "complete", {"tenants": {}})
    write_outputs(store, "r1", tmp_path / "out")
    store.close()
    html = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    assert ">run 1 · 11-25 06:00<" in html and ">run 2 · 11-25 09:00<" in html


def test_a_first_run_calls_nothing_new(tmp_path: Path) -> None:
    import json

    section = _report(tmp_path, (), [_finding("forwarding.external", "ann@acme.example", Status.FAIL)])
    html = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    assert 'id="new-list"' not in html and 'id="resolved-list"' not in html
    assert "the first run in this store" in html and '<option value="new">' not in html
    start = html.index('id="report-data">') + len('id="report-data">')
    assert json.loads(html[start:html.index("</script>", start)])["history"] is False
    assert section


def test_coverage_tables_name_each_tenants_provider(tmp_path) -> None:
    """The coverage tables say which provider each gap and undecided check belongs to."""
    import json
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    out = tmp_path / "out"
    script = shutil.which("mailwarden") or str(Path(sys.executable).parent / "mailwarden")
    subprocess.run([script, "demo", "--out", str(out)], check=True, capture_output=True, timeout=120)
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert {t["provider"] for t in manifest["scope"]["tenants"].values()} == {"files"}
    html = (out / "report.html").read_text(encoding="utf-8")
    gaps = html.split('<table id="coverage-gaps"', 1)[1].split("</table>", 1)[0]
    assert "<th>provider</th>" in gaps
    # one row per cause of undecided checks, naming the tenant, its provider, the reason and every check held up
    row = next(r for r in gaps.split("<tr>") if "the MTA-STS policy of northwind-freight.example is not usable" in r)
    assert '<td data-label="tenant">northwind-logistics</td><td data-label="provider">files</td>' in row
    assert "<code>mta_sts.mx_mismatch</code> (1)" in row and "<code>dns.mta_sts, dns.mx</code>" in row


def _report_peak(tmp_path: Path, mailboxes: int, *, named: bool = False) -> int:
    """tracemalloc's peak while report.html is rendered for a stored run whose mailboxes each fail one check and
    leave another undecided (what a provider export without forwarding data gives: two findings per mailbox).
    ``named``: the run's snapshot holds the mailboxes, each with a display name the page shows."""
    from scanner.model import Mailbox

    store = Store(f"sqlite:///{tmp_path / f'{mailboxes}.db'}")
    store.start_run("r1", NOW, "d" * 64, "test")
    if named:
        store.save_snapshot("r1", snapshot_items(Inventory(mailboxes=tuple(
            Mailbox("acme", f"person{n:06d}@acme.example", display_name=f"Person {n:06d}")
            for n in range(mailboxes)))))
    findings = []
    for n in range(mailboxes):
        subject = f"person{n:06d}@acme.example"
        findings.append(Finding(
            id=fingerprint("account.inactive", "acme", subject), check="account.inactive", status=Status.FAIL,
            severity=Severity.MEDIUM, tenant="acme", domain="acme.example", subject=subject, title="Inactive account",
            evidence={"last_login": f"2026-0{1 + n % 9}-01", "inactive_days": 90 + n % 300}))
        findings.append(Finding(
            id=fingerprint("forwarding.external", "acme", subject), check="forwarding.external",
            status=Status.UNSUPPORTED, severity=Severity.HIGH, tenant="acme", domain="acme.example", subject=subject,
            title="Mailbox forwards mail outside the tenant", reason="the export has no forwarding rules"))
    store.record_findings("r1", findings, NOW, ["acme"])
    store.finish_run("r1", NOW, "complete", {"tenants": {}})
    del findings
    tracemalloc.start()
    try:
        render_outputs(store, "r1", tmp_path / f"out{mailboxes}", formats=("html",))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        store.close()
    return peak


def test_report_memory_grows_by_what_the_page_embeds_not_by_the_findings(tmp_path: Path) -> None:
    # The page embeds every finding that is not a pass (its id, subject, evidence), so its data grows with
    # them; the findings themselves stream from a cursor and are let go (holding them costs about a kilobyte
    # each: their times, remediation and the object around them).
    small, large = _report_peak(tmp_path, 1_000), _report_peak(tmp_path, 10_000)
    per_finding = (large - small) / (2 * 9_000)
    assert per_finding < 700, f"{per_finding:.0f} bytes of peak per finding"  # 880 when the report held its findings


def test_report_memory_per_named_mailbox_holds_each_name_once(tmp_path: Path) -> None:
    # Each mailbox's display name is on the page, keyed by the subject string its rows hold already; the snapshot is
    # read as (address, name) pairs, not gathered into a mapping that the page's own is then copied from.
    small, large = _report_peak(tmp_path, 1_000, named=True), _report_peak(tmp_path, 10_000, named=True)
    per_mailbox = (large - small) / 9_000
    assert per_mailbox < 1_150, f"{per_mailbox:.0f} bytes of peak per named mailbox"


def test_domains_first_named_by_passes_are_numbered_in_order_across_a_checks_severities() -> None:
    counted = [  # as the store gives them: by check, tenant and severity, each one's domains in code point order
        PassCount("dmarc.policy", "t", "acme", Severity.HIGH, 3, {"b.test": 1, "d.test": 2}),
        PassCount("dmarc.policy", "t", "acme", Severity.LOW, 2, {"a.test": 1, "c.test": 1}),
        PassCount("spf.present", "s", "acme", Severity.HIGH, 1, {"e.test": 1}),
    ]
    data = PageData({}).data({}, {}, counted)
    assert data["domains"] == ["a.test", "b.test", "c.test", "d.test", "e.test"]
    passes = {(data["checks"][check][0], data["severities"][severity]): (gaps, n)
              for check, _, severity, gaps, n in data["passes"]}
    # each domain number as the gap from the one before (from -1), then the counts (one number when all equal)
    assert passes == {("dmarc.policy", "high"): ([2, 2], [1, 2]), ("dmarc.policy", "low"): ([1, 2], 1),
                      ("spf.present", "high"): ([5], 1)}

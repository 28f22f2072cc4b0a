"""Root causes, the posture score and one record per DNS name: what the report, email and console put first."""

from __future__ import annotations

import hashlib
import json
import random
import tracemalloc
from collections.abc import Collection, Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path

from checks.evaluate import fingerprint
from reports.html import render_html
from reports.rootcause import CauseIndex, RootCause, finding_counts, postures, root_causes
from scanner.model import Finding, Remediation, Severity, Status
from scanner.store.database import RunRecord

NOW = datetime(2026, 11, 25, 6, tzinfo=UTC)
RUN = RunRecord("r1", NOW, NOW, "complete", {"tenants": {"acme": {"state": "complete", "provider": "files",
                                                                      "domains": 1, "mailboxes": 1, "gaps": [],
                                                                      "problems": []}}}, "d" * 64, "test")


def _f(check: str, subject: str, status: Status = Status.FAIL, severity: Severity = Severity.HIGH, item: str = "",
       caused_by: str = "", **evidence: object) -> Finding:
    return Finding(id=fingerprint(check, "acme", subject, item), check=check, status=status, severity=severity,
                   tenant="acme", domain=subject.rpartition("@")[2] or subject, subject=subject,
                   title=f"{check} title", item=item, evidence=dict(evidence), caused_by=caused_by)


def _missing_with_dependants() -> list[Finding]:
    root = _f("dmarc.missing", "acme.example", publish='_dmarc.acme.example. TXT "v=DMARC1; p=quarantine"')
    return [
        root,
        _f("dmarc.policy_weak", "acme.example", Status.SKIPPED, Severity.MEDIUM, caused_by=root.id),
        _f("dmarc.no_rua", "acme.example", Status.SKIPPED, Severity.LOW, caused_by=root.id),
        _f("forwarding.external", "ann@acme.example", targets=["x@elsewhere.test"]),
        _f("mx.missing", "acme.example", severity=Severity.LOW, publish="acme.example. MX 10 mx.acme.example."),
        _f("spf.missing", "acme.example", Status.PASS),
    ]


def test_dependants_sit_under_their_cause_and_widen_its_reach() -> None:
    causes = root_causes(_missing_with_dependants())
    assert [c.first.check for c in causes] == ["dmarc.missing", "forwarding.external", "mx.missing"]
    top = causes[0]
    assert [d.check for d in top.dependants] == ["dmarc.policy_weak", "dmarc.no_rua"] and top.reach == 3
    assert top.publish == ['_dmarc.acme.example. TXT "v=DMARC1; p=quarantine"']


def test_items_of_one_check_and_subject_are_one_cause() -> None:
    findings = [_f("alignment.sender_unaligned", "lexdocs.example", item=s) for s in ("lexdocs", "zendesk")]
    causes = root_causes(findings)
    assert len(causes) == 1 and causes[0].reach == 2 and [f.item for f in causes[0].findings] == ["lexdocs", "zendesk"]


def test_the_score_is_points_of_passing_checks_over_points_decided() -> None:
    findings = [
        _f("dmarc.missing", "a.example", Status.PASS, Severity.HIGH),  # 5 earned of 5
        _f("spf.missing", "a.example", Status.FAIL, Severity.HIGH),  # 0 of 5
        _f("mx.missing", "a.example", Status.ERROR, Severity.LOW),  # 0 of 1: unknown is never a pass
        _f("mta_sts.missing", "a.example", Status.UNSUPPORTED, Severity.MEDIUM),  # left out
        _f("dmarc.no_rua", "a.example", Status.SKIPPED, Severity.MEDIUM, caused_by="x"),  # left out
    ]
    (posture,) = postures(finding_counts(findings))
    assert (posture.earned, posture.possible, posture.score) == (5, 11, 45)
    assert (posture.failing, posture.errors, posture.unsupported, posture.skipped) == (1, 1, 1, 1)
    assert posture.change is None
    previous = finding_counts([_f("spf.missing", "a.example", Status.PASS, Severity.HIGH)])
    (again,) = postures(finding_counts(findings), previous)
    assert again.previous == 100 and again.change == -55


def test_two_dmarc_records_for_one_name_become_one_with_the_reason() -> None:
    weak = _f("dmarc.policy_weak", "acme.example", severity=Severity.MEDIUM,
              publish='_dmarc.acme.example. TXT "v=DMARC1; p=quarantine; rua=mailto:d@acme.example"')
    drift = _f("drift.dns_weakened", "acme.example", item="dmarc",
               publish='_dmarc.acme.example. TXT "v=DMARC1; p=reject; rua=mailto:d@acme.example"')
    causes = {c.first.check: c for c in root_causes([weak, drift])}
    chosen, other = causes["drift.dns_weakened"], causes["dmarc.policy_weak"]
    assert chosen.publish == ['_dmarc.acme.example. TXT "v=DMARC1; p=reject; rua=mailto:d@acme.example"']
    assert "stronger policy" in chosen.note and "dmarc.policy_weak" in chosen.note
    assert other.publish == [] and other.superseded_by == chosen.key and "drift.dns_weakened" in other.note

    # at equal strength the drift restore wins: it keeps what the domain had
    same = _f("drift.dns_weakened", "acme.example", item="dmarc",
              publish='_dmarc.acme.example. TXT "v=DMARC1; p=quarantine; rua=mailto:old@acme.example"')
    causes = {c.first.check: c for c in root_causes([weak, same])}
    assert causes["drift.dns_weakened"].publish and causes["dmarc.policy_weak"].superseded_by
    assert "restores the record the domain had" in causes["drift.dns_weakened"].note


def test_the_report_shows_dependants_under_their_cause_and_no_raw_json(tmp_path: Path) -> None:
    findings = _missing_with_dependants()
    findings[3] = Finding(**{**{k: getattr(findings[3], k) for k in findings[3].__slots__},
                             "remediation": Remediation("forwarding.disable", {})})
    page = render_html(RUN, findings, {}, tmp_path / "report.html").read_text(encoding="utf-8")
    fix = page[page.index('<ol id="fix-list"'):page.index("</ol>")]
    first = fix[:fix.index("</li>\n", fix.index("</details>"))]
    assert "dmarc.missing" in first and "2 findings follow from this and clear with it" in first
    assert "<code>dmarc.policy_weak</code>" in first and "<code>dmarc.no_rua</code>" in first
    assert fix.index("dmarc.missing") < fix.index("forwarding.external") < fix.index("mx.missing")
    assert "Turn off the forwards of ann@acme.example to outside addresses (x@elsewhere.test)." in fix
    assert "mailwarden remediate --check forwarding.external --tenant acme" in fix
    # the first run in a store: no new/resolved lists, no "new" filter
    assert 'id="new-list"' not in page and "null" not in page[:page.index('<script type="application/json"')]
    start = page.index('id="report-data">') + 17
    data = json.loads(page[start:page.index("</script>", start)])
    # the pass, as a count per check and domain: the domain numbers are gaps from the one before (from -1)
    passed = next(f for f in findings if f.status is Status.PASS)
    assert [[data["checks"][c][0], data["domains"][gaps[0] - 1], n] for c, _, _, gaps, n in data["passes"]] == [
        [passed.check, passed.domain, 1]]
    skipped = [row for row in data["findings"] if row[15]]
    assert {row[15] for row in skipped} == {findings[0].id}


def test_one_key_per_dkim_selector_and_the_other_records_of_a_cause_stay() -> None:
    aligned = [
        _f("alignment.sender_unaligned", "acme.example", item="lexdocs",
           publish='lexdocs1._domainkey.acme.example. TXT "v=DKIM1; k=rsa; p=<key from LexDocs>"'),
        _f("alignment.sender_unaligned", "acme.example", item="trekmail",
           publish='trek1._domainkey.acme.example. TXT "v=DKIM1; k=rsa; p=MIIB"'),
    ]
    missing = _f("dkim.missing", "acme.example", item="lexdocs1",
                 publish='lexdocs1._domainkey.acme.example. TXT "v=DKIM1; k=rsa; p=<a new 2048-bit key>"')
    causes = {c.first.check: c for c in root_causes([*aligned, missing])}
    alignment, dkim = causes["alignment.sender_unaligned"], causes["dkim.missing"]
    assert dkim.publish == ['lexdocs1._domainkey.acme.example. TXT "v=DKIM1; k=rsa; p=<a new 2048-bit key>"']
    assert "a selector publishes one key" in dkim.note
    # the alignment cause keeps its other record and says where the lexdocs1 key comes from
    assert alignment.publish == ['trek1._domainkey.acme.example. TXT "v=DKIM1; k=rsa; p=MIIB"']
    assert not alignment.superseded_by and "dkim.missing" in alignment.note


def _varied_estate() -> list[Finding]:
    """Some 300 causes of every shape, in no particular order: items of one cause, dependants before and after their
    cause (some naming its second item), DMARC and DKIM proposals that conflict, actions, errors and passes."""
    rng = random.Random(17)
    severities = list(Severity)
    found: list[Finding] = []
    for n in range(120):
        domain = f"d{n % 40:02}.example"
        policy = rng.choice(["none", "quarantine", "reject"])
        check = rng.choice(["dmarc.policy_weak", "drift.dns_weakened", "dmarc.missing"])
        item = "dmarc" if check.startswith("drift") else ""
        found.append(_f(check, domain, severity=rng.choice(severities), item=item,
                        publish=f'_dmarc.{domain}. TXT "v=DMARC1; p={policy}; rua=mailto:r{n % 3}@{domain}"'))
        if n % 4 == 0:
            found.append(_f(rng.choice(["dkim.missing", "alignment.sender_unaligned"]), domain, item=f"s{n % 3}",
                            severity=rng.choice(severities),
                            publish=[f's{n % 3}._domainkey.{domain}. TXT "v=DKIM1; k=rsa; p=K{n}"',
                                     f'{domain}. TXT "v=spf1 include:s{n}.example -all"']))
    for n in range(200):
        check = rng.choice(["forwarding.external", "account.inactive", "delegate.stale"])
        f = _f(check, f"user{n % 60:03}@d{n % 7}.example",
               severity=rng.choice(severities), item=rng.choice(["", "a", "b"]), targets=[f"x{n}@elsewhere.test"])
        remediation = Remediation("forwarding.disable", {}) if n % 3 else None
        found.append(Finding(**{**{k: getattr(f, k) for k in f.__slots__}, "remediation": remediation}))
    found = list({f.id: f for f in found}.values())  # a run holds one finding per id
    roots = [f for f in found if f.status is Status.FAIL]
    for n in range(150):
        cause = rng.choice(roots)
        found.append(_f(f"dependant.c{n % 9}", cause.subject, rng.choice([Status.SKIPPED, Status.FAIL]),
                        rng.choice(severities), item=f"i{n}", caused_by=cause.id))
    found.append(_f("dependant.orphan", "lost.example", Status.SKIPPED, caused_by="no-such-finding"))
    found += [_f("mx.missing", f"e{n}.example", rng.choice([Status.ERROR, Status.PASS, Status.EXCEPTED]))
              for n in range(30)]
    rng.shuffle(found)
    return found


def _shown(causes: list) -> list[tuple[object, ...]]:
    return [(c.key, c.severity.value, c.reach, [f.id for f in c.findings], [d.id for d in c.dependants], c.publish,
             c.note, c.superseded_by, c.change.summary if c.change else None) for c in causes]


def test_the_causes_and_their_order_stay_as_they_were_on_a_varied_estate(tmp_path: Path) -> None:
    """Pinned on the ranking that held every failing finding (before causes were ranked from compact figures)."""
    findings = _varied_estate()
    causes = root_causes(findings)
    assert len(causes) == 302 and sum(len(c.dependants) for c in causes) == 150
    assert [(c.first.check, c.first.subject, c.reach) for c in causes[:3]] == [
        ("alignment.sender_unaligned", "d00.example", 5), ("dmarc.policy_weak", "d22.example", 4),
        ("account.inactive", "user043@d1.example", 4)]
    digest = hashlib.sha256(json.dumps(_shown(causes)).encode()).hexdigest()
    assert digest == "ad6207c197ab2e3ce3f9c6248e300c230a46627bc35f98cebedc12cf462a0512"
    page = render_html(RUN, findings, {}, tmp_path / "report.html").read_text(encoding="utf-8")
    start = page.index('<section id="fix-first"')
    fix = page[start:page.index("</section>", start)]
    assert fix.count('<li class="cause ') == 100
    assert hashlib.sha256(fix.encode()).hexdigest() == "58ee138dd3847ad93b0be06fd0a4a0d488303d0909b0375a4a6f9ebec4be4eae"


def _failing(n: int) -> Iterator[Finding]:
    """``n`` failing findings, each its own cause, made as they are read (none is held here)."""
    for i in range(n):
        yield _f("forwarding.external", f"user{i:06}@d{i % 500}.example", severity=list(Severity)[i % 5],
                 targets=[f"copy{i}@elsewhere.test", f"archive{i}@elsewhere.test"], rule=f"rule {i} " * 8)


def _named(ids: Collection[str], findings: Iterable[Finding]) -> list[Finding]:
    wanted = set(ids)
    return [f for f in findings if f.id in wanted]


def _held_by_causes(n: int) -> tuple[int, list[RootCause]]:
    """Bytes the root causes of ``n`` failing findings hold once read, and the hundred shown."""
    tracemalloc.start()
    try:
        index = CauseIndex()
        for f in _failing(n):
            index.add(f)
        held = tracemalloc.get_traced_memory()[0]
        shown = index.causes(lambda ids: _named(ids, _failing(n)), limit=100)
    finally:
        tracemalloc.stop()
    return held, shown


def test_root_causes_hold_compact_figures_not_the_failing_findings() -> None:
    """The causes not shown cost a few hundred bytes each, far less than their findings; the shown are whole."""
    small, shown_small = _held_by_causes(2_000)
    large, shown = _held_by_causes(20_000)
    per_cause = (large - small) / 18_000
    tracemalloc.start()
    try:
        findings = list(_failing(2_000))
        per_finding = tracemalloc.get_traced_memory()[0] / 2_000
    finally:
        tracemalloc.stop()
    assert per_cause < 400 and per_finding > 3 * per_cause, (per_cause, per_finding)
    assert len(shown) == len(shown_small) == 100
    assert [c.first.subject for c in shown[:2]] == ["user000004@d4.example", "user000009@d9.example"]
    assert all(c.severity is Severity.CRITICAL and c.first.evidence["targets"] for c in shown)
    assert [c.first.id for c in root_causes(findings)[:100]] == [c.key for c in shown_small]

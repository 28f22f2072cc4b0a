"""delegate.external: through the evaluate stage and from export files."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

from checks.delegate import external_delegate
from checks.evaluate import evaluate
from checks.registry import Policy
from scanner.adapters.files import FilesAdapter
from scanner.model import (
    Coverage, Fact, FactState, Finding, Inventory, Mailbox, MailboxKind, PolicyException, Status, Tenant,
)

NOW = datetime(2026, 11, 25, 9, tzinfo=UTC)
TENANT = Tenant("acme", "files", ("acme.example", "acme-mail.example"))
COLLECTED = (Coverage("acme", Fact.MAILBOX_DELEGATES, FactState.COLLECTED),)


def _run(*mailboxes: Mailbox, coverage=COLLECTED, exceptions=()) -> list[Finding]:
    inventory = Inventory((TENANT,), (), mailboxes, {}, tuple(exceptions), tuple(coverage))
    return evaluate(inventory, [external_delegate], policy=Policy(), senders={}, now=NOW)


def _mailbox(address: str, *delegates: str) -> Mailbox:
    return Mailbox("acme", address, delegates=delegates)


def test_each_outside_delegate_fails_as_its_own_item() -> None:
    findings = _run(_mailbox("ceo@acme.example", "pa@acme.example", "va@partners.test", "x@agency.test"))
    assert [(f.status, f.item) for f in findings] == [
        (Status.FAIL, "va@partners.test"), (Status.FAIL, "x@agency.test"),
    ]
    by_item = {f.item: f for f in findings}
    assert by_item["va@partners.test"].evidence == {"delegate": "va@partners.test", "domain": "partners.test",
                                                    "delegates": 3}
    remediation = by_item["x@agency.test"].remediation
    assert remediation is not None and remediation.action == "delegate.remove"
    assert remediation.params == {"subject": "ceo@acme.example", "item": "x@agency.test"}
    assert len({f.id for f in findings}) == 2  # one fingerprint per delegate


def test_inside_delegates_or_none_pass() -> None:
    findings = _run(_mailbox("ceo@acme.example", "pa@acme.example", "ops@sub.acme-mail.example"),
                    _mailbox("ann@acme.example"))
    assert [f.status for f in findings] == [Status.PASS, Status.PASS]
    assert findings[0].item == "" and findings[0].evidence == {"delegates": 2}


def test_valid_exception_excepts_every_delegate_and_expired_one_fails() -> None:
    findings = _run(
        _mailbox("ceo@acme.example", "va@partners.test"),
        _mailbox("cfo@acme.example", "book@ledger.test"),
        exceptions=[
            PolicyException("delegate.external", "ceo@acme.example", "exec assistant", "it@acme.example",
                            date(2027, 6, 30)),
            PolicyException("delegate.external", "cfo@acme.example", "year end", "it@acme.example", date(2026, 2, 1)),
        ],
    )
    by_subject = {f.subject: f for f in findings}
    assert by_subject["ceo@acme.example"].status is Status.EXCEPTED
    assert by_subject["cfo@acme.example"].status is Status.FAIL
    assert "expired 2026-02-01" in by_subject["cfo@acme.example"].evidence["expired_exception"]


def test_unsupported_when_provider_does_not_report_delegates() -> None:
    coverage = (Coverage("acme", Fact.MAILBOX_DELEGATES, FactState.UNSUPPORTED, "no 'delegates' column"),)
    [finding] = _run(_mailbox("ceo@acme.example", "va@partners.test"), coverage=coverage)
    assert finding.status is Status.UNSUPPORTED and "delegates" in finding.reason


def test_from_export_files(tmp_path: Path) -> None:
    (tmp_path / "mailboxes.csv").write_text(
        "address,kind,status,delegates\n"
        "ceo@acme.example,user,active,pa@acme.example;VA@Partners.test\n"
        "ann@acme.example,user,active,\n",
        encoding="utf-8",
    )
    collected = FilesAdapter(tmp_path).read(TENANT)
    findings = _run(*collected.mailboxes, coverage=collected.coverage)
    assert {(f.subject, f.status, f.item) for f in findings} == {
        ("ceo@acme.example", Status.FAIL, "va@partners.test"),
        ("ann@acme.example", Status.PASS, ""),
    }


def test_an_alias_is_judged_on_who_may_send_as_it() -> None:
    findings = _run(Mailbox("acme", "sales@acme.example", MailboxKind.ALIAS, delegates=("ann@acme.example",)),
                    Mailbox("acme", "team@acme.example", MailboxKind.ALIAS, delegates=("va@partners.test",)))
    verdicts = {(f.subject, f.item): f.status for f in findings}
    assert verdicts == {("sales@acme.example", ""): Status.PASS,
                        ("team@acme.example", "va@partners.test"): Status.FAIL}


def test_a_delegate_at_a_domain_the_provider_reports_as_the_tenants_is_inside() -> None:
    tenant = Tenant("acme", "google", ("acme.example",), provider_domains=("acme-alias.example",))
    inventory = Inventory((tenant,), (), (_mailbox("ceo@acme.example", "pa@acme-alias.example", "x@agency.test"),),
                          {}, (), COLLECTED)
    findings = evaluate(inventory, [external_delegate], policy=Policy(), senders={}, now=NOW)
    assert [(f.status, f.item) for f in findings] == [(Status.FAIL, "x@agency.test")]
    tenant_gap = Tenant("acme", "google", ("acme.example",), provider_domains_gap="domains.list answered 403")
    inventory = Inventory((tenant_gap,), (), (_mailbox("ceo@acme.example", "pa@acme-alias.example"),), {}, (),
                          COLLECTED)
    (finding,) = evaluate(inventory, [external_delegate], policy=Policy(), senders={}, now=NOW)
    assert finding.status is Status.FAIL and "could not be read" in str(finding.evidence["internal_domains"])

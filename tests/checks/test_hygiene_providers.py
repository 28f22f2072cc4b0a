"""The hygiene checks judged over real inventories: the files adapter and each provider's contract server.

For every source, the contract estate (tests/contract/estate.py, plus the three mailboxes of
``hygiene_estate``) is published (export files, or a contract server on loopback) and collected
through ``scanner.collect.collect`` three times, with a config that differs only in its
``[[exceptions]]``: none (PLAIN), a valid exception for each check's failing subject (VALID), an
expired one (EXPIRED). ``checks.evaluate.evaluate`` then judges each inventory at ``estate.NOW``.

On each source every hygiene check is exactly one of:

- judged: FAILING's subject fails, PASSING's passes, a valid exception makes the failure
  ``excepted``, an expired one makes it ``fail`` again and exception.expired fails for it;
- unsupported (UNSUPPORTED): the adapter does not declare a fact the check requires, so every
  subject is ``unsupported`` in every run, with a reason naming the fact and the provider's
  explanation; never ``pass``. The set is derived from the adapter's ``capabilities`` and must equal
  the table below;
- cannot fail (CANNOT_FAIL): the adapter collects the fact, but the provider cannot represent the
  failing condition at all; every subject passes, and the would-be failing subject shows why.
"""

from __future__ import annotations

import asyncio
import csv
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from checks.evaluate import evaluate
from checks.registry import Check, load_checks
from scanner.collect import PROVIDER_FACTS, adapter_for, collect
from scanner.config import Config, load_config
from scanner.model import Coverage, Fact, FactState, Finding, Inventory, MailboxKind, MailboxStatus, Status
from scanner.pipeline import policy_of, senders_of
from scanner.loopback.zoneserver import ZoneServer
from tests.conftest import top_level_zone
from tests.contract import google, mailcow, microsoft
from tests.contract.estate import NOW, Estate, EstateMailbox, standard_estate
from tests.contract.harness import Harness
from tests.contract.server import ContractServer

TENANT = "acme"
SOURCES = ("files", "google", "microsoft", "mailcow")
HARNESSES: dict[str, Harness] = {"google": google.HARNESS, "microsoft": microsoft.HARNESS, "mailcow": mailcow.HARNESS}

VALID_UNTIL = date(2027, 6, 30)
EXPIRED_ON = date(2026, 10, 31)  # before NOW (2026-11-25)

INVITE_EXPIRES = {
    "late.joiner@acme.example": NOW - timedelta(days=10),
    "starter@acme.example": NOW + timedelta(days=11),
}
"""Invite expiries; only export files carry one (Cloud Identity and Graph show none, mailcow has no invites)."""

ROSTER = {f"user{i}@acme.example": None for i in range(7)} | {
    "user2@acme.example": date(2026, 10, 1),  # left: account.ghost
    "ana@acme.example": None, "ben@acme.example": None, "old@acme.example": None,
    "new.hire@acme.example": None, "late.joiner@acme.example": None, "starter@acme.example": None,
}
"""people.csv: never@ is on no roster (mailbox.no_owner), user2 left (account.ghost)."""

FAILING = {
    "forwarding.external": "ana@acme.example",
    "catchall.enabled": "acme.example",
    "shared.ownerless": "billing@acme.example",
    "mailbox.no_owner": "never@acme.example",
    "invite.stale": "new.hire@acme.example",
    "invite.expired": "late.joiner@acme.example",
    "account.ghost": "user2@acme.example",
    "account.inactive": "user4@acme.example",
    "account.never_used": "never@acme.example",
    "delegate.external": "ben@acme.example",
    "exception.expired": TENANT,
    "exception.unknown_subject": TENANT,
}
"""The subject each check fails on wherever it is judged; the exceptions of VALID and EXPIRED name these."""

PASSING = {
    "forwarding.external": "user1@acme.example",
    "catchall.enabled": "acme-mail.example",
    "shared.ownerless": "info@acme.example",
    "mailbox.no_owner": "user1@acme.example",
    "invite.stale": "starter@acme.example",
    "invite.expired": "starter@acme.example",
    "account.ghost": "user1@acme.example",
    "account.inactive": "user1@acme.example",
    "account.never_used": "user1@acme.example",
    "delegate.external": "user1@acme.example",
    "exception.expired": TENANT,
    "exception.unknown_subject": TENANT,
}

UNKNOWN = ("forwarding.external", "gone@acme.example", VALID_UNTIL)
"""In every run: an exception naming a mailbox that does not exist (still valid)."""
STALE = ("catchall.enabled", "acme-mail.example", EXPIRED_ON)
"""In every run: an expired exception for a subject that passes anyway."""

ITEMS = {
    "exception.expired": (f"{STALE[0]}/{STALE[1]}", f"{UNKNOWN[0]}/{UNKNOWN[1]}"),
    "exception.unknown_subject": (f"{UNKNOWN[0]}/{UNKNOWN[1]}", f"{STALE[0]}/{STALE[1]}"),
    "delegate.external": ("pa@outside.test", ""),
}
"""Checks judging items: (the failing subject's failing item, the passing subject's item); others use ""."""

FAILING_EVIDENCE: dict[str, dict[str, Any]] = {
    "forwarding.external": {"targets": ["ana@personal.test"]},
    "catchall.enabled": {"catch_all": "info@acme.example", "target_inside_tenant": True},
    "shared.ownerless": {"owners": {"old@acme.example": "mailbox suspended"}, "roster": True},
    "mailbox.no_owner": {"owners": [], "on_roster": False},
    "invite.stale": {"days_pending": 20, "invite_stale_days": 7},
    "invite.expired": {"days_since_expiry": 10},
    "account.ghost": {"basis": "roster", "left": "2026-10-01", "signed_in_after_leaving": False},
    "account.inactive": {"days_idle": 120, "inactive_days": 90},
    "account.never_used": {"days_since_created": 200, "last_login": None},
    "delegate.external": {"delegate": "pa@outside.test", "domain": "outside.test"},
    "exception.expired": {"subject": STALE[1], "days_expired": 25},
    "exception.unknown_subject": {"subject": UNKNOWN[1], "names": None},
}
"""What the plain failing finding's evidence must say, on every source that judges the check."""

UNSUPPORTED = {
    "files": frozenset(),
    "google": frozenset({"catchall.enabled"}),
    "microsoft": frozenset({"catchall.enabled", "shared.ownerless", "mailbox.no_owner", "delegate.external"}),
    "mailcow": frozenset({"shared.ownerless", "mailbox.no_owner", "invite.stale", "invite.expired"}),
}
"""Checks unsupported per source: Google has no catch-all in its APIs; Graph has no owners, delegates or
catch-all; mailcow has no owners and no invites. Must equal what the adapters' capabilities imply."""

NO_EXPIRY = {
    ("google", "invite.expired"): (
        "a Cloud Identity UserInvitation has no expiry field (name, state, mailsSentCount, updateTime), "
        "so the adapter's invites carry none"
    ),
    ("microsoft", "invite.expired"): (
        "Graph shows a pending guest's externalUserState and when it changed, never an invitation expiry, "
        "so the adapter's invites carry none"
    ),
}
"""Invites whose expiry the provider does not give: invite.expired is unsupported for each invited mailbox
(unknown is never a pass) and passes, not applying, for the rest. account.ghost needs no owners data where
the roster speaks for the mailbox, so it is judged on every source."""

CANNOT_FAIL = {
    ("mailcow", "delegate.external"): (
        "mailcow grants send-as (sender_acl) only to its own mailboxes, and the adapter keeps the tenant's "
        "domains: an outside delegate cannot be represented (ben's pa@outside.test is not published)"
    ),
}
"""Source and check pairs where the fact is collected but the failing condition cannot exist: all pass."""

HYGIENE = tuple(FAILING)
RUNS = ("plain", "valid", "expired")


def hygiene_estate() -> Estate:
    """The standard contract estate plus a shared mailbox whose owner is suspended and two more pending invites."""
    base = standard_estate()
    extra = (
        EstateMailbox("billing@acme.example", "Billing", kind=MailboxKind.SHARED, last_login=None,
                      owners=("old@acme.example",)),
        EstateMailbox("late.joiner@acme.example", "Late Joiner", status=MailboxStatus.PENDING, last_login=None,
                      created=NOW - timedelta(days=40), invited=NOW - timedelta(days=40)),
        EstateMailbox("starter@acme.example", "Starter", status=MailboxStatus.PENDING, last_login=None,
                      created=NOW - timedelta(days=3), invited=NOW - timedelta(days=3)),
    )
    return replace(base, mailboxes=base.mailboxes + extra)


def _stamp(when: datetime | None) -> str:
    return when.isoformat() if when is not None else ""


def _write_csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def write_export(estate: Estate, directory: Path) -> None:
    """The estate as the files adapter's export: mailboxes, forwards, invites (with expiries) and domains."""
    directory.mkdir()
    _write_csv(directory / "mailboxes.csv",
               ["address", "display_name", "kind", "status", "created", "last_login", "owners", "delegates"],
               [[b.address, b.display_name, b.kind.value, b.status.value, _stamp(b.created), _stamp(b.last_login),
                 ";".join(b.owners), ";".join(b.delegates)] for b in estate.mailboxes])
    _write_csv(directory / "forwards.csv", ["mailbox", "target", "mechanism"],
               [[b.address, target, mechanism.value] for b in estate.mailboxes for target, mechanism in b.forwards])
    _write_csv(directory / "invites.csv", ["address", "sent", "expires"],
               [[b.address, _stamp(b.invited), _stamp(INVITE_EXPIRES.get(b.address))]
                for b in estate.mailboxes if b.invited is not None])
    _write_csv(directory / "domains.csv", ["domain", "catch_all"],
               [[d, estate.catch_all.get(d) or ""] for d in estate.domains])
    # The estate holds no grants or recovery paths (tests/checks/test_access.py judges those): present, empty.
    _write_csv(directory / "grants.csv", ["mailbox", "kind", "client", "scopes", "created", "last_used"], [])
    _write_csv(directory / "recovery.csv", ["mailbox", "kind", "value"], [])


def write_roster(path: Path) -> None:
    """people.csv: email, name, left."""
    _write_csv(path, ["email", "name", "left"],
               [[email, email.partition("@")[0], left.isoformat() if left else ""] for email, left in ROSTER.items()])


def _exception(check: str, subject: str, expires: date) -> str:
    return (f'\n[[exceptions]]\ncheck = "{check}"\nsubject = "{subject}"\nreason = "test: {check} on {subject}"\n'
            f'approved_by = "it-lead@acme.example"\nexpires = {expires.isoformat()}\n')


def exceptions_toml(run: str) -> str:
    """The [[exceptions]] of one run: UNKNOWN and STALE always; VALID or EXPIRED ones for every FAILING subject."""
    text = _exception(*UNKNOWN) + _exception(*STALE)
    if run != "plain":
        expires = VALID_UNTIL if run == "valid" else EXPIRED_ON
        text += "".join(_exception(check, subject, expires) for check, subject in FAILING.items())
    return text


def config_text(nameserver: str, tenant_toml: str, run: str) -> str:
    """A whole config: loopback DNS, fast HTTP retries, the policy, the tenant (with its roster) and exceptions."""
    head = (f'[dns]\nnameservers = ["{nameserver}"]\ntimeout = 0.5\n\n[policy]\ninactive_days = 90\n'
            "invite_stale_days = 7\n\n[http]\ntimeout = 5.0\nattempts = 4\nbackoff_base = 0.01\nbackoff_cap = 0.05\n"
            "max_retry_after = 0.05\n")
    marker = f'name = "{TENANT}"\n'
    assert tenant_toml.count(marker) == 1
    return head + tenant_toml.replace(marker, marker + 'roster = "people.csv"\n') + exceptions_toml(run)


FILES_TENANT = (f'\n[[tenants]]\nname = "{TENANT}"\nprovider = "files"\nexport = "export"\n'
                'domains = ["acme.example", "acme-mail.example"]\n')


@dataclass(frozen=True)
class Judged:
    """One source's three runs: the adapter's capabilities, the plain inventory and each run's findings."""

    source: str
    capabilities: frozenset[Fact]
    inventory: Inventory
    findings: dict[str, list[Finding]]

    def of(self, run: str, check: str) -> list[Finding]:
        """Every finding of a check in one run."""
        return [f for f in self.findings[run] if f.check == check]

    def one(self, run: str, check: str, subject: str, item: str | None = None) -> Finding:
        """The single finding of a check on a subject (and item)."""
        found = [f for f in self.of(run, check) if f.subject == subject and (item is None or f.item == item)]
        assert len(found) == 1, (self.source, run, check, subject, item, found)
        return found[0]

    def coverage(self, fact: Fact) -> Coverage:
        """The tenant-wide coverage of a fact."""
        (entry,) = [c for c in self.inventory.coverage if c.fact is fact and not c.subject]
        return entry


def _hygiene_checks() -> list[Check]:
    checks = [c for c in load_checks() if c.meta.id in HYGIENE]
    assert sorted(c.meta.id for c in checks) == sorted(HYGIENE)
    return checks


def _estate_dns() -> ZoneServer:
    """A DNS server where the estate's domains exist (empty zones) and other .example names are NXDOMAIN, so
    every question is answered and the tenant is complete (an unanswered question makes it partial)."""
    return ZoneServer([top_level_zone(o) for o in ("example", "acme.example", "acme-mail.example",
                                                  *hygiene_estate().domains)])


def _judge(source: str, config: Config, checks: list[Check]) -> tuple[frozenset[Fact], Inventory, list[Finding]]:
    adapter = adapter_for(config.tenants[0], config)
    assert adapter is not None
    collection = asyncio.run(collect(config))
    (outcome,) = collection.outcomes
    assert outcome.state == "complete", (source, outcome.problems)
    findings = evaluate(collection.inventory, checks, policy=policy_of(config), senders=senders_of(config), now=NOW)
    return adapter.capabilities, collection.inventory, findings


@pytest.fixture(scope="module")
def judged(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[str], Judged]]:
    """Collects and judges a source on first use (its contract server stays up for the module)."""
    estate = hygiene_estate()
    checks = _hygiene_checks()
    cache: dict[str, Judged] = {}
    servers: list[ContractServer] = []
    dns = _estate_dns()
    dns.start()

    def get(source: str) -> Judged:
        if source in cache:
            return cache[source]
        workdir = tmp_path_factory.mktemp(f"hygiene-{source}")
        write_roster(workdir / "people.csv")
        if source == "files":
            write_export(estate, workdir / "export")
            tenant_toml = FILES_TENANT
        else:
            harness = HARNESSES[source]
            server = harness.serve(estate, page_size=4)
            servers.append(server)
            tenant_toml = harness.tenant_toml(server, estate, workdir)
        judgements = {}
        for run in RUNS:
            path = workdir / f"{run}.toml"
            path.write_text(config_text(dns.nameserver, tenant_toml, run), encoding="utf-8")
            judgements[run] = _judge(source, load_config(path), checks)
        capabilities, inventory, _ = judgements["plain"]
        if source != "files":
            # What the checks judged is the harness's own reading of the extended estate.
            assert {m.address: m for m in inventory.mailboxes} == HARNESSES[source].expected(estate)
        cache[source] = Judged(source, capabilities, inventory, {run: j[2] for run, j in judgements.items()})
        return cache[source]

    yield get
    for server in servers:
        server.stop()
    dns.stop()


def _requires(check_id: str) -> tuple[Fact, ...]:
    (check,) = [c for c in _hygiene_checks() if c.meta.id == check_id]
    return check.meta.requires


def _pairs(kind: str) -> list[tuple[str, str]]:
    pairs = []
    for source in SOURCES:
        for check in HYGIENE:
            unsupported = check in UNSUPPORTED[source]
            cannot_fail = (source, check) in CANNOT_FAIL
            no_expiry = (source, check) in NO_EXPIRY
            judged_here = not unsupported and not cannot_fail and not no_expiry
            if {"judged": judged_here, "unsupported": unsupported, "cannot_fail": cannot_fail,
                "no_expiry": no_expiry, "passing": not unsupported and not no_expiry}[kind]:
                pairs.append((source, check))
    return pairs


def _ids(pair: tuple[str, str]) -> str:
    return f"{pair[0]}-{pair[1]}"


def _item(check: str, index: int) -> str:
    return ITEMS[check][index] if check in ITEMS else ""


@pytest.mark.parametrize("source", SOURCES)
def test_unsupported_checks_are_those_whose_facts_the_adapter_does_not_declare(
    judged: Callable[[str], Judged], source: str
) -> None:
    run = judged(source)
    derived = {check for check in HYGIENE
               if any(f in PROVIDER_FACTS and f not in run.capabilities for f in _requires(check))}
    assert derived == UNSUPPORTED[source]
    for fact in PROVIDER_FACTS:
        entry = run.coverage(fact)
        assert entry.state is (FactState.COLLECTED if fact in run.capabilities else FactState.UNSUPPORTED), fact
    assert run.coverage(Fact.ROSTER).state is FactState.COLLECTED


@pytest.mark.parametrize(("source", "check"), _pairs("judged"), ids=map(_ids, _pairs("judged")))
def test_failing_subject_fails(judged: Callable[[str], Judged], source: str, check: str) -> None:
    finding = judged(source).one("plain", check, FAILING[check], _item(check, 0))
    assert finding.status is Status.FAIL, finding
    assert FAILING_EVIDENCE[check].items() <= dict(finding.evidence).items(), finding.evidence
    assert "expired_exception" not in finding.evidence


@pytest.mark.parametrize(("source", "check"), _pairs("passing"), ids=map(_ids, _pairs("passing")))
def test_passing_subject_passes(judged: Callable[[str], Judged], source: str, check: str) -> None:
    run = judged(source)
    for name in RUNS:
        finding = run.one(name, check, PASSING[check], _item(check, 1))
        assert finding.status is Status.PASS, (name, finding)


@pytest.mark.parametrize(("source", "check"), _pairs("judged"), ids=map(_ids, _pairs("judged")))
def test_valid_exception_makes_the_failure_excepted(judged: Callable[[str], Judged], source: str, check: str) -> None:
    run = judged(source)
    finding = run.one("valid", check, FAILING[check], _item(check, 0))
    assert finding.status is Status.EXCEPTED, finding
    assert f"excepted until {VALID_UNTIL.isoformat()}" in finding.reason
    assert f"test: {check} on {FAILING[check]}" in finding.reason
    assert FAILING_EVIDENCE[check].items() <= dict(finding.evidence).items()
    # The exception is reported as valid, under its own item.
    covering = run.one("valid", "exception.expired", TENANT, f"{check}/{FAILING[check]}")
    assert covering.status is Status.PASS
    assert covering.evidence["expires"] == VALID_UNTIL.isoformat()


@pytest.mark.parametrize(("source", "check"), _pairs("judged"), ids=map(_ids, _pairs("judged")))
def test_expired_exception_fails_again_and_exception_expired_fails(
    judged: Callable[[str], Judged], source: str, check: str
) -> None:
    run = judged(source)
    finding = run.one("expired", check, FAILING[check], _item(check, 0))
    assert finding.status is Status.FAIL, finding
    assert finding.evidence["expired_exception"] == (
        f"test: {check} on {FAILING[check]} (expired {EXPIRED_ON.isoformat()})"
    )
    assert FAILING_EVIDENCE[check].items() <= dict(finding.evidence).items()
    expired = run.one("expired", "exception.expired", TENANT, f"{check}/{FAILING[check]}")
    assert expired.status is Status.FAIL
    assert expired.evidence["days_expired"] == (NOW.date() - EXPIRED_ON).days


@pytest.mark.parametrize("source", SOURCES)
def test_exception_expired_names_exactly_the_expired_exceptions(judged: Callable[[str], Judged], source: str) -> None:
    run = judged(source)
    stale = {f"{STALE[0]}/{STALE[1]}"}
    expected = {"plain": stale, "valid": set(), "expired": stale | {f"{c}/{s}" for c, s in FAILING.items()}}
    for name in RUNS:
        failing = {f.item for f in run.of(name, "exception.expired") if f.status is Status.FAIL}
        assert failing == expected[name], name
    excepted = {f.item for f in run.of("valid", "exception.expired") if f.status is Status.EXCEPTED}
    assert excepted == stale
    unknown = {f.item: f.status for f in run.of("plain", "exception.unknown_subject")}
    assert unknown == {f"{UNKNOWN[0]}/{UNKNOWN[1]}": Status.FAIL, f"{STALE[0]}/{STALE[1]}": Status.PASS}


@pytest.mark.parametrize(("source", "check"), _pairs("unsupported"), ids=map(_ids, _pairs("unsupported")))
def test_unsupported_where_the_provider_cannot_expose_the_fact(
    judged: Callable[[str], Judged], source: str, check: str
) -> None:
    run = judged(source)
    missing = [f for f in _requires(check) if f not in run.capabilities]
    assert missing
    for name in RUNS:
        findings = run.of(name, check)
        assert findings
        assert {f.status for f in findings} == {Status.UNSUPPORTED}, name  # never pass, fail, excepted
        for finding in findings:
            assert source in finding.reason
            assert any(f.value in finding.reason and run.coverage(f).reason in finding.reason for f in missing)
    # The would-be failing subject is in scope, and unsupported rather than judged.
    assert run.one("plain", check, FAILING[check]).status is Status.UNSUPPORTED


@pytest.mark.parametrize(("source", "check"), _pairs("cannot_fail"), ids=map(_ids, _pairs("cannot_fail")))
def test_collected_but_unrepresentable_failure_passes_everywhere(
    judged: Callable[[str], Judged], source: str, check: str
) -> None:
    run = judged(source)
    assert CANNOT_FAIL[(source, check)]
    assert all(f in run.capabilities for f in _requires(check))
    for name in RUNS:
        assert {f.status for f in run.of(name, check)} == {Status.PASS}, name
    finding = run.one("plain", check, FAILING[check])
    mailbox = next(m for m in run.inventory.mailboxes if m.address == FAILING[check])
    assert mailbox.delegates == ()
    assert finding.evidence["delegates"] == 0


@pytest.mark.parametrize(("source", "check"), _pairs("no_expiry"), ids=map(_ids, _pairs("no_expiry")))
def test_invites_without_an_expiry_are_unsupported_never_passed(
    judged: Callable[[str], Judged], source: str, check: str
) -> None:
    run = judged(source)
    assert NO_EXPIRY[(source, check)]
    invited = {m.address for m in run.inventory.mailboxes if m.invite is not None}
    assert FAILING[check] in invited and all(m.invite.expires is None for m in run.inventory.mailboxes if m.invite)
    for name in RUNS:
        for finding in run.of(name, check):
            if finding.subject in invited:
                assert finding.status is Status.UNSUPPORTED and "reports no expiry" in finding.reason, finding
            else:
                assert finding.status is Status.PASS and finding.evidence["applies"] is False, finding
    assert run.one("plain", "invite.stale", FAILING[check]).status is Status.FAIL  # the invite itself was read


def test_files_export_without_a_fact_makes_its_checks_unsupported(tmp_path: Path) -> None:
    """An export holding only the mailbox list: every check needing another provider fact is unsupported."""
    export = tmp_path / "export"
    export.mkdir()
    _write_csv(export / "mailboxes.csv", ["address", "kind", "status"],
               [["ana@acme.example", "user", "active"], ["info@acme.example", "shared", "active"]])
    with _estate_dns() as dns:
        path = tmp_path / "mailwarden.toml"
        path.write_text(config_text(dns.nameserver, FILES_TENANT, "plain"), encoding="utf-8")
        write_roster(tmp_path / "people.csv")
        _, _, findings = _judge("files", load_config(path), _hygiene_checks())
    ghost = {f.subject: f.status for f in findings if f.check == "account.ghost"}
    assert ghost == {"ana@acme.example": Status.PASS, "info@acme.example": Status.UNSUPPORTED}  # roster lists ana only
    for check in HYGIENE:
        statuses = {f.status for f in findings if f.check == check}
        if check == "account.ghost":
            continue
        if any(f in PROVIDER_FACTS and f is not Fact.MAILBOX_LIST for f in _requires(check)):
            assert statuses == {Status.UNSUPPORTED}, check
            reasons = [f.reason for f in findings if f.check == check]
            assert all("files does not expose" in r for r in reasons), reasons
        else:
            assert Status.UNSUPPORTED not in statuses, check

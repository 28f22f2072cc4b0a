"""Each provider's remediation write path against its contract server: adapter surface, and jobs end to end."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

import tests.contract.google as google_contract
import tests.contract.mailcow as mailcow_contract
import tests.contract.microsoft as microsoft_contract
from checks.evaluate import evaluate
from checks.forwarding import external_forwarding
from checks.registry import Policy
from remediation.actions import IRREVERSIBLE, Plan, normalized, plan_for, reached, remedies_for
from remediation.audit import entries, verify
from remediation.jobs import Job, JobError, Jobs
from scanner.adapters.base import collect_all
from scanner.adapters.base import Refused
from scanner.config import Config, load_config
from scanner.model import Forward, ForwardMechanism, Inventory, MailboxKind, Status, Tenant
from scanner.store.database import Store, canonical
from tests.contract.estate import NOW, standard_estate
from tests.contract.google import Workspace
from tests.contract.microsoft import GraphServer
from tests.contract.mailcow import MailcowState, mailcow_app
from tests.contract.server import ContractServer, Faults
from tests.remediation.conftest import AUDIT_KEY
from tests.scanner.adapters.test_mailcow import _adapter, _alias, _box, _domain


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[MailcowState, ContractServer]]:
    state = MailcowState(domains=[_domain("acme.example")])
    state.mailboxes["ana@acme.example"] = _box("ana@acme.example")
    state.mailboxes["ben@acme.example"] = _box("ben@acme.example", sender_acl=["ana@acme.example"])
    _alias(state, "ana@acme.example", "ana@acme.example,ana@gmail.test")
    _alias(state, "@acme.example", "catch@acme.example")
    server = ContractServer(lambda request: mailcow_app(state)(request)).start()
    server.faults = Faults()
    try:
        yield state, server
    finally:
        server.stop()


def _round_trip(adapter, action: str, subject: str, params: dict[str, object]) -> None:  # type: ignore[no-untyped-def]
    before = asyncio.run(adapter.remedy_read(action, subject, params))
    assert not reached(action, before["state"], params)
    after = asyncio.run(adapter.remedy_apply(action, subject, params, before))
    assert reached(action, after["state"], params)
    restored = asyncio.run(adapter.remedy_restore(action, subject, params, before))
    assert restored["state"] == before["state"]


def test_each_mailcow_action_changes_the_server_and_its_undo_restores_it(
    served: tuple[MailcowState, ContractServer], tmp_path: Path
) -> None:
    state, server = served
    adapter = _adapter(server, tmp_path)
    forwards = {"targets": ["ana@gmail.test"], "mechanisms": ["alias"]}
    before = asyncio.run(adapter.remedy_read("forwarding.disable", "ana@acme.example", forwards))
    asyncio.run(adapter.remedy_apply("forwarding.disable", "ana@acme.example", forwards, before))
    alias = next(a for a in state.aliases.values() if a["address"] == "ana@acme.example")
    assert "gmail.test" not in str(alias["goto"])  # the contract server's state changed
    asyncio.run(adapter.remedy_restore("forwarding.disable", "ana@acme.example", forwards, before))
    assert "ana@gmail.test" in str(alias["goto"])
    _round_trip(adapter, "catchall.disable", "acme.example", {})
    _round_trip(adapter, "account.suspend", "ana@acme.example", {})
    _round_trip(adapter, "delegate.remove", "ana@acme.example", {"delegate": "ben@acme.example"})


def test_forwarding_disable_on_an_alias_subject_from_its_finding_and_the_undo(
    served: tuple[MailcowState, ContractServer], tmp_path: Path
) -> None:
    """An alias with no mailbox: collected as an ALIAS subject, judged, planned from the finding, fixed, undone."""
    state, server = served
    only = _alias(state, "sales@acme.example", "sales@partner.test,deals@partner.test")  # all outside
    mixed = _alias(state, "team@acme.example", "ana@acme.example,team@partner.test")  # inside and outside
    adapter = _adapter(server, tmp_path)
    tenant = Tenant("acme", "mailcow", ("acme.example",))
    collected = asyncio.run(collect_all(adapter, tenant))
    inventory = Inventory((tenant,), (), collected.mailboxes, {}, (), collected.coverage)
    findings = {f.subject: f for f in evaluate(inventory, [external_forwarding], policy=Policy(), senders={}, now=NOW)}
    for subject, number, left in (("sales@acme.example", only, "sales@partner.test,deals@partner.test"),
                                  ("team@acme.example", mixed, "ana@acme.example")):
        finding = findings[subject]
        assert finding.status is Status.FAIL and finding.evidence["kind"] == MailboxKind.ALIAS.value
        plan = plan_for(finding)
        assert plan is not None and plan.action == "forwarding.disable"
        alias = state.aliases[number]
        before = asyncio.run(adapter.remedy_read(plan.action, subject, plan.params))
        assert not reached(plan.action, before["state"], plan.params)
        after = asyncio.run(adapter.remedy_apply(plan.action, subject, plan.params, before))
        assert reached(plan.action, after["state"], plan.params)
        # All outside: the alias is turned off (mailcow refuses an empty goto); mixed: only the outside target goes.
        assert (alias["active"], alias["goto"]) == ((0, left) if number == only else (1, left))
        restored = asyncio.run(adapter.remedy_restore(plan.action, subject, plan.params, before))
        assert restored["state"] == before["state"]
        assert alias["active"] == 1 and set(alias["goto"].split(",")) == set(before["detail"]["goto"])
    after_fix = {m.address: m for m in asyncio.run(collect_all(adapter, tenant)).mailboxes}
    assert after_fix["team@acme.example"].forwards == (Forward("team@partner.test", ForwardMechanism.ALIAS),)


def test_what_mailcow_cannot_do_is_refused_with_the_reason(
    served: tuple[MailcowState, ContractServer], tmp_path: Path
) -> None:
    _, server = served
    adapter = _adapter(server, tmp_path)
    with pytest.raises(Refused, match="no invitations"):
        asyncio.run(adapter.remedy_read("invite.revoke", "ana@acme.example", {}))
    with pytest.raises(Refused, match="sieve"):
        asyncio.run(adapter.remedy_read("forwarding.disable", "ana@acme.example",
                                        {"targets": ["x@gmail.test"], "mechanisms": ["redirect"]}))


# Every provider's write path through remediation.jobs, against its contract server.

HTTP = """
[dns]
nameservers = ["127.0.0.1:9"]
timeout = 0.2

[http]
timeout = 5.0
attempts = 2
backoff_base = 0.01
backoff_cap = 0.05
max_retry_after = 0.05
"""

HARNESSES = {h.provider: h for h in (google_contract.HARNESS, microsoft_contract.HARNESS, mailcow_contract.HARNESS)}
INVITED = (NOW - timedelta(days=20)).isoformat()  # when standard_estate's pending invitation was sent


@dataclass(frozen=True)
class Case:
    """One action on one subject of standard_estate, as a provider shows it."""

    provider: str
    action: str
    subject: str
    params: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        mechanisms = self.params.get("mechanisms")
        return f"{self.provider}-{self.action}" + (f"-{mechanisms[0]}" if mechanisms else "")


def _forwards(target: str, mechanism: ForwardMechanism) -> dict[str, Any]:
    return {"targets": [target], "mechanisms": [mechanism.value]}


SUPPORTED = [
    Case("google", "forwarding.disable", "ana@acme.example", _forwards("ana@personal.test", ForwardMechanism.AUTO_FORWARD)),
    Case("google", "forwarding.disable", "ben@acme.example", _forwards("ben@outside.test", ForwardMechanism.INBOX_RULE)),
    Case("google", "account.suspend", "user1@acme.example"),
    Case("google", "invite.revoke", "new.hire@acme.example"),
    Case("google", "invite.resend", "new.hire@acme.example", {"sent": INVITED}),
    Case("google", "delegate.remove", "ben@acme.example", {"delegate": "pa@outside.test"}),
    Case("microsoft", "forwarding.disable", "ben@acme.example",
         _forwards("ben@outside.test", ForwardMechanism.INBOX_RULE)),
    Case("microsoft", "forwarding.disable", "ana@acme.example", _forwards("ana@personal.test", ForwardMechanism.REDIRECT)),
    Case("microsoft", "account.suspend", "user1@acme.example"),
    Case("microsoft", "invite.revoke", "new.hire@acme.example"),
    Case("microsoft", "invite.resend", "new.hire@acme.example", {"sent": INVITED}),
    Case("mailcow", "forwarding.disable", "ana@acme.example", _forwards("ana@personal.test", ForwardMechanism.ALIAS)),
    Case("mailcow", "forwarding.disable", "sales@acme.example",  # an alias with no mailbox (an ALIAS subject)
         _forwards("sales@partner.test", ForwardMechanism.ALIAS)),
    Case("mailcow", "catchall.disable", "acme.example"),
    Case("mailcow", "account.suspend", "user1@acme.example"),
    Case("mailcow", "delegate.remove", "info@acme.example", {"delegate": "ana@acme.example"}),
]

REFUSED = [
    (Case("google", "catchall.disable", "acme.example"), "Admin console"),
    (Case("google", "forwarding.disable", "ana@acme.example", _forwards("ana@personal.test", ForwardMechanism.ALIAS)),
     "Google group"),
    (Case("microsoft", "catchall.disable", "acme.example"), "no catch-all"),
    (Case("microsoft", "delegate.remove", "ben@acme.example", {"delegate": "pa@outside.test"}), "mailbox permissions"),
    (Case("microsoft", "forwarding.disable", "ana@acme.example",
          _forwards("ana@personal.test", ForwardMechanism.AUTO_FORWARD)), "inbox-rule forwards only"),
    (Case("mailcow", "invite.revoke", "new.hire@acme.example"), "no invitations"),
    (Case("mailcow", "invite.resend", "new.hire@acme.example", {"sent": INVITED}), "no invitations"),
    (Case("mailcow", "forwarding.disable", "ben@acme.example", _forwards("ben@outside.test", ForwardMechanism.REDIRECT)),
     "sieve"),
]


@dataclass
class Provider:
    """A provider's contract server publishing standard_estate, a config naming it, and jobs over a fresh store."""

    case: Case
    server: ContractServer
    config: Config
    runner: Jobs
    sink: Path

    @property
    def plan(self) -> Plan:
        return Plan(self.case.action, "acme", "acme.example", self.case.subject, self.case.params,
                    finding=f"f-{self.case}", check="test.check", run_id="run-1")

    def run(self, reason: str = "fix") -> Job:
        """Create and execute one job for the case's plan."""
        return asyncio.run(self.runner.execute(self.runner.create(self.plan, "ops@msp.example", reason).id))

    def read(self) -> dict[str, Any]:
        """The action's state as a fresh adapter reads it from the server now."""
        state: dict[str, Any] = asyncio.run(remedies_for(self.config, "acme").remedy_read(
            self.case.action, self.case.subject, self.case.params))["state"]
        return state

    def writes(self) -> int:
        """Requests to the server that could change it (anything but GET and the token endpoint)."""
        token = HARNESSES[self.case.provider].token_path
        return sum(1 for method, path in list(self.server.log) if method != "GET" and path != token)

    def raw(self) -> str:
        """The server's own records behind the subject, as canonical JSON (not the adapter's reading)."""
        subject = self.case.subject
        if isinstance(self.server, GraphServer):
            users = [u for u in self.server.state.users.values() if (u.get("mail") or "").lower() == subject]
            return canonical({"users": users, "rules": [self.server.state.rules.get(u["id"]) for u in users]})
        if isinstance(self.server.app, Workspace):
            space = self.server.app
            mail = space.mail.get(subject)
            return canonical({"user": space.users.get(subject), "mail": asdict(mail) if mail else None,
                              "invitation": space.invitations.get(subject)})
        state = mailcow_contract.with_state(self.server)
        return canonical({"mailboxes": state.mailboxes, "aliases": state.aliases})

    def ignore_writes(self) -> None:
        """Flip the server's switch: every write answers success and changes nothing."""
        if isinstance(self.server, GraphServer):
            self.server.state.ignore_writes = True
        elif isinstance(self.server.app, Workspace):
            self.server.app.noop_writes = True
        else:
            mailcow_contract.with_state(self.server).ignore_writes = True


@contextmanager
def _provider(case: Case, workdir: Path) -> Iterator[Provider]:
    harness = HARNESSES[case.provider]
    estate = standard_estate(users=2)
    server = harness.serve(estate, page_size=100)
    store = Store(f"sqlite:///{workdir / 'store.db'}")
    try:
        path = workdir / "mailwarden.toml"
        (workdir / "audit.key").write_text(AUDIT_KEY, encoding="utf-8")
        keyed = f'\n[remediation]\naudit_key = "file:{workdir / "audit.key"}"\n'
        path.write_text(HTTP + harness.tenant_toml(server, estate, workdir) + keyed, encoding="utf-8")
        config = load_config(path)
        yield Provider(case, server, config, Jobs(store, config, workdir / "audit.jsonl"), workdir / "audit.jsonl")
    finally:
        store.close()
        server.stop()


@pytest.mark.parametrize("case", SUPPORTED, ids=str)
def test_each_supported_action_runs_through_a_job_against_the_contract_server(case: Case, tmp_path: Path) -> None:
    with _provider(case, tmp_path) as provider:
        before, raw_before = provider.read(), provider.raw()
        assert not reached(case.action, before, case.params), before

        done = provider.run()
        assert done.state == "done", done.error
        assert done.before is not None and done.before["state"] == before
        assert done.after is not None and reached(case.action, done.after["state"], case.params)
        assert reached(case.action, provider.read(), case.params)  # a fresh re-read agrees
        raw_done = provider.raw()
        assert raw_done != raw_before  # the contract server's own state changed

        writes = provider.writes()
        assert writes > 0
        again = provider.run("again")
        assert again.state == "already_done" and provider.writes() == writes and provider.raw() == raw_done

        if case.action in IRREVERSIBLE:
            with pytest.raises(JobError, match="cannot be undone"):
                provider.runner.plan_undo(done.id)
        else:
            undone = asyncio.run(provider.runner.undo(done.id, "ops@msp.example", "mistake"))
            assert undone.state == "done", undone.error
            assert normalized(case.action, provider.read()) == normalized(case.action, before)
            assert provider.raw() != raw_done
        kinds = [e.kind for e in entries(provider.runner.store)]
        assert kinds == ["intent", "state"] * (2 if case.action in IRREVERSIBLE else 3)
        assert verify(provider.runner.store, AUDIT_KEY.encode(), provider.sink) == []


@pytest.mark.parametrize("case", SUPPORTED, ids=str)
def test_a_write_that_reports_success_but_changes_nothing_is_failed_never_done(case: Case, tmp_path: Path) -> None:
    with _provider(case, tmp_path) as provider:
        raw_before = provider.raw()
        provider.ignore_writes()
        job = provider.run()
        assert job.state == "failed" and "not the target state" in (job.error or ""), (job.state, job.error)
        assert provider.writes() > 0 and provider.raw() == raw_before
        assert [c for c in provider.runner.store.changes() if c.source == "job"] == []
        assert not provider.runner.settled(job.finding, job.action)


@pytest.mark.parametrize(("case", "reason"), REFUSED, ids=[str(c) for c, _ in REFUSED])
def test_an_action_the_provider_cannot_do_is_refused_with_its_reason(case: Case, reason: str, tmp_path: Path) -> None:
    with _provider(case, tmp_path) as provider:
        raw_before = provider.raw()
        job = provider.run()
        assert job.state == "refused" and reason in (job.error or ""), (job.state, job.error)
        assert provider.writes() == 0 and provider.raw() == raw_before
        assert [e.kind for e in entries(provider.runner.store)] == ["intent", "state"]

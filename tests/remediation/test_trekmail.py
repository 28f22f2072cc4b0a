"""TrekMail remediation through jobs against its contract server: each write with a fresh Idempotency-Key,
read back; undo where TrekMail allows it; invites and a revoked grant's undo refused with the reason."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from remediation.actions import Plan
from remediation.jobs import JobError, Jobs
from scanner.config import load_config
from scanner.store.database import Store
from tests.contract.estate import standard_estate
from tests.contract.server import ContractServer
from tests.contract.trekmail import HARNESS, TrekState, with_state
from tests.remediation.conftest import AUDIT_KEY

HTTP = """
[dns]
nameservers = ["127.0.0.1:9"]
timeout = 0.2

[http]
timeout = 5.0
attempts = 3
backoff_base = 0.01
backoff_cap = 0.02
max_retry_after = 0.02
"""


class Bench:
    """One TrekMail contract server, a config naming it, and jobs over a fresh store."""

    def __init__(self, server: ContractServer, runner: Jobs) -> None:
        self.server = server
        self.runner = runner

    @property
    def state(self) -> TrekState:
        return with_state(self.server)

    def run(self, action: str, subject: str, params: dict[str, Any] | None = None, finding: str = "f-1"):  # type: ignore[no-untyped-def]
        plan = Plan(action, "acme", "acme.example", subject, params or {}, finding=finding, check="test.check",
                    run_id="run-1")
        return asyncio.run(self.runner.execute(self.runner.create(plan, "ops@msp.example", "fix").id))

    def undo(self, job_id: str):  # type: ignore[no-untyped-def]
        return asyncio.run(self.runner.undo(job_id, "ops@msp.example", "mistake"))


@pytest.fixture
def bench(tmp_path: Path) -> Iterator[Bench]:
    estate = standard_estate(users=2)
    server = HARNESS.serve(estate, page_size=100)
    store = Store(f"sqlite:///{tmp_path / 'store.db'}")
    path = tmp_path / "mailwarden.toml"
    (tmp_path / "audit.key").write_text(AUDIT_KEY, encoding="utf-8")
    keyed = f'\n[remediation]\naudit_key = "file:{tmp_path / "audit.key"}"\n'
    path.write_text(HTTP + keyed + HARNESS.tenant_toml(server, estate, tmp_path), encoding="utf-8")
    config = load_config(path)
    try:
        yield Bench(server, Jobs(store, config, tmp_path / "audit.jsonl"))
    finally:
        store.close()
        server.stop()


def test_forwarding_off_twice_in_a_row_each_with_a_fresh_idempotency_key(bench: Bench) -> None:
    params = {"targets": ["ana@personal.test"], "mechanisms": ["auto_forward"]}
    ana = bench.state.mailbox_by_email("ana@acme.example")
    assert ana is not None
    first = bench.run("forwarding.disable", "ana@acme.example", params)
    assert first.state == "done", first.error
    assert ana["forwarding"]["enabled"] is False and ana["forwarding"]["keep_copy"] is True
    undone = bench.undo(first.id)
    assert undone.state == "done", undone.error
    assert ana["forwarding"] == {"enabled": True, "targets": ["ana@personal.test"], "keep_copy": True}
    # disable → enable → disable inside the idempotency window: a key derived from (action, subject) would
    # replay the first answer and change nothing; a fresh key per job really turns it off again.
    second = bench.run("forwarding.disable", "ana@acme.example", params, finding="f-2")
    assert second.state == "done", second.error
    assert ana["forwarding"]["enabled"] is False
    keys = [key for _, _, key in bench.state.writes]
    assert len(keys) == 3 and len(set(keys)) == 3


def test_filter_redirect_is_disabled_keeping_the_rule(bench: Bench) -> None:
    params = {"targets": ["ben@outside.test"], "mechanisms": ["inbox_rule"]}
    job = bench.run("forwarding.disable", "ben@acme.example", params)
    assert job.state == "done", job.error
    ben = bench.state.mailbox_by_email("ben@acme.example")
    assert ben is not None
    rule = next(r for r in ben["rules"] if r["actions"][0]["type"] == "redirect_copy")
    assert rule["enabled"] is False and rule["actions"] == [{"type": "redirect_copy", "value": "ben@outside.test"}]
    assert bench.undo(job.id).state == "done" and rule is not None
    assert next(r for r in ben["rules"] if r["actions"][0]["type"] == "redirect_copy")["enabled"] is True


def test_forwarding_address_is_paused_and_resumed(bench: Bench) -> None:
    params = {"targets": ["sales@partner.test"], "mechanisms": ["alias"]}
    job = bench.run("forwarding.disable", "sales@acme.example", params)
    assert job.state == "done", job.error
    row = next(r for rows in bench.state.forwarding_addresses.values() for r in rows if r["id"] == 71)
    assert row["is_active"] is False
    assert bench.undo(job.id).state == "done" and row["is_active"] is True


def test_catch_all_off_and_its_undo(bench: Bench) -> None:
    job = bench.run("catchall.disable", "acme.example")
    assert job.state == "done", job.error
    assert bench.state.domains[1]["catch_all"] == {"enabled": False, "destination": None}
    assert bench.undo(job.id).state == "done"
    assert bench.state.domains[1]["catch_all"] == {"enabled": True, "destination": "info@acme.example"}


def test_catch_all_that_cannot_be_read_back_is_refused(bench: Bench) -> None:
    bench.state.catch_all_on_domain = False
    job = bench.run("catchall.disable", "acme.example")
    assert job.state == "refused" and "could not be verified" in (job.error or "")
    assert bench.state.writes == []


def test_suspend_login_revokes_app_passwords_and_resume_does_not_bring_them_back(bench: Bench) -> None:
    ana = bench.state.mailbox_by_email("ana@acme.example")
    assert ana is not None
    job = bench.run("account.suspend", "ana@acme.example")
    assert job.state == "done", job.error
    assert all(not p["active"] for p in ana["app_passwords"])
    assert bench.undo(job.id).state == "done"
    assert bench.state.status_spelling[ana["status_model"]] == "active"
    assert all(not p["active"] for p in ana["app_passwords"])


def test_grant_revoke_of_an_app_password_and_a_device_password_cannot_be_undone(bench: Bench) -> None:
    ana = bench.state.mailbox_by_email("ana@acme.example")
    assert ana is not None
    password = next(p for p in ana["app_passwords"] if p["active"])
    job = bench.run("grant.revoke", "ana@acme.example",
                    {"kind": "app_password", "grant": str(password["id"]), "client": "Thunderbird"})
    assert job.state == "done", job.error
    assert password["active"] is False and job.after == {"state": {"grants": []}}
    with pytest.raises(JobError, match="a revoked grant cannot be restored; the person grants it again"):
        bench.runner.plan_undo(job.id)
    again = bench.run("grant.revoke", "ana@acme.example",
                      {"kind": "app_password", "grant": str(password["id"]), "client": "Thunderbird"}, finding="f-2")
    assert again.state == "already_done"
    device = bench.run("grant.revoke", "ana@acme.example", {"kind": "device_password", "grant": "501"}, finding="f-3")
    assert device.state == "done", device.error
    assert bench.state.devices[0]["active"] is False
    assert [m for m, _, _ in bench.state.writes] == ["DELETE", "DELETE"]


def test_what_trekmail_cannot_do_is_refused_with_the_reason(bench: Bench) -> None:
    for action, subject, params, words in (
        ("invite.revoke", "new.hire@acme.example", {}, "only in the dashboard"),
        ("invite.resend", "new.hire@acme.example", {"sent": "2026-11-05T09:00:00+00:00"}, "only in the dashboard"),
        ("grant.revoke", "ana@acme.example", {"kind": "oauth", "grant": "x"}, "does not list OAuth connections"),
        ("forwarding.disable", "ben@acme.example", {"targets": ["ben@outside.test"], "mechanisms": ["redirect"]},
         "raw sieve"),
        ("delegate.remove", "info@acme.example", {"delegate": "ana@acme.example"}, "dashboard"),
    ):
        job = bench.run(action, subject, params, finding=f"f-{action}")
        assert job.state == "refused" and words in (job.error or ""), (action, job.error)
    assert bench.state.writes == []

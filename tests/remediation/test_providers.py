"""The remediation surface of a provider adapter against its contract server (mailcow): read, apply, restore, refuse."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from remediation.actions import reached
from scanner.adapters.base import Refused
from tests.contract.mailcow import MailcowState, mailcow_app
from tests.contract.server import ContractServer, Faults
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

"""The TrekMail adapter against its contract server: paging, throttling, scopes, each fact and each unsupported one."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from scanner.adapters.base import Collected, collect_all
from scanner.adapters.http import RetryPolicy
from scanner.adapters.trekmail import TrekMailAdapter
from scanner.config import SecretRef, TrekMailOptions
from scanner.errors import AdapterError
from scanner.model import Fact, FactState, ForwardMechanism, GrantKind, MailAccess, MailboxKind, MailboxStatus, Tenant
from tests.contract.estate import standard_estate
from tests.contract.server import ContractServer
from tests.contract.trekmail import HARNESS, TOKEN, TrekState, state_for, throttled, trek_app

ESTATE = standard_estate()
TENANT = Tenant("acme", "trekmail", ESTATE.domains)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[TrekState, ContractServer, TrekMailAdapter]]:
    state = state_for(ESTATE)
    server = ContractServer(trek_app(state), throttled=throttled(state)).start()
    (tmp_path / "token").write_text(TOKEN, encoding="utf-8")
    adapter = TrekMailAdapter(TrekMailOptions(url=server.url, per_page=4), SecretRef(f"file:{tmp_path / 'token'}"),
                              retry=RetryPolicy(attempts=4, base=0.01, cap=0.02, max_retry_after=0.05))
    try:
        yield state, server, adapter
    finally:
        server.stop()


def _read(adapter: TrekMailAdapter) -> Collected:
    return asyncio.run(collect_all(adapter, TENANT))


def _coverage(collected: Collected) -> dict[str, tuple[FactState, str]]:
    return {c.fact.value: (c.state, c.reason) for c in collected.coverage if not c.subject}


def _boxes(collected: Collected) -> dict[str, object]:
    return {m.address: m for m in collected.mailboxes}


def test_reads_every_fact_the_api_exposes(served) -> None:  # type: ignore[no-untyped-def]
    state, server, adapter = served
    collected = _read(adapter)
    boxes = _boxes(collected)
    assert boxes == HARNESS.expected(ESTATE)
    assert "carl@other-client.example" not in boxes  # another client's domain on the same account
    ana = boxes["ana@acme.example"]
    [password, device] = ana.grants  # type: ignore[attr-defined]
    assert (password.kind, password.client, password.mail) == (GrantKind.APP_PASSWORD, "Thunderbird", MailAccess.FULL)
    assert password.last_used is not None and device.kind is GrantKind.DEVICE_PASSWORD
    assert boxes["info@acme.example"].delegates == ("ana@acme.example",)  # type: ignore[attr-defined]
    assert boxes["ben@acme.example"].forwards[0].mechanism is ForwardMechanism.INBOX_RULE  # type: ignore[attr-defined]
    assert len(boxes["ben@acme.example"].forwards) == 1  # the sieve holds the filter's redirect too: not twice
    assert boxes["sales@acme.example"].kind is MailboxKind.ALIAS  # type: ignore[attr-defined]
    assert dict(collected.catch_all) == {"acme.example": "info@acme.example", "acme-mail.example": None}
    assert any("acme-mail.example as pending_dns" in n for n in collected.notes)
    assert any("1 Drive device password(s) are account-wide" in n for n in collected.notes)
    assert collected.problems == ()
    # every read carried the ops token and the mailbox listing was paged (4 per page)
    assert server.count("/api/v1/mailboxes") > 4 and ("GET", "/api/v1/mailboxes") in server.log


def test_what_trekmail_does_not_expose_is_unsupported_with_the_reason(served) -> None:  # type: ignore[no-untyped-def]
    _, _, adapter = served
    coverage = _coverage(_read(adapter))
    for fact, words in ((Fact.MAILBOX_LAST_LOGIN, "no last sign-in"), (Fact.MAILBOX_INVITES, "dashboard only"),
                        (Fact.MAILBOX_OWNERS, "no owner of record"), (Fact.MAILBOX_OAUTH_GRANTS, "OAuth connections"),
                        (Fact.MAILBOX_RECOVERY, "no recovery")):
        state, reason = coverage[fact.value]
        assert state is FactState.UNSUPPORTED and words in reason, fact
    for fact in HARNESS.capabilities:
        assert coverage[fact.value][0] is FactState.COLLECTED


def test_pages_without_meta_stop_at_a_short_page(served) -> None:  # type: ignore[no-untyped-def]
    state, server, adapter = served
    state.page_meta = False
    assert _boxes(_read(adapter)) == HARNESS.expected(ESTATE)
    pages = sum(1 for method, path in server.log if path == "/api/v1/mailboxes")
    assert pages == 4  # 13 rows at 4 a page: 4, 4, 4, 1


def test_unknown_status_is_a_problem_never_active(served) -> None:  # type: ignore[no-untyped-def]
    state, _, adapter = served
    state.status_spelling[MailboxStatus.SUSPENDED] = "frozen_by_abuse_desk"
    collected = _read(adapter)
    assert "old@acme.example" not in _boxes(collected)
    assert any("unknown status 'frozen_by_abuse_desk'" in p for p in collected.problems)


def test_other_status_spellings_are_read(served) -> None:  # type: ignore[no-untyped-def]
    state, _, adapter = served
    state.status_spelling.update({MailboxStatus.SUSPENDED: "suspended", MailboxStatus.PENDING: "invited"})
    boxes = _boxes(_read(adapter))
    assert boxes["old@acme.example"].status is MailboxStatus.SUSPENDED  # type: ignore[attr-defined]
    assert boxes["new.hire@acme.example"].status is MailboxStatus.PENDING  # type: ignore[attr-defined]


def test_without_pending_rows_the_unredeemed_mailbox_is_not_listed(served) -> None:  # type: ignore[no-untyped-def]
    state, _, adapter = served
    state.pending_rows = False
    collected = _read(adapter)
    assert "new.hire@acme.example" not in _boxes(collected)
    assert _coverage(collected)["mailbox.invites"][0] is FactState.UNSUPPORTED


def test_catch_all_not_on_the_domain_record_is_unsupported(served) -> None:  # type: ignore[no-untyped-def]
    state, _, adapter = served
    state.catch_all_on_domain = False
    collected = _read(adapter)
    assert dict(collected.catch_all) == {}
    assert _coverage(collected)["domain.catch_all"] == (
        FactState.UNSUPPORTED, "TrekMail's domain records do not show the catch-all setting (it can be written, not read)")


def test_app_passwords_feature_off_is_a_note_and_no_grants(served) -> None:  # type: ignore[no-untyped-def]
    state, _, adapter = served
    state.app_passwords_off = True
    collected = _read(adapter)
    assert [g.kind for g in _boxes(collected)["ana@acme.example"].grants] == [GrantKind.DEVICE_PASSWORD]  # type: ignore[attr-defined]
    assert any("app passwords are turned off" in n for n in collected.notes)
    assert collected.problems == ()


def test_throttling_with_retry_after_header_or_only_in_the_body(served) -> None:  # type: ignore[no-untyped-def]
    state, server, adapter = served
    server.faults.throttle = 2
    assert _boxes(_read(adapter)) == HARNESS.expected(ESTATE)
    state.retry_after_header = False
    server.faults.throttle = 2
    assert _boxes(_read(adapter)) == HARNESS.expected(ESTATE)
    assert server.faults.throttle == 0


def test_an_error_marked_not_retryable_is_not_retried(served) -> None:  # type: ignore[no-untyped-def]
    _, server, adapter = served
    server.throttled = lambda request: trek_app(TrekState())(request).__class__(  # type: ignore[assignment]
        503, {"error": {"code": "maintenance", "message": "Down for maintenance.", "hint": "later",
                        "request_id": "req_1", "retryable": False}})
    server.faults.throttle = 1
    with pytest.raises(AdapterError, match="503 maintenance") as raised:
        _read(adapter)
    assert "after 1 attempts" in str(raised.value) and server.count() == 1
    assert TOKEN not in str(raised.value)


def test_missing_forwarding_scope_fails_forwards_naming_the_scope(served) -> None:  # type: ignore[no-untyped-def]
    state, server, adapter = served
    state.scopes.discard("mailboxes:forwarding:read")
    collected = _read(adapter)
    coverage = _coverage(collected)
    assert coverage["mailbox.forwards"][0] is FactState.FAILED
    assert "mailboxes:forwarding:read" in coverage["mailbox.forwards"][1]
    asked = sum(1 for _, path in server.log if path.endswith("/forwarding"))
    assert 1 <= asked <= 4  # the first page's mailboxes (read at once) ask; the rest are not asked again


def test_missing_device_scope_makes_passwords_unsupported_naming_it(served) -> None:  # type: ignore[no-untyped-def]
    state, _, adapter = served
    state.scopes.discard("drive:devices:read")
    collected = _read(adapter)
    assert _coverage(collected)["mailbox.app_passwords"] == (
        FactState.UNSUPPORTED, "Drive device passwords cannot be read: the ops token lacks the drive:devices:read scope")
    assert [g.kind for g in _boxes(collected)["ana@acme.example"].grants] == [GrantKind.APP_PASSWORD]  # type: ignore[attr-defined]


def test_a_bad_token_fails_the_tenant_without_echoing_it(served, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _, server, _ = served
    (tmp_path / "bad").write_text("tm_live_wrong0000", encoding="utf-8")
    adapter = TrekMailAdapter(TrekMailOptions(url=server.url), SecretRef(f"file:{tmp_path / 'bad'}"),
                              retry=RetryPolicy(attempts=2, base=0.01, cap=0.01))
    with pytest.raises(AdapterError, match="401 unauthenticated") as raised:
        _read(adapter)
    assert "tm_live_wrong0000" not in str(raised.value)


def test_a_configured_domain_not_on_the_account_has_an_unknown_catch_all(served) -> None:  # type: ignore[no-untyped-def]
    _, _, adapter = served
    tenant = Tenant("acme", "trekmail", (*ESTATE.domains, "acme-legacy.example"))
    collected = asyncio.run(collect_all(adapter, tenant))
    [entry] = [c for c in collected.coverage if c.fact is Fact.DOMAIN_CATCH_ALL and c.subject == "acme-legacy.example"]
    assert entry.state is FactState.FAILED and "not on this TrekMail account" in entry.reason
    assert "acme-legacy.example" not in collected.catch_all
    assert any("acme-legacy.example is not on this TrekMail account" in p for p in collected.problems)

"""The Microsoft 365 adapter against the Graph contract server: Graph's quirks, its limits, and the writes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from scanner.adapters.base import collect_all
from scanner.adapters.base import Collected
from scanner.adapters.microsoft import (
    NON_PREMIUM,
    MicrosoftAdapter,
    last_sign_in,
    parse_time,
    recipients,
    rule_forwards,
)
from scanner.collect import adapter_for
from scanner.config import load_config
from scanner.errors import AdapterError
from scanner.model import Coverage, Fact, FactState, Forward, ForwardMechanism, MailboxKind, MailboxStatus, Tenant
from tests.contract.estate import NOW, Estate, EstateMailbox, standard_estate
from tests.contract.microsoft import CLIENT_SECRET, HARNESS, INITIAL_DOMAIN, TOKEN_PATH, GraphServer

HTTP = """
[http]
timeout = 5.0
attempts = 4
backoff_base = 0.01
backoff_cap = 0.05
max_retry_after = {max_retry_after}
"""


@pytest.fixture
def estate() -> Estate:
    return standard_estate(users=3)


@pytest.fixture
def server(estate: Estate) -> Iterator[GraphServer]:
    server = HARNESS.serve(estate, page_size=4)
    yield server
    server.stop()


@contextmanager
def _serving(estate: Estate, *, page_size: int) -> Iterator[GraphServer]:
    server = HARNESS.serve(estate, page_size=page_size)
    try:
        yield server
    finally:
        server.stop()


def _adapter(server: GraphServer, estate: Estate, tmp_path: Path, *, max_retry_after: float = 0.05,
             secret: str | None = None) -> MicrosoftAdapter:
    text = HTTP.format(max_retry_after=max_retry_after) + HARNESS.tenant_toml(server, estate, tmp_path)
    if secret is not None:
        (tmp_path / "ms-client-secret").write_text(secret, encoding="utf-8")
    (tmp_path / "mailwarden.toml").write_text(text, encoding="utf-8")
    config = load_config(tmp_path / "mailwarden.toml")
    adapter = adapter_for(config.tenants[0], config)
    assert isinstance(adapter, MicrosoftAdapter)
    return adapter


def _collect(server: GraphServer, estate: Estate, tmp_path: Path) -> Collected:
    adapter = _adapter(server, estate, tmp_path)
    return asyncio.run(collect_all(adapter, _tenant(estate)))


def _tenant(estate: Estate) -> Tenant:
    return Tenant(estate.tenant, "microsoft", estate.domains)


def _uid(server: GraphServer, address: str) -> str:
    return str(next(u["id"] for u in server.state.users.values() if u["mail"] == address))


def _coverage(collected: Collected, fact: Fact) -> Coverage:
    (found,) = [c for c in collected.coverage if c.fact is fact and not c.subject]
    return found


# Mapping rules (no network)

def test_last_login_prefers_the_last_successful_sign_in() -> None:
    activity = {"lastSignInDateTime": "2026-11-21T10:00:00Z", "lastNonInteractiveSignInDateTime": "2026-11-22T10:00:00Z",
                "lastSuccessfulSignInDateTime": "2026-11-01T08:00:00Z"}
    assert last_sign_in(activity) == datetime(2026, 11, 1, 8, tzinfo=UTC)


def test_last_login_falls_back_to_the_later_of_interactive_and_non_interactive() -> None:
    activity = {"lastSignInDateTime": "2026-11-21T10:00:00Z", "lastNonInteractiveSignInDateTime": "2026-11-22T10:00:00Z",
                "lastSuccessfulSignInDateTime": None}
    assert last_sign_in(activity) == datetime(2026, 11, 22, 10, tzinfo=UTC)
    assert last_sign_in({"lastSignInDateTime": "2026-11-21T10:00:00Z"}) == datetime(2026, 11, 21, 10, tzinfo=UTC)


def test_no_sign_in_activity_is_never_signed_in() -> None:
    assert last_sign_in(None) is None
    assert last_sign_in({"lastSignInDateTime": None, "lastNonInteractiveSignInDateTime": None}) is None
    assert last_sign_in({"lastSuccessfulSignInDateTime": "0001-01-01T00:00:00Z"}) is None


def test_graph_timestamps_with_seven_fraction_digits_parse() -> None:
    assert parse_time("2026-08-02T16:40:12.1234567Z") == datetime(2026, 8, 2, 16, 40, 12, 123456, tzinfo=UTC)
    with pytest.raises(ValueError):
        parse_time("yesterday")


def test_redirect_to_is_read_as_a_list_or_a_single_recipient() -> None:
    one = {"emailAddress": {"name": "X", "address": "X@Out.test"}}
    assert recipients([one]) == recipients(one) == ("x@out.test",)
    assert recipients(None) == recipients([]) == recipients("x@out.test") == ()


def test_rule_forwards_reads_all_three_actions_and_skips_disabled_rules() -> None:
    def box(address: str) -> list[dict[str, object]]:
        return [{"emailAddress": {"address": address}}]

    rules = [
        {"id": "1", "isEnabled": True, "actions": {"forwardTo": box("a@out.test"), "forwardAsAttachmentTo": box(
            "b@out.test"), "redirectTo": box("c@out.test")}},
        {"id": "2", "isEnabled": False, "actions": {"forwardTo": box("off@out.test")}},
        {"id": "3", "isEnabled": True, "actions": {"moveToFolder": "x", "forwardTo": box("a@out.test")}},
    ]
    assert rule_forwards(rules) == (
        Forward("a@out.test", ForwardMechanism.INBOX_RULE), Forward("b@out.test", ForwardMechanism.INBOX_RULE),
        Forward("c@out.test", ForwardMechanism.REDIRECT),
    )


# Reading against the contract server

def test_inventory_maps_graph_onto_the_model(server: GraphServer, estate: Estate, tmp_path: Path) -> None:
    collected = _collect(server, estate, tmp_path)
    boxes = {m.address: m for m in collected.mailboxes}
    assert collected.problems == ()
    assert boxes["info@acme.example"].kind is MailboxKind.SHARED
    assert boxes["info@acme.example"].status is MailboxStatus.ACTIVE  # sign-in blocked is normal for shared
    assert boxes["old@acme.example"].status is MailboxStatus.SUSPENDED
    assert boxes["ben@acme.example"].forwards == (Forward("ben@outside.test", ForwardMechanism.INBOX_RULE),)
    assert boxes["ana@acme.example"].forwards == (Forward("ana@personal.test", ForwardMechanism.REDIRECT),)
    pending = boxes["new.hire@acme.example"]
    assert pending.status is MailboxStatus.PENDING and pending.invite is not None
    assert pending.invite.sent == NOW - timedelta(days=20)
    assert collected.catch_all == {}
    for fact in (Fact.MAILBOX_OWNERS, Fact.MAILBOX_DELEGATES, Fact.DOMAIN_CATCH_ALL):
        coverage = _coverage(collected, fact)
        assert coverage.state is FactState.UNSUPPORTED
    assert "FullAccess" in _coverage(collected, Fact.MAILBOX_OWNERS).reason
    assert "catch-all" in _coverage(collected, Fact.DOMAIN_CATCH_ALL).reason
    assert "ForwardingSmtpAddress" in _coverage(collected, Fact.MAILBOX_FORWARDS).reason


def test_non_premium_tenant_is_read_without_sign_in_activity(server: GraphServer, estate: Estate,
                                                             tmp_path: Path) -> None:
    server.state.premium = False
    collected = _collect(server, estate, tmp_path)
    assert collected.problems == ()
    assert len(collected.mailboxes) == len(estate.mailboxes)
    assert all(m.last_login is None for m in collected.mailboxes)
    coverage = _coverage(collected, Fact.MAILBOX_LAST_LOGIN)
    assert coverage.state is FactState.UNSUPPORTED and NON_PREMIUM in coverage.reason
    assert _coverage(collected, Fact.MAILBOX_LIST).state is FactState.COLLECTED


def test_missing_audit_log_permission_fails_last_login(server: GraphServer, estate: Estate, tmp_path: Path) -> None:
    server.state.audit_log_denied = True
    collected = _collect(server, estate, tmp_path)
    assert len(collected.mailboxes) == len(estate.mailboxes)
    coverage = _coverage(collected, Fact.MAILBOX_LAST_LOGIN)
    assert coverage.state is FactState.FAILED and "Authorization_RequestDenied" in coverage.reason
    assert len(collected.problems) == 1


@pytest.mark.parametrize("switch", ["no_mailbox", "no_rest"])
def test_a_mailbox_graph_cannot_read_is_unsupported_not_a_pass(server: GraphServer, estate: Estate, tmp_path: Path,
                                                               switch: str) -> None:
    # 404 MailboxNotEnabledForRESTAPI and MailboxNotSupportedForRESTAPI (KB 4462988) are treated alike
    getattr(server.state, switch).add(_uid(server, "ben@acme.example"))
    collected = _collect(server, estate, tmp_path)
    ben = next(m for m in collected.mailboxes if m.address == "ben@acme.example")
    assert collected.problems == ()  # the tenant stays complete
    assert ben.forwards == () and ben.kind is MailboxKind.USER
    (gap,) = [c for c in collected.coverage if c.subject]
    assert (gap.fact, gap.state, gap.subject) == (Fact.MAILBOX_FORWARDS, FactState.UNSUPPORTED, "ben@acme.example")
    code = "MailboxNotEnabledForRESTAPI" if switch == "no_mailbox" else "MailboxNotSupportedForRESTAPI"
    assert code in gap.reason and "on-premises" in gap.reason and "soft-deleted" in gap.reason


def test_the_tenant_domains_are_the_verified_ones_with_the_initial_domain(server: GraphServer, estate: Estate,
                                                                          tmp_path: Path) -> None:
    server.state.domains.append("acme-partner.example")
    server.state.unverified.append("not-yet.example")
    collected = _collect(server, estate, tmp_path)
    assert collected.tenant_domains == tuple(sorted({*estate.domains, INITIAL_DOMAIN, "acme-partner.example"}))
    assert _coverage(collected, Fact.TENANT_DOMAINS).state is FactState.COLLECTED


def test_an_unreadable_domain_list_is_said_not_guessed(server: GraphServer, estate: Estate, tmp_path: Path) -> None:
    server.state.domains_denied = True
    collected = _collect(server, estate, tmp_path)
    assert collected.tenant_domains is None
    coverage = _coverage(collected, Fact.TENANT_DOMAINS)
    assert coverage.state is FactState.FAILED and "Domain.Read.All" in coverage.reason
    assert len(collected.problems) == 1 and "Domain.Read.All" in collected.problems[0]
    assert len(collected.mailboxes) == len(estate.mailboxes)


def test_a_sign_in_activity_403_is_asked_once_more(server: GraphServer, estate: Estate, tmp_path: Path) -> None:
    server.state.sign_in_refusals = 1  # Graph refuses once, then answers
    collected = _collect(server, estate, tmp_path)
    assert collected.problems == () and collected.notes == ()
    assert _coverage(collected, Fact.MAILBOX_LAST_LOGIN).state is FactState.COLLECTED
    boxes = {m.address: m for m in collected.mailboxes}
    assert boxes == HARNESS.expected(estate)
    assert boxes["user1@acme.example"].last_login is not None


def test_a_sign_in_activity_403_refused_twice_is_unsupported(server: GraphServer, estate: Estate,
                                                             tmp_path: Path) -> None:
    server.state.sign_in_refusals = 2
    collected = _collect(server, estate, tmp_path)
    assert collected.problems == ()
    coverage = _coverage(collected, Fact.MAILBOX_LAST_LOGIN)
    assert coverage.state is FactState.UNSUPPORTED and NON_PREMIUM in coverage.reason
    assert all(m.last_login is None for m in collected.mailboxes)


def test_a_sign_in_activity_403_on_a_later_page_is_not_fatal(server: GraphServer, estate: Estate,
                                                             tmp_path: Path) -> None:
    server.state.non_premium_from = 4  # the second page of four users on
    collected = _collect(server, estate, tmp_path)
    assert collected.problems == ()  # the tenant stays complete
    addresses = [m.address for m in collected.mailboxes]
    assert sorted(addresses) == sorted(b.address for b in estate.mailboxes)  # each user once
    first = {u["mail"] for u in sorted(server.state.users.values(), key=lambda u: u["id"])[:4]}
    gaps = {c.subject: c for c in collected.coverage if c.fact is Fact.MAILBOX_LAST_LOGIN and c.subject}
    assert set(gaps) == set(addresses) - first
    assert all(c.state is FactState.UNSUPPORTED and NON_PREMIUM in c.reason for c in gaps.values())
    expected = HARNESS.expected(estate)
    for box in collected.mailboxes:
        want = expected[box.address].last_login if box.address in first else None
        assert box.last_login == want
    assert _coverage(collected, Fact.MAILBOX_LAST_LOGIN).state is FactState.COLLECTED
    assert len(collected.notes) == 1 and NON_PREMIUM in collected.notes[0]


def test_room_and_equipment_mailboxes_are_resources(tmp_path: Path) -> None:
    estate = Estate("acme", ("acme.example",), (
        EstateMailbox("room1@acme.example", "Room 1", kind=MailboxKind.RESOURCE, last_login=None),
        EstateMailbox("van@acme.example", "Van", kind=MailboxKind.RESOURCE, last_login=None),
    ))
    with _serving(estate, page_size=4) as server:
        server.state.purposes[_uid(server, "van@acme.example")] = "equipment"
        collected = _collect(server, estate, tmp_path)
    assert {m.address: m for m in collected.mailboxes} == HARNESS.expected(estate)
    assert {m.kind for m in collected.mailboxes} == {MailboxKind.RESOURCE}


def test_single_recipient_redirect_is_read(server: GraphServer, estate: Estate, tmp_path: Path) -> None:
    server.state.redirect_single = True
    collected = _collect(server, estate, tmp_path)
    assert {m.address: m for m in collected.mailboxes} == HARNESS.expected(estate)


def test_accepted_guests_are_not_mailboxes(server: GraphServer, estate: Estate, tmp_path: Path) -> None:
    guest = dict(server.state.users[_uid(server, "new.hire@acme.example")])
    guest.update(id="9a2d7c11-0000-4000-8000-0000000000aa", mail="vendor@x.test", externalUserState="Accepted",
                 userPrincipalName=f"vendor_x.test#EXT#@{INITIAL_DOMAIN}")
    server.state.users[guest["id"]] = guest
    collected = _collect(server, estate, tmp_path)
    assert "vendor@x.test" not in {m.address for m in collected.mailboxes}
    assert len(collected.mailboxes) == len(estate.mailboxes)


def test_rules_access_denied_fails_forwards_for_that_mailbox_only(server: GraphServer, estate: Estate,
                                                                  tmp_path: Path) -> None:
    server.state.denied_rules.add(_uid(server, "ana@acme.example"))
    collected = _collect(server, estate, tmp_path)
    (failed,) = [c for c in collected.coverage if c.subject]
    assert (failed.fact, failed.state, failed.subject) == (Fact.MAILBOX_FORWARDS, FactState.FAILED, "ana@acme.example")
    assert "ErrorAccessDenied" in failed.reason
    assert len(collected.problems) == 1 and "ana@acme.example" in collected.problems[0]
    boxes = {m.address: m for m in collected.mailboxes}
    assert boxes["ben@acme.example"].forwards  # the others are still read


def test_unverified_configured_domain_is_a_problem(server: GraphServer, estate: Estate, tmp_path: Path) -> None:
    server.state.domains.remove("acme-mail.example")
    collected = _collect(server, estate, tmp_path)
    assert len(collected.problems) == 1 and "acme-mail.example" in collected.problems[0]


def test_throttling_waits_for_retry_after(server: GraphServer, estate: Estate, tmp_path: Path) -> None:
    adapter = _adapter(server, estate, tmp_path, max_retry_after=0.3)
    asyncio.run(collect_all(adapter, _tenant(estate)))  # sign in first, so the throttled request is a Graph one
    server.faults.throttle = 1
    started = time.monotonic()
    collected = asyncio.run(collect_all(adapter, _tenant(estate)))
    # Retry-After: 1 capped at 0.3 s; backoff alone would have waited at most 0.05 s
    assert time.monotonic() - started >= 0.3
    assert {m.address: m for m in collected.mailboxes} == HARNESS.expected(estate)


def test_per_mailbox_concurrency_stays_within_outlook_limit(tmp_path: Path) -> None:
    estate = standard_estate(users=12)
    with _serving(estate, page_size=50) as server:
        server.state.mailbox_delay = 0.01
        collected = _collect(server, estate, tmp_path)
    assert len(collected.mailboxes) == len(estate.mailboxes)
    assert max(server.state.peak.values()) <= 4
    assert server.count("/v1.0/users/") >= 2 * (len(estate.mailboxes) - 1)


def test_next_link_off_the_graph_endpoint_is_refused(server: GraphServer, estate: Estate, tmp_path: Path) -> None:
    adapter = _adapter(server, estate, tmp_path)
    page = {"value": [], "@odata.nextLink": "https://graph.attacker.test/v1.0/users?$skiptoken=x"}
    with pytest.raises(AdapterError, match="not on the Graph endpoint"):
        adapter._next_link(page, f"{server.url}/v1.0/users", None)
    assert adapter._next_link({"value": []}, f"{server.url}/v1.0/users", None) is None


def test_wrong_client_secret_is_a_clear_error_without_the_secret(server: GraphServer, estate: Estate,
                                                                 tmp_path: Path) -> None:
    wrong = "Wr0ng~secret.value_never-shown"
    adapter = _adapter(server, estate, tmp_path, secret=wrong)
    with pytest.raises(AdapterError, match="invalid_client") as raised:
        asyncio.run(collect_all(adapter, _tenant(estate)))
    assert wrong not in str(raised.value) and CLIENT_SECRET not in str(raised.value)
    assert server.count("/v1.0/") == 0


def test_a_server_certificate_from_an_untrusted_ca_is_refused(server: GraphServer, estate: Estate,
                                                              tmp_path: Path) -> None:
    table = HARNESS.tenant_toml(server, estate, tmp_path).split("\n", 1)[1]  # without the test CA
    (tmp_path / "mailwarden.toml").write_text(HTTP.format(max_retry_after=0.05) + table, encoding="utf-8")
    config = load_config(tmp_path / "mailwarden.toml")
    assert config.http.ca_bundle is None
    adapter = adapter_for(config.tenants[0], config)
    assert adapter is not None
    with pytest.raises(AdapterError, match="ConnectError"):
        asyncio.run(collect_all(adapter, _tenant(estate)))
    assert server.count(TOKEN_PATH) == 0


# Writes

def test_disable_and_enable_a_forwarding_rule(server: GraphServer, estate: Estate, tmp_path: Path) -> None:
    adapter = _adapter(server, estate, tmp_path)
    uid = asyncio.run(adapter.find_user("ben@acme.example"))
    assert uid == _uid(server, "ben@acme.example")
    (rule,) = [r for r in asyncio.run(adapter.forwarding_rules(uid)) if r.enabled]
    assert rule.enabled and rule.forwards == (Forward("ben@outside.test", ForwardMechanism.INBOX_RULE),)
    after = asyncio.run(adapter.disable_forwarding_rule(uid, rule.rule_id))
    assert after is not None and after.enabled is False
    collected = asyncio.run(collect_all(adapter, _tenant(estate)))
    assert next(m for m in collected.mailboxes if m.address == "ben@acme.example").forwards == ()
    undone = asyncio.run(adapter.enable_forwarding_rule(uid, rule.rule_id))
    assert undone is not None and undone.enabled is True


def test_delete_a_forwarding_rule_and_restore_it(server: GraphServer, estate: Estate, tmp_path: Path) -> None:
    adapter = _adapter(server, estate, tmp_path)
    uid = _uid(server, "ana@acme.example")
    (rule,) = [r for r in asyncio.run(adapter.forwarding_rules(uid)) if r.enabled]
    assert asyncio.run(adapter.delete_forwarding_rule(uid, rule.rule_id)) is None
    assert rule.rule_id not in {r.rule_id for r in asyncio.run(adapter.forwarding_rules(uid))}
    restored = asyncio.run(adapter.restore_forwarding_rule(uid, rule.raw))
    assert restored is not None and restored.rule_id != rule.rule_id
    assert restored.forwards == rule.forwards and restored.enabled


def test_write_that_changes_nothing_is_detectable(server: GraphServer, estate: Estate, tmp_path: Path) -> None:
    adapter = _adapter(server, estate, tmp_path)
    uid = _uid(server, "ben@acme.example")
    (rule,) = [r for r in asyncio.run(adapter.forwarding_rules(uid)) if r.enabled]
    server.state.ignore_writes = True
    after = asyncio.run(adapter.disable_forwarding_rule(uid, rule.rule_id))
    assert after is not None and after.enabled is True
    account = asyncio.run(adapter.disable_account(uid))
    assert account is not None and account.enabled is True


def test_disable_and_enable_an_account(server: GraphServer, estate: Estate, tmp_path: Path) -> None:
    adapter = _adapter(server, estate, tmp_path)
    uid = _uid(server, "user1@acme.example")
    disabled = asyncio.run(adapter.disable_account(uid))
    assert disabled is not None and disabled.enabled is False and disabled.address == "user1@acme.example"
    assert server.state.users[uid]["accountEnabled"] is False
    enabled = asyncio.run(adapter.enable_account(uid))
    assert enabled is not None and enabled.enabled is True


def test_revoke_a_pending_invite_deletes_the_guest(server: GraphServer, estate: Estate, tmp_path: Path) -> None:
    adapter = _adapter(server, estate, tmp_path)
    uid = _uid(server, "new.hire@acme.example")
    assert asyncio.run(adapter.revoke_invite(uid)) is None
    assert uid not in server.state.users


def test_revoke_refuses_an_account_that_is_not_a_pending_guest(server: GraphServer, estate: Estate,
                                                               tmp_path: Path) -> None:
    adapter = _adapter(server, estate, tmp_path)
    uid = _uid(server, "ben@acme.example")
    with pytest.raises(AdapterError, match="not a guest with a pending invitation"):
        asyncio.run(adapter.revoke_invite(uid))
    assert uid in server.state.users


def test_resend_an_invite_to_the_same_guest(server: GraphServer, estate: Estate, tmp_path: Path) -> None:
    adapter = _adapter(server, estate, tmp_path)
    uid = _uid(server, "new.hire@acme.example")
    state = asyncio.run(adapter.resend_invite("new.hire@acme.example"))
    assert (state.user, state.state) == (uid, "PendingAcceptance")
    assert state.changed is not None and state.changed > NOW - timedelta(days=20)
    assert server.state.invitations == 1


# Persistence surfaces: delegated OAuth grants, tenant-wide admin consents, email and phone authentication methods


def _grants(server: GraphServer) -> str:
    state = server.state
    ana = next(u for u in state.users.values() if u["mail"] == "ana@acme.example")
    state.service_principals = {
        "sp-mailapp": {"id": "sp-mailapp", "displayName": "Mail Sorter", "appId": "11111111-aaaa-4000-8000-000000000001"},
        "sp-teams": {"id": "sp-teams", "displayName": "Teams Helper", "appId": "22222222-bbbb-4000-8000-000000000002"},
        "sp-crm": {"id": "sp-crm", "displayName": "CRM Sync", "appId": "33333333-cccc-4000-8000-000000000003"}}
    state.permission_grants = [
        {"id": "grant-ana-mail", "clientId": "sp-mailapp", "consentType": "Principal", "principalId": ana["id"],
         "resourceId": "sp-graph", "scope": "Mail.Read offline_access"},
        {"id": "grant-ana-profile", "clientId": "sp-teams", "consentType": "Principal", "principalId": ana["id"],
         "resourceId": "sp-graph", "scope": "User.Read"},
        {"id": "grant-all-crm", "clientId": "sp-crm", "consentType": "AllPrincipals", "principalId": None,
         "resourceId": "sp-graph", "scope": "Mail.ReadWrite User.Read"}]
    state.email_methods[ana["id"]] = [{"id": "3ddfcfc8-9383-446f-83cc-3ab9be4be18f", "emailAddress": "Ana@Home.test"}]
    state.phone_methods[ana["id"]] = [{"id": "3179e48a-750b-4051-897c-87b9720928f7", "phoneNumber": "+1 5555551234",
                                       "phoneType": "mobile", "smsSignInState": "notAllowedByPolicy"}]
    return str(ana["id"])


def test_grants_consents_and_methods_are_read(server: GraphServer, estate: Estate, tmp_path: Path) -> None:
    from scanner.model import GrantKind, MailAccess

    _grants(server)
    collected = _collect(server, estate, tmp_path)
    ana = next(m for m in collected.mailboxes if m.address == "ana@acme.example")
    sorter, teams = ana.grants
    assert (sorter.kind, sorter.id, sorter.client, sorter.mail) == (
        GrantKind.OAUTH, "grant-ana-mail", "Mail Sorter", MailAccess.READ)
    assert sorter.client_id == "11111111-aaaa-4000-8000-000000000001" and teams.mail is MailAccess.NONE
    assert [(r.kind.value, r.value) for r in ana.recovery] == [("email", "ana@home.test"), ("phone", "+1 5555551234")]
    assert collected.notes == ("tenant-wide admin consent: CRM Sync may read and change the mail of every user who "
                               "signs in to it (Mail.ReadWrite User.Read)",)
    coverage = {c.fact: (c.state, c.reason) for c in collected.coverage if not c.subject}
    assert coverage[Fact.MAILBOX_OAUTH_GRANTS][0] is FactState.COLLECTED
    assert coverage[Fact.MAILBOX_RECOVERY][0] is FactState.COLLECTED
    assert coverage[Fact.MAILBOX_APP_PASSWORDS][0] is FactState.UNSUPPORTED


def test_missing_permissions_make_the_facts_unsupported_naming_them(server: GraphServer, estate: Estate,
                                                                   tmp_path: Path) -> None:
    _grants(server)
    server.state.grants_denied = server.state.methods_denied = True
    collected = _collect(server, estate, tmp_path)
    coverage = {c.fact: (c.state, c.reason) for c in collected.coverage if not c.subject}
    state, reason = coverage[Fact.MAILBOX_OAUTH_GRANTS]
    assert state is FactState.UNSUPPORTED and "Directory.Read.All" in reason
    state, reason = coverage[Fact.MAILBOX_RECOVERY]
    assert state is FactState.UNSUPPORTED and "UserAuthenticationMethod.Read.All" in reason
    assert all(m.grants == () and m.recovery == () for m in collected.mailboxes)
    assert collected.problems == ()
    # asked once per permission (the first page's users at most), not for every user
    asked = sum(1 for _, path in server.log if path.endswith("/oauth2PermissionGrants"))
    assert asked <= 4


def test_grant_revoke_deletes_the_grant_and_refuses_the_undo(server: GraphServer, estate: Estate,
                                                              tmp_path: Path) -> None:
    from scanner.adapters.base import Refused

    _grants(server)
    adapter = _adapter(server, estate, tmp_path)
    params = {"kind": "oauth", "grant": "grant-ana-mail"}
    before = asyncio.run(adapter.remedy_read("grant.revoke", "ana@acme.example", params))
    assert before["state"] == {"grants": ["grant-ana-mail"]}
    after = asyncio.run(adapter.remedy_apply("grant.revoke", "ana@acme.example", params, before))
    assert after["state"] == {"grants": []}
    assert [g["id"] for g in server.state.permission_grants] == ["grant-ana-profile", "grant-all-crm"]
    with pytest.raises(Refused, match="a revoked grant cannot be restored"):
        asyncio.run(adapter.remedy_restore("grant.revoke", "ana@acme.example", params, before))
    with pytest.raises(Refused, match="app passwords"):
        asyncio.run(adapter.remedy_read("grant.revoke", "ana@acme.example", {"kind": "app_password", "grant": "x"}))

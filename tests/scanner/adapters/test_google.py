"""The Google Workspace adapter against its contract server: mapping edge cases, token handling, writes."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from checks.account import inactive_account, never_used_account
from checks.evaluate import evaluate
from checks.invites import expired_invite, stale_invite
from checks.registry import Policy
from scanner.adapters.base import Collected, Refused, collect_all
from scanner.adapters.google import (
    AutoForwarding,
    GoogleAdapter,
    build,
    google_transient,
    parse_time,
)
from scanner.config import load_config
from scanner.errors import AdapterError
from scanner.model import (
    Fact, FactState, Forward, ForwardMechanism, Inventory, MailboxKind, MailboxStatus, Status, Tenant,
)
from tests.contract.estate import NOW, Estate, standard_estate
from tests.contract.google import ADMIN, AUTH, CUSTOMER_ID, HARNESS, SA_EMAIL, Workspace
from tests.contract.server import ContractServer

HTTP = "[http]\ntimeout = 5.0\nattempts = 4\nbackoff_base = 0.01\nbackoff_cap = 0.05\nmax_retry_after = 0.05\n"


@pytest.fixture
def estate() -> Estate:
    return standard_estate(users=3)


@pytest.fixture
def server(estate: Estate) -> Iterator[ContractServer]:
    server = HARNESS.serve(estate, page_size=2)
    yield server
    server.stop()


@pytest.fixture
def space(server: ContractServer) -> Workspace:
    return HARNESS.workspace(server)


def _adapter(server: ContractServer, estate: Estate, tmp_path: Path, **options: str) -> GoogleAdapter:
    toml = HARNESS.tenant_toml(server, estate, tmp_path, customer_id=options.pop("customer_id", CUSTOMER_ID))
    toml += "".join(f'{k} = "{v}"\n' for k, v in options.items())
    path = tmp_path / "mailwarden.toml"
    path.write_text(HTTP + toml, encoding="utf-8")
    config = load_config(path)
    return build(config.tenants[0], config)


def _collect(adapter: GoogleAdapter, estate: Estate) -> Collected:
    return asyncio.run(collect_all(adapter, Tenant(estate.tenant, "google", estate.domains)))


def _by_address(collected: Collected) -> dict[str, Any]:
    return {m.address: m for m in collected.mailboxes}


def _coverage(collected: Collected, subject: str = "") -> dict[Fact, tuple[FactState, str]]:
    return {c.fact: (c.state, c.reason) for c in collected.coverage if c.subject == subject}


def test_epoch_last_login_means_never_signed_in(server: ContractServer, estate: Estate, tmp_path: Path) -> None:
    boxes = _by_address(_collect(_adapter(server, estate, tmp_path), estate))
    assert boxes["never@acme.example"].last_login is None
    assert boxes["user1@acme.example"].last_login == HARNESS.expected(estate)["user1@acme.example"].last_login


def test_absent_last_login_also_means_never(server: ContractServer, space: Workspace, estate: Estate,
                                            tmp_path: Path) -> None:
    del space.users["never@acme.example"]["lastLoginTime"]
    boxes = _by_address(_collect(_adapter(server, estate, tmp_path), estate))
    assert boxes["never@acme.example"].last_login is None


def test_unreadable_last_login_is_a_failure_for_that_mailbox(server: ContractServer, space: Workspace,
                                                             estate: Estate, tmp_path: Path) -> None:
    space.users["user2@acme.example"]["lastLoginTime"] = "yesterday-ish"
    collected = _collect(_adapter(server, estate, tmp_path), estate)
    assert _coverage(collected, "user2@acme.example")[Fact.MAILBOX_LAST_LOGIN][0] is FactState.FAILED
    assert _by_address(collected)["user2@acme.example"].last_login is None


def test_archived_user_is_disabled_and_suspended_is_suspended(server: ContractServer, space: Workspace,
                                                              estate: Estate, tmp_path: Path) -> None:
    space.users["user0@acme.example"]["archived"] = True
    boxes = _by_address(_collect(_adapter(server, estate, tmp_path), estate))
    assert boxes["user0@acme.example"].status is MailboxStatus.DISABLED
    assert boxes["old@acme.example"].status is MailboxStatus.SUSPENDED


def test_jwt_claims_and_one_token_per_subject(server: ContractServer, space: Workspace, estate: Estate,
                                              tmp_path: Path) -> None:
    adapter = _adapter(server, estate, tmp_path)
    collected = _collect(adapter, estate)
    subjects = [g["sub"] for g in space.grants]
    gmail_users = [m.address for m in collected.mailboxes if m.kind is MailboxKind.USER
                   and m.status not in (MailboxStatus.PENDING, MailboxStatus.SUSPENDED) and m.address != ADMIN]
    # directory, invitations, policies and the security scope (tokens, asps) as the admin, then one per user
    assert sorted(subjects) == sorted([ADMIN, ADMIN, ADMIN, ADMIN, *gmail_users])
    for grant in space.grants:
        assert grant["iss"] == SA_EMAIL and grant["aud"] == f"{server.url}/token"
        assert 0 < grant["exp"] - grant["iat"] <= 3600
    assert {g["scope"] for g in space.grants if g["sub"] != ADMIN} == {f"{AUTH}gmail.settings.basic"}
    assert {g["scope"] for g in space.grants if g["sub"] == ADMIN} == {
        f"{AUTH}admin.directory.user.readonly {AUTH}admin.directory.domain.readonly "
        f"{AUTH}admin.directory.group.readonly",
        f"{AUTH}cloud-identity.userinvitations.readonly",
        f"{AUTH}cloud-identity.policies.readonly",
        f"{AUTH}admin.directory.user.security",
    }
    # The admin's tokens are cached until expiry; a user's is dropped once that user's Gmail settings are read
    # (a crawl's memory must not grow with its users), so a second crawl asks again only for the users'.
    issued = server.count("/token")
    _collect(adapter, estate)
    assert server.count("/token") == issued + len(gmail_users)


@pytest.mark.parametrize("status", [403, 429])
def test_recovers_from_both_throttling_shapes(server: ContractServer, space: Workspace, estate: Estate,
                                              tmp_path: Path, status: int) -> None:
    space.throttle_status = status
    server.faults.throttle = 3
    collected = _collect(_adapter(server, estate, tmp_path), estate)
    assert _by_address(collected) == HARNESS.expected(estate)


def test_transient_hook_keys_on_reason_not_only_status() -> None:
    def response(status: int, reason: str) -> httpx.Response:
        return httpx.Response(status, json={"error": {"code": status, "errors": [{"reason": reason}]}})

    assert google_transient(response(403, "userRateLimitExceeded"))
    assert google_transient(response(403, "quotaExceeded"))
    assert not google_transient(response(403, "forbidden"))
    assert not google_transient(httpx.Response(403, content=b"<html>denied</html>"))


def test_without_customer_id_invites_are_first_sign_ins_only(server: ContractServer, space: Workspace,
                                                              estate: Estate, tmp_path: Path) -> None:
    space.users["user1@acme.example"]["agreedToTerms"] = False
    adapter = _adapter(server, estate, tmp_path, customer_id="")
    collected = _collect(adapter, estate)
    assert Fact.MAILBOX_INVITES in adapter.capabilities
    state, reason = _coverage(collected)[Fact.MAILBOX_INVITES]
    assert state is FactState.COLLECTED and "agreedToTerms" in reason and "customer_id" in reason
    boxes = _by_address(collected)
    assert "new.hire@acme.example" not in boxes  # an unmanaged-account invitation needs customer_id
    assert boxes["user1@acme.example"].status is MailboxStatus.PENDING
    assert server.count("/v1/customers") == 0
    with pytest.raises(AdapterError, match="customer_id"):
        asyncio.run(adapter.cancel_invitation("new.hire@acme.example"))


def test_catch_all_is_unsupported_with_the_reason(server: ContractServer, estate: Estate, tmp_path: Path) -> None:
    collected = _collect(_adapter(server, estate, tmp_path), estate)
    state, reason = _coverage(collected)[Fact.DOMAIN_CATCH_ALL]
    assert state is FactState.UNSUPPORTED and "Admin console" in reason
    assert dict(collected.catch_all) == {}


def test_invitation_name_may_be_percent_encoded(server: ContractServer, space: Workspace, estate: Estate,
                                                tmp_path: Path) -> None:
    space.invitations["new.hire@acme.example"]["name"] = f"customers/{CUSTOMER_ID}/userinvitations/new.hire%40acme.example"
    space.invitations["gone@acme.example"] = {"name": f"customers/{CUSTOMER_ID}/userinvitations/gone@acme.example",
                                              "state": "ACCEPTED", "mailsSentCount": 1,
                                              "updateTime": "2026-01-01T00:00:00Z"}
    boxes = _by_address(_collect(_adapter(server, estate, tmp_path), estate))
    assert boxes["new.hire@acme.example"].status is MailboxStatus.PENDING
    assert "gone@acme.example" not in boxes


def test_an_invitation_for_a_listed_user_is_attached_to_it(server: ContractServer, space: Workspace,
                                                          estate: Estate, tmp_path: Path) -> None:
    space.invitations["user2@acme.example"] = {
        "name": f"customers/{CUSTOMER_ID}/userinvitations/user2@acme.example", "state": "INVITED",
        "mailsSentCount": 3, "updateTime": "2026-11-01T10:00:00Z"}
    collected = _collect(_adapter(server, estate, tmp_path), estate)
    user2 = _by_address(collected)["user2@acme.example"]
    assert user2.status is MailboxStatus.ACTIVE and user2.invite is not None
    assert user2.invite.sent == parse_time("2026-11-01T10:00:00Z")
    assert collected.problems == ()


def test_group_members_owners_and_outside_members(server: ContractServer, space: Workspace, estate: Estate,
                                                  tmp_path: Path) -> None:
    space.domains[0]["domainAliases"] = [{"domainAliasName": "acme-alias.example", "verified": True}]
    space.members["info@acme.example"] += [
        {"email": "mgr@acme.example", "role": "MANAGER", "type": "USER", "status": "ACTIVE"},
        {"email": "desk@acme-alias.example", "role": "MEMBER", "type": "USER", "status": "ACTIVE"},
        {"email": "Helper@Outside.test", "role": "MEMBER", "type": "EXTERNAL", "status": "ACTIVE"},
        {"id": "C01abc2de", "role": "MEMBER", "type": "CUSTOMER"},
    ]
    info = _by_address(_collect(_adapter(server, estate, tmp_path), estate))["info@acme.example"]
    assert info.kind is MailboxKind.SHARED
    assert info.owners == ("ana@acme.example",)
    assert info.forwards == (Forward("helper@outside.test", ForwardMechanism.ALIAS),)


def test_the_tenant_domains_are_the_verified_domains_and_aliases(server: ContractServer, space: Workspace,
                                                                estate: Estate, tmp_path: Path) -> None:
    space.domains[0]["domainAliases"] = [
        {"domainAliasName": "acme-alias.example", "parentDomainName": "acme.example", "verified": True},
        {"domainAliasName": "unproven.example", "parentDomainName": "acme.example", "verified": False}]
    space.domains.append({"domainName": "acme-shop.example", "verified": True, "isPrimary": False,
                          "creationTime": "1612345678901", "domainAliases": []})
    collected = _collect(_adapter(server, estate, tmp_path), estate)
    assert collected.tenant_domains == (
        "acme-alias.example", "acme-mail.example", "acme-shop.example", "acme.example")
    assert _coverage(collected)[Fact.TENANT_DOMAINS][0] is FactState.COLLECTED


def test_an_unreadable_domain_list_is_said_and_the_rest_is_read(server: ContractServer, space: Workspace,
                                                                estate: Estate, tmp_path: Path) -> None:
    space.domains_denied = True
    collected = _collect(_adapter(server, estate, tmp_path), estate)
    assert collected.tenant_domains is None
    state, reason = _coverage(collected)[Fact.TENANT_DOMAINS]
    assert state is FactState.FAILED and "domains could not be read" in reason and "403" in reason
    assert len(collected.problems) == 1
    assert _by_address(collected)["ben@acme.example"].forwards  # the users are still read


def test_a_suspended_user_is_not_impersonated_and_its_gmail_facts_are_unsupported(
        server: ContractServer, space: Workspace, estate: Estate, tmp_path: Path) -> None:
    space.mail["old@acme.example"].auto = {"enabled": True, "emailAddress": "old@outside.test"}
    collected = _collect(_adapter(server, estate, tmp_path), estate)
    assert collected.problems == ()  # the tenant stays complete
    assert "old@acme.example" not in {g["sub"] for g in space.grants}
    assert server.count("/gmail/v1/users/old@acme.example") == 0
    gaps = _coverage(collected, "old@acme.example")
    for fact in (Fact.MAILBOX_FORWARDS, Fact.MAILBOX_DELEGATES):
        state, reason = gaps[fact]
        assert state is FactState.UNSUPPORTED and reason.startswith("suspended: Gmail refuses delegated access")
    old = _by_address(collected)["old@acme.example"]
    assert old.status is MailboxStatus.SUSPENDED and old.forwards == ()


def test_user_without_forwarding_addresses_skips_forwarding_reads(server: ContractServer, estate: Estate,
                                                                  tmp_path: Path) -> None:
    _collect(_adapter(server, estate, tmp_path), estate)
    assert server.count("/gmail/v1/users/ana@acme.example/settings/autoForwarding") == 1
    assert server.count("/gmail/v1/users/user1@acme.example/settings/autoForwarding") == 0
    assert server.count("/gmail/v1/users/user1@acme.example/settings/delegates") == 1
    assert server.count(f"/gmail/v1/users/{ADMIN}") == 0  # no Gmail mailbox set up


def test_delegate_statuses_and_several_forwards(server: ContractServer, space: Workspace, estate: Estate,
                                                tmp_path: Path) -> None:
    mail = space.mail["ben@acme.example"]
    mail.delegates += [{"delegateEmail": "asked@acme.example", "verificationStatus": "pending"},
                       {"delegateEmail": "no@acme.example", "verificationStatus": "rejected"},
                       {"delegateEmail": "late@acme.example", "verificationStatus": "expired"}]
    mail.auto = {"enabled": True, "emailAddress": "ben@outside.test", "disposition": "archive"}
    mail.filters.append({"id": "labels-only", "criteria": {"query": "x"}, "action": {"addLabelIds": ["L1"]}})
    ben = _by_address(_collect(_adapter(server, estate, tmp_path), estate))["ben@acme.example"]
    assert ben.delegates == ("asked@acme.example", "pa@outside.test")
    assert ben.forwards == (Forward("ben@outside.test", ForwardMechanism.AUTO_FORWARD),
                            Forward("ben@outside.test", ForwardMechanism.INBOX_RULE))


def test_a_refused_user_token_fails_that_mailbox_only(server: ContractServer, space: Workspace, estate: Estate,
                                                      tmp_path: Path) -> None:
    space.refuse_subjects.add("ana@acme.example")
    collected = _collect(_adapter(server, estate, tmp_path), estate)
    state, reason = _coverage(collected, "ana@acme.example")[Fact.MAILBOX_FORWARDS]
    assert state is FactState.FAILED and "invalid_grant" in reason
    assert _coverage(collected, "ana@acme.example")[Fact.MAILBOX_DELEGATES][0] is FactState.FAILED
    assert any("ana@acme.example" in p for p in collected.problems)
    assert _by_address(collected)["ben@acme.example"].delegates == ("pa@outside.test",)
    assert _coverage(collected)[Fact.MAILBOX_FORWARDS][0] is FactState.COLLECTED


def test_a_malformed_gmail_answer_fails_that_mailbox_only(server: ContractServer, estate: Estate,
                                                          tmp_path: Path) -> None:
    server.faults.malformed["/gmail/v1/users/ben@acme.example/settings/delegates"] = 1
    collected = _collect(_adapter(server, estate, tmp_path), estate)
    state, reason = _coverage(collected, "ben@acme.example")[Fact.MAILBOX_DELEGATES]
    assert state is FactState.FAILED and "/settings/delegates" in reason and "malformed" in reason
    assert len(collected.mailboxes) == len(HARNESS.expected(estate))


def test_delegation_not_granted_is_a_clear_error_without_the_key(server: ContractServer, space: Workspace,
                                                                 estate: Estate, tmp_path: Path) -> None:
    space.granted = frozenset({AUTH + "gmail.settings.basic"})
    with pytest.raises(AdapterError, match="unauthorized_client.*domain-wide delegation") as raised:
        _collect(_adapter(server, estate, tmp_path), estate)
    for secret in HARNESS.secret_values(tmp_path):
        assert secret not in str(raised.value)


def test_a_broken_key_file_names_the_reference_not_the_content(server: ContractServer, estate: Estate,
                                                               tmp_path: Path) -> None:
    adapter = _adapter(server, estate, tmp_path)
    key_file = tmp_path / "google-sa.json"
    info = json.loads(key_file.read_text())
    info["private_key"] = info["private_key"][:200]
    key_file.write_text(json.dumps(info))
    with pytest.raises(AdapterError, match="google-sa.json.*private key cannot be read") as raised:
        _collect(adapter, estate)
    assert info["private_key"][30:90] not in str(raised.value)


def test_token_url_option_overrides_the_key(server: ContractServer, space: Workspace, estate: Estate,
                                            tmp_path: Path) -> None:
    adapter = _adapter(server, estate, tmp_path, token_url=f"{server.url}/token")
    key_file = tmp_path / "google-sa.json"
    info = json.loads(key_file.read_text())
    info["token_uri"] = "https://oauth2.googleapis.invalid/token"
    key_file.write_text(json.dumps(info))
    assert len(_collect(adapter, estate).mailboxes) == len(HARNESS.expected(estate))


def test_parse_time_normalises_to_utc() -> None:
    assert parse_time("2025-02-03T09:12:44.000Z").isoformat() == "2025-02-03T09:12:44+00:00"  # type: ignore[union-attr]
    assert parse_time("2025-02-03T10:12:44+01:00").isoformat() == "2025-02-03T09:12:44+00:00"  # type: ignore[union-attr]
    assert parse_time(None) is None
    with pytest.raises(ValueError):
        parse_time("soon")


# Remediation writes: each returns the state read back after the write.


def test_disable_auto_forwarding_and_undo(server: ContractServer, space: Workspace, estate: Estate,
                                          tmp_path: Path) -> None:
    adapter = _adapter(server, estate, tmp_path)
    before = asyncio.run(adapter.auto_forwarding("ana@acme.example"))
    assert before == AutoForwarding(True, "ana@personal.test", "leaveInInbox")
    assert asyncio.run(adapter.disable_auto_forwarding("ana@acme.example")) == AutoForwarding(False)
    assert space.mail["ana@acme.example"].auto == {"enabled": False}
    assert asyncio.run(adapter.set_auto_forwarding("ana@acme.example", before)) == before
    sharing = [g for g in space.grants if "gmail.settings.sharing" in g["scope"]]
    assert {g["sub"] for g in sharing} == {"ana@acme.example"}


def test_a_write_without_effect_shows_in_the_read_back(server: ContractServer, space: Workspace, estate: Estate,
                                                       tmp_path: Path) -> None:
    space.noop_writes = True
    adapter = _adapter(server, estate, tmp_path)
    assert asyncio.run(adapter.disable_auto_forwarding("ana@acme.example")).enabled is True
    assert asyncio.run(adapter.suspend_user("user1@acme.example")) is MailboxStatus.ACTIVE


def test_delete_a_forwarding_filter_and_restore_it(server: ContractServer, space: Workspace, estate: Estate,
                                                   tmp_path: Path) -> None:
    adapter = _adapter(server, estate, tmp_path)
    (saved,) = asyncio.run(adapter.filters("ben@acme.example"))
    assert saved.forward == "ben@outside.test"
    assert asyncio.run(adapter.delete_filter("ben@acme.example", saved.id)) == ()
    (restored,) = asyncio.run(adapter.create_filter("ben@acme.example", saved))
    assert (restored.forward, restored.criteria) == (saved.forward, saved.criteria)
    with pytest.raises(AdapterError, match="404"):
        asyncio.run(adapter.delete_filter("ben@acme.example", "no-such-filter"))


def test_remove_a_delegate_and_add_it_back(server: ContractServer, space: Workspace, estate: Estate,
                                           tmp_path: Path) -> None:
    adapter = _adapter(server, estate, tmp_path)
    assert asyncio.run(adapter.remove_delegate("ben@acme.example", "pa@outside.test")) == ()
    assert space.mail["ben@acme.example"].delegates == []
    (back,) = asyncio.run(adapter.add_delegate("ben@acme.example", "pa@outside.test"))
    assert back.email == "pa@outside.test"


def test_suspend_and_unsuspend_a_user(server: ContractServer, space: Workspace, estate: Estate,
                                      tmp_path: Path) -> None:
    adapter = _adapter(server, estate, tmp_path)
    assert asyncio.run(adapter.suspend_user("user1@acme.example")) is MailboxStatus.SUSPENDED
    assert space.users["user1@acme.example"]["suspended"] is True
    assert asyncio.run(adapter.unsuspend_user("user1@acme.example")) is MailboxStatus.ACTIVE
    assert {g["scope"] for g in space.grants} == {f"{AUTH}admin.directory.user"}


def test_send_and_cancel_an_invitation(server: ContractServer, space: Workspace, estate: Estate,
                                       tmp_path: Path) -> None:
    adapter = _adapter(server, estate, tmp_path)
    sent = asyncio.run(adapter.send_invitation("new.hire@acme.example"))
    assert sent is not None and sent.state == "INVITED" and sent.mails_sent == 2
    cancelled = asyncio.run(adapter.cancel_invitation("new.hire@acme.example"))
    assert cancelled is not None and cancelled.state == "NOT_YET_SENT"  # the unmanaged account stays, unsent
    assert space.invitations["new.hire@acme.example"]["state"] == "NOT_YET_SENT"


# agreedToTerms false: created, first sign-in never completed.

def test_agreed_to_terms_false_is_pending_since_creation(server: ContractServer, space: Workspace, estate: Estate,
                                                         tmp_path: Path) -> None:
    space.users["never@acme.example"]["agreedToTerms"] = False
    space.users["old@acme.example"]["agreedToTerms"] = False  # suspended stays suspended
    del space.users["user1@acme.example"]["agreedToTerms"]  # absent: unknown, left active
    collected = _collect(_adapter(server, estate, tmp_path), estate)
    boxes = _by_address(collected)
    never = boxes["never@acme.example"]
    assert never.status is MailboxStatus.PENDING
    assert never.invite is not None and never.invite.sent == never.created == NOW - timedelta(days=200)
    assert never.invite.expires is None
    assert boxes["old@acme.example"].status is MailboxStatus.SUSPENDED and boxes["old@acme.example"].invite is None
    assert boxes["user1@acme.example"].status is MailboxStatus.ACTIVE and boxes["user1@acme.example"].invite is None
    assert _coverage(collected)[Fact.MAILBOX_INVITES] == (FactState.COLLECTED, "")


def test_pending_first_sign_in_is_judged_by_the_invite_checks_only(server: ContractServer, space: Workspace,
                                                                   estate: Estate, tmp_path: Path) -> None:
    space.users["never@acme.example"]["agreedToTerms"] = False
    collected = _collect(_adapter(server, estate, tmp_path), estate)
    tenant = Tenant(estate.tenant, "google", estate.domains)
    inventory = Inventory((tenant,), (), collected.mailboxes, {}, (), collected.coverage)
    findings = evaluate(inventory, [stale_invite, expired_invite, never_used_account, inactive_account],
                        policy=Policy(invite_stale_days=14, inactive_days=90), senders={}, now=NOW)
    verdicts = {f.check: f for f in findings if f.subject == "never@acme.example"}
    assert verdicts["invite.stale"].status is Status.FAIL  # waiting 200 days since creation
    assert verdicts["invite.stale"].evidence["days_pending"] == 200
    assert verdicts["invite.expired"].status is Status.UNSUPPORTED  # Workspace sets no expiry
    # Not reported twice: a pending account cannot sign in, so the sign-in checks leave it to the invite checks.
    assert verdicts["account.never_used"].status is Status.PASS
    assert verdicts["account.never_used"].evidence.get("applies") is False
    assert verdicts["account.inactive"].evidence.get("applies") is False


def test_agreed_to_terms_false_without_a_creation_time_fails_its_invite_fact(
        server: ContractServer, space: Workspace, estate: Estate, tmp_path: Path) -> None:
    space.users["never@acme.example"]["agreedToTerms"] = False
    space.users["never@acme.example"]["creationTime"] = "not a time"
    collected = _collect(_adapter(server, estate, tmp_path), estate)
    assert _by_address(collected)["never@acme.example"].status is MailboxStatus.PENDING
    assert _coverage(collected, "never@acme.example")[Fact.MAILBOX_INVITES][0] is FactState.FAILED


# The Cloud Identity Policy API: org units where automatic forwarding is off.

def _gmail_reads(server: ContractServer, user: str, what: str) -> int:
    return server.count(f"/gmail/v1/users/{user}/settings/{what}")


def test_forwarding_off_at_the_root_skips_every_forwarding_read(server: ContractServer, space: Workspace,
                                                                estate: Estate, tmp_path: Path) -> None:
    space.set_auto_forwarding("/", False)  # the root has no child units: its id comes from orgunits.get
    collected = _collect(_adapter(server, estate, tmp_path), estate)
    boxes = _by_address(collected)
    expected = HARNESS.expected(estate)
    for address, box in boxes.items():
        if box.kind is MailboxKind.USER:
            assert box.forwards == (), address
            assert box.delegates == expected[address].delegates  # delegates are still read
    assert boxes["info@acme.example"].forwards == expected["info@acme.example"].forwards  # groups unaffected
    for user in ("ana@acme.example", "ben@acme.example", "user1@acme.example"):
        for what in ("forwardingAddresses", "autoForwarding", "filters"):
            assert _gmail_reads(server, user, what) == 0
        assert _gmail_reads(server, user, "delegates") == 1
    state, reason = _coverage(collected)[Fact.MAILBOX_FORWARDS]
    assert state is FactState.COLLECTED and "org units /" in reason and "2491924" in reason
    assert collected.problems == ()
    assert server.count("/v1/policies") == 1


def test_forwarding_off_for_a_child_unit_only_skips_its_users(server: ContractServer, space: Workspace,
                                                             estate: Estate, tmp_path: Path) -> None:
    space.add_org_unit("/Sales")
    space.add_org_unit("/Sales/East")
    space.add_org_unit("/Sales/West")
    space.set_auto_forwarding("/", True, kind="SYSTEM")
    space.set_auto_forwarding("/Sales", False)
    space.set_auto_forwarding("/Sales/West", False)
    space.set_auto_forwarding("/Sales/West", True)  # the higher sortOrder wins within one unit
    space.users["ben@acme.example"]["orgUnitPath"] = "/Sales"
    space.users["ana@acme.example"]["orgUnitPath"] = "/Sales/East"  # inherits /Sales
    space.users["user1@acme.example"]["orgUnitPath"] = "/Sales/West"
    space.mail["user1@acme.example"].addresses.append({"forwardingEmail": "u1@outside.test",
                                                       "verificationStatus": "accepted"})
    space.mail["user1@acme.example"].auto = {"enabled": True, "emailAddress": "u1@outside.test",
                                             "disposition": "leaveInInbox"}
    collected = _collect(_adapter(server, estate, tmp_path), estate)
    boxes = _by_address(collected)
    assert boxes["ben@acme.example"].forwards == () and boxes["ana@acme.example"].forwards == ()
    assert boxes["ben@acme.example"].delegates == ("pa@outside.test",)
    assert _gmail_reads(server, "ben@acme.example", "filters") == 0
    assert _gmail_reads(server, "ana@acme.example", "autoForwarding") == 0
    assert boxes["user1@acme.example"].forwards == (Forward("u1@outside.test", ForwardMechanism.AUTO_FORWARD),)
    assert _gmail_reads(server, "user0@acme.example", "forwardingAddresses") == 1  # at the root: read as before
    state, reason = _coverage(collected)[Fact.MAILBOX_FORWARDS]
    assert state is FactState.COLLECTED and "/Sales" in reason and "/Sales/West" not in reason
    assert server.count("/admin/directory/v1/customer/my_customer/orgunits") == 1  # the list named every unit


def test_a_group_policy_that_allows_forwarding_keeps_every_read(server: ContractServer, space: Workspace,
                                                               estate: Estate, tmp_path: Path) -> None:
    space.set_auto_forwarding("/", False)
    space.set_auto_forwarding("/", True, group="03x8tuzt1hnvz8c")  # members may forward wherever they are
    collected = _collect(_adapter(server, estate, tmp_path), estate)
    assert _by_address(collected) == HARNESS.expected(estate)
    assert _coverage(collected)[Fact.MAILBOX_FORWARDS] == (FactState.COLLECTED, "")


def test_a_policy_without_its_value_is_not_taken_for_off(server: ContractServer, space: Workspace, estate: Estate,
                                                         tmp_path: Path) -> None:
    space.set_auto_forwarding("/", False)
    del space.policies[0]["setting"]["value"]["enableAutoForwarding"]
    collected = _collect(_adapter(server, estate, tmp_path), estate)
    assert _by_address(collected) == HARNESS.expected(estate)


def test_policy_api_403_falls_back_to_every_users_settings(server: ContractServer, space: Workspace,
                                                           estate: Estate, tmp_path: Path) -> None:
    space.set_auto_forwarding("/", False)
    space.super_admin = False
    collected = _collect(_adapter(server, estate, tmp_path), estate)
    assert _by_address(collected) == HARNESS.expected(estate)  # forwards read from Gmail as without the policy
    assert _gmail_reads(server, "ana@acme.example", "autoForwarding") == 1
    assert any("403" in n and "super admin" in n for n in collected.notes)
    assert collected.problems == ()  # every user's settings were read: nothing is missing, the tenant stays complete
    assert _coverage(collected)[Fact.MAILBOX_FORWARDS] == (FactState.COLLECTED, "")


def test_a_malformed_policies_page_falls_back_naming_the_endpoint(server: ContractServer, space: Workspace,
                                                                  estate: Estate, tmp_path: Path) -> None:
    space.set_auto_forwarding("/", False)
    server.faults.malformed = {"/v1/policies": 10}
    collected = _collect(_adapter(server, estate, tmp_path), estate)
    assert _by_address(collected) == HARNESS.expected(estate)
    assert any("/v1/policies" in n for n in collected.notes)
    assert collected.problems == ()


def test_policies_are_paged(server: ContractServer, space: Workspace, estate: Estate, tmp_path: Path) -> None:
    for path in ("/A", "/B", "/C"):
        space.add_org_unit(path)
        space.set_auto_forwarding(path, True)
    space.set_auto_forwarding("/B", False)  # on the second page (the server pages by 2)
    space.users["ben@acme.example"]["orgUnitPath"] = "/B"
    collected = _collect(_adapter(server, estate, tmp_path), estate)
    assert server.count("/v1/policies") == 2
    assert _by_address(collected)["ben@acme.example"].forwards == ()
    assert _by_address(collected)["ana@acme.example"].forwards != ()


def test_a_pending_first_sign_in_has_no_invitation_to_resend_or_revoke(server: ContractServer, space: Workspace,
                                                                       estate: Estate, tmp_path: Path) -> None:
    space.users["never@acme.example"]["agreedToTerms"] = False
    adapter = _adapter(server, estate, tmp_path)
    for action in ("invite.resend", "invite.revoke"):
        with pytest.raises(Refused, match="first sign-in"):
            asyncio.run(adapter.remedy_read(action, "never@acme.example", {}))
    with pytest.raises(Refused, match="first sign-in"):
        asyncio.run(adapter.send_invitation("never@acme.example"))
    assert "never@acme.example" not in space.invitations  # no invitation was created for a managed address
    state = asyncio.run(adapter.remedy_read("invite.revoke", "new.hire@acme.example", {}))["state"]
    assert state == {"invite": True}  # an unmanaged account's invitation is still handled


# Persistence surfaces: OAuth tokens, application-specific passwords, recovery email and phone


def _grant_estate(space: Workspace) -> None:
    space.oauth_tokens["ana@acme.example"] = [
        {"kind": "admin#directory#token", "clientId": "1234.apps.googleusercontent.test", "displayText": "Mail Sorter",
         "scopes": ["https://www.googleapis.com/auth/gmail.readonly", "openid"], "anonymous": False,
         "nativeApp": False, "userKey": "104700000000000000001"},
        {"kind": "admin#directory#token", "clientId": "5678.apps.googleusercontent.test", "displayText": "Calendly",
         "scopes": ["https://www.googleapis.com/auth/calendar.events"], "anonymous": False, "nativeApp": False}]
    space.asps["ana@acme.example"] = [
        {"kind": "admin#directory#asp", "codeId": 41, "name": "iPhone Mail", "creationTime": "1735689600000",
         "lastTimeUsed": "1764000000", "userKey": "104700000000000000001"}]
    space.users["old@acme.example"]["recoveryEmail"] = "old.self@personal.test"
    space.users["old@acme.example"]["recoveryPhone"] = "+15555551234"


def test_tokens_asps_and_recovery_are_read(server: ContractServer, space: Workspace, estate: Estate,
                                           tmp_path: Path) -> None:
    from datetime import UTC, datetime

    from scanner.model import GrantKind, MailAccess

    _grant_estate(space)
    collected = _collect(_adapter(server, estate, tmp_path), estate)
    boxes = _by_address(collected)
    sorter, calendly, asp = boxes["ana@acme.example"].grants
    assert (sorter.kind, sorter.id, sorter.client, sorter.mail) == (
        GrantKind.OAUTH, "1234.apps.googleusercontent.test", "Mail Sorter", MailAccess.READ)
    assert calendly.mail is MailAccess.NONE
    assert (asp.kind, asp.id, asp.mail) == (GrantKind.APP_PASSWORD, "41", MailAccess.FULL)
    assert asp.created == datetime(2025, 1, 1, tzinfo=UTC)  # milliseconds
    assert asp.last_used == datetime.fromtimestamp(1764000000, UTC)  # seconds
    old = boxes["old@acme.example"]
    assert [(r.kind.value, r.value) for r in old.recovery] == [("email", "old.self@personal.test"),
                                                                ("phone", "+15555551234")]
    coverage = {c.fact: c.state for c in collected.coverage if not c.subject}
    for fact in (Fact.MAILBOX_OAUTH_GRANTS, Fact.MAILBOX_APP_PASSWORDS, Fact.MAILBOX_RECOVERY):
        assert coverage[fact] is FactState.COLLECTED


def test_without_the_security_scope_grants_are_unsupported_naming_it(server: ContractServer, space: Workspace,
                                                                     estate: Estate, tmp_path: Path) -> None:
    space.granted = frozenset(s for s in space.granted if not s.endswith("admin.directory.user.security"))
    _grant_estate(space)
    collected = _collect(_adapter(server, estate, tmp_path), estate)
    reasons = {c.fact: (c.state, c.reason) for c in collected.coverage if not c.subject}
    for fact in (Fact.MAILBOX_OAUTH_GRANTS, Fact.MAILBOX_APP_PASSWORDS):
        state, reason = reasons[fact]
        assert state is FactState.UNSUPPORTED and "admin.directory.user.security" in reason
    assert reasons[Fact.MAILBOX_RECOVERY][0] is FactState.COLLECTED
    assert _by_address(collected)["ana@acme.example"].grants == ()
    assert collected.problems == ()


def test_grant_revoke_deletes_the_token_or_asp_and_refuses_the_undo(server: ContractServer, space: Workspace,
                                                                     estate: Estate, tmp_path: Path) -> None:
    _grant_estate(space)
    adapter = _adapter(server, estate, tmp_path)
    for params in ({"kind": "oauth", "grant": "1234.apps.googleusercontent.test"},
                   {"kind": "app_password", "grant": "41"}):
        before = asyncio.run(adapter.remedy_read("grant.revoke", "ana@acme.example", params))
        assert before["state"] == {"grants": [params["grant"]]}
        after = asyncio.run(adapter.remedy_apply("grant.revoke", "ana@acme.example", params, before))
        assert after["state"] == {"grants": []}
        with pytest.raises(Refused, match="a revoked grant cannot be restored"):
            asyncio.run(adapter.remedy_restore("grant.revoke", "ana@acme.example", params, before))
    assert [t["displayText"] for t in space.oauth_tokens["ana@acme.example"]] == ["Calendly"]
    assert space.asps["ana@acme.example"] == []

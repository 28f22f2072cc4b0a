"""The mailcow adapter against its contract server: mailcow's quirks, coverage, and the remediation writes."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from scanner.adapters.base import collect_all
from scanner.adapters.base import Collected
from scanner.adapters.http import RetryPolicy
from scanner.adapters.mailcow import MailcowAdapter, as_list, build, number, sieve_redirects, sieve_text
from scanner.config import Config, MailcowOptions, SecretRef, load_config
from scanner.errors import AdapterError
from scanner.model import Fact, FactState, Forward, ForwardMechanism, MailboxKind, MailboxStatus, Tenant
from tests.contract.estate import standard_estate
from tests.contract.mailcow import API_KEY, READ_ONLY_KEY, ZONE, MailcowState, mailcow_app, state_for, with_state
from tests.contract.mailcow import HARNESS
from tests.contract.server import ContractServer, Faults

TENANT = Tenant("acme", "mailcow", ("acme.example", "acme-mail.example"))


def _box(address: str, **fields: Any) -> dict[str, Any]:
    local_part, _, domain = address.partition("@")
    record = {"username": address, "name": local_part.title(), "domain": domain, "local_part": local_part,
              "active": 1, "created": "2025-07-01 12:00:00", "last_imap_login": 1763625481,
              "last_smtp_login": 0, "last_pop3_login": 0, "last_sso_login": 0, "sender_acl": []}
    record.update(fields)
    return record


def _domain(name: str, **fields: Any) -> dict[str, Any]:
    return {"domain_name": name, "active": 1, "backupmx": 0, "relay_all_recipients": 0, **fields}


def _alias(state: MailcowState, address: str, goto: str, active: int = 1) -> int:
    number = 100 + len(state.aliases)
    state.aliases[number] = {"id": number, "address": address, "goto": goto, "domain": address.partition("@")[2],
                             "active": active}
    return number


@pytest.fixture
def state() -> MailcowState:
    state = MailcowState(domains=[_domain("acme.example"), _domain("acme-mail.example")])
    state.mailboxes["ana@acme.example"] = _box("ana@acme.example")
    return state


class _Current:
    """The state the module's one server serves (stopping a server costs half a second, so it is shared)."""

    state = MailcowState()


@pytest.fixture(scope="module")
def shared_server() -> Iterator[ContractServer]:
    server = ContractServer(lambda request: mailcow_app(_Current.state)(request)).start()
    yield server
    server.stop()


@pytest.fixture
def server(state: MailcowState, shared_server: ContractServer) -> ContractServer:
    _Current.state = state
    shared_server.faults = Faults()
    shared_server.log.clear()
    return shared_server


def _adapter(server: ContractServer, tmp_path: Path, key: str = API_KEY, timezone: str = ZONE) -> MailcowAdapter:
    (tmp_path / "key").write_text(key, encoding="utf-8")
    return MailcowAdapter(MailcowOptions(url=f"{server.url}/api/v1/", timezone=timezone),
                          SecretRef(f"file:{tmp_path / 'key'}"), retry=RetryPolicy(3, 0.001, 0.002, 0.002))


def _collect(server: ContractServer, tmp_path: Path) -> Collected:
    return asyncio.run(collect_all(_adapter(server, tmp_path), TENANT))


def _coverage(collected: Collected, subject: str = "") -> dict[Fact, tuple[FactState, str]]:
    return {c.fact: (c.state, c.reason) for c in collected.coverage if c.subject == subject}


# Reading: mailcow's shapes


def test_empty_listings_answered_as_an_empty_object_are_empty_lists(state: MailcowState, server: ContractServer,
                                                                    tmp_path: Path) -> None:
    state.mailboxes.clear()
    collected = _collect(server, tmp_path)
    assert server.count("/api/v1/get/mailbox/all") == 1
    assert collected.mailboxes == ()
    assert collected.problems == ()
    assert collected.catch_all == {"acme.example": None, "acme-mail.example": None}
    assert _coverage(collected)[Fact.MAILBOX_LIST][0] is FactState.COLLECTED
    assert as_list({}, "GET x") == [] and as_list({"username": "a@b.example"}, "GET x") == [{"username": "a@b.example"}]


def test_error_object_in_a_listing_is_an_adapter_error() -> None:
    with pytest.raises(AdapterError, match="GET /x answered an error: nope"):
        as_list({"type": "error", "msg": "nope"}, "GET /x")


@pytest.mark.parametrize("as_strings", [True, False], ids=["strings", "ints"])
def test_numbers_as_strings_or_ints_read_the_same(state: MailcowState, server: ContractServer, tmp_path: Path,
                                                  as_strings: bool) -> None:
    state.numbers_as_strings = as_strings
    state.mailboxes["old@acme.example"] = _box("old@acme.example", active=2)
    boxes = {m.address: m for m in _collect(server, tmp_path).mailboxes}
    assert boxes["ana@acme.example"].status is MailboxStatus.ACTIVE
    assert boxes["ana@acme.example"].last_login == datetime.fromtimestamp(1763625481, UTC)
    assert boxes["old@acme.example"].status is MailboxStatus.SUSPENDED
    assert number("1", "x") == 1 and number(1, "x") == 1 and number(None, "x") == 0


def test_active_0_1_2_map_to_disabled_active_suspended_and_legacy_check_marks_are_read(
        state: MailcowState, server: ContractServer, tmp_path: Path) -> None:
    state.mailboxes["off@acme.example"] = _box("off@acme.example", active=0)
    state.mailboxes["paused@acme.example"] = _box("paused@acme.example", active=2)
    collected = _collect(server, tmp_path)
    boxes = {m.address: m for m in collected.mailboxes}
    assert boxes["off@acme.example"].status is MailboxStatus.DISABLED
    assert boxes["paused@acme.example"].status is MailboxStatus.SUSPENDED
    assert all(m.kind is MailboxKind.USER for m in collected.mailboxes)
    assert number("&#10004;", "active") == 1 and number("&#10008;", "active") == 0


def test_created_is_read_in_the_servers_time_zone_then_utc(state: MailcowState, server: ContractServer,
                                                          tmp_path: Path) -> None:
    state.mailboxes["winter@acme.example"] = _box("winter@acme.example", created="2025-01-15 08:30:00")
    state.mailboxes["blank@acme.example"] = _box("blank@acme.example", created=None)
    boxes = {m.address: m for m in _collect(server, tmp_path).mailboxes}
    assert boxes["ana@acme.example"].created == datetime(2025, 7, 1, 10, 0, tzinfo=UTC)  # CEST, UTC+2
    assert boxes["winter@acme.example"].created == datetime(2025, 1, 15, 7, 30, tzinfo=UTC)  # CET, UTC+1
    assert boxes["blank@acme.example"].created is None


def test_an_unknown_time_zone_fails_the_tenant_with_a_clear_error(server: ContractServer, tmp_path: Path) -> None:
    with pytest.raises(AdapterError, match="not a known IANA time zone"):
        _adapter(server, tmp_path, timezone="Mars/Olympus")


def test_last_login_is_the_latest_protocol_and_zero_is_never(state: MailcowState, server: ContractServer,
                                                           tmp_path: Path) -> None:
    state.mailboxes["ana@acme.example"].update(last_imap_login=1700000000, last_sso_login=1760000000)
    state.mailboxes["never@acme.example"] = _box("never@acme.example", last_imap_login=0)
    collected = _collect(server, tmp_path)
    boxes = {m.address: m for m in collected.mailboxes}
    assert boxes["ana@acme.example"].last_login == datetime.fromtimestamp(1760000000, UTC)
    assert boxes["never@acme.example"].last_login is None
    assert _coverage(collected)[Fact.MAILBOX_LAST_LOGIN][0] is FactState.COLLECTED


def test_every_mailbox_at_zero_means_show_last_login_is_off(state: MailcowState, server: ContractServer,
                                                            tmp_path: Path) -> None:
    state.show_last_login = False
    state.mailboxes["ben@acme.example"] = _box("ben@acme.example")
    collected = _collect(server, tmp_path)
    last_login, reason = _coverage(collected)[Fact.MAILBOX_LAST_LOGIN]
    assert last_login is FactState.UNSUPPORTED
    assert "SHOW_LAST_LOGIN" in reason


def test_a_malformed_record_is_a_problem_and_the_rest_is_kept(state: MailcowState, server: ContractServer,
                                                             tmp_path: Path) -> None:
    state.mailboxes["odd@acme.example"] = _box("odd@acme.example", active=7)
    state.mailboxes["late@acme.example"] = _box("late@acme.example", created="yesterday")
    collected = _collect(server, tmp_path)
    assert [m.address for m in collected.mailboxes] == ["ana@acme.example"]
    assert any("odd@acme.example" in p and "'active' is 7" in p for p in collected.problems)
    assert any("late@acme.example" in p and "'created'" in p for p in collected.problems)


def test_other_tenants_on_the_same_server_are_left_out(state: MailcowState, server: ContractServer,
                                                      tmp_path: Path) -> None:
    state.domains.append(_domain("other.example"))
    state.mailboxes["carl@other.example"] = _box("carl@other.example", sender_acl=["*"])
    _alias(state, "carl@other.example", "carl@other.example,carl@gmail.test")
    collected = _collect(server, tmp_path)
    assert [m.address for m in collected.mailboxes] == ["ana@acme.example"]
    assert collected.mailboxes[0].delegates == ()
    assert "other.example" not in collected.catch_all


# Catch-all


def test_active_catch_all_alias_is_reported_and_an_inactive_one_is_not(state: MailcowState, server: ContractServer,
                                                                      tmp_path: Path) -> None:
    _alias(state, "@acme.example", "ana@acme.example")
    _alias(state, "@acme-mail.example", "ana@acme.example", active=0)
    collected = _collect(server, tmp_path)
    assert collected.catch_all == {"acme.example": "ana@acme.example", "acme-mail.example": None}


def test_relay_all_recipients_accepts_any_address_and_says_so(state: MailcowState, server: ContractServer,
                                                             tmp_path: Path) -> None:
    state.domains[1].update(backupmx=1, relay_all_recipients=1)
    collected = _collect(server, tmp_path)
    assert collected.catch_all["acme-mail.example"] == "*@acme-mail.example"
    domain_state, reason = _coverage(collected, "acme-mail.example")[Fact.DOMAIN_CATCH_ALL]
    assert domain_state is FactState.COLLECTED and "relay_all_recipients" in reason


def test_a_domain_missing_from_the_server_has_unknown_catch_all(state: MailcowState, server: ContractServer,
                                                               tmp_path: Path) -> None:
    del state.domains[1]
    collected = _collect(server, tmp_path)
    assert "acme-mail.example" not in collected.catch_all
    assert _coverage(collected, "acme-mail.example")[Fact.DOMAIN_CATCH_ALL][0] is FactState.FAILED


# Forwarding


def test_alias_forwards_leave_out_pseudo_targets_self_and_inside_targets(state: MailcowState, server: ContractServer,
                                                                        tmp_path: Path) -> None:
    state.mailboxes["ben@acme.example"] = _box("ben@acme.example")
    _alias(state, "ana@acme.example",
           "ana@acme.example,null@localhost,ham@localhost,ben@acme-mail.example,Ana@Personal.test")
    _alias(state, "ben@acme.example", "ben@acme.example")  # the plain self-alias
    _alias(state, "ben@acme.example", "spam@localhost")
    _alias(state, "ben@acme.example", "ben@elsewhere.test", active=0)
    boxes = {m.address: m for m in _collect(server, tmp_path).mailboxes}
    assert boxes["ana@acme.example"].forwards == (Forward("ana@personal.test", ForwardMechanism.ALIAS),)
    assert boxes["ben@acme.example"].forwards == ()


def test_forwards_into_the_tenants_alias_domains_stay_inside(state: MailcowState, server: ContractServer,
                                                             tmp_path: Path) -> None:
    state.domains.append(_domain("other-client.example"))
    state.alias_domains = [
        {"alias_domain": "acme-alias.example", "target_domain": "acme.example", "active": 1},
        {"alias_domain": "Other-Alias.example", "target_domain": "other-client.example", "active": 1}]
    _alias(state, "ana@acme.example", "ana@acme.example,ana@acme-alias.example,ana@other-alias.example")
    _alias(state, "desk@acme.example", "desk@acme-alias.example")
    collected = _collect(server, tmp_path)
    # another client's hosted domain and its alias domains stay outside: one API key sees the whole server
    assert collected.tenant_domains == ("acme-alias.example", "acme-mail.example", "acme.example")
    assert _coverage(collected)[Fact.TENANT_DOMAINS][0] is FactState.COLLECTED
    boxes = {m.address: m for m in collected.mailboxes}
    assert boxes["ana@acme.example"].forwards == (Forward("ana@other-alias.example", ForwardMechanism.ALIAS),)
    assert "desk@acme.example" not in boxes  # routing inside the tenant, not an alias subject


def test_unreadable_alias_domains_are_said_not_guessed(state: MailcowState, server: ContractServer,
                                                       tmp_path: Path) -> None:
    state.broken_alias_domains = True
    collected = _collect(server, tmp_path)
    assert collected.tenant_domains is None
    state_, reason = _coverage(collected)[Fact.TENANT_DOMAINS]
    assert state_ is FactState.FAILED and "alias domains could not be read" in reason
    assert any("alias domains" in p for p in collected.problems)
    assert [m.address for m in collected.mailboxes] == ["ana@acme.example"]


def test_an_alias_with_no_mailbox_and_an_outside_target_is_an_alias_subject(
        state: MailcowState, server: ContractServer, tmp_path: Path) -> None:
    _alias(state, "sales@acme.example", "Sales@Partner.test")
    state.aliases[100]["created"] = "2025-07-01 12:00:00"  # server-local (Europe/Berlin, CEST)
    _alias(state, "team@acme-mail.example", "ana@acme.example,team@partner.test,null@localhost")  # inside and outside
    collected = _collect(server, tmp_path)
    boxes = {m.address: m for m in collected.mailboxes}
    assert set(boxes) == {"ana@acme.example", "sales@acme.example", "team@acme-mail.example"}
    sales, team = boxes["sales@acme.example"], boxes["team@acme-mail.example"]
    assert (sales.kind, sales.status, sales.last_login) == (MailboxKind.ALIAS, MailboxStatus.ACTIVE, None)
    assert sales.forwards == (Forward("sales@partner.test", ForwardMechanism.ALIAS),)
    assert sales.created == datetime(2025, 7, 1, 10, 0, tzinfo=UTC)
    assert team.kind is MailboxKind.ALIAS and team.created is None  # this alias row has no 'created'
    assert team.forwards == (Forward("team@partner.test", ForwardMechanism.ALIAS),)  # only what leaves the tenant
    assert boxes["ana@acme.example"].kind is MailboxKind.USER and boxes["ana@acme.example"].forwards == ()
    assert _coverage(collected, "sales@acme.example")[Fact.MAILBOX_FORWARDS][0] is FactState.COLLECTED
    assert collected.problems == ()


def test_an_alias_pointing_only_inside_or_to_localhost_is_internal_routing_not_a_subject(
        state: MailcowState, server: ContractServer, tmp_path: Path) -> None:
    _alias(state, "hello@acme.example", "ana@acme.example,ana@acme-mail.example")
    _alias(state, "learn@acme.example", "spam@localhost,ham@localhost")
    _alias(state, "loop@acme.example", "loop@acme.example")
    _alias(state, "@acme.example", "catch@gmail.test")  # the catch-all: read apart, never a subject
    collected = _collect(server, tmp_path)
    assert [m.address for m in collected.mailboxes] == ["ana@acme.example"]
    assert collected.catch_all["acme.example"] == "catch@gmail.test"


def test_an_inactive_outside_alias_is_a_disabled_subject_that_forwards_nothing(
        state: MailcowState, server: ContractServer, tmp_path: Path) -> None:
    _alias(state, "old-forward@acme.example", "someone@elsewhere.test", active=0)
    old = {m.address: m for m in _collect(server, tmp_path).mailboxes}["old-forward@acme.example"]
    assert (old.kind, old.status, old.forwards) == (MailboxKind.ALIAS, MailboxStatus.DISABLED, ())


def test_an_alias_of_a_mailbox_stays_that_mailboxs_forward_even_if_its_record_is_malformed(
        state: MailcowState, server: ContractServer, tmp_path: Path) -> None:
    state.mailboxes["odd@acme.example"] = _box("odd@acme.example", active=7)
    _alias(state, "ana@acme.example", "ana@acme.example,ana@personal.test")
    _alias(state, "odd@acme.example", "odd@personal.test")
    collected = _collect(server, tmp_path)
    assert [(m.address, m.kind, m.forwards) for m in collected.mailboxes] == [
        ("ana@acme.example", MailboxKind.USER, (Forward("ana@personal.test", ForwardMechanism.ALIAS),))]
    assert any("odd@acme.example" in p and "'active' is 7" in p for p in collected.problems)


def test_an_alias_subjects_forwards_stay_known_when_the_sieve_filters_fail(
        state: MailcowState, server: ContractServer, tmp_path: Path) -> None:
    _alias(state, "sales@acme.example", "sales@partner.test")
    server.faults.malformed["/api/v1/get/filters"] = 1
    collected = _collect(server, tmp_path)
    assert _coverage(collected)[Fact.MAILBOX_FORWARDS][0] is FactState.FAILED  # mailboxes' sieve unknown
    assert _coverage(collected, "sales@acme.example")[Fact.MAILBOX_FORWARDS][0] is FactState.COLLECTED


def test_an_alias_subject_has_the_send_as_grants_for_its_address_and_a_bad_date_is_a_problem(
        state: MailcowState, server: ContractServer, tmp_path: Path) -> None:
    state.mailboxes["ben@acme-mail.example"] = _box("ben@acme-mail.example", sender_acl=["@acme.example"])
    state.mailboxes["ana@acme.example"]["sender_acl"] = ["sales@acme.example"]
    _alias(state, "sales@acme.example", "sales@partner.test")
    state.aliases[100]["created"] = "last tuesday"
    collected = _collect(server, tmp_path)
    sales = {m.address: m for m in collected.mailboxes}["sales@acme.example"]
    assert sales.delegates == ("ana@acme.example", "ben@acme-mail.example")
    assert sales.created is None and sales.forwards  # the forward is kept; the date is a problem
    assert any("alias sales@acme.example" in p and "'created'" in p for p in collected.problems)


def test_sieve_redirects_in_filters_and_the_active_user_script_are_forwards(
        state: MailcowState, server: ContractServer, tmp_path: Path) -> None:
    state.mailboxes["ben@acme.example"] = _box("ben@acme.example")
    state.filters += [
        {"id": 1, "username": "ana@acme.example", "active": 1, "filter_type": "prefilter",
         "script_desc": "x", "script_data": 'redirect "boss@outside.test";'},
        {"id": 2, "username": "ben@acme.example", "active": 0, "filter_type": "postfilter",
         "script_desc": "off", "script_data": 'redirect "off@outside.test";'},
    ]
    state.user_sieve["ben@acme.example"] = 'require "copy";\nif true { redirect :copy "ben@home.test"; }\n'
    collected = _collect(server, tmp_path)
    boxes = {m.address: m for m in collected.mailboxes}
    assert boxes["ana@acme.example"].forwards == (Forward("boss@outside.test", ForwardMechanism.REDIRECT),)
    assert boxes["ben@acme.example"].forwards == (Forward("ben@home.test", ForwardMechanism.REDIRECT),)
    assert server.count("/api/v1/get/active-user-sieve/") == 2
    assert _coverage(collected)[Fact.MAILBOX_FORWARDS][0] is FactState.COLLECTED


def test_sieve_parsing_is_conservative() -> None:
    script = """require ["copy", "fileinto"];
# redirect "commented@evil.test";
/* redirect "block@evil.test"; */
if header :contains "subject" "redirect \\"quoted@evil.test\\";" { fileinto "Junk"; }
if address :is "from" "x@y.test" { redirect :copy "Keep@Outside.test"; stop; }
redirect "${target}";
redirect "not an address";
vacation text:
redirect "multiline@evil.test";
.
;
redirect "last@outside.test";
"""
    assert sieve_redirects(script) == ("keep@outside.test", "last@outside.test")
    assert sieve_text({}) == "" and sieve_text(["a", "b"]) == "a\nb"


def test_one_mailboxs_sieve_failing_marks_that_mailbox_only(state: MailcowState, server: ContractServer,
                                                           tmp_path: Path) -> None:
    state.mailboxes["ben@acme.example"] = _box("ben@acme.example")
    state.broken_sieve.add("ben@acme.example")
    collected = _collect(server, tmp_path)
    assert len(collected.mailboxes) == 2
    assert _coverage(collected, "ben@acme.example")[Fact.MAILBOX_FORWARDS][0] is FactState.FAILED
    assert _coverage(collected)[Fact.MAILBOX_FORWARDS][0] is FactState.COLLECTED
    assert any("ben@acme.example" in p for p in collected.problems)


def test_filters_failing_marks_forwarding_failed_for_the_tenant(state: MailcowState, server: ContractServer,
                                                               tmp_path: Path) -> None:
    server.faults.malformed["/api/v1/get/filters"] = 1
    collected = _collect(server, tmp_path)
    state_, reason = _coverage(collected)[Fact.MAILBOX_FORWARDS]
    assert state_ is FactState.FAILED and "/get/filters/all" in reason


# Delegates, owners, invites


def test_send_as_grants_are_delegates_including_domain_wide_grants(state: MailcowState, server: ContractServer,
                                                                  tmp_path: Path) -> None:
    state.mailboxes["info@acme.example"] = _box("info@acme.example")
    state.mailboxes["ben@acme-mail.example"] = _box("ben@acme-mail.example")
    state.mailboxes["ana@acme.example"]["sender_acl"] = ["info@acme.example"]
    state.mailboxes["ben@acme-mail.example"]["sender_acl"] = ["@acme.example"]
    collected = _collect(server, tmp_path)
    boxes = {m.address: m for m in collected.mailboxes}
    assert boxes["info@acme.example"].delegates == ("ana@acme.example", "ben@acme-mail.example")
    assert boxes["ana@acme.example"].delegates == ("ben@acme-mail.example",)
    assert boxes["ben@acme-mail.example"].delegates == ()
    coverage = _coverage(collected)
    assert coverage[Fact.MAILBOX_DELEGATES] == (FactState.COLLECTED, coverage[Fact.MAILBOX_DELEGATES][1])
    assert "send-as" in coverage[Fact.MAILBOX_DELEGATES][1]
    assert coverage[Fact.MAILBOX_OWNERS][0] is FactState.UNSUPPORTED
    assert coverage[Fact.MAILBOX_INVITES][0] is FactState.UNSUPPORTED


def test_without_sender_acl_in_the_listing_delegates_are_unsupported(state: MailcowState, server: ContractServer,
                                                                    tmp_path: Path) -> None:
    del state.mailboxes["ana@acme.example"]["sender_acl"]
    assert _coverage(_collect(server, tmp_path))[Fact.MAILBOX_DELEGATES][0] is FactState.UNSUPPORTED


def test_the_shared_estate_reads_as_mailcow_shows_it(tmp_path: Path) -> None:
    estate = standard_estate()
    server = HARNESS.serve(estate, page_size=4)
    try:
        boxes = {m.address: m for m in _collect(server, tmp_path).mailboxes}
    finally:
        server.stop()
    assert boxes["info@acme.example"].kind is MailboxKind.USER
    assert boxes["info@acme.example"].delegates == ("ana@acme.example",)
    assert boxes["ben@acme.example"].delegates == ()  # an outside delegate cannot exist in mailcow
    assert boxes["new.hire@acme.example"].status is MailboxStatus.ACTIVE
    assert boxes["ana@acme.example"].display_name == "Ana <script>alert(1)</script> Ruiz"
    assert boxes["sales@acme.example"].kind is MailboxKind.ALIAS  # inside and outside: its outside target
    assert boxes["sales@acme.example"].forwards == (Forward("sales@partner.test", ForwardMechanism.ALIAS),)
    assert boxes["old-forward@acme.example"].status is MailboxStatus.DISABLED
    assert "hello@acme.example" not in boxes and "spam-report@acme.example" not in boxes  # internal routing


# Auth and secrets


def test_a_bad_key_is_a_clear_error_without_the_key_and_is_not_retried(server: ContractServer,
                                                                       tmp_path: Path) -> None:
    bad = "mc-wrong-key-000000000000000000000000"
    with pytest.raises(AdapterError, match="401 error: authentication failed") as raised:
        asyncio.run(collect_all(_adapter(server, tmp_path, key=bad), TENANT))
    assert bad not in str(raised.value)
    assert server.count() == 1  # repeated bad keys feed fail2ban


def test_an_unreadable_key_reference_names_the_reference(server: ContractServer, tmp_path: Path) -> None:
    adapter = MailcowAdapter(MailcowOptions(url=f"{server.url}/api/v1"), SecretRef("env:MAILCOW_TEST_NO_SUCH_KEY"))
    with pytest.raises(AdapterError, match="MAILCOW_TEST_NO_SUCH_KEY"):
        asyncio.run(collect_all(adapter, TENANT))


def test_build_reads_the_tenant_table_and_http_settings(tmp_path: Path) -> None:
    path = tmp_path / "mailwarden.toml"
    path.write_text('[http]\nattempts = 2\n[[tenants]]\nname = "acme"\nprovider = "mailcow"\n'
                    'credentials = "env:MC_KEY"\ndomains = ["acme.example"]\n'
                    '[tenants.mailcow]\nurl = "https://127.0.0.1:8443/api/v1"\ntimezone = "Europe/Vienna"\n',
                    encoding="utf-8")
    config: Config = load_config(path)
    adapter = build(config.tenants[0], config)
    assert adapter.base == "https://127.0.0.1:8443/api/v1"
    assert str(adapter.zone) == "Europe/Vienna"


# Writes


def _run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


def test_disable_and_reenable_the_catch_all(state: MailcowState, server: ContractServer, tmp_path: Path) -> None:
    _alias(state, "@acme.example", "ana@acme.example")
    adapter = _adapter(server, tmp_path)
    after = _run(adapter.disable_catch_all("acme.example"))
    assert after.active is False and after.address == "@acme.example"
    assert _collect(server, tmp_path).catch_all["acme.example"] is None
    assert _run(adapter.enable_alias("@acme.example")).active is True


def test_drop_an_outside_target_and_undo(state: MailcowState, server: ContractServer, tmp_path: Path) -> None:
    number = _alias(state, "ana@acme.example", "ana@acme.example,ana@personal.test")
    adapter = _adapter(server, tmp_path)
    after = _run(adapter.drop_forward_target("ana@acme.example", "ana@personal.test"))
    assert after.goto == ("ana@acme.example",)
    assert state.aliases[number]["goto"] == "ana@acme.example"
    assert _collect(server, tmp_path).mailboxes[0].forwards == ()
    undone = _run(adapter.set_forward_targets("ana@acme.example", ["ana@acme.example", "ana@personal.test"]))
    assert undone.goto == ("ana@acme.example", "ana@personal.test")
    with pytest.raises(AdapterError, match="does not forward to"):
        _run(adapter.drop_forward_target("ana@acme.example", "x@nowhere.test"))


def test_dropping_the_only_target_asks_to_disable_instead(state: MailcowState, server: ContractServer,
                                                          tmp_path: Path) -> None:
    _alias(state, "sales@acme.example", "sales@outside.test")
    with pytest.raises(AdapterError, match="disable the alias instead"):
        _run(_adapter(server, tmp_path).drop_forward_target("sales@acme.example", "sales@outside.test"))
    assert _run(_adapter(server, tmp_path).disable_alias("sales@acme.example")).active is False


def test_suspend_disable_and_reactivate_a_mailbox(state: MailcowState, server: ContractServer, tmp_path: Path) -> None:
    adapter = _adapter(server, tmp_path)
    assert _run(adapter.suspend_mailbox("ana@acme.example")).status is MailboxStatus.SUSPENDED
    assert state.mailboxes["ana@acme.example"]["active"] == 2
    assert _run(adapter.disable_mailbox("ana@acme.example")).status is MailboxStatus.DISABLED
    assert _run(adapter.set_mailbox_status("ana@acme.example", MailboxStatus.ACTIVE)).status is MailboxStatus.ACTIVE
    with pytest.raises(AdapterError, match="no mailbox status 'pending'"):
        _run(adapter.set_mailbox_status("ana@acme.example", MailboxStatus.PENDING))


def test_remove_a_send_as_grant_replaces_the_whole_list(state: MailcowState, server: ContractServer,
                                                        tmp_path: Path) -> None:
    state.mailboxes["info@acme.example"] = _box("info@acme.example")
    state.mailboxes["ana@acme.example"]["sender_acl"] = ["info@acme.example", "sales@acme.example"]
    adapter = _adapter(server, tmp_path)
    after = _run(adapter.remove_delegate("info@acme.example", "ana@acme.example"))
    assert after.sender_acl == ("sales@acme.example",)
    assert _run(adapter.remove_send_as("ana@acme.example", "sales@acme.example")).sender_acl == ()
    assert state.mailboxes["ana@acme.example"]["sender_acl"] == []  # cleared with ["default"]


def test_a_domain_wide_grant_is_named_when_the_exact_one_is_absent(state: MailcowState, server: ContractServer,
                                                                   tmp_path: Path) -> None:
    state.mailboxes["ana@acme.example"]["sender_acl"] = ["@acme.example"]
    with pytest.raises(AdapterError, match="wider grant '@acme.example'"):
        _run(_adapter(server, tmp_path).remove_delegate("info@acme.example", "ana@acme.example"))


def test_a_refused_write_with_http_200_is_an_error(state: MailcowState, server: ContractServer,
                                                   tmp_path: Path) -> None:
    state.refuse_writes = True
    with pytest.raises(AdapterError, match="was refused: access_denied"):
        _run(_adapter(server, tmp_path).suspend_mailbox("ana@acme.example"))
    assert state.mailboxes["ana@acme.example"]["active"] == 1


def test_a_success_that_changed_nothing_shows_in_the_state_read_back(state: MailcowState, server: ContractServer,
                                                                     tmp_path: Path) -> None:
    state.ignore_writes = True
    assert _run(_adapter(server, tmp_path).suspend_mailbox("ana@acme.example")).status is MailboxStatus.ACTIVE


def test_a_read_only_key_cannot_write(server: ContractServer, tmp_path: Path) -> None:
    with pytest.raises(AdapterError, match="403 error: API read/write access denied") as raised:
        _run(_adapter(server, tmp_path, key=READ_ONLY_KEY).suspend_mailbox("ana@acme.example"))
    assert READ_ONLY_KEY not in str(raised.value)


def test_the_estate_without_show_last_login_has_last_login_unsupported(tmp_path: Path) -> None:
    estate = standard_estate()
    assert state_for(estate).mailboxes["old@acme.example"]["active"] == 2
    server = HARNESS.serve(estate, page_size=4)
    try:
        with_state(server).show_last_login = False
        collected = _collect(server, tmp_path)
    finally:
        server.stop()
    assert all(m.last_login is None for m in collected.mailboxes)
    assert _coverage(collected)[Fact.MAILBOX_LAST_LOGIN][0] is FactState.UNSUPPORTED


# Persistence surfaces: app passwords (never their hashes); OAuth grants and recovery paths are not in the API

HASH = "{SSHA256}pK0cHQ0Ue0bU5oC7iYw9ShouldNeverBeStored"


def _app_password(ident: int, name: str, **fields: Any) -> dict[str, Any]:
    return {"id": ident, "name": name, "mailbox": "ana@acme.example", "password": HASH, "active": 1,
            "imap_access": 1, "smtp_access": 1, "eas_access": 0, "dav_access": 0, "pop3_access": 0,
            "sieve_access": 0, "created": "2026-01-05 10:00:00", "modified": None, **fields}


def test_app_passwords_are_read_without_their_hashes(state: MailcowState, server: ContractServer,
                                                    tmp_path: Path) -> None:
    from scanner.model import GrantKind, MailAccess, plain

    state.app_passwords["ana@acme.example"] = [
        _app_password(7, "Thunderbird"), _app_password(8, "CalDAV only", imap_access=0, smtp_access=0, dav_access=1),
        _app_password(9, "Old phone", active=0)]
    collected = _collect(server, tmp_path)
    [ana] = [m for m in collected.mailboxes if m.address == "ana@acme.example"]
    assert [(g.kind, g.id, g.client, g.mail) for g in ana.grants] == [
        (GrantKind.APP_PASSWORD, "7", "Thunderbird", MailAccess.FULL),
        (GrantKind.APP_PASSWORD, "8", "CalDAV only", MailAccess.NONE)]
    assert ana.grants[0].scopes == ("imap", "smtp")
    assert ana.grants[0].created == datetime(2026, 1, 5, 9, tzinfo=UTC)  # Europe/Berlin, winter
    assert "SSHA256" not in str(plain(ana))
    coverage = _coverage(collected)
    assert coverage[Fact.MAILBOX_APP_PASSWORDS][0] is FactState.COLLECTED
    assert coverage[Fact.MAILBOX_OAUTH_GRANTS] == (
        FactState.UNSUPPORTED, "mailcow's API lists only the OAuth2 clients an admin registered (mailcow as the "
        "provider), not the grants or tokens of a mailbox")
    assert coverage[Fact.MAILBOX_RECOVERY][0] is FactState.UNSUPPORTED


def test_a_release_without_app_passwords_is_unsupported(state: MailcowState, server: ContractServer,
                                                        tmp_path: Path) -> None:
    state.no_app_passwd_api = True
    collected = _collect(server, tmp_path)
    assert _coverage(collected)[Fact.MAILBOX_APP_PASSWORDS] == (
        FactState.UNSUPPORTED, "this mailcow release has no app-passwd API (GET /get/app-passwd answered 404)")
    assert collected.problems == ()


def test_grant_revoke_deletes_the_app_password_and_refuses_the_undo(state: MailcowState, server: ContractServer,
                                                                     tmp_path: Path) -> None:
    from scanner.adapters.base import Refused

    state.app_passwords["ana@acme.example"] = [_app_password(7, "Thunderbird"), _app_password(8, "Laptop")]
    adapter = _adapter(server, tmp_path)
    params = {"kind": "app_password", "grant": "7", "client": "Thunderbird"}
    before = asyncio.run(adapter.remedy_read("grant.revoke", "ana@acme.example", params))
    assert before["state"] == {"grants": ["7"]}
    after = asyncio.run(adapter.remedy_apply("grant.revoke", "ana@acme.example", params, before))
    assert after["state"] == {"grants": []}
    assert [r["id"] for r in state.app_passwords["ana@acme.example"]] == [8]
    with pytest.raises(Refused, match="cannot be restored"):
        asyncio.run(adapter.remedy_restore("grant.revoke", "ana@acme.example", params, before))

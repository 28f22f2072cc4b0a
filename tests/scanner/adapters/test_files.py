"""The files adapter: good export files, and malformed rows reported by file and line without losing the rest."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from scanner.adapters.base import collect_all
from scanner.adapters.files import MAILBOX_FACTS, FilesAdapter, read_roster
from scanner.errors import AdapterError
from scanner.model import Fact, FactState, ForwardMechanism, MailboxKind, MailboxStatus, Tenant

TENANT = Tenant("acme", "files", ("acme.example", "acme-mail.example"))

MAILBOXES = """address,display_name,kind,status,created,last_login,owners,delegates
ann@acme.example,Ann,user,active,2024-01-02,2026-11-20T08:00:00Z,,
info@acme.example,Info,shared,active,2023-05-01,,ann@acme.example;bob@acme.example,
bob@acme.example,Bob,user,suspended,2022-01-01,2025-01-01,,helper@outside.test
"""
FORWARDS = """mailbox,target,mechanism
ann@acme.example,ann.private@gmail.test,inbox_rule
info@acme.example,ann@acme-mail.example,alias
"""
ACCESS_FACTS = (Fact.MAILBOX_OAUTH_GRANTS, Fact.MAILBOX_APP_PASSWORDS, Fact.MAILBOX_RECOVERY)  # grants/recovery files


def _export(tmp_path: Path, **files: str) -> Path:
    for name, text in files.items():
        (tmp_path / name.replace("_", ".")).write_text(text, encoding="utf-8")
    return tmp_path


def _collect(directory: Path):
    return asyncio.run(collect_all(FilesAdapter(directory), TENANT))


def test_an_alias_row_is_an_alias_subject_with_its_forwards(tmp_path: Path) -> None:
    export = _export(
        tmp_path,
        mailboxes_csv=MAILBOXES + "sales@acme.example,Sales,alias,active,2025-03-01,,,\n"
                                  "old@acme.example,,Alias,disabled,,,,\n",
        forwards_csv=FORWARDS + "sales@acme.example,sales@partner.test,alias\n",
    )
    collected = _collect(export)
    assert collected.problems == ()
    boxes = {m.address: m for m in collected.mailboxes}
    assert boxes["sales@acme.example"].kind is MailboxKind.ALIAS
    assert [(f.target, f.mechanism) for f in boxes["sales@acme.example"].forwards] == [
        ("sales@partner.test", ForwardMechanism.ALIAS)]
    assert (boxes["old@acme.example"].kind, boxes["old@acme.example"].status) == (
        MailboxKind.ALIAS, MailboxStatus.DISABLED)


def test_good_files_are_read_into_the_model(tmp_path: Path) -> None:
    export = _export(
        tmp_path,
        mailboxes_csv=MAILBOXES,
        forwards_csv=FORWARDS,
        invites_csv="address,sent,expires\nbob@acme.example,2026-11-01,2026-11-08\n",
        domains_csv="domain,catch_all\nacme.example,info@acme.example\nacme-mail.example,\n",
    )
    collected = _collect(export)
    assert collected.problems == ()
    boxes = {m.address: m for m in collected.mailboxes}
    assert boxes["ann@acme.example"].last_login == datetime(2026, 11, 20, 8, tzinfo=UTC)
    assert boxes["ann@acme.example"].forwards[0].mechanism is ForwardMechanism.INBOX_RULE
    assert boxes["info@acme.example"].kind is MailboxKind.SHARED
    assert boxes["info@acme.example"].owners == ("ann@acme.example", "bob@acme.example")
    assert boxes["info@acme.example"].last_login is None
    assert boxes["bob@acme.example"].status is MailboxStatus.SUSPENDED
    assert boxes["bob@acme.example"].delegates == ("helper@outside.test",)
    assert boxes["bob@acme.example"].invite is not None
    assert collected.catch_all == {"acme.example": "info@acme.example", "acme-mail.example": None}
    assert all(c.state is FactState.COLLECTED for c in collected.coverage if c.fact not in ACCESS_FACTS)


def test_json_files_work_like_csv(tmp_path: Path) -> None:
    rows = [{"address": "ann@acme.example", "kind": "role", "status": "active", "owners": ["boss@acme.example"], "last_login": ""}]
    export = _export(tmp_path, mailboxes_json=json.dumps(rows),
                     forwards_json=json.dumps([{"mailbox": "ann@acme.example", "target": "x@out.test"}]))
    collected = _collect(export)
    (mailbox,) = collected.mailboxes
    assert mailbox.kind is MailboxKind.ROLE and mailbox.owners == ("boss@acme.example",)
    assert mailbox.forwards[0].mechanism is ForwardMechanism.AUTO_FORWARD


def test_malformed_rows_name_file_and_line_and_keep_the_rest(tmp_path: Path) -> None:
    export = _export(
        tmp_path,
        mailboxes_csv=MAILBOXES + "not-an-address,X,user,active,,,,\ncarol@acme.example,Carol,wizard,active,,,,\n"
        "dave@acme.example,Dave,user,active,yesterday,,,\n",
        forwards_csv=FORWARDS + "ann@acme.example,not an address,auto_forward\n",
    )
    collected = _collect(export)
    mailboxes_csv = export / "mailboxes.csv"
    assert collected.problems[:3] == (
        f"{mailboxes_csv}:5: 'address' is not an email address: 'not-an-address'",
        f"{mailboxes_csv}:6: 'kind' is 'wizard'; expected one of: user, shared, role, resource, alias",
        f"{mailboxes_csv}:7: 'created' is not an ISO 8601 date: 'yesterday'",
    )
    assert collected.problems[3] == f"{export / 'forwards.csv'}:4: 'target' is not an email address: 'not an address'"
    # A bad address drops its row (it is nobody's); a bad cell keeps the mailbox with that cell's facts unknown.
    assert {m.address for m in collected.mailboxes} == {
        "ann@acme.example", "info@acme.example", "bob@acme.example", "carol@acme.example", "dave@acme.example"}
    # The mailbox whose forward row was bad has unknown forwards, not "no forwards".
    failed = [c for c in collected.coverage if c.state is FactState.FAILED]
    assert sorted((c.fact.value, c.subject) for c in failed) == [
        ("mailbox.forwards", "ann@acme.example"),
        ("mailbox.last_login", "carol@acme.example"),
        ("mailbox.last_login", "dave@acme.example"),
        ("mailbox.list", "carol@acme.example"),
        ("mailbox.owners", "carol@acme.example"),
    ]


def test_missing_optional_files_are_unsupported_not_empty(tmp_path: Path) -> None:
    export = _export(tmp_path, mailboxes_csv="address,display_name,kind,status\nann@acme.example,Ann,user,active\n")
    coverage = {c.fact: c for c in _collect(export).coverage}
    assert coverage[Fact.MAILBOX_FORWARDS].state is FactState.UNSUPPORTED
    assert coverage[Fact.MAILBOX_LAST_LOGIN].state is FactState.UNSUPPORTED
    assert coverage[Fact.DOMAIN_CATCH_ALL].state is FactState.UNSUPPORTED
    assert coverage[Fact.MAILBOX_LIST].state is FactState.COLLECTED


def test_domain_missing_from_domains_file_has_unknown_catch_all(tmp_path: Path) -> None:
    export = _export(tmp_path, mailboxes_csv=MAILBOXES, domains_csv="domain,catch_all\nacme.example,\n")
    failed = [c for c in _collect(export).coverage if c.state is FactState.FAILED]
    assert [(c.fact, c.subject) for c in failed] == [(Fact.DOMAIN_CATCH_ALL, "acme-mail.example")]


def test_missing_export_is_an_adapter_error(tmp_path: Path) -> None:
    with pytest.raises(AdapterError, match="no mailboxes.csv or mailboxes.json"):
        _collect(tmp_path)
    with pytest.raises(AdapterError, match="does not exist"):
        _collect(tmp_path / "nowhere")


def test_unreadable_json_fails_the_mailbox_facts_naming_file_and_line(tmp_path: Path) -> None:
    export = _export(tmp_path, mailboxes_json="[\n  {")
    collected = _collect(export)
    assert collected.mailboxes == ()
    assert collected.problems[0].startswith(f"{export / 'mailboxes.json'}:2: not valid JSON")
    states = {c.fact: c.state for c in collected.coverage if not c.subject}
    assert all(states[f] is FactState.FAILED for f in MAILBOX_FACTS)


def test_a_file_broken_below_its_bad_rows_is_refused_with_one_problem_and_nothing_of_its_rows(tmp_path: Path) -> None:
    # The rows are read one at a time: what the bad rows above the break said is taken back with the file.
    export = _export(
        tmp_path,
        mailboxes_csv=MAILBOXES + "carol@acme.example,Carol,wizard,active,,,,\nx,X,user\ndave@acme.example,Dave,user",
        forwards_csv=FORWARDS,
    )
    collected = _collect(export)
    assert collected.mailboxes == ()
    assert collected.problems == (f"{export / 'mailboxes.csv'}:7: the last row has 3 of 8 fields and no line end: "
                                  "the file is cut short",)
    assert all(not c.subject for c in collected.coverage)
    states = {c.fact: c.state for c in collected.coverage}
    assert all(states[f] is FactState.FAILED for f in MAILBOX_FACTS)

    (export / "mailboxes.csv").write_text(MAILBOXES, encoding="utf-8")
    (export / "forwards.csv").write_text(FORWARDS + 'nobody@acme.example,x@y.test,alias\n"ann@acme.example,x\n')
    collected = _collect(export)
    assert len(collected.mailboxes) == 3 and all(m.forwards == () for m in collected.mailboxes)
    assert collected.problems == (f"{export / 'forwards.csv'}:5: the file ends inside a quoted cell (cut short?)",)
    assert [(c.fact, c.state, c.subject) for c in collected.coverage if c.fact is Fact.MAILBOX_FORWARDS] == [
        (Fact.MAILBOX_FORWARDS, FactState.FAILED, "")]


def test_a_roster_broken_below_its_rows_is_refused_whole(tmp_path: Path) -> None:
    path = tmp_path / "people.csv"
    path.write_text('email,name,left\nann@acme.example,Ann,\nx,X,\n"bob@acme.example,Bob,\n')
    with pytest.raises(AdapterError, match=r"people.csv:4: the file ends inside a quoted cell"):
        read_roster(path)


def test_roster(tmp_path: Path) -> None:
    path = tmp_path / "people.csv"
    path.write_text("email,name,left\nann@acme.example,Ann,\nbob@acme.example,Bob,2026-02-01\nx,X,\n")
    people, problems = read_roster(path)
    assert [(p.email, p.left and p.left.isoformat()) for p in people] == [
        ("ann@acme.example", None), ("bob@acme.example", "2026-02-01")]
    assert problems == (f"{path}:4: 'email' is not an email address: 'x'",)


GRANTS = """mailbox,kind,client,scopes,created,last_used
bob@acme.example,oauth,Mail Sorter,https://www.googleapis.com/auth/gmail.readonly openid,2025-03-01,2026-10-01T10:00:00Z
bob@acme.example,app_password,Thunderbird,,2024-05-05,
ann@acme.example,oauth,Calendar Helper,Calendars.Read;User.Read,2025-01-01,
ann@acme.example,device_password,NAS,,,
"""
RECOVERY = """mailbox,kind,value
info@acme.example,email,ann.home@personal.test
bob@acme.example,phone,+1 555 0100
"""


def test_grants_and_recovery_files_are_read_without_secrets(tmp_path: Path) -> None:
    collected = _collect(_export(tmp_path, mailboxes_csv=MAILBOXES, grants_csv=GRANTS, recovery_csv=RECOVERY))
    boxes = {m.address: m for m in collected.mailboxes}
    sorter, password = boxes["bob@acme.example"].grants
    assert (sorter.kind.value, sorter.id, sorter.mail.value) == ("oauth", "Mail Sorter", "read")
    assert sorter.last_used == datetime(2026, 10, 1, 10, tzinfo=UTC)
    assert (password.kind.value, password.mail.value) == ("app_password", "full")
    calendar, device = boxes["ann@acme.example"].grants
    assert calendar.mail.value == "none" and calendar.scopes == ("Calendars.Read", "User.Read")
    assert device.kind.value == "device_password"
    assert [(r.kind.value, r.value) for r in boxes["info@acme.example"].recovery] == [
        ("email", "ann.home@personal.test")]
    coverage = {c.fact: c.state for c in collected.coverage if not c.subject}
    for fact in (Fact.MAILBOX_OAUTH_GRANTS, Fact.MAILBOX_APP_PASSWORDS, Fact.MAILBOX_RECOVERY):
        assert coverage[fact] is FactState.COLLECTED


def test_without_grants_or_recovery_files_those_facts_are_unsupported(tmp_path: Path) -> None:
    collected = _collect(_export(tmp_path, mailboxes_csv=MAILBOXES))
    reasons = {c.fact: (c.state, c.reason) for c in collected.coverage if not c.subject}
    assert reasons[Fact.MAILBOX_OAUTH_GRANTS] == (FactState.UNSUPPORTED, "the export has no grants file")
    assert reasons[Fact.MAILBOX_RECOVERY] == (FactState.UNSUPPORTED, "the export has no recovery file")


def test_a_bad_grant_row_fails_its_mailboxs_grants_naming_file_and_line(tmp_path: Path) -> None:
    """Bob's unreadable grant leaves Bob's grants unknown, not every mailbox's: the other rows still count."""
    grants = "mailbox,kind,client\nbob@acme.example,token,X\nann@acme.example,app_password,Mail\n"
    collected = _collect(_export(tmp_path, mailboxes_csv=MAILBOXES, grants_csv=grants))
    assert any("grants.csv:2" in p and "'kind'" in p for p in collected.problems)
    states = sorted((c.fact.value, c.subject, c.state.value) for c in collected.coverage
                    if c.fact in (Fact.MAILBOX_APP_PASSWORDS, Fact.MAILBOX_OAUTH_GRANTS))
    assert states == [("mailbox.app_passwords", "", "collected"), ("mailbox.app_passwords", "bob@acme.example", "failed"),
                      ("mailbox.oauth_grants", "", "collected"), ("mailbox.oauth_grants", "bob@acme.example", "failed")]
    boxes = {m.address: m for m in collected.mailboxes}
    assert [g.client for g in boxes["ann@acme.example"].grants] == ["Mail"]


def test_a_grant_or_recovery_row_naming_no_mailbox_fails_the_fact_for_the_tenant(tmp_path: Path) -> None:
    collected = _collect(_export(tmp_path, mailboxes_csv=MAILBOXES,
                                 grants_csv="mailbox,kind,client\n,oauth,X\n",
                                 recovery_csv="mailbox,kind,value\nnot-an-address,phone,1\n"))
    failed = sorted((c.fact.value, c.subject) for c in collected.coverage if c.state is FactState.FAILED)
    assert failed == [("mailbox.app_passwords", ""), ("mailbox.oauth_grants", ""), ("mailbox.recovery", "")]


def test_grant_revoke_removes_the_row_and_refuses_the_undo(tmp_path: Path) -> None:
    from scanner.adapters.base import Refused

    adapter = FilesAdapter(_export(tmp_path, mailboxes_csv=MAILBOXES, grants_csv=GRANTS))
    params = {"kind": "app_password", "grant": "Thunderbird"}
    before = asyncio.run(adapter.remedy_read("grant.revoke", "bob@acme.example", params))
    assert before["state"] == {"grants": ["Thunderbird"]}
    after = asyncio.run(adapter.remedy_apply("grant.revoke", "bob@acme.example", params, before))
    assert after["state"] == {"grants": []}
    assert "Thunderbird" not in (tmp_path / "grants.csv").read_text(encoding="utf-8")
    assert "Mail Sorter" in (tmp_path / "grants.csv").read_text(encoding="utf-8")
    with pytest.raises(Refused, match="a revoked grant cannot be restored"):
        asyncio.run(adapter.remedy_restore("grant.revoke", "bob@acme.example", params, before))
def test_a_remediation_never_rewrites_a_file_it_cannot_read_whole(tmp_path: Path) -> None:
    text = FORWARDS + "bob@acme.example,bob@out.test,auto_forward,extra\n"
    export = _export(tmp_path, mailboxes_csv=MAILBOXES, forwards_csv=text)
    adapter = FilesAdapter(export)
    with pytest.raises(AdapterError, match=r"forwards.csv:4: 4 fields where the header has 3: fix the export file"):
        asyncio.run(adapter.remedy_apply("forwarding.disable", "ann@acme.example",
                                         {"targets": ["ann.private@gmail.test"]}, {}))
    assert (export / "forwards.csv").read_text(encoding="utf-8") == text


def test_json_cells_of_the_wrong_type_fail_only_their_facts(tmp_path: Path) -> None:
    rows = [{"address": "ann@acme.example", "kind": "user", "status": "active", "owners": 5, "last_login": 17,
             "delegates": ["pa@acme.example"]},
            {"address": "bob@acme.example", "kind": None, "status": "active", "owners": {"a": "x@y.test"}}]
    collected = _collect(_export(tmp_path, mailboxes_json=json.dumps(rows)))
    path = tmp_path / "mailboxes.json"
    assert collected.problems == (
        f"{path}: item 1: 'last_login' must be text",
        f"{path}: item 1: 'owners' must be addresses separated by ';' (or a JSON list of them)",
        f"{path}: item 2: missing 'kind'",
        f"{path}: item 2: 'owners' must be addresses separated by ';' (or a JSON list of them)",
    )
    assert {m.address: m.delegates for m in collected.mailboxes} == {
        "ann@acme.example": ("pa@acme.example",), "bob@acme.example": ()}
    failed = sorted((c.subject, c.fact.value) for c in collected.coverage if c.state is FactState.FAILED)
    assert failed == [
        ("ann@acme.example", "mailbox.last_login"), ("ann@acme.example", "mailbox.owners"),
        ("bob@acme.example", "mailbox.last_login"), ("bob@acme.example", "mailbox.list"),
        ("bob@acme.example", "mailbox.owners"),
    ]

"""Strict export files end to end: a broken file after a good run never removes, resolves or passes anything."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import dns.zone
import pytest
from click.testing import CliRunner

from scanner.cli import main
from scanner.store.database import Store
from scanner.loopback.zoneserver import ZoneServer
from tests.conftest import TOP_LEVEL_ZONES, top_level_zone

ZONE = (
    '@ MX 10 mx1.acme.example.\n@ TXT "v=spf1 ip4:127.0.0.10 -all"\n'
    '_dmarc TXT "v=DMARC1; p=reject; rua=mailto:d@acme.example"\n'
)
MAILBOXES = (
    "address,display_name,kind,status,created,last_login,owners,delegates\n"
    "ann@acme.example,Ann,user,active,2020-01-01,2026-11-20T08:00:00Z,,\n"
    "bob@acme.example,Bob,user,active,2020-01-01,2026-11-20T08:00:00Z,,\n"
    "info@acme.example,Info,shared,active,2020-01-01,,,\n"
)
GOOD = {
    "mailboxes.csv": MAILBOXES,
    "forwards.csv": "mailbox,target,mechanism\nann@acme.example,ann@gmail.test,auto_forward\n",
    "invites.csv": "address,sent,expires\n",
    "domains.csv": "domain,catch_all\nacme.example,info@acme.example\n",
    "people.csv": "email,name,left\nann@acme.example,Ann,\nbob@acme.example,Bob,2026-01-31\n",
}
FAILING = {  # what the good export fails, per check and subject
    ("forwarding.external", "ann@acme.example"),
    ("account.ghost", "bob@acme.example"),
    ("shared.ownerless", "info@acme.example"),
    ("mailbox.no_owner", "info@acme.example"),
    ("catchall.enabled", "acme.example"),
}


def _setup(tmp_path: Path, url: str, nameserver: str) -> Path:
    export = tmp_path / "export"
    export.mkdir()
    for name, text in GOOD.items():
        (export / name).write_text(text, encoding="utf-8")
    config = tmp_path / "mailwarden.toml"
    config.write_text(
        f'[store]\nurl = "{url}"\n[dns]\nnameservers = ["{nameserver}"]\ntimeout = 1.0\n'
        '[[tenants]]\nname = "acme"\nprovider = "files"\nexport = "export"\ndomains = ["acme.example"]\n'
        'roster = "export/people.csv"\n',
        encoding="utf-8",
    )
    return config


def _scan(config: Path, out: Path) -> str:
    done = CliRunner().invoke(main, ["scan", "--config", str(config), "--out", str(out)])
    assert done.exit_code == 0, done.output
    return done.output


def _last_run(url: str) -> tuple[dict, list, dict, list]:
    store = Store(url)
    try:
        run = store.runs()[-1]
        return (run.scope["tenants"]["acme"], store.changes(run_id=run.id), store.lifecycle_events(run.id),
                store.findings_for_run(run.id))
    finally:
        store.close()


BROKEN = {
    "empty mailboxes": ("mailboxes.csv", b"", "mailboxes.csv: the file is empty"),
    "empty forwards": ("forwards.csv", b"", "forwards.csv: the file is empty"),
    "empty invites": ("invites.csv", b"", "invites.csv: the file is empty"),
    "empty roster": ("people.csv", b"", "people.csv: the file is empty"),
    "mailboxes cut mid-row": ("mailboxes.csv", MAILBOXES.encode()[:-25], "mailboxes.csv:4: the last row has"),
    "forwards not UTF-8": ("forwards.csv", "mailbox,target\nann@acme.example,ann@gm\xe4il.test\n".encode("latin-1"),
                           "forwards.csv:2: not UTF-8 text"),
    "binary domains": ("domains.csv", b"PK\x03\x04\x00\x00binary", "domains.csv:1: a NUL byte"),
    "forwards of the wrong type": ("forwards.json", b'[1, "x", null]', "forwards.json: item 1: expected an object"),
    "no kind column": ("mailboxes.csv", MAILBOXES.replace(",kind", "").replace(",user", "").replace(",shared", "")
                       .encode(), "mailboxes.csv: no 'kind' column"),
    "no status column": ("mailboxes.csv", MAILBOXES.replace(",status", "").replace(",active", "").encode(),
                         "mailboxes.csv: no 'status' column"),
    "no catch_all column": ("domains.csv", b"domain\nacme.example\n", "domains.csv: no 'catch_all' column"),
    "target twice": ("forwards.csv", b"mailbox,target,target\nann@acme.example,ann@gmail.test,ann@acme.example\n",
                     "forwards.csv:1: the column 'target' appears twice"),
    "roster leave_date": ("people.csv", b"email,name,leave_date\nbob@acme.example,Bob,2026-01-31\n",
                          "people.csv: no 'left' column"),
}


@pytest.fixture(scope="module")
def good_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """One good scan of the export (its store and export directory), which each case below copies and breaks."""
    base = tmp_path_factory.mktemp("good")
    with ZoneServer([top_level_zone(o) for o in TOP_LEVEL_ZONES]) as server:  # the DMARC tree walk's top
        server.add_zone(dns.zone.from_text(
            "@ IN SOA ns1.acme.example. hostmaster.acme.example. 1 3600 600 86400 300\n"
            f"@ IN NS ns1.acme.example.\nns1 IN A 127.0.0.53\n{ZONE}", origin="acme.example", relativize=False))
        url = f"sqlite:///{base / 'store.db'}"
        _scan(_setup(base, url, server.nameserver), base / "one")
        scope, _, _, findings = _last_run(url)
        assert scope["state"] == "complete"
        assert {(f.check, f.subject) for f in findings if f.status.value == "fail"} == FAILING
        yield base, server.nameserver


@pytest.mark.parametrize("case", list(BROKEN))
def test_a_broken_file_after_a_good_run_removes_resolves_and_passes_nothing(
    case: str, good_run: tuple[Path, str], tmp_path: Path
) -> None:
    base, nameserver = good_run
    url = f"sqlite:///{tmp_path / 'store.db'}"
    shutil.copy(base / "store.db", tmp_path / "store.db")
    shutil.copytree(base / "export", tmp_path / "export")
    config = tmp_path / "mailwarden.toml"
    config.write_text((base / "mailwarden.toml").read_text(encoding="utf-8").replace(str(base), str(tmp_path)),
                      encoding="utf-8")
    name, content, problem = BROKEN[case]
    export = tmp_path / "export"
    if name.endswith(".json"):
        (export / name.replace(".json", ".csv")).unlink()
    (export / name).write_bytes(content)
    _scan(config, tmp_path / "two")
    scope, changes, events, findings = _last_run(url)
    assert scope["state"] == "partial"
    assert any(problem in p for p in scope["problems"]), scope["problems"]
    assert [c for c in changes if c.action == "removed"] == []
    assert events["resolved"] == []
    # What the broken file would have told is unknown: nothing that failed before passes now.
    verdicts = {(f.check, f.subject): f.status.value for f in findings}
    assert not [key for key in FAILING if verdicts.get(key) == "pass"]


def test_an_empty_forwards_file_makes_forwarding_an_error_on_sqlite_and_postgresql(
    store_url: str, dns_server, add_zone, tmp_path: Path
) -> None:
    add_zone("acme.example", ZONE)
    config = _setup(tmp_path, store_url, dns_server.nameserver)
    _scan(config, tmp_path / "one")
    (tmp_path / "export" / "forwards.csv").write_bytes(b"")
    _scan(config, tmp_path / "two")
    scope, changes, events, findings = _last_run(store_url)
    assert scope["state"] == "partial" and events["resolved"] == []
    assert [c for c in changes if c.action == "removed"] == []
    forwarding = {f.subject: f for f in findings if f.check == "forwarding.external"}
    assert {s: f.status.value for s, f in forwarding.items()} == dict.fromkeys(
        ("ann@acme.example", "bob@acme.example", "info@acme.example"), "error")
    assert "forwards.csv: the file is empty" in forwarding["ann@acme.example"].reason


def test_a_header_only_file_is_no_rows(dns_server, add_zone, tmp_path: Path) -> None:
    add_zone("acme.example", ZONE)
    url = f"sqlite:///{tmp_path / 'store.db'}"
    config = _setup(tmp_path, url, dns_server.nameserver)
    _scan(config, tmp_path / "one")
    (tmp_path / "export" / "forwards.csv").write_text("mailbox,target,mechanism\n", encoding="utf-8")
    _scan(config, tmp_path / "two")
    scope, _, events, findings = _last_run(url)
    assert scope["state"] == "complete"
    assert {f.subject: f.status.value for f in findings if f.check == "forwarding.external"}["ann@acme.example"] == "pass"
    assert len(events["resolved"]) == 1


def test_a_bad_cell_makes_only_its_facts_unknown_for_its_mailbox(dns_server, add_zone, tmp_path: Path) -> None:
    add_zone("acme.example", ZONE)
    url = f"sqlite:///{tmp_path / 'store.db'}"
    config = _setup(tmp_path, url, dns_server.nameserver)
    (tmp_path / "export" / "mailboxes.csv").write_text(
        MAILBOXES.replace("2026-11-20T08:00:00Z,,\nbob", "last tuesday,,\nbob"), encoding="utf-8")
    _scan(config, tmp_path / "one")
    scope, _, _, findings = _last_run(url)
    assert scope["state"] == "partial"
    assert scope["problems"] == [f"{tmp_path / 'export' / 'mailboxes.csv'}:2: 'last_login' is not an ISO 8601 date: "
                                 "'last tuesday'"]
    ann = {f.check: f for f in findings if f.subject == "ann@acme.example"}
    assert ann["forwarding.external"].status.value == "fail"  # the forwards are known: still judged
    assert ann["account.inactive"].status.value == "error"
    assert "mailboxes.csv:2" in ann["account.inactive"].reason
    assert ann["account.ghost"].status.value == "pass"  # the roster says Ann is still there
    bob = {f.check: f.status.value for f in findings if f.subject == "bob@acme.example"}
    assert bob["account.inactive"] == "pass" and bob["account.ghost"] == "fail"


def test_a_bad_leave_date_makes_that_persons_ghost_check_an_error(dns_server, add_zone, tmp_path: Path) -> None:
    add_zone("acme.example", ZONE)
    url = f"sqlite:///{tmp_path / 'store.db'}"
    config = _setup(tmp_path, url, dns_server.nameserver)
    (tmp_path / "export" / "people.csv").write_text(GOOD["people.csv"].replace("2026-01-31", "end of january"),
                                                      encoding="utf-8")
    _scan(config, tmp_path / "one")
    _, _, _, findings = _last_run(url)
    ghost = {f.subject: f for f in findings if f.check == "account.ghost"}
    assert ghost["bob@acme.example"].status.value == "error"
    assert "people.csv:3" in ghost["bob@acme.example"].reason
    assert ghost["ann@acme.example"].status.value == "pass"


def test_json_entries_of_the_wrong_type_are_refused_by_location(tmp_path: Path) -> None:
    from scanner.adapters.files import ExportFileError, read_table

    path = tmp_path / "mailboxes.json"
    path.write_text(json.dumps([{"address": "a@acme.example", "kind": "user", "status": "active"}, 1, None,
                                ["x"]]), encoding="utf-8")
    table = read_table(path, ("address", "kind", "status"))
    assert [(loc.rsplit(" ", 1)[-1], why) for loc, row, why in table.rows if row is None] == [
        ("2", "expected an object, found a number"), ("3", "expected an object, found null"),
        ("4", "expected an object, found a list")]
    path.write_text('{"address": "a@acme.example"}', encoding="utf-8")
    with pytest.raises(ExportFileError, match="expected a JSON list of objects, found an object"):
        read_table(path)
    path.write_text("[]", encoding="utf-8")
    assert read_table(path, ("address",)).rows == ()


def test_a_missing_export_directory_or_roster_is_one_line_on_stderr(dns_server, add_zone, tmp_path: Path) -> None:
    add_zone("acme.example", ZONE)
    url = f"sqlite:///{tmp_path / 'store.db'}"
    config = _setup(tmp_path, url, dns_server.nameserver)
    (tmp_path / "export" / "people.csv").unlink()
    done = CliRunner().invoke(main, ["scan", "--config", str(config), "--out", str(tmp_path / "one")])
    assert done.exit_code == 0
    roster = tmp_path / "export" / "people.csv"
    assert done.stderr.count("\n") == 1
    assert done.stderr == (f"mailwarden: tenant acme: roster file {roster} does not exist ({config}: tenants.roster); "
                           "who left is unknown in this run\n")
    scope, _, _, findings = _last_run(url)
    assert scope["state"] == "partial"
    assert {f.status.value for f in findings if f.check == "account.ghost"} == {"error"}

    shutil.rmtree(tmp_path / "export")
    done = CliRunner().invoke(main, ["scan", "--config", str(config), "--out", str(tmp_path / "two")])
    assert done.exit_code == 1  # the only tenant's provider could not be read at all: the run failed
    assert f"mailwarden: tenant acme: export directory {tmp_path / 'export'} does not exist" in done.stderr
    scope, _, _, findings = _last_run(url)
    assert {f.status.value for f in findings if f.check == "forwarding.external"} <= {"error"}

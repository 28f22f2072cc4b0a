"""The evidence pack: its files and columns, the manifest and its verification, and the command line."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from checks.controls import Catalogue, load_catalogue
from checks.evaluate import fingerprint
from checks.registry import load_checks
from reports.evidence import PACK_COLUMNS, Period, verify_evidence, write_evidence
from reports.workbook import read_sheets
from scanner.cli import main
from scanner.model import Domain, Finding, Inventory, Mailbox, PolicyException, Severity, Status
from scanner.pipeline import snapshot_items
from scanner.store.database import Store

NOW = datetime(2026, 11, 2, 6, tzinfo=UTC)
FORMULA = '=HYPERLINK("http://x.test","click")'


def _finding(tenant: str, subject: str, status: Status, check: str = "forwarding.external") -> Finding:
    return Finding(id=fingerprint(check, tenant, subject), check=check, status=status, severity=Severity.HIGH,
                   tenant=tenant, domain=subject.rpartition("@")[2], subject=subject, title="t",
                   evidence={"targets": [FORMULA]})


def _store(url: str) -> Store:
    """Three weekly runs of two tenants: a mailbox renamed, one added, one gone, an exception throughout."""
    store = Store(url)
    exception = PolicyException("forwarding.external", "ceo@acme.example", "board mirror", "it@acme.example",
                                date(2027, 1, 31))
    weeks = [
        [Mailbox("acme", "ann@acme.example", display_name="Ann"), Mailbox("acme", "ceo@acme.example"),
         Mailbox("globex", "hank@globex.example")],
        [Mailbox("acme", "ann@acme.example", display_name=FORMULA), Mailbox("acme", "ceo@acme.example"),
         Mailbox("acme", "new@acme.example"), Mailbox("globex", "hank@globex.example")],
        [Mailbox("acme", "ann@acme.example", display_name=FORMULA), Mailbox("acme", "ceo@acme.example"),
         Mailbox("globex", "hank@globex.example")],
    ]
    for index, mailboxes in enumerate(weeks):
        run_id, when = f"r{index}", NOW + timedelta(days=7 * index)
        store.start_run(run_id, when, "c" * 64, "0.1.0")
        store.save_snapshot(run_id, snapshot_items(Inventory(
            domains=(Domain("acme.example", "acme"), Domain("globex.example", "globex")),
            mailboxes=tuple(mailboxes), exceptions=(exception,))))
        findings = [
            _finding("acme", "ann@acme.example", Status.FAIL if index < 2 else Status.PASS),
            _finding("acme", "ceo@acme.example", Status.EXCEPTED),
            _finding("globex", "hank@globex.example", Status.FAIL),
        ]
        store.record_findings(run_id, findings, when, ["acme", "globex"])
        store.finish_run(run_id, when, "complete", {"tenants": {
            "acme": {"state": "complete", "problems": [], "mailboxes": len(mailboxes), "domains": 1, "gaps": []},
            "globex": {"state": "complete", "problems": [], "mailboxes": 1, "domains": 1, "gaps": []}}})
    return store


@pytest.fixture
def store(store_url: str) -> Store:
    """The three runs, on SQLite and on PostgreSQL."""
    return _store(store_url)


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _header(path: Path) -> list[str]:
    with path.open(newline="", encoding="utf-8") as handle:
        return next(csv.reader(handle))


def test_pack_has_every_file_with_documented_columns(store: Store, tmp_path: Path) -> None:
    files = write_evidence(store, tmp_path / "pack", Period.of(None, None), config_digest="f" * 64)
    assert sorted(f.name for f in files) == sorted([*PACK_COLUMNS, "evidence.xlsx", "manifest.json"])
    for name, columns in PACK_COLUMNS.items():
        assert _header(tmp_path / "pack" / name) == list(columns)
    manifest = json.loads((tmp_path / "pack" / "manifest.json").read_text(encoding="utf-8"))
    assert [r["id"] for r in manifest["runs"]] == ["r0", "r1", "r2"]
    assert manifest["config_sha256"] == "f" * 64 and manifest["tool_version"]
    assert manifest["files"]["findings.csv"]["rows"] == 9
    assert verify_evidence(tmp_path / "pack") == []


def test_changes_come_from_consecutive_snapshots(store: Store, tmp_path: Path) -> None:
    write_evidence(store, tmp_path / "pack", Period.of(None, None))
    changes = _rows(tmp_path / "pack" / "changes.csv")
    seen = {(c["run_id"], c["subject"], c["action"], c["field"]) for c in changes}
    assert ("r1", "ann@acme.example", "changed", "display_name") in seen
    assert ("r1", "new@acme.example", "added", "") in seen
    assert ("r2", "new@acme.example", "removed", "") in seen  # acme was seen completely in r2
    renamed = next(c for c in changes if c["field"] == "display_name")
    assert renamed["before"] == "Ann" and renamed["after"] == "'" + FORMULA  # neutralized in the cell
    assert all(c["source"] == "scan" and c["tenant"] == "acme" for c in changes)


def test_period_and_tenant_select_runs_and_rows(store: Store, tmp_path: Path) -> None:
    period = Period.of(date(2026, 11, 9), date(2026, 11, 9))
    write_evidence(store, tmp_path / "pack", period, tenant="globex")
    manifest = json.loads((tmp_path / "pack" / "manifest.json").read_text(encoding="utf-8"))
    assert [r["id"] for r in manifest["runs"]] == ["r1"] and manifest["tenant"] == "globex"
    findings = _rows(tmp_path / "pack" / "findings.csv")
    assert {f["tenant"] for f in findings} == {"globex"} and {f["run_id"] for f in findings} == {"r1"}
    assert {r["tenant"] for r in _rows(tmp_path / "pack" / "inventory.csv")} == {"globex"}
    assert _rows(tmp_path / "pack" / "exceptions.csv") == []  # the exception is acme's


def test_exceptions_list_each_once_with_its_runs(store: Store, tmp_path: Path) -> None:
    write_evidence(store, tmp_path / "pack", Period.of(None, None))
    [row] = _rows(tmp_path / "pack" / "exceptions.csv")
    assert (row["subject"], row["first_run"], row["last_run"]) == ("ceo@acme.example", "r0", "r2")
    assert row["expired_at_last_run"] == "no" and row["covered_at_last_run"] == "1"


def test_no_cell_would_run_as_a_formula(store: Store, tmp_path: Path) -> None:
    write_evidence(store, tmp_path / "pack", Period.of(None, None))
    for name in PACK_COLUMNS:
        for row in _rows(tmp_path / "pack" / name):
            for value in row.values():
                assert not value.startswith(("=", "+", "-", "@", "\t", "\r")), (name, value)
    evidence = _rows(tmp_path / "pack" / "findings.csv")[0]["evidence"]
    assert json.loads(evidence) == {"targets": [FORMULA]}  # JSON text inside the cell keeps the value exact


def test_columns_are_stable_across_runs_and_stores(store: Store, tmp_path: Path) -> None:
    write_evidence(store, tmp_path / "a", Period.of(date(2026, 11, 2), date(2026, 11, 2)))
    other = Store(f"sqlite:///{tmp_path / 'empty-ish.db'}")
    other.start_run("x", NOW, "c" * 64, "0.1.0")
    other.record_findings("x", [], NOW, [])
    other.finish_run("x", NOW, "partial", {"tenants": {}})
    write_evidence(other, tmp_path / "b", Period.of(None, None))
    for name in PACK_COLUMNS:
        assert _header(tmp_path / "a" / name) == _header(tmp_path / "b" / name) == list(PACK_COLUMNS[name])


def test_verification_catches_one_changed_byte(store: Store, tmp_path: Path) -> None:
    write_evidence(store, tmp_path / "pack", Period.of(None, None))
    target = tmp_path / "pack" / "inventory.csv"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))
    problems = verify_evidence(tmp_path / "pack")
    assert len(problems) == 1 and "inventory.csv" in problems[0] and "SHA-256" in problems[0]


def test_verification_catches_missing_and_unlisted_files(store: Store, tmp_path: Path) -> None:
    write_evidence(store, tmp_path / "pack", Period.of(None, None))
    (tmp_path / "pack" / "changes.csv").unlink()
    (tmp_path / "pack" / "extra.csv").write_text("x\n", encoding="utf-8")
    problems = verify_evidence(tmp_path / "pack")
    assert any("changes.csv: missing" in p for p in problems)
    assert any("extra.csv: not listed" in p for p in problems)


@pytest.fixture
def config_for(store: Store, store_url: str, write_config: Callable[[str], Path]) -> Path:
    store.close()
    return write_config(f'''
[store]
url = "{store_url}"
[[tenants]]
name = "acme"
domains = ["acme.example"]
[[tenants]]
name = "globex"
domains = ["globex.example"]
''')


def test_command_writes_and_verifies_a_pack(config_for: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "pack"
    done = runner.invoke(main, ["evidence", "--config", str(config_for), "--since", "2026-11-09", "--out", str(out)])
    assert done.exit_code == 0, done.output
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert [r["id"] for r in manifest["runs"]] == ["r1", "r2"]
    assert manifest["period"]["since"] == "2026-11-09T00:00:00+00:00"
    ok = runner.invoke(main, ["evidence", "verify", str(out)])
    assert ok.exit_code == 0 and "every file matches" in ok.output
    with (out / "findings.csv").open("a", encoding="utf-8") as handle:
        handle.write("tampered\n")
    bad = runner.invoke(main, ["evidence", "verify", str(out)])
    assert bad.exit_code == 1 and "findings.csv" in bad.output


def test_command_refuses_an_empty_period_and_an_unknown_tenant(config_for: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    empty = runner.invoke(main, ["evidence", "--config", str(config_for), "--until", "2020-01-01",
                                 "--out", str(tmp_path / "p")])
    assert empty.exit_code == 1 and "no finished run" in empty.output
    unknown = runner.invoke(main, ["evidence", "--config", str(config_for), "--tenant", "nope",
                                   "--out", str(tmp_path / "p")])
    assert unknown.exit_code == 2 and "'nope'" in unknown.output


def test_report_rerenders_the_latest_run(config_for: Path, tmp_path: Path) -> None:
    out = tmp_path / "again"
    done = CliRunner().invoke(main, ["report", "--config", str(config_for), "--format", "json", "--format", "csv",
                                     "--out", str(out)])
    assert done.exit_code == 0, done.output
    assert "run r2" in done.output and sorted(p.name for p in out.iterdir()) == [
        "findings.csv", "findings.json", "manifest.json"]
    assert {f["run_id"] for f in json.loads((out / "findings.json").read_text(encoding="utf-8"))} == {"r2"}
    html = CliRunner().invoke(main, ["report", "--config", str(config_for), "--run", "r0", "--out", str(out)])
    assert html.exit_code == 0 and (out / "report.html").is_file()


def test_period_bounds_are_inclusive_days() -> None:
    period = Period.of(date(2026, 11, 9), date(2026, 11, 9))
    assert period.holds(datetime(2026, 11, 9, 23, 59, tzinfo=UTC))
    assert not period.holds(datetime(2026, 11, 10, 0, 0, tzinfo=UTC))
    assert replace(period, since=None).holds(datetime(2000, 1, 1, tzinfo=UTC))


def test_pack_lists_the_reported_sources_of_the_period(store: Store, tmp_path: Path) -> None:
    from checks.registry import Sender
    from scanner.aggregate.importer import import_files
    from tests.dmarc_fixtures import Row, write_report

    for day, (tenant_domain, ip) in enumerate([("acme.example", "192.0.2.1"), ("globex.example", "192.0.2.2"),
                                               ("mail.acme.example", "192.0.2.3")]):
        begin = NOW + timedelta(days=day)
        write_report(tmp_path / "reports", "google.com", f"r{day}", tenant_domain, begin, begin + timedelta(days=1),
                     [Row(ip, 10 + day, dkim="fail", spf="fail" if day else "pass")])
    write_report(tmp_path / "reports", "google.com", "old", "acme.example", NOW - timedelta(days=90),
                 NOW - timedelta(days=89), [Row("192.0.2.9", 1)])
    assert import_files(store, [tmp_path / "reports"]).stored == 4
    senders = {"relay": Sender("relay", ip_ranges=("192.0.2.0/31",))}
    write_evidence(store, tmp_path / "pack", Period.of(NOW.date(), None), senders=senders)
    rows = {r["source_ip"]: r for r in _rows(tmp_path / "pack" / "dmarc_sources.csv")}
    assert set(rows) == {"192.0.2.1", "192.0.2.2", "192.0.2.3"}  # the 90-day-old report is outside the period
    assert rows["192.0.2.1"]["sender"] == "relay" and rows["192.0.2.3"]["sender"] == "unknown"
    assert (rows["192.0.2.1"]["dmarc_pass"], rows["192.0.2.2"]["dmarc_fail"]) == ("10", "11")
    write_evidence(store, tmp_path / "acme", Period.of(NOW.date(), None), tenant="acme")
    acme = {r["domain"] for r in _rows(tmp_path / "acme" / "dmarc_sources.csv")}
    assert acme == {"acme.example", "mail.acme.example"}  # its domain and subdomains, not globex's
    assert verify_evidence(tmp_path / "acme") == []


@pytest.fixture(scope="module")
def catalogue() -> Catalogue:
    return load_catalogue(known_checks=[c.meta.id for c in load_checks()])


def test_controls_csv_has_a_verdict_per_run_tenant_and_control(store: Store, tmp_path: Path,
                                                               catalogue: Catalogue) -> None:
    write_evidence(store, tmp_path / "pack", Period.of(None, None), catalogue=catalogue)
    rows = _rows(tmp_path / "pack" / "controls.csv")
    exo = {(r["run_id"], r["tenant"]): r for r in rows if r["control"] == "MS.EXO.1.1v1"}
    assert set(exo) == {(f"r{i}", t) for i in range(3) for t in ("acme", "globex")}
    ann = fingerprint("forwarding.external", "acme", "ann@acme.example")
    assert exo[("r0", "acme")]["status"] == "fail" and exo[("r0", "acme")]["finding_ids"] == ann
    assert exo[("r0", "acme")]["failing_subjects"] == "1"
    assert exo[("r2", "acme")]["status"] == "excepted"  # ann fixed; the CEO's forward is excepted
    assert exo[("r2", "globex")]["status"] == "fail"
    assert exo[("r0", "acme")]["coverage"] == "partial" and exo[("r0", "acme")]["note"]
    spf = [r for r in rows if r["control"] == "MS.EXO.2.2v2"]
    assert spf and {r["status"] for r in spf} == {"not assessed"}  # no SPF finding in these runs: never a pass


def test_workbook_holds_every_csv_unchanged(store: Store, tmp_path: Path, catalogue: Catalogue) -> None:
    write_evidence(store, tmp_path / "pack", Period.of(None, None), catalogue=catalogue)
    sheets = read_sheets(tmp_path / "pack" / "evidence.xlsx")
    assert list(sheets)[0] == "summary"
    assert sorted(sheets) == sorted(["summary", *(name[:-4] for name in PACK_COLUMNS)])
    for name in PACK_COLUMNS:
        with (tmp_path / "pack" / name).open(newline="", encoding="utf-8") as handle:
            assert sheets[name[:-4]] == list(csv.reader(handle)), name
    summary = {row[0]: row[1:] for row in sheets["summary"] if row}
    assert summary["runs"][0] == "3" and summary["findings.csv"][0] == "9"


def test_workbook_cells_are_text_never_formulas(store: Store, tmp_path: Path, catalogue: Catalogue) -> None:
    from openpyxl import load_workbook

    write_evidence(store, tmp_path / "pack", Period.of(None, None), catalogue=catalogue)
    book = load_workbook(tmp_path / "pack" / "evidence.xlsx")
    sheet = book["changes"]
    assert sheet.freeze_panes == "A2" and sheet.auto_filter.ref and sheet.auto_filter.ref.startswith("A1:")
    assert sheet.column_dimensions["A"].width >= len("at")
    formulas = [c.coordinate for ws in book.worksheets for row in ws.iter_rows() for c in row if c.data_type == "f"]
    assert formulas == []
    values = [c.value for row in sheet.iter_rows() for c in row]
    assert "'" + FORMULA in values  # the display name an attacker set, as inert text


def test_verify_checks_the_workbook(store: Store, tmp_path: Path, catalogue: Catalogue) -> None:
    write_evidence(store, tmp_path / "pack", Period.of(None, None), catalogue=catalogue)
    assert verify_evidence(tmp_path / "pack") == []
    manifest = json.loads((tmp_path / "pack" / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["files"]["evidence.xlsx"]["sheets"][0] == "summary"
    workbook = tmp_path / "pack" / "evidence.xlsx"
    workbook.write_bytes(workbook.read_bytes()[:-10])
    problems = verify_evidence(tmp_path / "pack")
    assert len(problems) == 1 and "evidence.xlsx" in problems[0]


def test_one_framework_limits_controls_and_findings(store: Store, tmp_path: Path, catalogue: Catalogue) -> None:
    write_evidence(store, tmp_path / "pack", Period.of(None, None), catalogue=catalogue, framework="bod-18-01")
    assert {r["framework"] for r in _rows(tmp_path / "pack" / "controls.csv")} == {"bod-18-01"}
    assert _rows(tmp_path / "pack" / "findings.csv") == []  # forwarding.external evidences no BOD 18-01 control
    write_evidence(store, tmp_path / "exo", Period.of(None, None), catalogue=catalogue, framework="scuba-exo")
    assert {r["check"] for r in _rows(tmp_path / "exo" / "findings.csv")} == {"forwarding.external"}
    manifest = json.loads((tmp_path / "exo" / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["framework"] == "scuba-exo" and verify_evidence(tmp_path / "exo") == []


def test_command_writes_a_framework_pack(config_for: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "pack"
    done = runner.invoke(main, ["evidence", "--config", str(config_for), "--framework", "scuba-gmail",
                                "--out", str(out)])
    assert done.exit_code == 0, done.output
    assert {r["framework"] for r in _rows(out / "controls.csv")} == {"scuba-gmail"}
    assert "evidence.xlsx" in done.output
    unknown = runner.invoke(main, ["evidence", "--config", str(config_for), "--framework", "cis",
                                   "--out", str(tmp_path / "p")])
    assert unknown.exit_code == 2 and "cis-m365-v7" in unknown.output

"""Outputs rendered from the store: escaped HTML, spreadsheet-safe CSV, JSON, and a manifest that hashes them."""

from __future__ import annotations

import csv
import hashlib
import io
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from checks.evaluate import fingerprint
from reports.csv_out import csv_fields, safe_cell
from scanner.model import Finding, Severity, Status
from scanner.pipeline import write_outputs
from scanner.store.database import Store

NOW = datetime(2026, 11, 25, 6, tzinfo=UTC)
HOSTILE = '<script>alert("x")</script>'


@pytest.fixture
def outputs(tmp_path: Path) -> Path:
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    findings = [
        Finding(id=fingerprint("dmarc.missing", "acme", "evil.example"), check="dmarc.missing", status=Status.FAIL,
                severity=Severity.HIGH, tenant="acme", domain="evil.example", subject="evil.example",
                title="Domain publishes no DMARC record",
                evidence={"records_seen": [HOSTILE], "publish": "=HYPERLINK(\"http://x.test\")"}),
        Finding(id=fingerprint("forwarding.external", "acme", "-ann@acme.example"), check="forwarding.external",
                status=Status.FAIL, severity=Severity.HIGH, tenant="acme", domain="acme.example",
                subject="@ann@acme.example", title="Mailbox forwards mail outside the tenant",
                evidence={"targets": ["+1@out.test"]}),
        Finding(id=fingerprint("dmarc.no_rua", "acme", "evil.example"), check="dmarc.no_rua", status=Status.SKIPPED,
                severity=Severity.MEDIUM, tenant="acme", domain="evil.example", subject="evil.example",
                title="DMARC record asks for no aggregate reports (no rua)",
                reason="only restates dmarc.missing", caused_by=fingerprint("dmarc.missing", "acme", "evil.example")),
    ]
    store.start_run("r1", NOW, "d" * 64, "test")
    store.record_findings("r1", findings, NOW, ["acme"])
    store.finish_run("r1", NOW, "complete", {"tenants": {"acme": {"state": "complete", "problems": [HOSTILE],
                                                                  "mailboxes": 1, "domains": 1, "gaps": []}}})
    write_outputs(store, "r1", tmp_path / "out")
    return tmp_path / "out"


def test_hostile_values_are_escaped_in_html(outputs: Path) -> None:
    html = (outputs / "report.html").read_text(encoding="utf-8")
    assert HOSTILE not in html
    assert html.count("<script") == 3  # the first page's rows, the page's own code and the data, nothing else
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in html


@pytest.mark.parametrize("text", ["=1+1", "+1", "-2", "@SUM(A1)", "\t=1", "\r=1"])
def test_formula_cells_are_neutralized(text: str) -> None:
    assert safe_cell(text) == "'" + text


def test_plain_cells_are_unchanged() -> None:
    assert safe_cell("ann@acme.example") == "ann@acme.example"
    assert safe_cell(None) == ""


AWKWARD = ["", " ", "a,b", 'say "hi"', '"', "line\nbreak", "cr\rhere", "\r\n", "=1+1", "-", "@", "\t=1", "\uff1d1",
           "é ünï 😀", "\x00=1", "a\x00b", "'=quoted", "x" * 300, '{"a": [1, "b,c"]}', ",=", "\u2028"]


@pytest.mark.parametrize("cells", [AWKWARD, ["plain", "cells", "only"], AWKWARD[1:3], ["", ""], ["=1", "x"]])
def test_csv_fields_are_what_the_csv_module_writes_of_safe_cells(cells: list[str]) -> None:
    expected = io.StringIO(newline="")
    csv.writer(expected).writerow([safe_cell(c) for c in cells])
    assert ",".join(csv_fields(cells)) + "\r\n" == expected.getvalue()


def test_safe_cell_encodes_json_as_json_dumps_does() -> None:
    value = {"z": [1.5, 1e16, None, True], "a": {"é": "\x00\u2028"}, "B": "=x"}
    assert safe_cell(value) == json.dumps(value, sort_keys=True, ensure_ascii=False)
    assert safe_cell(["=1"]) == '["=1"]'


def test_csv_file_cells_are_safe(outputs: Path) -> None:
    with (outputs / "findings.csv").open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 3
    for row in rows:
        for value in row.values():
            assert not value.startswith(("=", "+", "-", "@")), value
    subjects = {r["subject"] for r in rows}
    assert "'@ann@acme.example" in subjects


def test_json_keeps_values_exact(outputs: Path) -> None:
    data = json.loads((outputs / "findings.json").read_text(encoding="utf-8"))
    by_check = {d["check"]: d for d in data}
    assert by_check["dmarc.missing"]["evidence"]["records_seen"] == [HOSTILE]
    assert by_check["forwarding.external"]["first_seen"] == NOW.isoformat()
    assert set(by_check["dmarc.missing"]) >= {"id", "check", "status", "severity", "tenant", "domain", "subject",
                                               "title", "evidence", "remediation", "first_seen", "last_seen", "run_id"}


def test_manifest_hashes_every_file(outputs: Path) -> None:
    manifest = json.loads((outputs / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["run_id"] == "r1" and manifest["state"] == "complete"
    assert set(manifest["files"]) == {"findings.json", "findings.csv", "report.html"}
    for name, entry in manifest["files"].items():
        assert hashlib.sha256((outputs / name).read_bytes()).hexdigest() == entry["sha256"]


def test_a_skipped_finding_names_its_root_in_json_and_csv(outputs: Path) -> None:
    root = fingerprint("dmarc.missing", "acme", "evil.example")
    records = {r["check"]: r for r in json.loads((outputs / "findings.json").read_text(encoding="utf-8"))}
    assert records["dmarc.no_rua"]["status"] == "skipped" and records["dmarc.no_rua"]["caused_by"] == root
    assert records["dmarc.missing"]["caused_by"] == ""
    with (outputs / "findings.csv").open(encoding="utf-8", newline="") as handle:
        rows = {r["check"]: r for r in csv.DictReader(handle)}
    assert rows["dmarc.no_rua"]["caused_by"] == root and rows["dmarc.no_rua"]["status"] == "skipped"

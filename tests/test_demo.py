"""The demo end to end: the installed console script scans the bundled estate over real DNS on loopback."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    out = tmp_path_factory.mktemp("demo") / "out"
    script = shutil.which("mailwarden") or str(Path(sys.executable).parent / "mailwarden")
    done = subprocess.run([script, "demo", "--out", str(out)], capture_output=True, text=True, timeout=300)
    return out, done


def test_demo_writes_the_four_outputs(demo_out) -> None:
    out, done = demo_out
    assert done.returncode == 0, done.stderr
    for name in ("findings.json", "findings.csv", "report.html", "manifest.json"):
        assert (out / name).is_file(), name
    assert f"report: {out / 'report.html'}" in done.stdout


def test_demo_findings_come_from_both_first_checks(demo_out) -> None:
    out, _ = demo_out
    findings = json.loads((out / "findings.json").read_text(encoding="utf-8"))
    failing = {(f["check"], f["subject"]) for f in findings if f["status"] == "fail"}
    assert ("dmarc.missing", "nwl-customs.example") in failing
    assert ("forwarding.external", "j.park@northwindlogistics.example") in failing  # its exception expired
    passing = {(f["check"], f["subject"]) for f in findings if f["status"] == "pass"}
    assert ("dmarc.missing", "harbordental.example") in passing  # answered over DNS by the demo's server
    excepted = [f for f in findings if f["status"] == "excepted"]
    assert [f["subject"] for f in excepted if f["check"] == "forwarding.external"] == [
        "marisol.vega@harbordental.example"
    ]
    assert {f["tenant"] for f in findings} == {"harbor-dental", "northwind-logistics", "cedar-law"}


def test_demo_manifest_matches_the_files(demo_out) -> None:
    out, _ = demo_out
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["state"] == "complete"
    assert set(manifest["scope"]["tenants"]) == {"harbor-dental", "northwind-logistics", "cedar-law"}
    for name, entry in manifest["files"].items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == entry["sha256"]


def test_every_check_fails_somewhere_and_passes_elsewhere_in_the_demo(demo_out) -> None:
    from checks.registry import load_checks

    out, _ = demo_out
    findings = [  # drift checks fail only in the second scan, after the scripted change
        *json.loads((out / "findings.json").read_text(encoding="utf-8")),
        *json.loads((out / "after-change" / "findings.json").read_text(encoding="utf-8")),
    ]
    seen: dict[str, set[str]] = {}
    for finding in findings:
        seen.setdefault(finding["check"], set()).add(finding["status"])
    incomplete = {
        check.meta.id: sorted(seen.get(check.meta.id, set()))
        for check in load_checks()
        if not {"fail", "pass"} <= seen.get(check.meta.id, set())
    }
    assert incomplete == {}


def test_demo_shows_the_scripted_drift(demo_out) -> None:
    out, done = demo_out
    changes = json.loads((out / "after-change" / "changes.json").read_text(encoding="utf-8"))
    assert sorted((c["object_type"], c["object_key"], c["field"], c["action"]) for c in changes) == [
        ("dns", "cedarlegal.example", "mx", "changed"),
        ("dns", "harbordental.example", "dmarc", "changed"),
        ("domain", "cedarlaw.example", "catch_all", "changed"),
        ("forward", "theo.brennan@harbordental.example -> theo.brennan@personal-mail.test", "", "added"),
    ]
    assert "change log of run" in done.stdout
    findings = json.loads((out / "after-change" / "findings.json").read_text(encoding="utf-8"))
    failing = {(f["check"], f["subject"], f["item"]) for f in findings if f["status"] == "fail"}
    assert ("drift.dns_weakened", "harbordental.example", "dmarc") in failing
    assert ("drift.forwarding_added", "theo.brennan@harbordental.example", "") in failing
    first = json.loads((out / "findings.json").read_text(encoding="utf-8"))
    assert not [f for f in first if f["check"].startswith("drift.") and f["status"] not in ("pass", "skipped")]


def test_demo_writes_a_verified_evidence_pack_with_controls(demo_out) -> None:
    import csv

    from reports.evidence import verify_evidence
    from reports.workbook import read_sheets

    out, done = demo_out
    pack = out / "evidence"
    assert f"evidence pack of both runs (controls.csv, evidence.xlsx): {pack}" in done.stdout
    assert verify_evidence(pack) == []
    with (pack / "controls.csv").open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert {"pass", "fail"} <= {r["status"] for r in rows}
    unknown = [r for r in rows if r["status"] == "not assessed"]  # northwind exports no grants: never a pass
    assert all(r["reason"] and r["tenant"] == "northwind-logistics" for r in unknown)
    assert {r["framework"] for r in rows} == {"nist-800-53", "bod-18-01"}  # its tenants are export files
    ghosts = [r for r in rows if r["control"] == "AC-2(3)" and r["status"] == "fail"]
    assert ghosts and all(r["finding_ids"] for r in ghosts)
    sheets = read_sheets(pack / "evidence.xlsx")
    assert "controls" in sheets and len(sheets["controls"]) == len(rows) + 1


def test_demo_shows_grants_that_outlive_a_leaver_and_outside_reset_paths(demo_out) -> None:
    out, _ = demo_out
    findings = json.loads((out / "findings.json").read_text(encoding="utf-8"))
    by = {(f["check"], f["subject"], f["item"]): f for f in findings if f["check"].startswith(("access.", "account.rec"))}
    leaver = {(s, i) for c, s, i in by if c == "access.leaver_grant" and by[(c, s, i)]["status"] == "fail"}
    assert {s for s, _ in leaver} == {"ryan.mcallister@harbordental.example", "irene.castillo@harbordental.example",
                                      "oliver.grant@cedarlaw.example"}
    revoke = by[("access.leaver_grant", "ryan.mcallister@harbordental.example", "app_password:iPhone Mail")]
    assert revoke["remediation"]["action"] == "grant.revoke" and revoke["severity"] == "high"
    assert by[("access.leaver_grant", "gemma.holt@harbordental.example", "")]["status"] == "pass"
    assert by[("access.mail_grant", "marisol.vega@harbordental.example", "")]["status"] == "pass"
    assert by[("account.recovery_path", "accounts@harbordental.example", "")]["status"] == "pass"
    assert by[("account.recovery_path", "hr@harbordental.example", "phone:…187")]["status"] == "fail"
    assert by[("access.leaver_grant", "oliver.grant@cedarlaw.example", "device_password:dsync-88")]["status"] == "fail"
    # northwind exports no grants: its active mailboxes are unsupported, its inactive ones not judged at all
    northwind = {f["status"] for f in findings if f["tenant"] == "northwind-logistics" and f["check"] == "access.mail_grant"}
    assert northwind == {"unsupported", "pass"}


def test_each_demo_run_folder_verifies_as_written_and_its_report_links_to_fixes(demo_out) -> None:
    out, done = demo_out
    assert sorted(p.name for p in out.iterdir()) == [
        "after-change", "evidence", "findings.csv", "findings.json", "manifest.json", "report.html"]
    state = out.parent / "out-state"  # the store, CA, link secret and estate copy live beside the run folders
    assert {"mailwarden-demo.db", "demo-ca.pem", "link-secret", "estate"} <= {p.name for p in state.iterdir()}
    script = shutil.which("mailwarden") or str(Path(sys.executable).parent / "mailwarden")
    for folder in (out, out / "after-change"):
        verified = subprocess.run([script, "evidence", "verify", str(folder)], capture_output=True, text=True,
                                  timeout=60)
        assert verified.returncode == 0, verified.stderr
    html = (out / "after-change" / "report.html").read_text(encoding="utf-8")
    assert 'class="button fix-link" rel="noopener" href="http://127.0.0.1:8642/r/' in html
    assert "mailwarden demo --serve" in done.stdout and "mailwarden evidence verify" in done.stdout


def test_the_demo_console_lists_root_causes_and_collection_problems(demo_out) -> None:
    _, done = demo_out
    assert done.stdout.count("fix first (") == 2
    # several findings of one check and subject are one line, naming their items
    assert "alignment.sender_unaligned     cedar-law-clients.example  [cedar-law]  (2 items: lexdocs, trekmail)" \
        in done.stdout
    assert "collection problems and undecided checks (" in done.stdout
    assert "the MTA-STS policy of northwind-freight.example is not usable" in done.stdout

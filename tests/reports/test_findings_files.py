"""findings.json and findings.csv stream from the store: the same bytes as before, memory flat in the findings."""

from __future__ import annotations

import tracemalloc
from datetime import UTC, datetime
from pathlib import Path

from checks.evaluate import fingerprint
from reports.csv_out import safe_cell, write_findings_csv
from reports.findings_files import _spaced, write_findings_files
from reports.json_out import write_findings_json
from scanner.model import Finding, Remediation, Severity, Status
from scanner.pipeline import render_outputs
from scanner.store.database import Store, canonical_bytes

NOW = datetime(2026, 11, 25, 6, tzinfo=UTC)
MIX = (Status.PASS,) * 7 + (Status.FAIL, Status.FAIL, Status.ERROR)


def _findings(count: int) -> list[Finding]:
    found = []
    for n in range(count):
        status = MIX[n % len(MIX)]
        domain = f"d{n // 10}.example"
        check = f"spf.c{n % 10}"
        found.append(Finding(
            id=fingerprint(check, "acme", domain), check=check, status=status, severity=Severity.MEDIUM,
            tenant="acme", domain=domain, subject=domain, title=f"Check {n % 10} – ünïcode",
            evidence={"record": f"v=spf1 include:_spf.{domain} -all", "terms": [n, "=SUM(A1)"]},
            reason="lookup failed" if status is Status.ERROR else "",
            remediation=Remediation("dns.publish", {"subject": domain}) if status is Status.FAIL else None,
        ))
    return found


def _store(tmp_path: Path, count: int) -> Store:
    store = Store(f"sqlite:///{tmp_path / f's{count}.db'}")
    store.start_run("r1", NOW, "d" * 64, "test")
    with store.recording("r1", NOW, ["acme"]) as recording:
        found = _findings(count)
        for start in range(0, count, 1000):
            recording.record(found[start : start + 1000])
    store.finish_run("r1", NOW, "complete", {})
    return store


def test_streamed_files_have_the_same_bytes_as_the_list_writers(tmp_path: Path) -> None:
    store = _store(tmp_path, 200)
    stored = store.findings_for_run("r1")
    assert {f.status for f in stored} == {Status.PASS, Status.FAIL, Status.ERROR}
    write_findings_json(stored, tmp_path / "list.json")
    write_findings_csv(stored, tmp_path / "list.csv")
    with store.iter_rows("r1") as rows:
        assert write_findings_files(rows, tmp_path / "stream.json", tmp_path / "stream.csv") == 200
    assert (tmp_path / "stream.json").read_bytes() == (tmp_path / "list.json").read_bytes()
    assert (tmp_path / "stream.csv").read_bytes() == (tmp_path / "list.csv").read_bytes()
    store.close()


def _peak_writing(store: Store, out: Path) -> int:
    tracemalloc.start()
    try:
        outputs = render_outputs(store, "r1", out, formats=("json", "csv"))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert sum(outputs.counts.values()) > 0
    return peak


def test_memory_writing_findings_stays_flat_as_findings_grow(tmp_path: Path) -> None:
    small, large = _store(tmp_path, 2_000), _store(tmp_path, 20_000)
    _peak_writing(small, tmp_path / "warm")  # first use: statement caches and imports, not per-finding memory
    peak_small = _peak_writing(small, tmp_path / "small")
    peak_large = _peak_writing(large, tmp_path / "large")
    assert (tmp_path / "large" / "findings.json").stat().st_size > 9 * (tmp_path / "small" / "findings.json").stat().st_size
    # Ten times the findings, not ten times the memory: what is held is a cursor's batch, not the run.
    assert peak_large < 1.5 * peak_small + 256 * 1024, (peak_small, peak_large)
    small.close()
    large.close()


def _tricky() -> list[Finding]:
    """Findings whose every column is awkward for a CSV cell or a JSON line: formula starts, non-ASCII, control
    characters, nested evidence with floats and times, shared evidence bodies, empty values, a skipped finding."""
    nested = {"record": '=HYPERLINK("x")', "ünï": ["ñ", "😀", "\u2028"], "z": {"b": [1, 2.5, 1e16, -0.0, True, None],
              "a": {"ctl": "\x00\x1f\n\t\"\\"}}, "big": 2**62, "B": "", "é": 3, "when": NOW}
    cases = [
        ("=cmd|' /C calc'!A0", "-bad.example", "+1-555@bad.example", "@item", nested, "", Status.FAIL),
        ("\uff1dSUM(1)", "a.example", "a.example", "\titem", {}, "line one\nline two", Status.ERROR),
        ("Title, \"quoted\"", "b.example", "\ruser@b.example", "", nested, "\uff20reason", Status.EXCEPTED),
        ("－ dash", "c.example", "c.example", "\n", {"k": "@"}, "-1", Status.UNSUPPORTED),
        ("ünïcode ✓", "d.example", "d.example", "x", nested, "", Status.PASS),
        ("+ plus", "e.example", "=e.example", "", nested, "", Status.PASS),
        ("empty", "f.example", "f.example", "", {}, "", Status.PASS),
    ]
    found = [
        Finding(id=fingerprint(f"x.c{n}", "@acme", subject, item), check=f"x.c{n}", status=status,
                severity=Severity.HIGH, tenant="@acme", domain=domain, subject=subject, item=item, title=title,
                evidence=evidence, reason=reason,
                remediation=Remediation("dns.publish", {"record": "=1+1", "list": [1, "@x"], "ünï": "é"})
                if status is Status.FAIL else None)
        for n, (title, domain, subject, item, evidence, reason, status) in enumerate(cases)
    ]
    root = found[0]
    return [*found, Finding(
        id=fingerprint("x.restated", "@acme", root.subject), check="x.restated", status=Status.SKIPPED,
        severity=Severity.LOW, tenant="@acme", domain=root.domain, subject=root.subject, title="=restates",
        reason="restates its cause", caused_by=root.id)]


def test_tricky_values_keep_their_bytes(tmp_path: Path, store_url: str) -> None:
    store = Store(store_url)
    for n, run_id in enumerate(("r1", "r2")):
        store.start_run(run_id, NOW, "d" * 64, "test")
        store.record_findings(run_id, _tricky(), NOW.replace(hour=6 + n), ["@acme"])
        store.finish_run(run_id, NOW, "complete", {})
    stored = store.findings_for_run("r2")
    assert {f.status for f in stored} == set(Status)
    write_findings_json(stored, tmp_path / "list.json")
    write_findings_csv(stored, tmp_path / "list.csv")
    with store.iter_rows("r2") as rows:
        assert write_findings_files(rows, tmp_path / "stream.json", tmp_path / "stream.csv") == 8
    assert (tmp_path / "stream.json").read_bytes() == (tmp_path / "list.json").read_bytes()
    assert (tmp_path / "stream.csv").read_bytes() == (tmp_path / "list.csv").read_bytes()
    text = (tmp_path / "stream.csv").read_text(encoding="utf-8")
    assert "'=cmd|" in text and "'\uff1dSUM(1)" in text and "'@acme" in text
    store.close()


def test_evidence_cells_from_stored_text_are_those_of_safe_cell() -> None:
    spaced = [
        {}, [], {"a": []}, {"record": "v=spf1 include:_spf.a.example ip4:192.0.2.1, -all", "terms": [1, -2, "x:y"]},
        {"z": {"b": [True, False, None], "a": {}}, "A": "ünï 😀 \u2028", "k": "'quoted', {braces}: [x]"},
        {"selectors": [{"name": "s1", "bits": 2048, "tags": {"k": "rsa", "p": "MIIB..."}}]}, [{"b": 1, "a": 2}],
    ]
    left = [{"float": 2.5}, {"big": 1e16}, {"small": [1e-7, -0.0]}, {"ctl": "a\tb"}, {"slash": "a\\b"},
            {"quote": '"x"'}]  # escapes and floats: safe_cell encodes them
    for body in spaced:
        assert _spaced(canonical_bytes(body).decode("utf-8")) == safe_cell(body), body
    for body in left:
        assert _spaced(canonical_bytes(body).decode("utf-8")) is None, body
    assert _spaced('{"b": 1, "a": [2, 3]}') is None  # spaced JSON (stores written before canonical JSON)

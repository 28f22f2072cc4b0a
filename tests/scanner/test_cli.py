"""The drift verbs end to end: scan twice over loopback DNS, then changes, baseline capture and prune."""

from __future__ import annotations

import csv
import hashlib
import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from scanner.cli import main, parse_since
from scanner.errors import ConfigError
from scanner.store.database import Store

ZONE = (
    '@ MX 10 mx1.acme.example.\n@ TXT "v=spf1 ip4:127.0.0.10 -all"\n'
    '_dmarc TXT "v=DMARC1; p=reject; rua=mailto:d@acme.example"\n'
)


@pytest.fixture
def config(dns_server, tmp_path: Path) -> Path:
    path = tmp_path / "mailwarden.toml"
    path.write_text(
        f'[store]\nurl = "sqlite:///{tmp_path / "store.db"}"\n[dns]\nnameservers = ["{dns_server.nameserver}"]\n'
        'timeout = 1.0\n[[tenants]]\nname = "acme"\ndomains = ["acme.example"]\n',
        encoding="utf-8",
    )
    return path


def _scan(config: Path, out: Path) -> None:
    done = CliRunner().invoke(main, ["scan", "--config", str(config), "--out", str(out)])
    assert done.exit_code == 0, done.output


def test_changes_between_two_scans_in_every_format(config: Path, add_zone, tmp_path: Path) -> None:
    add_zone("acme.example", ZONE)
    _scan(config, tmp_path / "one")
    add_zone("acme.example", ZONE.replace("p=reject", "p=none"))
    _scan(config, tmp_path / "two")
    runner = CliRunner()
    listed = json.loads(runner.invoke(main, ["changes", "--config", str(config), "--format", "json",
                                             "--since", "24h", "--domain", "ACME.example"]).output)
    assert [(c["object_type"], c["object_key"], c["field"], c["before"], c["after"]) for c in listed] == [
        ("dns", "acme.example", "dmarc", ["v=DMARC1; p=reject; rua=mailto:d@acme.example"],
         ["v=DMARC1; p=none; rua=mailto:d@acme.example"]),
    ]
    runs = Store(f"sqlite:///{tmp_path / 'store.db'}").runs()
    assert listed[0]["run_id"] == runs[-1].id and listed[0]["source"] == "scan"
    rows = list(csv.DictReader(io.StringIO(runner.invoke(main, ["changes", "--config", str(config), "--format", "csv"]).output)))
    assert [r["field"] for r in rows] == ["dmarc"]
    table = runner.invoke(main, ["changes", "--config", str(config), "--tenant", "acme"]).output
    assert "dns acme.example dmarc" in table and "p=none" in table
    assert runner.invoke(main, ["changes", "--config", str(config), "--mailbox", "x@acme.example"]).output == "no changes\n"
    findings = json.loads((tmp_path / "two" / "findings.json").read_text(encoding="utf-8"))
    weakened = [f for f in findings if f["check"] == "drift.dns_weakened" and f["item"] == "dmarc"]
    assert weakened[0]["status"] == "fail" and weakened[0]["evidence"]["policy_after"] == "none"


def test_baseline_capture_then_deviation(config: Path, add_zone, tmp_path: Path) -> None:
    add_zone("acme.example", ZONE)
    _scan(config, tmp_path / "one")
    target = tmp_path / "acme.baseline.toml"
    done = CliRunner().invoke(main, ["baseline", "capture", "--config", str(config), "--domain", "acme.example",
                                     "--out", str(target)])
    assert done.exit_code == 0, done.output
    text = target.read_text(encoding="utf-8")
    assert 'dmarc_policy = "reject"' in text and 'mx = ["10 mx1.acme.example"]' in text
    config.write_text(config.read_text(encoding="utf-8") + f'baselines = ["{target.name}"]\n', encoding="utf-8")
    _scan(config, tmp_path / "two")
    add_zone("acme.example", ZONE.replace("mx1.acme", "mx9.acme"))
    _scan(config, tmp_path / "three")
    for out, status in (("two", "pass"), ("three", "fail")):
        findings = json.loads((tmp_path / out / "findings.json").read_text(encoding="utf-8"))
        mx = [f for f in findings if f["check"] == "dns.baseline_drift" and f["item"] == "mx"]
        assert mx[0]["status"] == status
    assert mx[0]["evidence"]["expected"] == ["10 mx1.acme.example"]
    assert mx[0]["evidence"]["actual"] == ["10 mx9.acme.example"]


def test_baseline_capture_without_a_run_says_what_to_do(config: Path) -> None:
    done = CliRunner().invoke(main, ["baseline", "capture", "--config", str(config), "--domain", "acme.example"])
    assert done.exit_code != 0 and "run 'mailwarden scan' first" in done.output
    other = CliRunner().invoke(main, ["baseline", "capture", "--config", str(config), "--domain", "nope.example"])
    assert "no tenant" in other.output


def test_prune_keeps_the_latest_run(config: Path, add_zone, tmp_path: Path) -> None:
    add_zone("acme.example", ZONE)
    _scan(config, tmp_path / "one")
    _scan(config, tmp_path / "two")
    done = CliRunner().invoke(main, ["prune", "--config", str(config), "--keep", "0d"])
    assert done.exit_code == 0 and "1 runs" in done.output
    assert len(Store(f"sqlite:///{tmp_path / 'store.db'}").runs()) == 1
    assert "is not a duration" in CliRunner().invoke(main, ["prune", "--config", str(config), "--keep", "ever"]).output


def test_since_accepts_durations_and_dates() -> None:
    now = datetime(2026, 11, 25, 12, tzinfo=UTC)
    assert parse_since("24h", now) == now - timedelta(hours=24)
    assert parse_since("7d", now) == now - timedelta(days=7)
    assert parse_since("2026-11-01", now) == datetime(2026, 11, 1, tzinfo=UTC)
    with pytest.raises(ConfigError):
        parse_since("last week", now)


def test_unreachable_dns_is_loud_partial_tenant_dns_summary_and_fail_on_error(tmp_path: Path) -> None:
    # Issue 14: with DNS unreachable every DNS check was error, but the run was complete, the console listed
    # nothing and the exit status was 0. A nameserver that answers nothing (a bound UDP port that never replies).
    import socket

    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    try:
        port = silent.getsockname()[1]
        path = tmp_path / "mailwarden.toml"
        path.write_text(
            f'[store]\nurl = "sqlite:///{tmp_path / "store.db"}"\n[dns]\nnameservers = ["127.0.0.1:{port}"]\n'
            'timeout = 0.3\n[[tenants]]\nname = "acme"\ndomains = ["acme.example"]\n',
            encoding="utf-8",
        )
        plain = CliRunner().invoke(main, ["scan", "--config", str(path), "--out", str(tmp_path / "a")])
        assert plain.exit_code == 0, plain.output
        assert "run " in plain.output and ": partial," in plain.output  # the run and the tenant are partial
        assert "acme: partial" in plain.output
        assert "DNS: " in plain.output and "unanswered" in plain.output
        assert f"nameserver 127.0.0.1:{port} failed: timeout" in plain.output
        manifest = json.loads((tmp_path / "a" / "manifest.json").read_text(encoding="utf-8"))
        tenant = manifest["scope"]["tenants"]["acme"]
        assert tenant["state"] == "partial" and any("went unanswered" in p for p in tenant["problems"])
        strict = CliRunner().invoke(main, ["scan", "--config", str(path), "--out", str(tmp_path / "b"),
                                           "--fail-on-error"])
        assert strict.exit_code == 3, strict.output
    finally:
        silent.close()


def test_fail_on_error_exits_zero_when_every_check_decided(config: Path, add_zone, tmp_path: Path) -> None:
    add_zone("acme.example", ZONE + 's1._domainkey TXT "v=DKIM1; k=rsa; p="\n')
    config.write_text(config.read_text(encoding="utf-8") + 'dkim_selectors = ["s1"]\n', encoding="utf-8")
    done = CliRunner().invoke(main, ["scan", "--config", str(config), "--out", str(tmp_path / "o"), "--fail-on-error"])
    assert done.exit_code == 0, done.output
    assert "DNS: " in done.output and "0 unanswered" in done.output


def test_the_console_after_a_scan_says_what_to_fix_what_failed_and_what_next(config: Path, add_zone,
                                                                            tmp_path: Path) -> None:
    # no DKIM at a declared sender's selectors and a DMARC policy of none: root causes, one line each
    add_zone("acme.example", ZONE.replace("p=reject", "p=none"))
    done = CliRunner().invoke(main, ["scan", "--config", str(config), "--out", str(tmp_path / "out")])
    assert done.exit_code == 0, done.output
    lines = done.output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("fix first ("))
    causes = lines[start + 1:lines.index(next(line for line in lines[start + 1:] if not line.startswith("  ")))]
    assert causes and all("[acme]" in line for line in causes)
    assert any("dmarc.policy_weak" in line and "acme.example" in line for line in causes)
    report = (tmp_path / "out" / "report.html").resolve()
    assert f"report: {report}" in lines
    assert lines[lines.index("next:") + 1:] == [
        f"  open the report  {report.as_uri()}",
        f"  what changed     mailwarden changes --config {config} --since 7d",
        f"  fix a check      mailwarden remediate --config {config} --check CHECK_ID   (a dry run until --yes)",
    ]


def test_the_summary_uses_what_the_report_read(config: Path, add_zone, tmp_path: Path, monkeypatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """The findings that are not passes are read once, by report.html, and the console says what it would say
    reading them again itself."""
    from dataclasses import replace

    from scanner import cli
    from scanner.config import load_config

    add_zone("acme.example", ZONE.replace("p=reject", "p=none").replace("ip4:127.0.0.10 -all", "?all"))
    reads: list[object] = []
    iter_findings = Store.iter_findings

    def counted(self, run_id, statuses=None, **kwargs):  # type: ignore[no-untyped-def]
        if statuses is not None and not kwargs:  # a read of every finding of some statuses, not some by id
            reads.append(statuses)
        return iter_findings(self, run_id, statuses, **kwargs)

    monkeypatch.setattr(Store, "iter_findings", counted)
    steps = [("fix", "mailwarden remediate --check CHECK_ID")]
    result = cli._scan(load_config(config), tmp_path / "out", None, next_steps=steps)
    said = capsys.readouterr().out
    assert result.read is not None and len(reads) == 1 and "fix first (" in said
    cli._summarize(replace(result, read=None), tmp_path / "out", steps)  # the summary reading them itself
    assert len(reads) == 2 and capsys.readouterr().out == said


def test_collection_problems_are_summarised_without_verbose(tmp_path: Path) -> None:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as idle:  # a nameserver that never answers
        idle.bind(("127.0.0.1", 0))
        path = tmp_path / "mailwarden.toml"
        path.write_text(
            f'[store]\nurl = "sqlite:///{tmp_path / "store.db"}"\n[dns]\n'
            f'nameservers = ["127.0.0.1:{idle.getsockname()[1]}"]\ntimeout = 0.2\n'
            '[[tenants]]\nname = "acme"\ndomains = ["acme.example"]\n', encoding="utf-8")
        done = CliRunner().invoke(main, ["scan", "--config", str(path), "--out", str(tmp_path / "out")])
    lines = done.output.splitlines()
    header = next(line for line in lines if line.startswith("collection problems and undecided checks ("))
    problems = lines[lines.index(header) + 1:lines.index(next(line for line in lines if line.startswith("report: ")))]
    # grouped by reason: one line names how many checks the unanswered DNS held up, not one line per check
    assert problems and all(line.startswith("  acme: ") for line in problems)
    assert any("check(s) could not decide" in line for line in problems)
    assert len(problems) < 8


def test_the_console_names_the_same_root_causes_as_before(tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """Pinned on the summary that held every failing, skipped and error finding (before the compact ranking)."""
    from scanner.cli import _summarize
    from scanner.pipeline import ScanResult
    from tests.reports.test_rootcause import RUN, _varied_estate

    next_steps = [("fix", "mailwarden remediate --check CHECK_ID")]
    _summarize(ScanResult(RUN, (), (), 0, notable=_varied_estate()), tmp_path, next_steps)
    said = capsys.readouterr().out
    assert "fix first (302 root causes, by severity and reach; the report says how to fix each):" in said
    assert "… and 292 more in the report" in said
    assert hashlib.sha256(said.replace(str(tmp_path.resolve()), "OUT").encode()).hexdigest() == "0102ce738ed67e918e26b97ae434e1a7ba5709b229d9dbbb490b968dd25b3c60"

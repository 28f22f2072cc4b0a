"""Validation and wording on the command line: unknown ids, foreign folders, empty lists and plain sentences."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner

from checks.evaluate import evaluate
from checks.registry import Policy, load_checks
from scanner.cli import main
from scanner.model import Coverage, Domain, Fact, FactState, Inventory, Status, Tenant

ZONE = (
    '@ MX 10 mx1.acme.example.\n@ TXT "v=spf1 ip4:127.0.0.10 -all"\n'
    '_dmarc TXT "v=DMARC1; p=none; rua=mailto:d@acme.example"\n'
)


@pytest.fixture
def config(dns_server, add_zone, tmp_path: Path) -> Path:
    add_zone("acme.example", ZONE)
    path = tmp_path / "mailwarden.toml"
    path.write_text(
        f'[store]\nurl = "sqlite:///{tmp_path / "store.db"}"\n[dns]\nnameservers = ["{dns_server.nameserver}"]\n'
        'timeout = 1.0\n[[tenants]]\nname = "acme"\ndomains = ["acme.example"]\n',
        encoding="utf-8",
    )
    return path


def _run(*args: str):
    return CliRunner().invoke(main, list(args))


def test_an_exception_naming_an_unknown_check_is_exit_2_with_the_nearest_id(config: Path, tmp_path: Path) -> None:
    config.write_text(config.read_text(encoding="utf-8") + (
        '[[exceptions]]\ncheck = "forwarding.externall"\nsubject = "ceo@acme.example"\nreason = "r"\n'
        'approved_by = "it@acme.example"\nexpires = 2027-01-31\n'), encoding="utf-8")
    done = _run("scan", "--config", str(config), "--out", str(tmp_path / "out"))
    assert done.exit_code == 2
    assert done.output == (f"mailwarden: {config}: exceptions[0].check: no check 'forwarding.externall' "
                           "(did you mean 'forwarding.external'?)\n")


def test_remediate_an_unknown_check_is_exit_2_with_the_nearest_id(config: Path, tmp_path: Path) -> None:
    assert _run("scan", "--config", str(config), "--out", str(tmp_path / "out")).exit_code == 0
    done = _run("remediate", "--config", str(config), "--check", "dmarc.mising")
    assert done.exit_code == 2
    assert "--check 'dmarc.mising': no such check (did you mean 'dmarc.missing'?)" in done.output
    done = _run("remediate", "--config", str(config), "--check", "dmarc.policy_weak")
    assert done.exit_code == 0 and "1 failing finding(s) of dmarc.policy_weak" in done.output


def test_a_baseline_key_misspelt_is_exit_2_with_the_nearest_key(config: Path, tmp_path: Path) -> None:
    (tmp_path / "acme.baseline.toml").write_text('[tenant]\ndmarc_polcy = "reject"\n', encoding="utf-8")
    config.write_text(config.read_text(encoding="utf-8") + 'baselines = ["acme.baseline.toml"]\n', encoding="utf-8")
    done = _run("scan", "--config", str(config), "--out", str(tmp_path / "out"))
    assert done.exit_code == 2
    assert "tenant.dmarc_polcy: unknown key (did you mean 'dmarc_policy'?)" in done.output


def test_evidence_refuses_a_folder_holding_anything_but_an_earlier_pack(config: Path, tmp_path: Path) -> None:
    assert _run("scan", "--config", str(config), "--out", str(tmp_path / "out")).exit_code == 0
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine", encoding="utf-8")
    done = _run("evidence", "--config", str(config), "--out", str(busy))
    assert done.exit_code == 2
    assert "the folder holds files that are not an evidence pack (notes.txt)" in done.output
    assert sorted(p.name for p in busy.iterdir()) == ["notes.txt"]
    pack = tmp_path / "pack"
    for _ in range(2):  # a second pack over the first is allowed, and still verifies
        assert _run("evidence", "--config", str(config), "--out", str(pack)).exit_code == 0
    assert _run("evidence", "verify", str(pack)).exit_code == 0


def test_jobs_with_none_says_so(config: Path, tmp_path: Path) -> None:
    assert _run("scan", "--config", str(config), "--out", str(tmp_path / "out")).exit_code == 0
    done = _run("jobs", "--config", str(config))
    assert done.exit_code == 0 and done.output == "no remediation jobs yet\n"


def test_checks_shows_dns_publish_for_dns_checks() -> None:
    listing = _run("checks").output
    remediation = {}
    current = ""
    for line in listing.split("\n"):
        if line and not line.startswith(" "):
            current = line.split()[0]
        elif line.strip().startswith("remediation:"):
            remediation[current] = line.strip().removeprefix("remediation: ")
    assert remediation["dmarc.missing"].startswith("dns.publish")
    assert remediation["drift.dns_weakened"].startswith("dns.publish")
    assert remediation["forwarding.external"] == "forwarding.disable"
    assert remediation["drift.catchall_enabled"] == "-"  # a provider setting, not a DNS record


def test_a_dns_only_tenant_reads_as_a_sentence() -> None:
    tenant = Tenant("acme", None, ("acme.example",))
    coverage = (Coverage("acme", Fact.DOMAIN_CATCH_ALL, FactState.UNSUPPORTED, "DNS-only tenant (no provider configured)"),)
    catch_all = [c for c in load_checks() if c.meta.id == "catchall.enabled"]
    [finding] = evaluate(Inventory((tenant,), (Domain("acme.example", "acme"),), coverage=coverage), catch_all,
                         policy=Policy(), senders={}, now=datetime(2026, 11, 25, tzinfo=UTC))
    assert finding.status is Status.UNSUPPORTED
    assert finding.reason.startswith("a DNS-only tenant (no provider configured) has no domain.catch_all")
    assert "no provider does not" not in finding.reason


def test_evidence_for_an_empty_period_reads_as_a_sentence(config: Path, tmp_path: Path) -> None:
    assert _run("scan", "--config", str(config), "--out", str(tmp_path / "out")).exit_code == 0
    done = _run("evidence", "--config", str(config), "--since", "2099-01-01", "--out", str(tmp_path / "pack"))
    assert done.exit_code == 1
    assert "no finished run in the store since 2099-01-01" in done.output and "None" not in done.output


def test_an_invalid_domain_on_the_command_line_is_exit_2(config: Path) -> None:
    for verb in (["changes", "--domain", "not a domain"], ["baseline", "capture", "--domain", "acme"]):
        done = _run(*verb, "--config", str(config))
        assert done.exit_code == 2, done.output
        assert "--domain: " in done.output and "is not a valid domain name" in done.output


def test_serve_refuses_an_exception_naming_an_unknown_check_at_start(config: Path) -> None:
    config.write_text(config.read_text(encoding="utf-8") + (
        '[[exceptions]]\ncheck = "dmarc.policy_weakk"\nsubject = "acme.example"\nreason = "r"\n'
        'approved_by = "it@acme.example"\nexpires = 2027-01-31\n'), encoding="utf-8")
    done = _run("serve", "--config", str(config))
    assert done.exit_code == 2
    assert "exceptions[0].check: no check 'dmarc.policy_weakk' (did you mean 'dmarc.policy_weak'?)" in done.output

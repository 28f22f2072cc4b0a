"""`mailwarden scan` over one tenant per provider, each at its contract server, makes one combined report."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import dns.zone
import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from checks.evaluate import evaluate
from checks.registry import load_checks
from scanner import pipeline
from scanner.store.baseline import load_baselines
from scanner.cli import main
from scanner.collect import collect
from scanner.config import load_config
from scanner.aggregate.store import with_traffic
from scanner.store.database import Store, canonical
from scanner.loopback.zoneserver import ZoneServer
from tests.conftest import TOP_LEVEL_ZONES, top_level_zone
from tests.contract import google, mailcow, microsoft
from tests.contract.estate import Estate, standard_estate
from tests.contract.harness import Harness
from tests.contract.server import ContractServer

FILES_DOMAIN = "files-client.example"


def _estate(tenant: str, domain: str) -> Estate:
    """The standard estate moved to its own tenant and domain (outside forward targets stay where they are)."""
    base = standard_estate(users=3)

    def move(address: str) -> str:
        return address.replace("@acme.example", f"@{domain}")

    boxes = tuple(
        replace(b, address=move(b.address), owners=tuple(move(o) for o in b.owners),
                delegates=tuple(move(d) for d in b.delegates))
        for b in base.mailboxes
    )
    catch_all = {domain: move(v) if v else None for k, v in base.catch_all.items() if k == "acme.example"}
    return Estate(tenant, (domain,), boxes, catch_all)


@dataclass
class Provider:
    """One provider tenant: its harness, estate and running contract server."""

    harness: Harness
    estate: Estate
    server: ContractServer


# Google's contract server impersonates admin@acme.example, so the Google tenant keeps acme.example.
ESTATES = {
    "google": ("gw-client", "acme.example"),
    "microsoft": ("m365-client", "m365-client.example"),
    "mailcow": ("cow-client", "cow-client.example"),
}
HARNESSES: dict[str, Harness] = {"google": google.HARNESS, "microsoft": microsoft.HARNESS, "mailcow": mailcow.HARNESS}


@pytest.fixture
def providers() -> Iterator[dict[str, Provider]]:
    started: dict[str, Provider] = {}
    try:
        for name, (tenant, domain) in ESTATES.items():
            estate = _estate(tenant, domain)
            started[name] = Provider(HARNESSES[name], estate, HARNESSES[name].serve(estate, page_size=4))
        yield started
    finally:
        for provider in started.values():
            provider.server.stop()


@pytest.fixture
def zones() -> Iterator[ZoneServer]:
    """Minimal zones for every tenant domain, so no DNS query leaves loopback."""
    with ZoneServer([top_level_zone(origin) for origin in TOP_LEVEL_ZONES]) as server:  # the DMARC tree walk's
        for domain in (*(d for _, d in ESTATES.values()), FILES_DOMAIN):
            text = (
                f"$ORIGIN {domain}.\n$TTL 300\n@ IN SOA ns1 hostmaster 1 3600 600 86400 300\n@ IN NS ns1\n"
                "ns1 IN A 127.0.0.53\n@ IN MX 10 mx\nmx IN A 127.0.0.25\n"
                '@ IN TXT "v=spf1 ip4:127.0.0.25 -all"\n_dmarc IN TXT "v=DMARC1; p=none"\n'
            )
            server.add_zone(dns.zone.from_text(text, origin=domain, relativize=False))
        yield server


def _config(tmp_path: Path, providers: dict[str, Provider], zones: ZoneServer) -> Path:
    export = tmp_path / "export"
    export.mkdir()
    (export / "mailboxes.csv").write_text(
        f"address,display_name,kind,status,created,last_login,owners,delegates\n"
        f"pat@{FILES_DOMAIN},Pat,user,active,2025-01-01,2026-11-20,,\n", encoding="utf-8")
    (export / "forwards.csv").write_text(
        f"mailbox,target,mechanism\npat@{FILES_DOMAIN},pat@elsewhere.test,auto_forward\n", encoding="utf-8")
    text = (
        f'[store]\nurl = "sqlite:///{tmp_path / "mw.db"}"\n\n'
        f'[dns]\nnameservers = ["{zones.nameserver}"]\ntimeout = 1.0\n\n'
        "[http]\ntimeout = 5.0\nattempts = 3\nbackoff_base = 0.01\nbackoff_cap = 0.05\nmax_retry_after = 0.05\n"
    )
    # The Microsoft harness's table starts with the [http] ca_bundle line, so it comes right after [http].
    for name in ("microsoft", "google", "mailcow"):
        provider = providers[name]
        text += provider.harness.tenant_toml(provider.server, provider.estate, tmp_path)
    text += f'\n[[tenants]]\nname = "files-client"\nprovider = "files"\nexport = "export"\ndomains = ["{FILES_DOMAIN}"]\n'
    path = tmp_path / "mailwarden.toml"
    path.write_text(text, encoding="utf-8")
    return path


def _scan(config: Path, out: Path) -> tuple[list[dict[str, object]], dict[str, object], str, str]:
    done = CliRunner().invoke(main, ["scan", "--config", str(config), "--out", str(out)], catch_exceptions=False)
    assert done.exit_code == 0, done.output
    findings = json.loads((out / "findings.json").read_text(encoding="utf-8"))
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    return findings, manifest, (out / "report.html").read_text(encoding="utf-8"), done.output


TENANTS = {"gw-client", "m365-client", "cow-client", "files-client"}


def test_one_tenant_per_provider_makes_one_combined_report(
    tmp_path: Path, providers: dict[str, Provider], zones: ZoneServer
) -> None:
    findings, manifest, html, output = _scan(_config(tmp_path, providers, zones), tmp_path / "out")
    assert manifest["state"] == "complete", manifest["scope"]
    scope = manifest["scope"]["tenants"]  # type: ignore[index]
    assert {name: s["state"] for name, s in scope.items()} == dict.fromkeys(TENANTS, "complete")
    assert scope["gw-client"]["mailboxes"] == len(google.HARNESS.expected(providers["google"].estate))
    assert scope["m365-client"]["mailboxes"] == len(providers["microsoft"].estate.mailboxes)
    assert scope["cow-client"]["mailboxes"] == len(mailcow.HARNESS.expected(providers["mailcow"].estate))  # + aliases
    assert {f["tenant"] for f in findings} == TENANTS
    failing = {(f["tenant"], f["check"], f["subject"]) for f in findings if f["status"] == "fail"}
    # Each provider's forward to outside is read through its own API and judged by the same check.
    for tenant, subject in (("gw-client", "ana@acme.example"), ("m365-client", "ben@m365-client.example"),
                            ("cow-client", "ana@cow-client.example"), ("files-client", f"pat@{FILES_DOMAIN}")):
        assert (tenant, "forwarding.external", subject) in failing
    # A mailcow alias with no mailbox that forwards outside is a subject of its own, judged the same way.
    alias = next(f for f in findings
                 if f["check"] == "forwarding.external" and f["subject"] == "sales@cow-client.example")
    assert alias["status"] == "fail" and alias["evidence"]["kind"] == "alias" and "sales@cow-client.example" in html
    # Graph and Google cannot say what mailcow can (catch-all): a coverage gap, never a pass.
    catch_all = {f["tenant"]: f["status"] for f in findings if f["check"] == "catchall.enabled"}
    assert catch_all["m365-client"] == catch_all["gw-client"] == "unsupported"
    assert catch_all["cow-client"] == "fail"
    for tenant in TENANTS:
        assert re.search(rf">\s*{re.escape(tenant)}\s*<", html), tenant
    assert "4 tenants" in output


def test_a_provider_that_is_down_makes_the_run_partial_and_the_others_complete(
    tmp_path: Path, providers: dict[str, Provider], zones: ZoneServer
) -> None:
    config = _config(tmp_path, providers, zones)
    providers["microsoft"].server.stop()
    findings, manifest, html, _ = _scan(config, tmp_path / "out")
    assert manifest["state"] == "partial"
    scope = manifest["scope"]["tenants"]  # type: ignore[index]
    assert {name: s["state"] for name, s in scope.items()} == {
        "gw-client": "complete", "m365-client": "failed", "cow-client": "complete", "files-client": "complete"}
    assert scope["m365-client"]["problems"] and scope["m365-client"]["mailboxes"] == 0
    assert microsoft.CLIENT_SECRET not in json.dumps(manifest) + html + json.dumps(findings)
    failing = {(f["tenant"], f["check"], f["subject"]) for f in findings if f["status"] == "fail"}
    assert ("gw-client", "forwarding.external", "ana@acme.example") in failing
    assert ("cow-client", "forwarding.external", "ana@cow-client.example") in failing
    assert ("files-client", "forwarding.external", f"pat@{FILES_DOMAIN}") in failing
    # The failed tenant's domains are still judged over DNS; its mailbox facts are errors, not passes.
    m365 = [f for f in findings if f["tenant"] == "m365-client"]
    assert any(f["check"] == "dmarc.missing" and f["status"] == "pass" for f in m365)
    assert not any(f["status"] == "pass" and f["check"].startswith(("forwarding.", "catchall.")) for f in m365)
    assert {f["check"]: f["status"] for f in m365}["catchall.enabled"] == "error"
    assert not any(f["subject"].endswith("@m365-client.example") for f in m365)  # nothing read, nothing judged
    assert "m365-client" in html and "failed" in html


def test_a_note_shows_in_the_report_and_leaves_the_tenant_complete(
    tmp_path: Path, providers: dict[str, Provider], zones: ZoneServer
) -> None:
    # google.admin is not a super admin: the org-wide forwarding policy is unknown, every user's Gmail
    # settings are read instead, so nothing is missing: a note, not a problem.
    google.HARNESS.workspace(providers["google"].server).super_admin = False
    findings, manifest, html, _ = _scan(_config(tmp_path, providers, zones), tmp_path / "out")
    scope = manifest["scope"]["tenants"]  # type: ignore[index]
    assert scope["gw-client"]["state"] == "complete" and scope["gw-client"]["problems"] == []
    assert [n for n in scope["gw-client"]["notes"] if "Policy API answered 403" in n]
    assert "note: the Cloud Identity Policy API answered 403" in html
    failing = {(f["tenant"], f["check"], f["subject"]) for f in findings if f["status"] == "fail"}
    assert ("gw-client", "forwarding.external", "ana@acme.example") in failing


def test_mailboxes_reach_the_store_page_by_page_while_the_crawl_goes_on(
    tmp_path: Path, providers: dict[str, Provider], zones: ZoneServer
) -> None:
    config = _config(tmp_path, providers, zones)
    server = providers["microsoft"].server
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'mw.db'}")
    staged_when_asked: list[int] = []
    answer = server.app

    def watching(request):  # type: ignore[no-untyped-def]
        if request.method == "GET" and request.path.endswith("/users"):
            with engine.connect() as conn:
                staged_when_asked.append(conn.execute(sa.text(
                    "SELECT count(*) FROM staged WHERE kind = 'mailbox' AND scope = 'm365-client'")).scalar_one())
        return answer(request)

    server.app = watching
    _, manifest, _, _ = _scan(config, tmp_path / "out")
    mailboxes = manifest["scope"]["tenants"]["m365-client"]["mailboxes"]  # type: ignore[index]
    # Graph lists 4 users a page here: when the crawl asks for a page, the pages before it are in the store.
    assert len(staged_when_asked) >= 3
    assert staged_when_asked[0] == 0
    assert all(a < b for a, b in zip(staged_when_asked, staged_when_asked[1:], strict=False))
    assert staged_when_asked[-1] < mailboxes
    with engine.connect() as conn:  # the staging is the run's working space, gone when the run ends
        assert conn.execute(sa.text("SELECT count(*) FROM staged")).scalar_one() == 0
    engine.dispose()


def test_judging_mailboxes_a_page_at_a_time_finds_what_judging_them_all_at_once_finds(
    tmp_path: Path, providers: dict[str, Provider], zones: ZoneServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = load_config(_config(tmp_path, providers, zones))
    when = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
    whole = asyncio.run(collect(config))
    keys = sorted(f"{m.tenant}/{m.address}" for m in whole.inventory.mailboxes)
    page_of = {key.partition("/")[2]: index // 2 for index, key in enumerate(keys)}
    # Some owner's mailbox is on another page than the mailbox it owns: the stored lookup has to find it.
    assert any(owner in page_of and page_of[owner] != page_of[m.address]
               for m in whole.inventory.mailboxes for owner in m.owners)
    monkeypatch.setattr(pipeline, "PAGE", 2)
    store = Store(config.store.url)
    expected = evaluate(
        with_traffic(store, config, replace(whole.inventory, baselines=load_baselines(config)), when), load_checks(),
        policy=pipeline.policy_of(config), senders=pipeline.senders_of(config), now=when,
    )
    try:
        result = pipeline.run_scan(config, tmp_path / "out", store=store, now=when)
    finally:
        store.close()

    def judged(findings):  # type: ignore[no-untyped-def]
        return sorted((f.id, f.status.value, f.reason, canonical(f.evidence)) for f in findings)

    assert len(result.findings) == len(expected) > len(keys)
    assert judged(result.findings) == judged(expected)

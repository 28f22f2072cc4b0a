"""Scans that take the provider's own view of the tenant: its domains are internal, and what it will not let be read
(a mailbox Graph's REST API cannot open, a suspended Gmail user) is a coverage gap, never a pass or a change."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import dns.zone
import pytest

from scanner import pipeline
from scanner.config import load_config
from scanner.model import ForwardMechanism, Status
from scanner.store.database import Store
from scanner.loopback.zoneserver import ZoneServer
from tests.conftest import TOP_LEVEL_ZONES, top_level_zone
from tests.contract import google, microsoft
from tests.contract.estate import NOW, Estate, EstateMailbox
from tests.contract.harness import Harness
from tests.contract.server import ContractServer

M365_DOMAIN = "m365-client.example"
GOOGLE_DOMAIN = "acme.example"  # the Google contract server impersonates admin@acme.example


@pytest.fixture
def zones() -> Iterator[ZoneServer]:
    """A minimal zone for each configured domain, so no DNS query leaves loopback."""
    with ZoneServer([top_level_zone(o) for o in TOP_LEVEL_ZONES]) as server:  # the DMARC tree walk's top
        for domain in (M365_DOMAIN, GOOGLE_DOMAIN):
            text = (
                f"$ORIGIN {domain}.\n$TTL 300\n@ IN SOA ns1 hostmaster 1 3600 600 86400 300\n@ IN NS ns1\n"
                "ns1 IN A 127.0.0.53\n@ IN MX 10 mx\nmx IN A 127.0.0.25\n"
                '@ IN TXT "v=spf1 ip4:127.0.0.25 -all"\n_dmarc IN TXT "v=DMARC1; p=reject"\n'
            )
            server.add_zone(dns.zone.from_text(text, origin=domain, relativize=False))
        yield server


def _config(tmp_path: Path, harness: Harness, server: ContractServer, estate: Estate, zones: ZoneServer) -> Path:
    text = (
        f'[store]\nurl = "sqlite:///{tmp_path / "mw.db"}"\n\n'
        f'[dns]\nnameservers = ["{zones.nameserver}"]\ntimeout = 1.0\n\n'
        "[http]\ntimeout = 5.0\nattempts = 3\nbackoff_base = 0.01\nbackoff_cap = 0.05\nmax_retry_after = 0.05\n"
        + harness.tenant_toml(server, estate, tmp_path)
    )
    path = tmp_path / "mailwarden.toml"
    path.write_text(text, encoding="utf-8")
    return path


def _scan(config: Path, out: Path, when: datetime = NOW) -> pipeline.ScanResult:
    loaded = load_config(config)
    store = Store(loaded.store.url)
    try:
        return pipeline.run_scan(loaded, out, store=store, now=when)
    finally:
        store.close()


def _finding(result: pipeline.ScanResult, check: str, subject: str):  # type: ignore[no-untyped-def]
    (found,) = [f for f in result.findings if f.check == check and f.subject == subject]
    return found


M365 = Estate("m365", (M365_DOMAIN,), (
    EstateMailbox(f"ana@{M365_DOMAIN}", "Ana",
                  forwards=((f"ana@{microsoft.INITIAL_DOMAIN}", ForwardMechanism.INBOX_RULE),)),
    EstateMailbox(f"ben@{M365_DOMAIN}", "Ben", forwards=(("ben@outside.test", ForwardMechanism.INBOX_RULE),)),
    EstateMailbox(f"hybrid@{M365_DOMAIN}", "On premises", forwards=(("h@outside.test", ForwardMechanism.INBOX_RULE),)),
))


@pytest.fixture
def graph() -> Iterator[ContractServer]:
    server = microsoft.HARNESS.serve(M365, page_size=10)
    yield server
    server.stop()


def test_a_forward_to_the_tenants_initial_domain_is_internal_and_a_rest_less_mailbox_unsupported(
    tmp_path: Path, graph: microsoft.GraphServer, zones: ZoneServer
) -> None:
    hybrid = next(u["id"] for u in graph.state.users.values() if u["mail"] == f"hybrid@{M365_DOMAIN}")
    graph.state.no_rest.add(hybrid)
    result = _scan(_config(tmp_path, microsoft.HARNESS, graph, M365, zones), tmp_path / "out")
    assert result.run.state == "complete", result.run.scope
    assert result.run.scope["tenants"]["m365"]["provider_domains"] == [microsoft.INITIAL_DOMAIN]
    ana = _finding(result, "forwarding.external", f"ana@{M365_DOMAIN}")
    assert ana.status is Status.PASS and ana.evidence["internal_by_provider"] == [f"ana@{microsoft.INITIAL_DOMAIN}"]
    assert _finding(result, "forwarding.external", f"ben@{M365_DOMAIN}").status is Status.FAIL
    # Graph cannot open the on-premises mailbox: its rules are unknown, never a pass, and the run stays complete
    on_premises = _finding(result, "forwarding.external", f"hybrid@{M365_DOMAIN}")
    assert on_premises.status is Status.UNSUPPORTED
    assert "MailboxNotSupportedForRESTAPI" in on_premises.reason and "on-premises" in on_premises.reason
    # The provider's domains are internal, but only the configured ones are scanned over DNS
    assert {f.domain for f in result.findings if f.subject == f.domain} == {M365_DOMAIN}


def test_without_the_providers_domain_list_the_forward_fails_and_says_why(
    tmp_path: Path, graph: microsoft.GraphServer, zones: ZoneServer
) -> None:
    graph.state.domains_denied = True
    result = _scan(_config(tmp_path, microsoft.HARNESS, graph, M365, zones), tmp_path / "out")
    assert result.run.state == "partial"
    ana = _finding(result, "forwarding.external", f"ana@{M365_DOMAIN}")
    assert ana.status is Status.FAIL
    assert "provider's own list could not be read" in str(ana.evidence["internal_domains"])
    assert "Domain.Read.All" in str(ana.evidence["internal_domains"])


GOOGLE = Estate("gw", (GOOGLE_DOMAIN,), (
    EstateMailbox(f"old@{GOOGLE_DOMAIN}", "Leaving", forwards=(("old@outside.test", ForwardMechanism.AUTO_FORWARD),)),
    EstateMailbox(f"pa@{GOOGLE_DOMAIN}", "Assistant", delegates=("desk@acme-alias.example",)),
))


@pytest.fixture
def workspace_server() -> Iterator[ContractServer]:
    server = google.HARNESS.serve(GOOGLE, page_size=10)
    google.HARNESS.workspace(server).domains[0]["domainAliases"] = [
        {"domainAliasName": "acme-alias.example", "parentDomainName": GOOGLE_DOMAIN, "verified": True}]
    yield server
    server.stop()


def test_a_suspended_gmail_user_is_a_gap_not_a_removed_forward(
    tmp_path: Path, workspace_server: ContractServer, zones: ZoneServer
) -> None:
    space = google.HARNESS.workspace(workspace_server)
    config = _config(tmp_path, google.HARNESS, workspace_server, GOOGLE, zones)
    subject = f"old@{GOOGLE_DOMAIN}"
    first = _scan(config, tmp_path / "1", NOW)
    assert _finding(first, "forwarding.external", subject).status is Status.FAIL
    # A delegate at the Workspace's domain alias is inside the tenant
    pa = _finding(first, "delegate.external", f"pa@{GOOGLE_DOMAIN}")
    assert pa.status is Status.PASS and pa.evidence["internal_by_provider"] == ["desk@acme-alias.example"]

    space.users[subject]["suspended"] = True
    asked = len(space.grants)
    second = _scan(config, tmp_path / "2", NOW + timedelta(days=1))
    assert second.run.state == "complete", second.run.scope
    for check in ("forwarding.external", "drift.forwarding_added"):
        gap = _finding(second, check, subject)
        assert gap.status is Status.UNSUPPORTED and "suspended: Gmail refuses delegated access" in gap.reason
    assert subject not in {g["sub"] for g in space.grants[asked:]}  # not impersonated while suspended

    space.users[subject]["suspended"] = False
    third = _scan(config, tmp_path / "3", NOW + timedelta(days=2))
    assert _finding(third, "drift.forwarding_added", subject).status is Status.PASS  # the same forward as before
    assert _finding(third, "forwarding.external", subject).status is Status.FAIL
    store = Store(load_config(config).store.url)
    try:
        forwards = [c for c in store.changes(subject=subject) if c.object_type == "forward"]
        status = [c for c in store.changes(subject=subject) if c.field == "status"]
    finally:
        store.close()
    assert forwards == []  # never recorded as removed while unread, nor as added again
    assert [(c.before, c.after) for c in status] == [("active", "suspended"), ("suspended", "active")]

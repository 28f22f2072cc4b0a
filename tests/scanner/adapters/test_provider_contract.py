"""One behavioural suite every provider adapter passes, each against its own contract server on loopback."""

from __future__ import annotations

import asyncio
import importlib
import pkgutil
from collections.abc import Iterator
from pathlib import Path

import pytest

import tests.contract
from scanner.adapters.base import collect_all
from scanner.collect import PROVIDER_FACTS, Collection, adapter_for, collect
from scanner.config import load_config
from scanner.errors import AdapterError
from scanner.model import Coverage, FactState
from tests.contract.estate import Estate, standard_estate
from tests.contract.harness import Harness
from tests.contract.server import ContractServer


def _harnesses() -> list[Harness]:
    found = []
    for module in pkgutil.iter_modules(tests.contract.__path__):
        loaded = importlib.import_module(f"tests.contract.{module.name}")
        if hasattr(loaded, "HARNESS"):
            found.append(loaded.HARNESS)
    return sorted(found, key=lambda h: h.provider)


HARNESSES = _harnesses()

HTTP = """
[dns]
nameservers = ["127.0.0.1:9"]
timeout = 0.2

[http]
timeout = 5.0
attempts = 4
backoff_base = 0.01
backoff_cap = 0.05
max_retry_after = 0.05
"""


@pytest.fixture(params=HARNESSES, ids=lambda h: h.provider)
def harness(request: pytest.FixtureRequest) -> Harness:
    return request.param


@pytest.fixture
def estate() -> Estate:
    return standard_estate()


@pytest.fixture
def server(harness: Harness, estate: Estate) -> Iterator[ContractServer]:
    server = harness.serve(estate, page_size=4)
    yield server
    server.stop()


def _config(harness: Harness, server: ContractServer, estate: Estate, tmp_path: Path, extra: str = ""):
    text = HTTP + harness.tenant_toml(server, estate, tmp_path) + extra
    path = tmp_path / "mailwarden.toml"
    path.write_text(text, encoding="utf-8")
    return load_config(path)


def _read(harness: Harness, server: ContractServer, estate: Estate, tmp_path: Path):
    config = _config(harness, server, estate, tmp_path)
    tenant_config = config.tenants[0]
    adapter = adapter_for(tenant_config, config)
    assert adapter is not None
    return adapter, asyncio.run(collect_all(adapter, config.tenant_models()[0]))


def _coverage(coverage: tuple[Coverage, ...]) -> dict[str, FactState]:
    return {c.fact.value: c.state for c in coverage if not c.subject}


def test_reads_the_full_inventory(harness: Harness, server: ContractServer, estate: Estate, tmp_path: Path) -> None:
    adapter, collected = _read(harness, server, estate, tmp_path)
    assert {m.address: m for m in collected.mailboxes} == harness.expected(estate)
    assert dict(collected.catch_all) == harness.expected_catch_all(estate)
    assert collected.problems == ()
    assert adapter.capabilities == harness.capabilities


def test_reports_capabilities_as_coverage(harness: Harness, server: ContractServer, estate: Estate,
                                          tmp_path: Path) -> None:
    _, collected = _read(harness, server, estate, tmp_path)
    coverage = _coverage(collected.coverage)
    for fact in harness.capabilities:
        assert coverage[fact.value] is FactState.COLLECTED, fact
    for fact in set(PROVIDER_FACTS) - harness.capabilities:
        assert coverage.get(fact.value, FactState.UNSUPPORTED) is FactState.UNSUPPORTED, fact
    unsupported = [c for c in collected.coverage if c.state is FactState.UNSUPPORTED]
    assert all(c.reason for c in unsupported)


def test_follows_every_page(harness: Harness, server: ContractServer, estate: Estate, tmp_path: Path) -> None:
    _, collected = _read(harness, server, estate, tmp_path)
    assert len(collected.mailboxes) == len(harness.expected(estate))
    assert server.count(harness.list_path) >= 2 or harness.provider == "mailcow"  # mailcow does not page


def test_recovers_from_throttling(harness: Harness, server: ContractServer, estate: Estate, tmp_path: Path) -> None:
    server.faults.throttle = 3
    _, collected = _read(harness, server, estate, tmp_path)
    assert {m.address: m for m in collected.mailboxes} == harness.expected(estate)
    assert server.faults.throttle == 0


def test_recovers_from_a_burst_of_server_errors(harness: Harness, server: ContractServer, estate: Estate,
                                                tmp_path: Path) -> None:
    server.faults.errors = 2
    server.faults.error_status = 503
    _, collected = _read(harness, server, estate, tmp_path)
    assert {m.address: m for m in collected.mailboxes} == harness.expected(estate)


@pytest.mark.parametrize("harness", [h for h in HARNESSES if h.token_path], ids=lambda h: h.provider)
def test_refreshes_an_expired_token_once(harness: Harness, server: ContractServer, estate: Estate,
                                         tmp_path: Path) -> None:
    """Providers with OAuth tokens (mailcow's API key never expires)."""
    config = _config(harness, server, estate, tmp_path)
    adapter = adapter_for(config.tenants[0], config)
    assert adapter is not None
    asyncio.run(collect_all(adapter, config.tenant_models()[0]))
    issued = server.count(harness.token_path)
    harness.expire_tokens(server)
    collected = asyncio.run(collect_all(adapter, config.tenant_models()[0]))
    assert {m.address: m for m in collected.mailboxes} == harness.expected(estate)
    assert server.count(harness.token_path) > issued


def test_malformed_page_is_a_clear_error_naming_the_endpoint(harness: Harness, server: ContractServer,
                                                             estate: Estate, tmp_path: Path) -> None:
    server.faults.malformed[harness.list_path] = 1
    with pytest.raises(AdapterError, match=r"malformed response") as raised:
        _read(harness, server, estate, tmp_path)
    assert harness.list_path in str(raised.value)


def test_a_provider_that_is_down_fails_its_tenant_only(harness: Harness, server: ContractServer, estate: Estate,
                                                       tmp_path: Path) -> None:
    export = tmp_path / "export"
    export.mkdir()
    (export / "mailboxes.csv").write_text("address,display_name,kind,status\nx@other.example,X,user,active\n", encoding="utf-8")
    files_tenant = '\n[[tenants]]\nname = "other"\nprovider = "files"\nexport = "export"\ndomains = ["other.example"]\n'
    config = _config(harness, server, estate, tmp_path, files_tenant)
    server.stop()
    collection: Collection = asyncio.run(collect(config))
    states = {o.tenant: o.state for o in collection.outcomes}
    # "other" is partial for its own reason only: [dns] points at a port where nothing answers, and an
    # unanswered DNS question makes a tenant partial (issue 14); the provider's failure does not reach it.
    assert states == {estate.tenant: "failed", "other": "partial"}
    (other,) = [o for o in collection.outcomes if o.tenant == "other"]
    assert other.problems and all(p.startswith("DNS: ") for p in other.problems)
    (failed,) = [o for o in collection.outcomes if o.state == "failed"]
    for secret in harness.secret_values(tmp_path):
        assert secret not in " ".join(failed.problems)
    assert [m.address for m in collection.inventory.mailboxes] == ["x@other.example"]


def test_secrets_never_reach_errors(harness: Harness, server: ContractServer, estate: Estate, tmp_path: Path) -> None:
    server.faults.errors = 50
    with pytest.raises(AdapterError) as raised:
        _read(harness, server, estate, tmp_path)
    for secret in harness.secret_values(tmp_path):
        assert secret not in str(raised.value)

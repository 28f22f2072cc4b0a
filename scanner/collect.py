"""The collect stage: read every tenant's provider and DNS into one inventory, with coverage and problems."""

from __future__ import annotations

import asyncio
import importlib
import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from scanner.adapters.base import Adapter, Collected
from scanner.adapters.files import read_roster
from scanner.config import Config, TenantConfig
from scanner.dns import DnsClient
from scanner.errors import AdapterError, ConfigError
from scanner.model import Coverage, Domain, Fact, FactState, Inventory, Mailbox, Person, Tenant
from scanner.mtasts import PolicyFetcher

log = logging.getLogger(__name__)

PROVIDER_FACTS = (
    Fact.MAILBOX_LIST,
    Fact.MAILBOX_FORWARDS,
    Fact.MAILBOX_OWNERS,
    Fact.MAILBOX_DELEGATES,
    Fact.MAILBOX_LAST_LOGIN,
    Fact.MAILBOX_INVITES,
    Fact.DOMAIN_CATCH_ALL,
)


@dataclass(frozen=True, slots=True)
class TenantOutcome:
    """How collection went for one tenant: complete, partial (with problems) or failed."""

    tenant: str
    state: str
    problems: tuple[str, ...] = ()
    mailboxes: int = 0
    domains: int = 0


@dataclass(frozen=True, slots=True)
class Collection:
    """The inventory a run collected and how each tenant's part went."""

    inventory: Inventory
    outcomes: tuple[TenantOutcome, ...]
    dns_queries: int = 0

    @property
    def complete_tenants(self) -> tuple[str, ...]:
        """Tenants seen completely: their missing objects may be treated as gone."""
        return tuple(o.tenant for o in self.outcomes if o.state == "complete")

    @property
    def state(self) -> str:
        """complete when every tenant was, failed when none was collected at all, else partial."""
        states = {o.state for o in self.outcomes}
        if states <= {"complete"}:
            return "complete"
        if states == {"failed"}:
            return "failed"
        return "partial"


ADAPTERS = {
    "files": "scanner.adapters.files",
    "google": "scanner.adapters.google",
    "microsoft": "scanner.adapters.microsoft",
    "mailcow": "scanner.adapters.mailcow",
}
"""Provider name -> the module whose ``build(tenant, config)`` makes its adapter."""


def policy_fetcher(config: Config) -> PolicyFetcher:
    """The run's MTA-STS policy fetcher, from ``[mta_sts]``; a CA bundle that cannot be loaded is a config error."""
    settings = config.mta_sts
    bundle = config.resolve_path(Path(settings.ca_bundle)) if settings.ca_bundle else None
    try:
        return PolicyFetcher(port=settings.port, ca_bundle=bundle, timeout=settings.timeout)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"{config.source}: mta_sts.ca_bundle: cannot load {bundle} ({exc})") from None


def adapter_for(tenant: TenantConfig, config: Config) -> Adapter | None:
    """The adapter for a tenant's provider, or None for a DNS-only tenant."""
    if tenant.provider is None:
        return None
    try:
        module = importlib.import_module(ADAPTERS[tenant.provider])
    except ModuleNotFoundError:
        raise AdapterError(f"the {tenant.provider} adapter is not available in this version of mailwarden") from None
    adapter: Adapter = module.build(tenant, config)
    return adapter


@dataclass
class _TenantResult:
    tenant: Tenant
    domains: list[Domain] = field(default_factory=list)
    mailboxes: tuple[Mailbox, ...] = ()
    people: tuple[Person, ...] = ()
    coverage: list[Coverage] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    failed: bool = False


async def _collect_tenant(
    tenant: Tenant,
    settings: TenantConfig,
    config: Config,
    dns_client: DnsClient,
    policies: PolicyFetcher,
    progress: Callable[[str], None],
) -> _TenantResult:
    result = _TenantResult(tenant)
    collected = Collected()
    try:
        adapter = adapter_for(settings, config)
        if adapter is None:
            result.coverage += [
                Coverage(tenant.name, fact, FactState.UNSUPPORTED, "DNS-only tenant (no provider configured)")
                for fact in PROVIDER_FACTS
            ]
        else:
            collected = await adapter.collect(tenant)
            offered = {c.fact for c in collected.coverage}
            result.coverage += collected.coverage
            result.coverage += [
                Coverage(tenant.name, fact, FactState.UNSUPPORTED, f"the {adapter.name} adapter does not offer it")
                for fact in PROVIDER_FACTS
                if fact not in offered
            ]
            result.problems += collected.problems
    except AdapterError as exc:
        result.failed = True
        result.problems.append(str(exc))
        result.coverage += [Coverage(tenant.name, fact, FactState.FAILED, str(exc)) for fact in PROVIDER_FACTS]
    result.mailboxes = collected.mailboxes
    if settings.roster is not None:
        try:
            result.people, problems = read_roster(config.resolve_path(settings.roster))
            result.problems += problems
            result.coverage.append(Coverage(tenant.name, Fact.ROSTER, FactState.COLLECTED))
        except AdapterError as exc:
            result.problems.append(str(exc))
            result.coverage.append(Coverage(tenant.name, Fact.ROSTER, FactState.FAILED, str(exc)))
    else:
        result.coverage.append(Coverage(tenant.name, Fact.ROSTER, FactState.UNSUPPORTED, "no roster configured"))
    names = [(d, False) for d in tenant.domains] + [(d, True) for d in tenant.parked_domains]
    selectors = {s for sender in tenant.senders for s in config.senders[sender].dkim_selectors}
    selectors.update(tenant.dkim_selectors)
    facts = await asyncio.gather(
        *(
            dns_client.collect_domain(name, selectors=() if parked else selectors, policies=policies)
            for name, parked in names
        )
    )
    for (name, parked), dns_facts in zip(names, facts, strict=True):
        result.domains.append(Domain(name, tenant.name, parked, collected.catch_all.get(name), dns_facts))
    progress(tenant.name)
    return result


async def collect(config: Config, *, progress: Callable[[str], None] = lambda name: None) -> Collection:
    """Collect every tenant concurrently, sharing one DNS client (and its cache) for the run."""
    dns_client = DnsClient(config.dns.nameservers, timeout=config.dns.timeout, concurrency=config.dns.concurrency)
    policies = policy_fetcher(config)
    tenants = config.tenant_models()
    results = await asyncio.gather(
        *(
            _collect_tenant(t, s, config, dns_client, policies, progress)
            for t, s in zip(tenants, config.tenants, strict=True)
        )
    )
    outcomes = []
    for r in results:
        state = "failed" if r.failed else ("partial" if r.problems else "complete")
        for problem in r.problems:
            log.warning("tenant %s: %s", r.tenant.name, problem, extra={"tenant": r.tenant.name})
        outcomes.append(TenantOutcome(r.tenant.name, state, tuple(r.problems), len(r.mailboxes), len(r.domains)))
    inventory = Inventory(
        tenants=tenants,
        domains=tuple(d for r in results for d in r.domains),
        mailboxes=tuple(m for r in results for m in r.mailboxes),
        people={r.tenant.name: r.people for r in results},
        exceptions=config.exception_models(),
        coverage=tuple(c for r in results for c in r.coverage),
    )
    return Collection(inventory, tuple(outcomes), dns_client.queries)


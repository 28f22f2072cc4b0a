"""The collect stage: read every tenant's provider and DNS into one inventory, with coverage and problems."""

from __future__ import annotations

import asyncio
import importlib
import logging
import ssl
import time
from collections.abc import Callable, Collection as Names, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

from scanner.adapters.base import Adapter, Collected
from scanner.adapters.files import read_roster_file
from scanner.config import Config, TenantConfig
from scanner.dns.client import DnsClient, unreachable
from scanner.dns.helper import DnsHelper, HelperSettings, merged_summary, worth_splitting
from scanner.errors import AdapterError, ConfigError
from scanner.model import Coverage, DnsFacts, Domain, Fact, FactState, Inventory, Mailbox, Person, Tenant
from scanner.dns.mtasts import PolicyFetcher

log = logging.getLogger(__name__)

PROVIDER_FACTS = (
    Fact.MAILBOX_LIST,
    Fact.MAILBOX_FORWARDS,
    Fact.MAILBOX_OWNERS,
    Fact.MAILBOX_DELEGATES,
    Fact.MAILBOX_LAST_LOGIN,
    Fact.MAILBOX_INVITES,
    Fact.DOMAIN_CATCH_ALL,
    Fact.MAILBOX_OAUTH_GRANTS,
    Fact.MAILBOX_APP_PASSWORDS,
    Fact.MAILBOX_RECOVERY,
)


@dataclass(frozen=True, slots=True)
class TenantOutcome:
    """How collection went for one tenant: complete, partial (with problems) or failed."""

    tenant: str
    state: str
    problems: tuple[str, ...] = ()
    mailboxes: int = 0
    domains: int = 0
    seconds: float = 0.0
    notes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Collection:
    """The inventory a run collected and how each tenant's part went."""

    inventory: Inventory
    outcomes: tuple[TenantOutcome, ...]
    dns_queries: int = 0
    dns: Mapping[str, object] = field(default_factory=dict)
    """The run's DNS summary (DnsClient.summary): questions asked and answered, failing nameservers and why."""

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


class MailboxSink(Protocol):
    """Where the collect stage puts each tenant's mailboxes, a page at a time, as its adapter reads them."""

    def put(self, tenant: str, mailboxes: Sequence[Mailbox]) -> list[str]:
        """Keep a page; returns a problem for each address already kept for the tenant (the first stays)."""
        ...

    def drop(self, tenant: str) -> None:
        """Forget what a failed tenant sent: its mailboxes are unknown, not seen."""
        ...

    def domains(self, tenant: str, domains: Sequence[Domain]) -> None:
        """Keep a page of a tenant's domains as collected (a scan stages them while the DNS of others is awaited)."""
        ...


def listed_twice(address: str) -> str:
    """The problem of a mailbox an adapter sent twice for one tenant."""
    return f"{address} is listed twice by the provider; the first listing is kept"


class KeptMailboxes:
    """A sink that keeps every mailbox in memory, for ``collect`` callers that want the whole inventory."""

    def __init__(self) -> None:
        self.by_tenant: dict[str, dict[str, Mailbox]] = {}

    def put(self, tenant: str, mailboxes: Sequence[Mailbox]) -> list[str]:
        """Keep a page; a second mailbox with a kept address is a problem and is not kept."""
        kept = self.by_tenant.setdefault(tenant, {})
        problems = []
        for mailbox in mailboxes:
            if mailbox.address in kept:
                problems.append(listed_twice(mailbox.address))
            else:
                kept[mailbox.address] = mailbox
        return problems

    def drop(self, tenant: str) -> None:
        """Forget a tenant's mailboxes."""
        self.by_tenant.pop(tenant, None)

    def domains(self, tenant: str, domains: Sequence[Domain]) -> None:
        """Nothing to do: the inventory holds the domains."""


ADAPTERS = {
    "files": "scanner.adapters.files",
    "google": "scanner.adapters.google",
    "microsoft": "scanner.adapters.microsoft",
    "mailcow": "scanner.adapters.mailcow",
    "trekmail": "scanner.adapters.trekmail",
}
"""Provider name -> the module whose ``build(tenant, config)`` makes its adapter."""


POLICY_CONCURRENCY = 16
"""MTA-STS policies fetched at once in a run (split between the processes when two collect)."""


def policy_fetcher(config: Config, concurrency: int = POLICY_CONCURRENCY) -> PolicyFetcher:
    """The run's MTA-STS policy fetcher, from ``[mta_sts]``; a CA bundle that cannot be loaded is a config error."""
    try:
        return PolicyFetcher(port=config.mta_sts.port, ca_bundle=_ca_bundle(config), timeout=config.mta_sts.timeout,
                             concurrency=concurrency)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"{config.source}: mta_sts.ca_bundle: cannot load {_ca_bundle(config)} ({exc})") from None


def _ca_bundle(config: Config) -> Path | None:
    return config.resolve_path(Path(config.mta_sts.ca_bundle)) if config.mta_sts.ca_bundle else None


def dns_jobs(tenant: Tenant, config: Config) -> list[tuple[str, tuple[str, ...]]]:
    """A tenant's domains as DNS collects them: each name with the DKIM selectors asked there (none for a parked
    domain)."""
    selectors = {s for sender in tenant.senders for s in config.senders[sender].dkim_selectors}
    selectors.update(tenant.dkim_selectors)
    asked = tuple(sorted(selectors))
    return [(d, asked) for d in tenant.domains] + [(d, ()) for d in tenant.parked_domains]


class DomainFacts:
    """Each domain's DNS facts for the run: collected by this process, or by the second one (scanner/dns/helper.py)
    for the domains given to it, falling back to this one for any it did not send."""

    def __init__(self, client: DnsClient, policies: PolicyFetcher, helper: DnsHelper | None = None,
                 given: Mapping[tuple[str, str], int] | None = None) -> None:
        self.client = client
        self._policies = policies
        self.helper = helper
        self._given = given or {}

    async def collect(self, tenant: str, name: str, selectors: tuple[str, ...]) -> DnsFacts:
        """The facts of one of a tenant's domains."""
        index = self._given.get((tenant, name))
        if index is not None and self.helper is not None:
            facts = await self.helper.facts(index)
            if facts is not None:
                return facts
        return await self.client.collect_domain(name, selectors=selectors, policies=self._policies)


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


def missing_inputs(config: Config, only: Names[str] | None = None) -> list[str]:
    """One line per configured export directory or roster that is not there: the scan goes on, and the facts they
    would give are ``error`` for their tenant, but the operator should hear of it without ``-v``."""
    lines = []
    for tenant in config.tenants:
        if only is not None and tenant.name not in only:
            continue
        if tenant.provider == "files" and tenant.export is not None:
            directory = config.resolve_path(tenant.export)
            if not directory.is_dir():
                lines.append(f"tenant {tenant.name}: export directory {directory} does not exist "
                             f"({config.source}: tenants.export); its mailbox facts are error in this run")
        if tenant.roster is not None:
            roster = config.resolve_path(tenant.roster)
            if not roster.is_file():
                lines.append(f"tenant {tenant.name}: roster file {roster} does not exist "
                             f"({config.source}: tenants.roster); who left is unknown in this run")
    return lines


@dataclass
class _TenantResult:
    tenant: Tenant
    domains: list[Domain] = field(default_factory=list)
    mailboxes: int = 0
    people: tuple[Person, ...] = ()
    coverage: list[Coverage] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    failed: bool = False


async def _collect_tenant(
    tenant: Tenant,
    settings: TenantConfig,
    config: Config,
    domain_facts: DomainFacts,
    progress: Callable[[str], None],
    sink: MailboxSink,
) -> _TenantResult:
    result = _TenantResult(tenant)
    collected = Collected()

    async def emit(page: Sequence[Mailbox]) -> None:
        repeated = sink.put(tenant.name, page)
        result.problems.extend(repeated)
        result.mailboxes += len(page) - len(repeated)

    try:
        adapter = adapter_for(settings, config)
        if adapter is None:
            result.coverage += [
                Coverage(tenant.name, fact, FactState.UNSUPPORTED, "DNS-only tenant (no provider configured)")
                for fact in PROVIDER_FACTS
            ]
        else:
            collected = await adapter.collect(tenant, emit)
            offered = {c.fact for c in collected.coverage}
            result.coverage += collected.coverage
            result.coverage += [
                Coverage(tenant.name, fact, FactState.UNSUPPORTED, f"the {adapter.name} adapter does not offer it")
                for fact in PROVIDER_FACTS
                if fact not in offered
            ]
            result.problems += collected.problems
            result.notes += collected.notes
            result.tenant = provider_view(tenant, collected)
    except AdapterError as exc:
        result.failed = True
        result.problems.append(str(exc))
        result.coverage += [Coverage(tenant.name, fact, FactState.FAILED, str(exc)) for fact in PROVIDER_FACTS]
        sink.drop(tenant.name)
        result.mailboxes = 0
    if settings.roster is not None:
        try:
            roster = read_roster_file(config.resolve_path(settings.roster))
            result.people = roster.people
            result.problems += roster.problems
            everyone = next((why for who, why in roster.unknown if not who), "")
            if everyone:
                result.coverage.append(Coverage(tenant.name, Fact.ROSTER, FactState.FAILED, everyone))
            else:
                result.coverage.append(Coverage(tenant.name, Fact.ROSTER, FactState.COLLECTED))
            result.coverage += [Coverage(tenant.name, Fact.ROSTER, FactState.FAILED, why, who)
                                for who, why in roster.unknown if who]
        except AdapterError as exc:
            result.problems.append(str(exc))
            result.coverage.append(Coverage(tenant.name, Fact.ROSTER, FactState.FAILED, str(exc)))
    else:
        result.coverage.append(Coverage(tenant.name, Fact.ROSTER, FactState.UNSUPPORTED, "no roster configured"))
    jobs = dns_jobs(tenant, config)
    facts = await asyncio.gather(*(domain_facts.collect(tenant.name, name, selectors) for name, selectors in jobs))
    parked = len(tenant.domains)
    for i, ((name, _), dns_facts) in enumerate(zip(jobs, facts, strict=True)):
        result.domains.append(Domain(name, tenant.name, i >= parked, collected.catch_all.get(name), dns_facts))
        result.problems += dns_problems(name, dns_facts)
    # Kept a page at a time, letting the event loop answer the DNS of other tenants between pages; nothing is
    # awaited after the last, so a tenant timed out (its staging dropped) never has its domains kept after.
    for start in range(0, len(result.domains), DOMAIN_PAGE):
        if start:
            await asyncio.sleep(0)
        sink.domains(tenant.name, result.domains[start : start + DOMAIN_PAGE])
    progress(tenant.name)
    return result


DOMAIN_PAGE = 100
"""Domains a sink keeps at once (``MailboxSink.domains``): about 40 ms of a scan's staging."""


def provider_view(tenant: Tenant, collected: Collected) -> Tenant:
    """The tenant with the domains its provider reports as its own (internal everywhere, never DNS-scanned).

    When the adapter tried and failed to read them, the tenant says why instead, so a forward judged external
    against the configured domains alone can say so.
    """
    if collected.tenant_domains is not None:
        configured = {*tenant.domains, *tenant.parked_domains}
        extra = sorted({d.lower().rstrip(".") for d in collected.tenant_domains} - configured)
        return replace(tenant, provider_domains=tuple(extra), provider_domains_gap="")
    failed = [c.reason for c in collected.coverage
              if c.fact is Fact.TENANT_DOMAINS and c.state is FactState.FAILED and not c.subject]
    if failed:
        return replace(tenant, provider_domains_gap=failed[0])
    return tenant


def dns_problems(name: str, facts: DnsFacts) -> list[str]:
    """A tenant problem for a domain whose DNS questions went unanswered: the tenant is then ``partial``, so
    nothing the failed lookups hid is taken as removed or resolved (unknown is never a pass)."""
    failed = [a for a in facts.answers.values() if unreachable(a)]
    spf = facts.spf
    failed_spf = [f for f in (spf.failures if spf is not None else ()) if "timeout after" in f or "no nameserver" in f]
    if not failed and not failed_spf:
        return []
    reasons = list(dict.fromkeys([f"{a.name} {a.rdtype}: {a.error}" for a in failed] + failed_spf))
    shown = "; ".join(reasons[:3]) + (f"; … and {len(reasons) - 3} more" if len(reasons) > 3 else "")
    return [f"DNS: {len(reasons)} question(s) about {name} went unanswered ({shown})"]


async def _collect_unit(
    tenant: Tenant,
    settings: TenantConfig,
    config: Config,
    domain_facts: DomainFacts,
    progress: Callable[[str], None],
    slots: asyncio.Semaphore,
    sink: MailboxSink,
) -> tuple[_TenantResult, float]:
    """One unit of work: one tenant, within the scan's bounded parallelism and the per-tenant timeout.

    A tenant that exceeds ``[scan] tenant_timeout`` is failed with the reason; the others go on.
    """
    async with slots:
        started = time.monotonic()
        limit = config.scan.tenant_timeout
        try:
            result = await asyncio.wait_for(
                _collect_tenant(tenant, settings, config, domain_facts, progress, sink), timeout=limit
            )
        except TimeoutError:
            why = f"collection timed out after {limit:g} s ([scan] tenant_timeout)"
            sink.drop(tenant.name)
            result = _TenantResult(tenant, failed=True, problems=[why])
            result.coverage += [Coverage(tenant.name, fact, FactState.FAILED, why) for fact in PROVIDER_FACTS]
            result.coverage.append(Coverage(tenant.name, Fact.ROSTER, FactState.FAILED, why))
            progress(tenant.name)
        return result, time.monotonic() - started


async def collect(
    config: Config, *, progress: Callable[[str], None] = lambda name: None, only: Names[str] | None = None,
    sink: MailboxSink | None = None,
) -> Collection:
    """Collect each tenant as its own unit of work, at most ``[scan] tenant_concurrency`` at once, sharing one
    DNS client (and its cache) for the run.

    ``only`` names the tenants to collect (default: all). The inventory still lists every tenant of the
    config, so what is attributed to a tenant does not change with the selection; the outcomes, objects and
    coverage are those of the collected tenants alone.

    Mailboxes go to ``sink`` page by page as the adapters read them (a scan stores them); without one,
    they are kept in memory and the inventory holds them.
    """
    kept = KeptMailboxes() if sink is None else None
    sink = kept if sink is None else sink
    tenants = config.tenant_models()
    slots = asyncio.Semaphore(config.scan.tenant_concurrency)
    chosen = [
        (t, s) for t, s in zip(tenants, config.tenants, strict=True) if only is None or t.name in only
    ]
    jobs = [(t.name, job) for t, _ in chosen for job in dns_jobs(t, config)]
    split = worth_splitting(len(jobs))
    domain_facts = _domain_facts(config, jobs if split else [])
    helper = domain_facts.helper
    try:
        units = await asyncio.gather(
            *(_collect_unit(t, s, config, domain_facts, progress, slots, sink) for t, s in chosen)
        )
        theirs = await helper.summary() if helper is not None else None
    finally:
        if helper is not None:
            helper.stop()
    results = [r for r, _ in units]
    outcomes = []
    for r, seconds in units:
        state = "failed" if r.failed else ("partial" if r.problems else "complete")
        for problem in r.problems:
            log.warning("tenant %s: %s", r.tenant.name, problem, extra={"tenant": r.tenant.name})
        outcomes.append(
            TenantOutcome(r.tenant.name, state, tuple(r.problems), r.mailboxes, len(r.domains), round(seconds, 3),
                          tuple(r.notes))
        )
    viewed = {r.tenant.name: r.tenant for r in results}
    tenants = tuple(viewed.get(t.name, t) for t in tenants)
    mailboxes = tuple(m for r in results for m in (kept.by_tenant.get(r.tenant.name, {}).values() if kept else ()))
    index: dict[str, Mailbox] = {}
    for mailbox in mailboxes:
        index.setdefault(mailbox.address, mailbox)
    inventory = Inventory(
        tenants=tenants,
        domains=tuple(d for r in results for d in r.domains),
        mailboxes=mailboxes,
        lookup=index.get if kept else None,
        people={r.tenant.name: r.people for r in results},
        exceptions=config.exception_models(),
        coverage=tuple(c for r in results for c in r.coverage),
    )
    summary = merged_summary(domain_facts.client.summary(), theirs)
    return Collection(inventory, tuple(outcomes), int(summary["questions"]), summary)


def _domain_facts(config: Config, jobs: Sequence[tuple[str, tuple[str, tuple[str, ...]]]]) -> DomainFacts:
    """How the run collects its domains' DNS: here alone, or with every other one of ``jobs`` (tenant, job) given
    to a second process, each with half of the configured concurrency."""
    if not jobs:
        return DomainFacts(DnsClient(config.dns.nameservers, timeout=config.dns.timeout,
                                     concurrency=config.dns.concurrency), policy_fetcher(config))
    theirs = config.dns.concurrency // 2 or 1
    ours = max(config.dns.concurrency - theirs, 1)
    policies = policy_fetcher(config, POLICY_CONCURRENCY // 2)  # a CA bundle that cannot be loaded fails here first
    given = jobs[1::2]
    settings = HelperSettings(tuple(config.dns.nameservers), config.dns.timeout, theirs, config.mta_sts.port,
                              _ca_bundle(config), config.mta_sts.timeout, POLICY_CONCURRENCY // 2)
    helper = DnsHelper(settings, [job for _, job in given])
    return DomainFacts(DnsClient(config.dns.nameservers, timeout=config.dns.timeout, concurrency=ours), policies,
                       helper, {(tenant, name): i for i, (tenant, (name, _)) in enumerate(given)})

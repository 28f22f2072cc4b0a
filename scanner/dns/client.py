"""DNS collection: concurrent, bounded, one query per name and type per run, failures kept apart from absence."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Iterable

import dns.nameserver
import dns.resolver
from scanner.dns.dmarc import discover, report_domains, single_record, walk_stops, walk_targets
from scanner.dns.wire import WireResolver
from scanner.model import DnsAnswer, DnsFacts, Outcome
from scanner.dns.mtasts import PolicyFetcher, sts_records
from scanner.dns.spf import SpfEvaluation, evaluate_spf

# Bounds the lookups a hostile DMARC record can cause; RFC 9990 §3 lets receivers cap destinations too.
MAX_REPORT_DESTINATIONS = 10


def unreachable(answer: DnsAnswer) -> bool:
    """True when DNS itself failed the question (timeout, SERVFAIL, REFUSED, unreachable), as opposed to an
    answer that is a failure of the zone's own making (a CNAME loop) or a lookup the scanner chose not to make."""
    return answer.failed and (answer.error or "").startswith(("timeout after", "no nameserver answered"))


def parse_nameserver(entry: str) -> dns.nameserver.Do53Nameserver:
    """A nameserver from config: ``IP`` or ``IP:PORT`` (IPv6 as ``[IP]:PORT``)."""
    if entry.startswith("["):
        host, _, port = entry[1:].partition("]:")
        return dns.nameserver.Do53Nameserver(host.rstrip("]"), int(port or 53))
    if entry.count(":") == 1:
        host, _, port = entry.partition(":")
        return dns.nameserver.Do53Nameserver(host, int(port))
    return dns.nameserver.Do53Nameserver(entry, 53)


class _Slots:
    """At most ``size`` holders at once, served first come first served.

    asyncio.Semaphore rescans its queue of waiters on every release, which with a portfolio's tens of
    thousands of queued questions costs more than the questions; this hands a freed slot to the next
    waiter directly.
    """

    def __init__(self, size: int) -> None:
        self._free = size
        self._waiting: collections.deque[asyncio.Future[None]] = collections.deque()

    async def __aenter__(self) -> None:
        if self._free > 0 and not self._waiting:
            self._free -= 1
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiting.append(waiter)
        try:
            await waiter  # the holder that left handed its slot over
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._release()  # handed over, but this waiter is gone: pass it on
            raise

    async def __aexit__(self, *exc: object) -> None:
        self._release()

    def _release(self) -> None:
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._free += 1


class DnsClient:
    """Looks names up through one resolver, with bounded concurrency and a per-run cache."""

    def __init__(self, nameservers: Iterable[str] = (), *, timeout: float = 3.0, concurrency: int = 64) -> None:
        servers = [parse_nameserver(n) for n in nameservers]
        if not servers:  # the system resolver's nameservers, from /etc/resolv.conf
            system = dns.resolver.Resolver()
            servers = [dns.nameserver.Do53Nameserver(str(n), system.port) for n in system.nameservers]
        # One attempt may not use the whole lifetime, so a lost packet is retried (bounded by the lifetime).
        self._wire = WireResolver([(s.address, s.port) for s in servers], lifetime=timeout,
                                  attempt=max(timeout / 3, 0.2))
        self._limit = _Slots(concurrency)
        self._domains = _Slots(concurrency)
        self._cache: dict[tuple[str, str], asyncio.Future[DnsAnswer]] = {}
        self.queries = 0
        self.unanswered = 0  # questions whose every attempt failed (timeout, SERVFAIL, REFUSED, unreachable)

    @property
    def wire_queries(self) -> int:
        """Queries put on the wire so far: UDP datagrams and TCP queries, retries included."""
        return self._wire.sent

    async def lookup(self, name: str, rdtype: str) -> DnsAnswer:
        """The answer for ``name``/``rdtype``; the same question is asked at most once per client."""
        return await self.ask(name, rdtype)

    def ask(self, name: str, rdtype: str) -> asyncio.Future[DnsAnswer]:
        """The task answering ``name``/``rdtype``, shared by everyone who asks it (inside a running loop).

        Awaiting or gathering it directly costs no further coroutine or task, which matters across thousands
        of domains; ``lookup`` is the same for callers who want a coroutine.
        """
        key = (name.lower().rstrip("."), rdtype.upper())
        task = self._cache.get(key)
        if task is not None and task.get_loop() is not (loop := asyncio.get_running_loop()):
            # Asked in an earlier event loop (the client outlived an asyncio.run): reuse a finished answer
            # on this loop; a question that loop dropped unanswered is asked again.
            if task.done() and not task.cancelled():
                answer = task.result()
                task = self._cache[key] = loop.create_future()
                task.set_result(answer)
            else:
                task = None
        if task is None or task.cancelled():  # a question whose every asker gave up is asked anew
            task = asyncio.ensure_future(self._query(*key))
            self._cache[key] = task
        return task

    async def _query(self, name: str, rdtype: str) -> DnsAnswer:
        async with self._limit:
            self.queries += 1
            answer = await self._wire.resolve(name, rdtype)
        if unreachable(answer):
            self.unanswered += 1
        return answer

    def summary(self) -> dict[str, object]:
        """The run's DNS in figures: questions asked and answered, and each nameserver that failed and why."""
        return {
            "questions": self.queries,
            "answered": self.queries - self.unanswered,
            "unanswered": self.unanswered,
            "nameservers": {server: dict(sorted(reasons.items()))
                            for server, reasons in sorted(self._wire.server_failures.items())},
        }

    async def collect_domain(
        self, name: str, *, selectors: Iterable[str] = (), policies: PolicyFetcher | None = None
    ) -> DnsFacts:
        """What DNS says about one domain's mail: MX, apex TXT, DMARC, DKIM, MTA-STS (and its policy), TLS-RPT."""
        # As many domains in flight as questions may be: enough to keep every query slot busy, while the
        # rest of a large portfolio waits unstarted (no thousands of half-done collections held in memory).
        async with self._domains:
            answers, spf = await self._collect_records(name, sorted(set(selectors)))
        # RFC 8461 §3.3: the policy is fetched only when the domain announces one. The fetch waits for its own
        # slot (PolicyFetcher bounds them) without holding up the DNS of the domains behind this one.
        announced = policies is not None and sts_records(answers["mta_sts"])
        mta_sts_policy = await policies.fetch_policy(name, self) if policies is not None and announced else None
        return DnsFacts(answers, spf=spf, mta_sts_policy=mta_sts_policy)

    async def _collect_records(self, name: str, selectors: list[str]) -> tuple[dict[str, DnsAnswer], SpfEvaluation]:
        """Every record of the domain (and the SPF evaluation through its includes), the MTA-STS policy aside."""
        mx, txt, dmarc, mta_sts, tlsrpt = await asyncio.gather(
            self.ask(name, "MX"),
            self.ask(name, "TXT"),
            self.ask(f"_dmarc.{name}", "TXT"),
            self.ask(f"_mta-sts.{name}", "TXT"),  # RFC 8461 §3.1
            self.ask(f"_smtp._tls.{name}", "TXT"),  # RFC 8460 §3
        )
        answers = {"mx": mx, "txt": txt, "dmarc": dmarc, "mta_sts": mta_sts, "tlsrpt": tlsrpt}

        async def dmarc_and_report_destinations() -> None:
            # RFC 9989 §4.10: walk up from the domain, one _dmarc question per level, until psd= stops it.
            walk: dict[str, DnsAnswer] = {name: dmarc}
            if not dmarc.failed and not walk_stops(single_record(dmarc), first=True):
                for target in walk_targets(name):
                    step = answers[f"dmarc_walk:{target}"] = walk[target] = await self.ask(f"_dmarc.{target}", "TXT")
                    if step.failed or walk_stops(single_record(step), first=False):
                        break
            discovery = discover(name, walk.get)
            if discovery.org_domain is None:
                return  # the walk failed: which destinations are outside is unknown (the checks say so)
            applied = discovery.policy
            if applied is None:
                return
            owner = applied[0]
            published = walk[owner]
            # RFC 9990 §3 (RFC 7489 §7.1): a destination outside the Organizational Domain must authorize the
            # domain that published the policy. Inside means at or below it: an Organizational Domain is always
            # an ancestor (or the name itself), so nothing outside that subtree can share it.
            org = discovery.org_domain
            outside = [d for d in report_domains(published.records) if d != org and not d.endswith("." + org)]
            checked = outside[:MAX_REPORT_DESTINATIONS]
            found = await asyncio.gather(*(self.ask(f"{owner}._report._dmarc.{d}", "TXT") for d in checked))
            answers.update({f"rua_auth:{d}": a for d, a in zip(checked, found, strict=True)})
            for skipped in outside[MAX_REPORT_DESTINATIONS:]:
                answers[f"rua_auth:{skipped}"] = DnsAnswer(
                    f"{owner}._report._dmarc.{skipped}", "TXT", Outcome.FAILED,
                    error=f"not looked up: only {MAX_REPORT_DESTINATIONS} outside report destinations are checked",
                )

        async def closest_parent_zone() -> None:
            # The apex does not exist (domain.nxdomain): the SOA of the closest existing parent zone tells the
            # operator where the name should have been delegated (a lapsed registration, a typo).
            labels = name.split(".")
            for start in range(1, len(labels)):
                soa = await self.ask(".".join(labels[start:]), "SOA")
                if soa.outcome is Outcome.ANSWER or soa.failed:
                    answers["parent_soa"] = soa
                    return

        nxdomain = Outcome.NXDOMAIN in (mx.outcome, txt.outcome)
        spf, dkim, *_ = await asyncio.gather(
            evaluate_spf(self, name, txt),
            asyncio.gather(*(self.ask(f"{s}._domainkey.{name}", "TXT") for s in selectors)),
            dmarc_and_report_destinations(),
            *([closest_parent_zone()] if nxdomain else []),  # no task for the domains that exist
        )
        answers.update({f"dkim:{s}": a for s, a in zip(selectors, dkim, strict=True)})
        return answers, spf


"""A large portfolio's DNS collected by two processes (scanner/dns/helper.py): the same facts as one process
collects, each domain collected once, nothing lost when the second process ends early."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

import scanner.dns.helper as helper
from scanner.collect import collect
from scanner.config import load_config
from scanner.dns.client import DnsClient
from scanner.dns.helper import DnsHelper, merged_summary

DOMAINS = [f"d{i}.example" for i in range(12)]
KEY = "v=DKIM1; k=ed25519; p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="


@pytest.fixture
def estate(dns_server, add_zone, write_config) -> Path:
    """Twelve domains in two tenants, each with its own SPF, DMARC and DKIM, one whose DMARC question times out."""
    for i, name in enumerate(DOMAINS):
        dmarc = "" if i == 5 else f'_dmarc TXT "v=DMARC1; p={"reject" if i % 2 else "none"}"\n'
        add_zone(name, f'@ MX 10 mx.{name}.\n@ TXT "v=spf1 ip4:192.0.2.{i} include:spf.d{(i + 1) % 12}.example -all"\n'
                       f'spf TXT "v=spf1 ip4:198.51.100.{i} -all"\n{dmarc}'
                       f'sel{i % 3}._domainkey TXT "{KEY}"\n')
    dns_server.timeout_names.add("_dmarc.d7.example")
    tenants = "".join(f'[[tenants]]\nname = "t{t}"\ndomains = {DOMAINS[t * 6:(t + 1) * 6]!r}\n'
                      f'dkim_selectors = ["sel0", "sel1", "sel2"]\n'.replace("'", '"') for t in range(2))
    return write_config(f'[dns]\nnameservers = ["{dns_server.nameserver}"]\ntimeout = 0.6\n{tenants}')


@pytest.fixture
def collected_here(monkeypatch) -> list[str]:
    """The domains this process collects itself (the second process is a fresh interpreter, not patched)."""
    names: list[str] = []
    original = DnsClient.collect_domain

    async def spied(self, name, **kwargs):
        names.append(name)
        return await original(self, name, **kwargs)

    monkeypatch.setattr(DnsClient, "collect_domain", spied)
    return names


def _collect(path: Path, monkeypatch, split: bool):
    monkeypatch.setattr(helper, "SPLIT_FROM", 1 if split else 10**9)
    return asyncio.run(collect(load_config(path)))


def test_two_processes_collect_what_one_does(estate, monkeypatch, collected_here) -> None:
    alone = _collect(estate, monkeypatch, split=False)
    assert sorted(collected_here) == sorted(DOMAINS)
    collected_here.clear()
    split = _collect(estate, monkeypatch, split=True)
    assert split.inventory.domains == alone.inventory.domains
    assert [(o.tenant, o.state, o.problems) for o in split.outcomes] == [
        (o.tenant, o.state, o.problems) for o in alone.outcomes]
    assert alone.outcomes[1].state == "partial"  # d7's DMARC went unanswered, in either process
    # Every other domain was the second process's: this one collected only the rest, each once.
    assert sorted(collected_here) == sorted(DOMAINS[0::2])
    # The summary adds up both processes' questions (d7's unanswered one is asked by one of them only).
    assert split.dns["unanswered"] == alone.dns["unanswered"] == 1
    assert split.dns_queries == split.dns["questions"] >= alone.dns["questions"]
    assert split.dns["nameservers"] == alone.dns["nameservers"]


def test_a_second_process_that_ends_early_loses_nothing(estate, monkeypatch, collected_here, caplog) -> None:
    alone = _collect(estate, monkeypatch, split=False)
    collected_here.clear()
    started = DnsHelper.__init__

    def killed_at_once(self, settings, jobs):
        started(self, settings, jobs)
        self._process.kill()

    monkeypatch.setattr(DnsHelper, "__init__", killed_at_once)
    with caplog.at_level(logging.WARNING, logger="scanner.dns.helper"):
        split = _collect(estate, monkeypatch, split=True)
    assert split.inventory.domains == alone.inventory.domains
    assert sorted(collected_here) == sorted(DOMAINS)  # this process collected what the other did not send
    assert "ended early" in caplog.text and "this one collects the rest" in caplog.text


def test_a_stopped_collection_stops_the_second_process(estate, dns_server, monkeypatch) -> None:
    monkeypatch.setattr(helper, "SPLIT_FROM", 1)
    made: list[DnsHelper] = []
    started = DnsHelper.__init__

    def kept(self, settings, jobs):
        started(self, settings, jobs)
        made.append(self)

    monkeypatch.setattr(DnsHelper, "__init__", kept)
    dns_server.delay = 0.5  # every answer late: the collection is still running when it is stopped

    async def stopped() -> None:
        task = asyncio.ensure_future(collect(load_config(estate)))
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(stopped())
    assert len(made) == 1 and not made[0]._process.is_alive() and made[0]._process.exitcode is not None


def test_small_portfolios_are_collected_in_one_process(estate, monkeypatch, collected_here) -> None:
    assert helper.SPLIT_FROM > len(DOMAINS)
    asyncio.run(collect(load_config(estate)))
    assert sorted(collected_here) == sorted(DOMAINS)


def test_summaries_add_up_by_nameserver_and_reason() -> None:
    ours = {"questions": 10, "answered": 9, "unanswered": 1, "nameservers": {"127.0.0.1:53": {"timeout": 2}}}
    theirs = {"questions": 7, "answered": 6, "unanswered": 1,
              "nameservers": {"127.0.0.1:53": {"timeout": 1, "SERVFAIL": 1}, "127.0.0.2:53": {"REFUSED": 3}}}
    assert merged_summary(ours, theirs) == {
        "questions": 17, "answered": 15, "unanswered": 2,
        "nameservers": {"127.0.0.1:53": {"SERVFAIL": 1, "timeout": 3}, "127.0.0.2:53": {"REFUSED": 3}},
    }
    assert merged_summary(ours, None) == ours

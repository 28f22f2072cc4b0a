"""DNS collection over real DNS on loopback: answers, definite absence, failure, and one query per question."""

from __future__ import annotations

import asyncio

from scanner.dns.client import DnsClient, parse_nameserver
from scanner.model import Outcome


def _client(server) -> DnsClient:
    return DnsClient([server.nameserver], timeout=0.6)


def test_answer_absence_and_failure_are_kept_apart(dns_server, add_zone) -> None:
    add_zone("a.example", '@ MX 10 mx.a.example.\nmx A 127.0.0.25\n@ TXT "v=spf1 -all"')
    dns_server.servfail_names.add("bad.a.example")
    client = _client(dns_server)

    async def run() -> list:
        return await asyncio.gather(
            client.lookup("a.example", "MX"), client.lookup("nope.a.example", "TXT"),
            client.lookup("mx.a.example", "TXT"), client.lookup("bad.a.example", "TXT"),
        )

    mx, nx, nodata, failed = asyncio.run(run())
    assert mx.outcome is Outcome.ANSWER and mx.records == ("10 mx.a.example.",)
    assert nx.outcome is Outcome.NXDOMAIN
    assert nodata.outcome is Outcome.NODATA
    assert failed.outcome is Outcome.FAILED and "SERVFAIL" in (failed.error or "")


def test_long_txt_is_joined_and_fetched_over_tcp(dns_server, add_zone) -> None:
    chunks = " ".join(f'"{str(i % 10) * 255}"' for i in range(40))  # ~10 KB: truncated over UDP, retried over TCP
    add_zone("big.example", f"@ TXT {chunks}")
    answer = asyncio.run(_client(dns_server).lookup("big.example", "TXT"))
    assert answer.outcome is Outcome.ANSWER
    assert len(answer.records[0]) == 40 * 255


def test_each_question_is_asked_once_per_run(dns_server, add_zone) -> None:
    add_zone("a.example", '_dmarc TXT "v=DMARC1; p=reject"')
    client = _client(dns_server)

    async def run() -> None:
        await asyncio.gather(*(client.collect_domain("a.example") for _ in range(5)))

    asyncio.run(run())
    # MX, TXT, _dmarc, _mta-sts and _smtp._tls TXT, and the tree walk's _dmarc.example (RFC 9989 §4.10), however
    # many times they were asked for
    assert client.queries == 6


def test_nameserver_entries() -> None:
    assert (parse_nameserver("127.0.0.1:5353").address, parse_nameserver("127.0.0.1:5353").port) == ("127.0.0.1", 5353)
    assert parse_nameserver("::1").port == 53
    assert (parse_nameserver("[::1]:5300").address, parse_nameserver("[::1]:5300").port) == ("::1", 5300)


def test_outside_report_destinations_are_looked_up_under_the_policy_domain(dns_server, add_zone) -> None:
    add_zone("org.example", '_dmarc TXT "v=DMARC1; p=reject; rua=mailto:a@org.example,mailto:b@rep.test; '
                            'ruf=mailto:c@x.org.example,mailto:d@REP.test,mailto:e@other.test"\nmail A 127.0.0.9')
    add_zone("rep.test", 'org.example._report._dmarc TXT "v=DMARC1"')
    add_zone("other.test", "")
    client = _client(dns_server)
    own = asyncio.run(client.collect_domain("org.example"))
    inherited = asyncio.run(client.collect_domain("mail.org.example"))
    for facts in (own, inherited):
        auth = {k: v for k, v in facts.answers.items() if k.startswith("rua_auth:")}
        assert sorted(auth) == ["rua_auth:other.test", "rua_auth:rep.test"]  # same-organization destinations skipped
        assert auth["rua_auth:rep.test"].name == "org.example._report._dmarc.rep.test"  # RFC 9990 §3
        assert auth["rua_auth:rep.test"].outcome is Outcome.ANSWER
        assert auth["rua_auth:other.test"].outcome is Outcome.NXDOMAIN
    # Five base lookups per domain (MX, TXT, _dmarc, _mta-sts, _smtp._tls) plus two authorizations and the tree
    # walk's _dmarc.example; the subdomain reuses the cached organizational record, walk and both authorizations.
    assert client.queries == 5 + 2 + 1 + 5

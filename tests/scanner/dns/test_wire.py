"""The DnsClient's own transport: replies matched by id and question, retries, nameserver failover, bad replies."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable, Iterator

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from scanner.dns.client import DnsClient
from scanner.dns.wire import CnameLoop, _Question, parse_reply
from scanner.model import Outcome

Handler = Callable[[dns.message.Message, int], list[bytes]]


class _Server:
    """A UDP nameserver on loopback whose replies a test scripts: query and its number -> datagrams to send."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.queries: list[dns.message.Message] = []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.05)
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def nameserver(self) -> str:
        return f"127.0.0.1:{self.sock.getsockname()[1]}"

    def _serve(self) -> None:
        while not self.stopping.is_set():
            try:
                data, peer = self.sock.recvfrom(65535)
            except TimeoutError:
                continue
            query = dns.message.from_wire(data)
            self.queries.append(query)
            for reply in self.handler(query, len(self.queries)):
                self.sock.sendto(reply, peer)


@pytest.fixture
def serve() -> Iterator[Callable[[Handler], _Server]]:
    servers: list[_Server] = []

    def start(handler: Handler) -> _Server:
        server = _Server(handler)
        server.thread.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stopping.set()
        server.thread.join(timeout=2)
        server.sock.close()


def _answer(query: dns.message.Message, *records: str, rcode: int = dns.rcode.NOERROR) -> bytes:
    response = dns.message.make_response(query)
    response.set_rcode(rcode)
    question = query.question[0]
    for text in records:
        response.answer.append(dns.rrset.from_text(question.name, 300, "IN", question.rdtype, text))
    return response.to_wire()


def _ask(client: DnsClient, name: str = "a.example", rdtype: str = "TXT"):
    return asyncio.run(client.lookup(name, rdtype))


def test_a_reply_for_another_question_is_ignored_and_the_real_one_taken(serve) -> None:
    def handler(query: dns.message.Message, _: int) -> list[bytes]:
        forged = dns.message.make_query("evil.example", "TXT")
        forged.id = query.id  # right id, wrong question (RFC 5452 §9.1): must not be accepted
        forged_reply = dns.message.make_response(forged)
        forged_reply.answer.append(dns.rrset.from_text("evil.example.", 300, "IN", "TXT", '"v=spf1 +all"'))
        return [forged_reply.to_wire(), _answer(query, '"v=spf1 -all"')]

    server = serve(handler)
    client = DnsClient([server.nameserver], timeout=1.0)
    answer = _ask(client)
    assert answer.outcome is Outcome.ANSWER and answer.records == ("v=spf1 -all",)
    assert client.wire_queries == 1


def test_each_query_carries_a_random_id_and_edns(serve) -> None:
    server = serve(lambda query, _: [_answer(query, '"x"')])
    client = DnsClient([server.nameserver], timeout=1.0)

    async def run() -> None:
        await asyncio.gather(*(client.lookup(f"n{i}.example", "TXT") for i in range(40)))

    asyncio.run(run())
    ids = [q.id for q in server.queries]
    assert len(set(ids)) > 30  # 16 random bits each: a few collisions at most, never a counter
    assert ids != sorted(ids)
    assert all(q.edns == 0 and q.payload == 1232 and q.flags & dns.flags.RD for q in server.queries)


def test_a_lost_datagram_is_asked_again_within_the_lifetime(serve) -> None:
    server = serve(lambda query, number: [] if number == 1 else [_answer(query, '"v=spf1 -all"')])
    client = DnsClient([server.nameserver], timeout=0.9)  # attempts of 0.3 s
    started = time.monotonic()
    answer = _ask(client)
    assert answer.outcome is Outcome.ANSWER and answer.records == ("v=spf1 -all",)
    assert client.wire_queries == 2 and server.queries[0].id != server.queries[1].id
    assert time.monotonic() - started < 0.9


def test_silence_is_a_timeout_after_the_lifetime(serve) -> None:
    server = serve(lambda query, _: [])
    client = DnsClient([server.nameserver], timeout=0.6)
    started = time.monotonic()
    answer = _ask(client)
    assert answer.outcome is Outcome.FAILED and answer.error == "timeout after 0.6s"
    assert 0.55 < time.monotonic() - started < 1.5
    assert client.wire_queries >= 2  # retried, never more than the lifetime allows


def test_servfail_moves_to_the_next_nameserver(serve) -> None:
    failing = serve(lambda query, _: [_answer(query, rcode=dns.rcode.SERVFAIL)])
    working = serve(lambda query, _: [_answer(query, '"v=spf1 -all"')])
    answer = _ask(DnsClient([failing.nameserver, working.nameserver], timeout=1.0))
    assert answer.outcome is Outcome.ANSWER
    both = _ask(DnsClient([failing.nameserver, failing.nameserver], timeout=1.0))
    assert both.outcome is Outcome.FAILED and both.error == "no nameserver answered: SERVFAIL"


def test_refused_and_malformed_replies_are_failures_not_absence(serve) -> None:
    refused = serve(lambda query, _: [_answer(query, rcode=dns.rcode.REFUSED)])
    answer = _ask(DnsClient([refused.nameserver], timeout=1.0))
    assert answer.outcome is Outcome.FAILED and "REFUSED" in (answer.error or "")
    junk = serve(lambda query, _: [_answer(query, '"v=spf1 -all"') + b"\x00\x01"])
    answer = _ask(DnsClient([junk.nameserver], timeout=1.0))
    assert answer.outcome is Outcome.FAILED and (answer.error or "").startswith("no nameserver answered")
    short = serve(lambda query, _: [_answer(query, '"v=spf1 -all"')[:-3]])
    answer = _ask(DnsClient([short.nameserver], timeout=1.0))
    assert answer.outcome is Outcome.FAILED and (answer.error or "").startswith("no nameserver answered")


def test_nothing_listening_fails_fast() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again: ICMP port unreachable answers the query
    started = time.monotonic()
    answer = _ask(DnsClient([f"127.0.0.1:{port}"], timeout=2.0))
    assert answer.outcome is Outcome.FAILED and "refused" in (answer.error or "").lower()
    assert time.monotonic() - started < 1.0


def test_a_name_dnspython_rejects_is_a_failure_with_its_reason() -> None:
    answer = _ask(DnsClient(["127.0.0.1:9"], timeout=0.5), "x" * 64 + ".example")
    assert answer.outcome is Outcome.FAILED and (answer.error or "").startswith("LabelTooLong")


def test_escaped_names_go_on_the_wire_as_dnspython_writes_them(serve) -> None:
    server = serve(lambda query, _: [_answer(query, '"ok"')])
    answer = _ask(DnsClient([server.nameserver], timeout=1.0), r"a\.b.example")
    assert answer.outcome is Outcome.ANSWER and server.queries[0].question[0].name.labels[0] == b"a.b"


def _parse(response: dns.message.Message | bytes) -> tuple[int, list[str] | None]:
    """What parse_reply and the chain make of a reply to ``a.example TXT``, as (rcode, records)."""
    question = _Question("a.example", dns.rdatatype.TXT, b"\x01a\x07example\x00\x00\x10\x00\x01")
    reply = parse_reply(response if isinstance(response, bytes) else response.to_wire(), question)
    answer, _ = reply.chain(question.owner, question.rdtype)
    return reply.rcode, None if answer is None else [b"".join(r).decode() for r in answer]  # type: ignore[arg-type]


def test_reply_parsing_follows_cnames_and_keeps_records_a_set() -> None:
    query = dns.message.make_query("a.example", "TXT", use_edns=0)
    response = dns.message.make_response(query)
    response.answer.append(dns.rrset.from_text("a.example.", 300, "IN", "CNAME", "B.Example."))
    response.answer.append(dns.rrset.from_text("b.example.", 300, "IN", "TXT", '"one" "two"', '"three"'))
    response.answer.append(dns.rrset.from_text("c.example.", 300, "IN", "TXT", '"elsewhere"'))
    wire = response.to_wire()  # dnspython shuffles an RRset's records as it writes them
    rcode, records = _parse(wire)
    expected = dns.message.from_wire(wire).resolve_chaining().answer
    assert rcode == dns.rcode.NOERROR and records == [b"".join(r.strings).decode() for r in expected]
    assert sorted(records) == ["onetwo", "three"]
    duplicated = dns.message.make_response(query)
    duplicated.answer.append(dns.rrset.from_text("a.example.", 300, "IN", "TXT", '"x"'))
    duplicated.answer.append(dns.rrset.from_text("a.example.", 300, "IN", "TXT", '"x"', '"y"'))
    assert _parse(duplicated) == (dns.rcode.NOERROR, ["x", "y"])
    assert dns.message.from_wire(duplicated.to_wire()).resolve_chaining().answer is not None  # same as dnspython


def test_reply_parsing_raises_as_dnspython_does() -> None:
    query = dns.message.make_query("a.example", "TXT", use_edns=0)
    loop = dns.message.make_response(query)
    loop.answer.append(dns.rrset.from_text("a.example.", 300, "IN", "CNAME", "b.example."))
    loop.answer.append(dns.rrset.from_text("b.example.", 300, "IN", "CNAME", "a.example."))
    with pytest.raises(CnameLoop, match="CNAME loop: a.example -> b.example -> a.example"):
        _parse(loop)
    nx = dns.message.make_response(query)
    nx.set_rcode(dns.rcode.NXDOMAIN)
    nx.answer.append(dns.rrset.from_text("a.example.", 300, "IN", "TXT", '"x"'))
    with pytest.raises(dns.message.AnswerForNXDOMAIN):
        _parse(nx)
    badvers = dns.message.make_response(query)
    badvers.set_rcode(dns.rcode.BADVERS)  # lives partly in the OPT record (RFC 6891 §6.1.3)
    assert _parse(badvers) == (dns.rcode.BADVERS, None)


def test_a_cancelled_waiter_passes_its_slot_on(serve) -> None:
    server = serve(lambda query, _: [_answer(query, '"x"')])
    client = DnsClient([server.nameserver], timeout=1.0, concurrency=1)

    async def run() -> list[Outcome]:
        first = asyncio.ensure_future(client.lookup("one.example", "TXT"))
        second = asyncio.ensure_future(client.lookup("two.example", "TXT"))
        third = asyncio.ensure_future(client.lookup("three.example", "TXT"))
        await asyncio.sleep(0)
        second.cancel()
        outcomes = [(await first).outcome, (await third).outcome]
        again = await client.lookup("two.example", "TXT")  # a question dropped by a cancelled caller is asked anew
        return [*outcomes, again.outcome]

    assert asyncio.run(run()) == [Outcome.ANSWER, Outcome.ANSWER, Outcome.ANSWER]


def test_a_cname_whose_target_the_reply_lacks_is_followed(dns_server, add_zone) -> None:
    # An authoritative server answers a CNAME into another zone without the target's records (RFC 1034 §4.3.2):
    # the client asks for the target itself, so the answer is the same as through a recursive resolver.
    add_zone("acme.example", 'selector1._domainkey CNAME selector1-acme._domainkey.sender.test.')
    add_zone("sender.test", 'selector1-acme._domainkey TXT "v=DKIM1; k=rsa; p=AAAA"')
    dns_server.chase_across_zones = False
    answer = _ask(DnsClient([dns_server.nameserver], timeout=1.0), "selector1._domainkey.acme.example")
    assert answer.outcome is Outcome.ANSWER and answer.records == ("v=DKIM1; k=rsa; p=AAAA",)
    assert answer.name == "selector1._domainkey.acme.example"


def test_a_cname_loop_across_zones_is_a_failure_naming_the_loop(dns_server, add_zone) -> None:
    add_zone("acme.example", "a CNAME b.other.test.")
    add_zone("other.test", "b CNAME a.acme.example.")
    dns_server.chase_across_zones = False
    answer = _ask(DnsClient([dns_server.nameserver], timeout=1.0), "a.acme.example")
    assert answer.outcome is Outcome.FAILED
    assert answer.error == "CNAME loop: a.acme.example -> b.other.test -> a.acme.example"


def test_a_cname_chain_of_more_than_eight_links_is_a_failure(dns_server, add_zone) -> None:
    # Nine links, each into the other zone, so every link is a question of its own.
    add_zone("one.example", "\n".join(f"l{i} CNAME l{i + 1}.two.test." for i in range(0, 10, 2)))
    add_zone("two.test", "\n".join(f"l{i} CNAME l{i + 1}.one.example." for i in range(1, 9, 2)) + '\nl9 TXT "end"')
    dns_server.chase_across_zones = False
    client = DnsClient([dns_server.nameserver], timeout=1.0)
    answer = _ask(client, "l0.one.example")
    assert answer.outcome is Outcome.FAILED and "longer than 8 links" in (answer.error or "")
    dns_server.chase_across_zones = True
    assert _ask(DnsClient([dns_server.nameserver], timeout=1.0), "l1.two.test").records == ("end",)

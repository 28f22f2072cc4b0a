"""Tests for scanner/loopback/zoneserver.py over the real DNS wire protocol on loopback."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import dns.asyncquery
import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import dns.resolver
import dns.zone
import pytest

from scanner.loopback.zoneserver import ZoneServer, load_zone_file

EXAMPLE = """
$TTL 300
@               IN SOA   ns hostmaster 1 7200 3600 1209600 60
@               IN NS    ns
@               IN A     127.0.0.10
@               IN MX    10 mx
@               IN TXT   "v=spf1 ip4:127.0.0.10 -all"
mx              IN A     127.0.0.11
www             IN CNAME @
alias           IN CNAME www.other.test.
loop1           IN CNAME loop2
loop2           IN CNAME loop1
dangling        IN CNAME gone.outside.invalid.
sel._domainkey  IN TXT   "v=DKIM1; k=rsa; p=MIIB"
*.wild          IN TXT   "wildcard"
"""
OTHER = """
$TTL 300
@     IN SOA ns hostmaster 1 7200 3600 1209600 60
@     IN NS  ns
www   IN A   127.0.0.20
"""
BIG_STRINGS = 200


def make_zone(origin: str, text: str) -> dns.zone.Zone:
    """Build a zone from master-file text."""
    return dns.zone.from_text(text, origin=origin)


def big_zone() -> dns.zone.Zone:
    """Build a zone whose TXT RRset needs about 51 KB: far beyond UDP, within TCP."""
    strings = " ".join(f'"{chr(97 + i % 26) * 255}"' for i in range(BIG_STRINGS))
    return make_zone("big.test", OTHER + f"@ IN TXT {strings}\n")


@pytest.fixture(scope="module")
def server() -> Iterator[ZoneServer]:
    """Serve the test zones for the whole module."""
    zones = [make_zone("example.test", EXAMPLE), make_zone("other.test", OTHER), big_zone()]
    with ZoneServer(zones, timeout_names=["slow.example.test"], servfail_names=["broken.example.test."]) as srv:
        yield srv


def ask(server: ZoneServer, name: str, rdtype: str, *, tcp: bool = False, **kwargs: object) -> dns.message.Message:
    """Send one query over UDP or TCP and return the response."""
    query = dns.message.make_query(name, rdtype, **kwargs)  # type: ignore[arg-type]
    host, port = server.address
    if tcp:
        return dns.query.tcp(query, host, port=port, timeout=2)
    return dns.query.udp(query, host, port=port, timeout=2)


def texts(response: dns.message.Message) -> list[str]:
    """Return the answer section as text, one line per record."""
    return [line for rrset in response.answer for line in rrset.to_text().splitlines()]


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_answers_a_mx_and_txt_authoritatively(server: ZoneServer, tcp: bool) -> None:
    a = ask(server, "example.test", "A", tcp=tcp)
    mx = ask(server, "example.test", "MX", tcp=tcp)
    txt = ask(server, "sel._domainkey.example.test", "TXT", tcp=tcp)
    assert texts(a) == ["example.test. 300 IN A 127.0.0.10"]
    assert texts(mx) == ["example.test. 300 IN MX 10 mx.example.test."]
    assert texts(txt) == ['sel._domainkey.example.test. 300 IN TXT "v=DKIM1; k=rsa; p=MIIB"']
    for response in (a, mx, txt):
        assert response.rcode() == dns.rcode.NOERROR
        assert response.flags & dns.flags.AA


def test_copies_id_question_and_rd_flag(server: ZoneServer) -> None:
    query = dns.message.make_query("Example.TEST", "A")
    query.flags &= ~dns.flags.RD
    response = dns.query.udp(query, *server.address[:1], port=server.address[1], timeout=2)
    assert response.id == query.id
    assert response.question == query.question
    assert not response.flags & dns.flags.RD
    assert query.is_response(response)


def test_resolver_pointed_at_nameserver_resolves(server: ZoneServer) -> None:
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = [server.address[0]]
    resolver.nameserver_ports = {server.address[0]: server.address[1]}
    answer = resolver.resolve("mx.example.test", "A", lifetime=2)
    assert [r.to_text() for r in answer] == ["127.0.0.11"]
    assert server.nameserver == f"127.0.0.1:{server.address[1]}"


def test_missing_name_is_nxdomain_with_soa(server: ZoneServer) -> None:
    response = ask(server, "nope.example.test", "A")
    assert response.rcode() == dns.rcode.NXDOMAIN
    assert not response.answer
    assert [r.rdtype for r in response.authority] == [dns.rdatatype.SOA]
    # RFC 2308 §3: the SOA's TTL is capped by its MINIMUM field.
    assert response.authority[0].ttl == 60


def test_existing_name_without_the_type_is_nodata(server: ZoneServer) -> None:
    response = ask(server, "mx.example.test", "AAAA")
    assert response.rcode() == dns.rcode.NOERROR
    assert not response.answer
    assert [r.rdtype for r in response.authority] == [dns.rdatatype.SOA]


def test_empty_non_terminal_is_nodata_not_nxdomain(server: ZoneServer) -> None:
    response = ask(server, "_domainkey.example.test", "TXT")
    assert response.rcode() == dns.rcode.NOERROR
    assert not response.answer
    assert [r.rdtype for r in response.authority] == [dns.rdatatype.SOA]


def test_cname_is_followed_within_and_across_zones(server: ZoneServer) -> None:
    local = ask(server, "www.example.test", "A")
    assert texts(local) == ["www.example.test. 300 IN CNAME example.test.", "example.test. 300 IN A 127.0.0.10"]
    across = ask(server, "alias.example.test", "A")
    assert texts(across) == ["alias.example.test. 300 IN CNAME www.other.test.", "www.other.test. 300 IN A 127.0.0.20"]
    asked_for_cname = ask(server, "www.example.test", "CNAME")
    assert texts(asked_for_cname) == ["www.example.test. 300 IN CNAME example.test."]


def test_cname_rcode_is_the_final_targets(server: ZoneServer) -> None:
    response = ask(server, "alias.example.test", "MX")
    assert response.rcode() == dns.rcode.NOERROR
    assert texts(response) == ["alias.example.test. 300 IN CNAME www.other.test."]
    assert response.authority[0].name.to_text() == "other.test."


def test_cname_loop_and_outside_target_stop(server: ZoneServer) -> None:
    loop = ask(server, "loop1.example.test", "A")
    assert len(loop.answer) == 2 and loop.rcode() == dns.rcode.NOERROR
    dangling = ask(server, "dangling.example.test", "A")
    assert texts(dangling) == ["dangling.example.test. 300 IN CNAME gone.outside.invalid."]


def test_wildcard_synthesizes_the_queried_name(server: ZoneServer) -> None:
    response = ask(server, "a.b.wild.example.test", "TXT")
    assert texts(response) == ['a.b.wild.example.test. 300 IN TXT "wildcard"']
    assert ask(server, "a.wild.example.test", "A").rcode() == dns.rcode.NOERROR


def test_name_outside_every_zone_is_refused(server: ZoneServer) -> None:
    response = ask(server, "example.invalid", "A")
    assert response.rcode() == dns.rcode.REFUSED
    assert not response.flags & dns.flags.AA


def test_edns_is_echoed(server: ZoneServer) -> None:
    response = ask(server, "example.test", "A", use_edns=0, payload=1232)
    assert response.edns == 0
    assert ask(server, "example.test", "A").edns == -1


def test_large_txt_truncates_over_udp_and_is_complete_over_tcp(server: ZoneServer) -> None:
    truncated = ask(server, "big.test", "TXT", use_edns=0, payload=4096)
    assert truncated.flags & dns.flags.TC
    assert not truncated.answer
    query = dns.message.make_query("big.test", "TXT", use_edns=0, payload=4096)
    response, used_tcp = dns.query.udp_with_fallback(query, server.address[0], port=server.address[1], timeout=2)
    assert used_tcp
    assert not response.flags & dns.flags.TC
    strings = response.answer[0][0].strings
    assert len(strings) == BIG_STRINGS and all(len(s) == 255 for s in strings)


def test_answer_over_512_bytes_truncates_without_edns(server: ZoneServer) -> None:
    zone = make_zone("mid.test", OTHER + "".join(f'@ IN TXT "{i:03d}{"x" * 60}"\n' for i in range(10)))
    server.add_zone(zone)  # after start
    assert ask(server, "mid.test", "TXT").flags & dns.flags.TC
    assert len(ask(server, "mid.test", "TXT", use_edns=0, payload=1232).answer[0]) == 10


def test_timeout_name_is_never_answered(server: ZoneServer) -> None:
    with pytest.raises(dns.exception.Timeout):
        dns.query.udp(dns.message.make_query("slow.example.test", "A"), server.address[0],
                      port=server.address[1], timeout=0.3)
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = [server.address[0]]
    resolver.nameserver_ports = {server.address[0]: server.address[1]}
    with pytest.raises(dns.resolver.LifetimeTimeout):
        resolver.resolve("slow.example.test", "TXT", lifetime=0.3)


def test_servfail_name_gets_servfail(server: ZoneServer) -> None:
    assert ask(server, "broken.example.test", "MX").rcode() == dns.rcode.SERVFAIL
    server.servfail_names.add("mx.example.test")
    try:
        assert ask(server, "MX.example.test", "A", tcp=True).rcode() == dns.rcode.SERVFAIL
    finally:
        server.servfail_names.discard("mx.example.test")
    assert ask(server, "mx.example.test", "A").rcode() == dns.rcode.NOERROR


def test_delay_adds_latency_but_queries_overlap() -> None:
    with ZoneServer([make_zone("example.test", EXAMPLE)], delay=0.2) as srv:
        host, port = srv.address

        async def ask_all() -> list[dns.message.Message]:
            queries = [dns.message.make_query(f"n{i}.example.test", "A") for i in range(20)]
            return await asyncio.gather(*(dns.asyncquery.udp(q, host, port=port, timeout=3) for q in queries))

        started = time.monotonic()
        responses = asyncio.run(ask_all())
        elapsed = time.monotonic() - started
    assert all(r.rcode() == dns.rcode.NXDOMAIN for r in responses)
    assert 0.2 <= elapsed < 2


def test_garbage_udp_packet_does_not_kill_the_server(server: ZoneServer) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for junk in (b"", b"\x00", b"garbage" * 50, b"\xff" * 12 + b"\x01\x02"):
            sock.sendto(junk, server.address)
    assert ask(server, "example.test", "A").rcode() == dns.rcode.NOERROR


def test_tcp_carries_several_queries_and_closes_on_garbage(server: ZoneServer) -> None:
    with socket.create_connection(server.address, timeout=2) as sock:
        for name in ("example.test", "mx.example.test"):
            dns.query.send_tcp(sock, dns.message.make_query(name, "A"), None)
            response, _ = dns.query.receive_tcp(sock, time.time() + 2)
            assert response.rcode() == dns.rcode.NOERROR and response.answer
        sock.sendall(b"\x00\x05hello")
        assert sock.recv(10) == b""
    assert ask(server, "example.test", "A", tcp=True).rcode() == dns.rcode.NOERROR


def test_load_directory_serves_each_file_under_its_name(tmp_path: Path) -> None:
    (tmp_path / "alpha.test.zone").write_text(OTHER)
    (tmp_path / "notes.txt").write_text("not a zone")
    with ZoneServer() as srv:
        srv.load_directory(tmp_path)
        assert texts(ask(srv, "www.alpha.test", "A")) == ["www.alpha.test. 300 IN A 127.0.0.20"]


def test_bad_zone_file_error_names_the_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.test.zone"
    bad.write_text("$TTL 300\n@ IN SOA ns hostmaster 1 2 3 4 5\nmx IN A 127.0.0.999\n@ IN NS ns\n")
    with pytest.raises(ValueError, match=r"bad\.test\.zone:3: "):
        load_zone_file(bad, "bad.test")
    with pytest.raises(ValueError, match=r"bad\.test\.zone"):
        ZoneServer().load_directory(tmp_path)


def test_zone_file_without_soa_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "nosoa.test.zone"
    path.write_text("$TTL 300\nwww IN A 127.0.0.1\n")
    with pytest.raises(ValueError, match=r"nosoa\.test\.zone.*SOA"):
        load_zone_file(path, "nosoa.test")


def test_many_zones_pick_the_closest_enclosing_one() -> None:
    zones = [make_zone(f"d{i}.test", OTHER) for i in range(300)]
    zones.append(make_zone("sub.d7.test", OTHER.replace("127.0.0.20", "127.0.0.77")))
    with ZoneServer(zones) as srv:
        assert texts(ask(srv, "www.sub.d7.test", "A")) == ["www.sub.d7.test. 300 IN A 127.0.0.77"]
        assert texts(ask(srv, "www.d299.test", "A")) == ["www.d299.test. 300 IN A 127.0.0.20"]

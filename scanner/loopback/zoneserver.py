"""Authoritative DNS server on loopback, over UDP and TCP, serving dnspython zones."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import cast

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdataset
import dns.rdatatype
import dns.rrset
import dns.tokenizer
import dns.zone
import dns.zonefile

logger = logging.getLogger(__name__)

# RFC 1034 §3.6.2 leaves chain length to the server; 8 is what the product relies on.
_MAX_CNAME_STEPS = 8
# RFC 1035 §4.2.1: plain UDP messages are limited to 512 octets.
_UDP_PLAIN_LIMIT = 512
# RFC 1035 §4.2.2: the TCP length prefix is two octets.
_TCP_LIMIT = 65535
# DNS Flag Day 2020: the EDNS payload size we advertise.
_OUR_PAYLOAD = 1232
_UDP_RECEIVE_BUFFER = 4 * 1024 * 1024
_PORT_ATTEMPTS = 64

_RRsets = Mapping[dns.rdatatype.RdataType, dns.rrset.RRset]
_EMPTY: _RRsets = {}


@dataclass(frozen=True, slots=True)
class _ServedZone:
    """An immutable snapshot of one zone, indexed for answering queries."""

    origin: dns.name.Name
    rdclass: dns.rdataclass.RdataClass
    records: Mapping[dns.name.Name, _RRsets]
    empty_nonterminals: frozenset[dns.name.Name]
    negative_soa: dns.rrset.RRset

    def exists(self, name: dns.name.Name) -> bool:
        """Tell whether the name owns records or is an empty non-terminal."""
        return name in self.records or name in self.empty_nonterminals

    def lookup(self, name: dns.name.Name) -> _RRsets | None:
        """Return the RRsets owned by (or synthesized for) a name in the zone, None if it does not exist."""
        found = self.records.get(name)
        if found is not None:
            return found
        if name in self.empty_nonterminals:
            # RFC 4592 §2.2.2: an empty non-terminal exists, so NODATA, never NXDOMAIN.
            return _EMPTY
        # RFC 4592 §3.3.1: only the closest encloser's own wildcard may match.
        encloser = name.parent()
        while not self.exists(encloser):
            encloser = encloser.parent()
        wildcard = self.records.get(dns.name.Name((b"*",) + encloser.labels))
        if wildcard is None:
            return None
        return {
            rdtype: dns.rrset.from_rdata_list(name, rrset.ttl, list(rrset))
            for rdtype, rrset in wildcard.items()
        }


def _has_relative_name(rdata: dns.rdata.Rdata) -> bool:
    """Tell whether any name embedded in the rdata (MX exchange, CNAME target, ...) is relative."""
    for cls in type(rdata).__mro__:
        for slot in getattr(cls, "__slots__", ()):
            value = getattr(rdata, slot, None)
            values = value if isinstance(value, tuple) else (value,)
            if any(isinstance(v, dns.name.Name) and not v.is_absolute() for v in values):
                return True
    return False


def _absolute_rdata(rdata: dns.rdata.Rdata, origin: dns.name.Name) -> dns.rdata.Rdata:
    """Return the rdata with every embedded name made absolute against the origin."""
    if not _has_relative_name(rdata):
        return rdata
    wire = rdata.to_wire(origin=origin)
    assert wire is not None
    return dns.rdata.from_wire(rdata.rdclass, rdata.rdtype, wire, 0, len(wire))


def _owned_rrset(owner: dns.name.Name, rdataset: dns.rdataset.Rdataset, origin: dns.name.Name) -> dns.rrset.RRset:
    """Copy a zone rdataset into an absolute RRset owned by the name."""
    rdatas = [_absolute_rdata(r, origin) for r in rdataset]
    if any(new is not old for new, old in zip(rdatas, rdataset)):
        return dns.rrset.from_rdata_list(owner, rdataset.ttl, rdatas)
    rrset = dns.rrset.RRset(owner, rdataset.rdclass, rdataset.rdtype)
    rrset.update_ttl(rdataset.ttl)
    # A dict copy keeps the stored hashes: re-adding each rdata would hash its wire form again.
    rrset.items = rdataset.items.copy()
    return rrset


def _snapshot_zone(zone: dns.zone.Zone) -> _ServedZone:
    """Index a dnspython zone by absolute owner name and type."""
    origin = zone.origin
    if origin is None or not origin.is_absolute():
        raise ValueError("zone has no absolute origin")
    records: dict[dns.name.Name, _RRsets] = {}
    for name, node in zone.nodes.items():
        owner = name.derelativize(origin)
        rrsets: dict[dns.rdatatype.RdataType, dns.rrset.RRset] = {}
        for rdataset in node.rdatasets:
            if rdataset.covers != dns.rdatatype.NONE:
                continue  # no DNSSEC: signatures are not served
            rrsets[rdataset.rdtype] = _owned_rrset(owner, rdataset, origin)
        if rrsets:
            records[owner] = rrsets
    soa = records.get(origin, _EMPTY).get(dns.rdatatype.SOA)
    if soa is None:
        raise ValueError(f"zone {origin} has no SOA record at its origin")
    # RFC 2308 §3: the negative-answer TTL is the lesser of the SOA TTL and its MINIMUM field.
    negative_soa = dns.rrset.from_rdata_list(origin, min(soa.ttl, soa[0].minimum), list(soa))
    empty_nonterminals: set[dns.name.Name] = set()
    for owner in records:
        parent = owner
        while parent != origin:
            parent = parent.parent()
            if parent in records or parent in empty_nonterminals:
                break
            empty_nonterminals.add(parent)
    return _ServedZone(origin, zone.rdclass, records, frozenset(empty_nonterminals), negative_soa)


class _TokenLineTokenizer(dns.tokenizer.Tokenizer):
    """Tokenizer whose error location is the line of the last token read, not of the read position."""

    token_line: int = 1

    def get(self, want_leading: bool = False, want_comment: bool = False) -> dns.tokenizer.Token:
        """Read a token and remember the line it is on."""
        token = super().get(want_leading, want_comment)
        if not (token.is_eol_or_eof() or token.is_whitespace() or token.is_comment()):
            # The newline that ended the token is already counted, though pushed back for the next get().
            self.token_line = self.line_number - (1 if self.ungotten_char == "\n" else 0)
        return token

    def where(self) -> tuple[str, int]:
        """Return the file name and the line of the last token read."""
        return (self.filename, self.token_line)


def load_zone_file(path: Path, origin: str | None = None) -> dns.zone.Zone:
    """Parse a master file into an absolute zone, raising ValueError naming the file and line."""
    text = path.read_text(encoding="utf-8")
    try:
        zone = dns.zone.Zone(origin, relativize=False)
        with zone.writer(True) as txn:
            # dnspython reports the line after the newline it consumed; the token line is the culprit.
            tokenizer = _TokenLineTokenizer(text, str(path))
            dns.zonefile.Reader(tokenizer, zone.rdclass, txn, allow_include=False).read()
        zone.check_origin()
    except dns.zonefile.UnknownOrigin as exc:
        raise ValueError(f"{path}: no origin: pass one or start the file with $ORIGIN") from exc
    except dns.exception.SyntaxError as exc:
        raise ValueError(f"invalid zone file {exc}") from exc
    except dns.exception.DNSException as exc:
        raise ValueError(f"invalid zone file {path}: {exc}") from exc
    return zone


def _normalize_name(name: str) -> str:
    """Lowercase a domain name and drop its trailing dot."""
    return name.lower().rstrip(".")


def _bind_sockets(host: str, port: int) -> tuple[socket.socket, socket.socket]:
    """Bind a UDP and a TCP socket to the same port, choosing one free for both when port is 0."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(1 if port else _PORT_ATTEMPTS):
        tcp = socket.socket(family, socket.SOCK_STREAM)
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            tcp.bind((host, port))
        except OSError:
            tcp.close()
            raise
        udp = socket.socket(family, socket.SOCK_DGRAM)
        try:
            udp.bind((host, tcp.getsockname()[1]))
        except OSError:
            udp.close()
            tcp.close()
            if port:
                raise
            continue
        udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _UDP_RECEIVE_BUFFER)
        tcp.listen(128)
        tcp.setblocking(False)
        udp.setblocking(False)
        return udp, tcp
    raise OSError(f"no port on {host} is free for both UDP and TCP after {_PORT_ATTEMPTS} attempts")


class _UdpProtocol(asyncio.DatagramProtocol):
    """Answers one DNS query per datagram."""

    def __init__(self, server: ZoneServer, loop: asyncio.AbstractEventLoop) -> None:
        """Keep the server that answers and the loop that schedules delayed replies."""
        self._server = server
        self._loop = loop
        self._transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Remember the transport to reply on."""
        self._transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        """Answer a query, drop a malformed packet."""
        reply = self._server._answer(data, over_tcp=False)
        if not reply or self._transport is None:
            return
        delay = self._server.delay
        if delay > 0:
            self._loop.call_later(delay, self._send, reply, addr)
        else:
            self._transport.sendto(reply, addr)

    def _send(self, reply: bytes, addr: tuple[str | int, ...]) -> None:
        """Send a delayed reply unless the server has stopped."""
        if self._transport is not None and not self._transport.is_closing():
            self._transport.sendto(reply, addr)

    def error_received(self, exc: Exception) -> None:
        """Ignore ICMP errors from clients that went away."""
        logger.debug("udp error", extra={"error": str(exc)})


class _TcpProtocol(asyncio.Protocol):
    """Answers length-prefixed DNS queries on one connection (RFC 1035 §4.2.2, RFC 7766)."""

    def __init__(self, server: ZoneServer, loop: asyncio.AbstractEventLoop,
                 connections: set[asyncio.Transport]) -> None:
        """Keep the server, the loop and the set of open connections to register in."""
        self._server = server
        self._loop = loop
        self._connections = connections
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Register the connection so stop() can close it."""
        self._transport = cast(asyncio.Transport, transport)
        self._connections.add(self._transport)

    def connection_lost(self, exc: Exception | None) -> None:
        """Forget the connection."""
        if self._transport is not None:
            self._connections.discard(self._transport)
        self._transport = None

    def data_received(self, data: bytes) -> None:
        """Answer every complete message in the buffer; close on a malformed one."""
        self._buffer += data
        while len(self._buffer) >= 2:
            size = int.from_bytes(self._buffer[:2], "big")
            if len(self._buffer) < 2 + size:
                return
            message = bytes(self._buffer[2:2 + size])
            del self._buffer[:2 + size]
            reply = self._server._answer(message, over_tcp=True)
            if self._transport is None:
                return
            if reply is None:
                self._transport.close()
                return
            if not reply:
                continue  # a timeout name: stay silent, keep the connection
            framed = len(reply).to_bytes(2, "big") + reply
            delay = self._server.delay
            if delay > 0:
                self._loop.call_later(delay, self._send, framed)
            else:
                self._transport.write(framed)

    def _send(self, framed: bytes) -> None:
        """Send a delayed reply unless the connection has closed."""
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(framed)


class ZoneServer:
    """Authoritative DNS over UDP and TCP on loopback, serving dnspython zones."""

    def __init__(self, zones: Iterable[dns.zone.Zone] = (), *, host: str = "127.0.0.1", port: int = 0,
                 timeout_names: Iterable[str] = (), servfail_names: Iterable[str] = (),
                 delay: float = 0.0) -> None:
        """Prepare the server; nothing is bound until start()."""
        self._host = host
        self._port = port
        self._zones: dict[dns.name.Name, _ServedZone] = {}
        self._zones_lock = threading.Lock()
        self.timeout_names: set[str] = {_normalize_name(n) for n in timeout_names}
        self.servfail_names: set[str] = {_normalize_name(n) for n in servfail_names}
        self.delay = delay
        self.chase_across_zones = True
        """False: answer as one zone's authoritative server does, stopping a CNAME chain at the zone's edge (the
        target's records are left out even when another served zone holds them)."""
        self._address: tuple[str, int] | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._startup_error: BaseException | None = None
        for zone in zones:
            self.add_zone(zone)

    def add_zone(self, zone: dns.zone.Zone) -> None:
        """Serve the zone's current contents, replacing any zone with the same origin; call again after edits."""
        served = _snapshot_zone(zone)
        with self._zones_lock:
            self._zones[served.origin] = served

    def load_directory(self, path: Path) -> None:
        """Serve every *.zone file in the directory, its origin being the file name minus ".zone"."""
        for file in sorted(path.glob("*.zone")):
            self.add_zone(load_zone_file(file, file.name[: -len(".zone")]))

    @property
    def address(self) -> tuple[str, int]:
        """The (host, port) the server listens on, UDP and TCP alike."""
        if self._address is None:
            raise RuntimeError("ZoneServer is not started")
        return self._address

    @property
    def nameserver(self) -> str:
        """The address as "IP:PORT", as the [dns] nameservers setting takes it."""
        host, port = self.address
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def start(self) -> None:
        """Bind both sockets and serve from a dedicated thread until stop()."""
        if self._thread is not None:
            raise RuntimeError("ZoneServer is already started")
        udp, tcp = _bind_sockets(self._host, self._port)
        self._address = (self._host, tcp.getsockname()[1])
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        self._startup_error = None
        thread = threading.Thread(target=self._run, args=(loop, udp, tcp, ready),
                                  name=f"zoneserver-{self._address[1]}", daemon=True)
        self._loop = loop
        self._thread = thread
        thread.start()
        ready.wait()
        if self._startup_error is not None:
            thread.join()
            self._thread = None
            self._loop = None
            raise RuntimeError("ZoneServer failed to start") from self._startup_error

    def stop(self) -> None:
        """Stop serving, close every connection and join the thread."""
        thread, loop, stopping = self._thread, self._loop, self._stopping
        if thread is None or loop is None:
            return
        if stopping is not None:
            loop.call_soon_threadsafe(stopping.set)
        thread.join()
        self._thread = None
        self._loop = None
        self._stopping = None

    def __enter__(self) -> ZoneServer:
        """Start the server."""
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        """Stop the server."""
        self.stop()

    def _run(self, loop: asyncio.AbstractEventLoop, udp: socket.socket, tcp: socket.socket,
             ready: threading.Event) -> None:
        """Run the event loop of the server thread."""
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._serve(loop, udp, tcp, ready))
        except BaseException as exc:  # reported to start() or logged, never lost
            if not ready.is_set():
                self._startup_error = exc
            else:
                logger.exception("zone server crashed")
        finally:
            ready.set()
            udp.close()
            tcp.close()
            loop.close()

    async def _serve(self, loop: asyncio.AbstractEventLoop, udp: socket.socket, tcp: socket.socket,
                     ready: threading.Event) -> None:
        """Open both endpoints, signal readiness and wait for stop()."""
        self._stopping = asyncio.Event()
        connections: set[asyncio.Transport] = set()
        datagram, _ = await loop.create_datagram_endpoint(lambda: _UdpProtocol(self, loop), sock=udp)
        server = await loop.create_server(lambda: _TcpProtocol(self, loop, connections), sock=tcp)
        ready.set()
        try:
            await self._stopping.wait()
        finally:
            server.close()
            datagram.close()
            for transport in list(connections):
                transport.abort()
            await server.wait_closed()
            await asyncio.sleep(0)  # let the closed transports run connection_lost

    @staticmethod
    def _name_in(name: dns.name.Name, names: set[str]) -> bool:
        """Tell whether a name is in a set of normalized names, with or without its trailing dot."""
        if not names:
            return False
        key = _normalize_name(name.to_text())
        return key in names or key + "." in names

    def _answer(self, wire: bytes, *, over_tcp: bool) -> bytes | None:
        """Return the wire reply to a query, b"" to stay silent (a timeout name), None if malformed."""
        try:
            query = dns.message.from_wire(wire)
        except Exception:  # malformed input of any kind is dropped, never fatal
            return None
        if query.flags & dns.flags.QR:
            return None  # a response, not a query: answering it could loop
        try:
            response = dns.message.make_response(query, our_payload=_OUR_PAYLOAD)
        except Exception:
            return None
        if query.opcode() != dns.opcode.QUERY:
            response.set_rcode(dns.rcode.NOTIMP)
        elif len(query.question) != 1:
            response.set_rcode(dns.rcode.FORMERR)
        elif query.edns > 0:
            response.set_rcode(dns.rcode.BADVERS)  # RFC 6891 §6.1.3
        else:
            question = query.question[0]
            if self._name_in(question.name, self.timeout_names):
                return b""
            if self._name_in(question.name, self.servfail_names):
                response.set_rcode(dns.rcode.SERVFAIL)
            else:
                try:
                    self._resolve(question.name, question.rdclass, question.rdtype, response)
                except Exception:
                    logger.exception("zone server failed to answer", extra={"qname": str(question.name)})
                    response = dns.message.make_response(query, our_payload=_OUR_PAYLOAD)
                    response.set_rcode(dns.rcode.SERVFAIL)
        if over_tcp:
            limit = _TCP_LIMIT
        elif query.edns >= 0:
            # RFC 6891 §6.2.5: payloads below 512 are treated as 512.
            limit = min(max(query.payload, _UDP_PLAIN_LIMIT), _TCP_LIMIT)
        else:
            limit = _UDP_PLAIN_LIMIT
        try:
            return response.to_wire(max_size=limit)
        except dns.exception.TooBig:
            # RFC 2181 §9 / RFC 1035 §4.1.1: truncate and let the client retry over TCP.
            response.answer.clear()
            response.authority.clear()
            response.additional.clear()
            response.flags |= dns.flags.TC
            return response.to_wire(max_size=limit)

    def _find_zone(self, name: dns.name.Name) -> _ServedZone | None:
        """Return the closest enclosing zone we serve, walking the name's ancestors."""
        zones = self._zones
        while True:
            served = zones.get(name)
            if served is not None:
                return served
            if name == dns.name.root or len(name) == 0:
                return None
            name = name.parent()

    def _resolve(self, qname: dns.name.Name, rdclass: dns.rdataclass.RdataClass,
                 rdtype: dns.rdatatype.RdataType, response: dns.message.Message) -> None:
        """Fill the response for one question (RFC 1034 §4.3.2, RFC 2308 negative answers)."""
        served = self._find_zone(qname)
        transfer = dns.rdatatype.is_metatype(rdtype) and rdtype != dns.rdatatype.ANY
        if served is None or served.rdclass != rdclass or transfer:
            response.set_rcode(dns.rcode.REFUSED)  # not our zone, or AXFR/IXFR/... which we do not offer
            return
        response.flags |= dns.flags.AA
        name = qname
        seen = {qname}
        for _ in range(_MAX_CNAME_STEPS + 1):
            rrsets = served.lookup(name)
            if rrsets is None:
                response.set_rcode(dns.rcode.NXDOMAIN)
                response.authority.append(served.negative_soa)
                return
            if rdtype == dns.rdatatype.ANY and rrsets:
                response.answer.extend(rrsets.values())
                return
            found = rrsets.get(rdtype)
            if found is not None:
                response.answer.append(found)
                return
            cname = rrsets.get(dns.rdatatype.CNAME)
            if cname is None:
                response.authority.append(served.negative_soa)  # NODATA
                return
            response.answer.append(cname)
            target: dns.name.Name = cname[0].target
            next_zone = self._find_zone(target)
            crossing = next_zone is not served and not self.chase_across_zones
            if target in seen or next_zone is None or next_zone.rdclass != rdclass or crossing:
                return  # a loop, or a target outside our zone(s): the client continues from the CNAME
            seen.add(target)
            served = next_zone
            name = target

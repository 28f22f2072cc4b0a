"""DNS questions on the wire for the run's DnsClient: a few shared UDP sockets, replies matched by id, TCP on truncation.

dnspython's resolver opens a socket and builds a message object per query; across a portfolio
that costs more than the answers. Here each nameserver gets a small pool of connected UDP sockets
(ephemeral ports chosen by the kernel) read by the event loop; every query carries a fresh random id
and is matched to its reply by id and question (RFC 5452 §4, §9.2). A truncated reply is asked
again over TCP with dnspython (RFC 7766 §5); replies are parsed with dnspython and CNAME chains in
them followed; a chain whose target the reply lacks is followed by asking for the target. The outcomes and messages are the ones its resolver gives: a
timeout after the lifetime, ``no nameserver answered: SERVFAIL`` and so on.
"""

from __future__ import annotations

import asyncio
import functools
import random
import re
import secrets
import socket
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import dns.asyncquery
import dns.exception
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdatatype
import dns.resolver
import dns.wire

from scanner.model import DnsAnswer, Outcome

# RFC 6891 §6.2.5, DNS Flag Day 2020: advertise 1232 octets, which fits any path without fragmenting.
EDNS_PAYLOAD = 1232
# An OPT pseudo-record (RFC 6891 §6.1.2): root owner, type 41, class = payload, TTL 0 (version 0, no DO), no data.
_OPT = b"\x00" + struct.pack("!HHIH", 41, EDNS_PAYLOAD, 0, 0)
# Header (RFC 1035 §4.1.1) after the id: RD set, one question, one additional record (the OPT).
_HEADER_TAIL = struct.pack("!HHHHH", 0x0100, 1, 0, 0, 1)
_SOCKETS_PER_SERVER = 4  # RFC 5452 §9.2: spread queries over several source ports, each id random
_FIRST_BACKOFF, _MAX_BACKOFF = 0.1, 2.0  # between rounds over all nameservers, as dnspython's resolver waits
_IN = 1
_A = 1
_MX = 15
_OPT_TYPE = 41
_TXT = 16
_POINTER_TO_QUESTION = b"\xc0\x0c"  # RFC 1035 §4.1.4: a name compressed to the question's, at offset 12
_RECORD_HEADER = struct.Struct("!HHIH")  # RFC 1035 §4.1.3: a record's type, class, TTL and data length
# Lowercase LDH (and underscore) labels of 1 to 63 octets, at most 253 octets in all (RFC 1035 §2.3.4).
_PLAIN_NAME = re.compile(r"(?=.{1,253}\Z)[a-z0-9_-]{1,63}(?:\.[a-z0-9_-]{1,63})*")


def render_rdata(rdata: object) -> str:
    """A record's data as text; TXT strings are joined as RFC 7208 §3.3 and RFC 6376 §3.6.2.2 say."""
    strings = getattr(rdata, "strings", None)
    if strings is not None:
        return b"".join(strings).decode("utf-8", errors="replace")
    return str(rdata)


class _Channel:
    """One connected, non-blocking UDP socket to one nameserver; the loop wakes the query whose id a reply carries."""

    def __init__(self, loop: asyncio.AbstractEventLoop, address: str, port: int) -> None:
        self.loop = loop
        self.sock = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET, socket.SOCK_DGRAM)
        try:
            self.sock.setblocking(False)
            self.sock.connect((address, port))  # the kernel then drops datagrams from any other source
            loop.add_reader(self.sock.fileno(), self._readable)
        except BaseException:
            self.sock.close()
            raise
        self.waiting: dict[int, tuple[asyncio.Future[bytes], bytes]] = {}  # id -> (waiter, question section)

    def _readable(self) -> None:
        while True:
            try:
                data = self.sock.recv(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # an ICMP error, e.g. nothing listens there: every waiting query learns it
                for waiter, _ in self.waiting.values():
                    if not waiter.done():
                        waiter.set_exception(exc)
                return
            entry = self.waiting.get(int.from_bytes(data[:2], "big")) if len(data) >= 12 else None
            if entry is not None and not entry[0].done() and _answers(data, entry[1]):
                entry[0].set_result(data)

    def close(self) -> None:
        """Stop reading and close the socket."""
        self.loop.remove_reader(self.sock.fileno())
        self.sock.close()


@dataclass
class _Question:
    """One question as it goes on the wire, and what its attempts met."""

    name: str
    rdtype: dns.rdatatype.RdataType
    wire: bytes  # the question section: name (lowercase), type, class
    errors: list[str] = field(default_factory=list)

    @property
    def owner(self) -> bytes:
        """The question's name as a record key: its wire form, lowercase."""
        return self.wire[:-4]


@dataclass(frozen=True, slots=True)
class _Rendered:
    """An A or MX record read without building dnspython's Rdata (after TXT, most of a scan's answers): its text
    as dnspython renders it, and what makes two records the same (RFC 2181 §5; an MX name compares without case)."""

    identity: object
    text: str = field(compare=False)


# A record's data as the outcome needs it: TXT strings as they are, A and MX rendered, any other type parsed by
# dnspython.
_Data = tuple[bytes, ...] | _Rendered | dns.rdata.Rdata


def _key(name: dns.name.Name) -> bytes:
    """A name as a record key: its uncompressed wire form, lowercase (names compare without case, RFC 4343)."""
    return name.canonicalize().to_wire()


@dataclass(frozen=True, slots=True)
class _Reply:
    """A reply's rcode and its answer section's records by owner and type (authority and additional are skipped)."""

    rcode: dns.rcode.Rcode
    records: dict[tuple[bytes, int], list[_Data]]

    @classmethod
    def from_message(cls, message: dns.message.Message) -> _Reply:
        """The reply as dnspython parsed it in full (the TCP path)."""
        records: dict[tuple[bytes, int], list[_Data]] = {}
        for rrset in message.answer:
            if rrset.rdclass == _IN:
                entries = records.setdefault((_key(rrset.name), rrset.rdtype), [])
                entries.extend(tuple(r.strings) if rrset.rdtype == _TXT else r for r in rrset)  # type: ignore[attr-defined]
        return cls(message.rcode(), records)

    def chain(self, owner: bytes, qtype: int) -> tuple[list[_Data] | None, list[bytes]]:
        """The records answering the question after the CNAMEs in the answer section (RFC 1034 §4.3.2), and the
        names of the chain, the question's first; a loop raises CnameLoop naming it."""
        names = [owner]
        answer = None
        while True:
            answer = self.records.get((owner, qtype))
            if answer is not None or qtype == dns.rdatatype.CNAME:
                break
            cname = self.records.get((owner, dns.rdatatype.CNAME))
            if cname is None:
                break
            owner = _key(cname[0].target)  # type: ignore[union-attr]
            if owner in names:
                raise CnameLoop([*names, owner])
            names.append(owner)
            if len(names) - 1 > MAX_CNAME_LINKS:
                raise CnameTooLong(names)
        if self.rcode == dns.rcode.NXDOMAIN and answer is not None:
            raise dns.message.AnswerForNXDOMAIN
        # An RRset is a set (RFC 2181 §5): identical records count once, in the order first seen.
        return (list(dict.fromkeys(answer)) if answer is not None and len(answer) > 1 else answer), names


MAX_CNAME_LINKS = 8
"""CNAME links followed for one question, within replies and across the questions for a chain's targets."""


def _text(key: bytes) -> str:
    """A record key (a name's wire form) as text, without the final dot."""
    return dns.name.from_wire(key, 0)[0].to_text(omit_final_dot=True)


class CnameLoop(dns.exception.DNSException):
    """A CNAME chain that comes back to a name it passed: no answer can ever come out of it."""

    def __init__(self, names: list[bytes]) -> None:
        super().__init__("CNAME loop: " + " -> ".join(_text(n) for n in names))


class CnameTooLong(dns.exception.DNSException):
    """A CNAME chain of more links than MAX_CNAME_LINKS."""

    def __init__(self, names: list[bytes]) -> None:
        super().__init__(f"CNAME chain longer than {MAX_CNAME_LINKS} links: " + " -> ".join(_text(n) for n in names))


@dataclass(frozen=True, slots=True)
class _Alias:
    """A reply whose CNAME chain ends at a target whose records it does not hold (an authoritative server's
    answer when the target is out of its zone): the target must be asked for."""

    names: tuple[bytes, ...]


def _txt_strings(data: bytes) -> tuple[bytes, ...]:
    """The character-strings of TXT data (RFC 1035 §3.3.14): each a length octet and that many octets."""
    strings = []
    index = 0
    while index < len(data):
        end = index + 1 + data[index]
        if end > len(data):
            raise dns.exception.FormError("a TXT string runs past the record")
        strings.append(data[index + 1 : end])
        index = end
    if not strings:
        raise ValueError("the list of strings must not be empty")  # dnspython's own check, kept
    return tuple(strings)


def parse_reply(data: bytes, question: _Question) -> _Reply:
    """Parse a UDP reply: header, answer records, the OPT record's extended rcode.

    Names and records other than TXT, A and MX go through dnspython's wire parser; TXT data is split into its
    strings directly (the answers are mostly TXT, and that is all the outcome needs), A and MX records are
    rendered as dnspython would. The question was matched to ours already; the authority and additional
    records are stepped over to check the message is well formed, as dnspython would (a short or overlong
    message raises the same FormError family).
    """
    flags = int.from_bytes(data[2:4], "big")
    answers, authority, additional = struct.unpack_from("!HHH", data, 6)
    offset = 12 + len(question.wire)
    if offset > len(data):
        raise dns.exception.FormError
    records: dict[tuple[bytes, int], list[_Data]] = {}
    for _ in range(answers):
        if data[offset : offset + 2] == _POINTER_TO_QUESTION:
            offset += 2
            owner = question.owner  # compressed to the question's name, which matched ours
        else:
            parser = dns.wire.Parser(data, offset)
            owner = _key(dns.name.from_wire_parser(parser))
            offset = parser.current
        if offset + _RECORD_HEADER.size > len(data):
            raise dns.exception.FormError
        rdtype, rdclass, _ttl, length = _RECORD_HEADER.unpack_from(data, offset)
        offset += _RECORD_HEADER.size
        if offset + length > len(data):
            raise dns.exception.FormError
        entry: _Data
        if rdtype == _TXT:
            entry = _txt_strings(data[offset : offset + length])
        elif rdtype == _A and rdclass == _IN and length == 4:
            address = data[offset : offset + 4]
            entry = _Rendered(address, "%d.%d.%d.%d" % tuple(address))
        elif rdtype == _MX and rdclass == _IN:
            parser = dns.wire.Parser(data, offset)
            with parser.restrict_to(length), dns.exception.ExceptionWrapper(dns.exception.FormError):
                preference, exchange = parser.get_uint16(), parser.get_name(None, True)  # as dnspython's MX
            entry = _Rendered((preference, exchange), f"{preference} {exchange}")  # dnspython's MX text
        else:
            parser = dns.wire.Parser(data, offset)
            with parser.restrict_to(length):
                entry = dns.rdata.from_wire_parser(rdclass, rdtype, parser)
        offset += length
        if rdclass == _IN:
            records.setdefault((owner, rdtype), []).append(entry)
    end, ednsflags = _skip_records(data, offset, authority, additional)
    if end != len(data):
        raise dns.message.TrailingJunk
    return _Reply(_rcode(flags, ednsflags), records)


# A reply's rcode from its flags and the OPT record's, as dnspython works it out: memoized, as replies carry few
# distinct combinations and its enum lookups cost 2 % of a scan's DNS work.
_rcode = functools.lru_cache(maxsize=256)(dns.rcode.from_flags)


def _question(name: str, rdtype: str) -> _Question | DnsAnswer:
    """A question as it goes on the wire, or the failure of a name or type that cannot be asked."""
    try:
        qtype = _qtype(rdtype)
        if _PLAIN_NAME.fullmatch(name):  # the common case, without dnspython's text parser
            wire = b"".join(bytes((len(label),)) + label for label in name.encode("ascii").split(b".")) + b"\x00"
        else:
            wire = _key(dns.name.from_text(name))
        return _Question(name, qtype, wire + struct.pack("!HH", qtype, _IN))
    except (dns.exception.DNSException, ValueError) as exc:
        return DnsAnswer(name, rdtype, Outcome.FAILED, error=f"{type(exc).__name__}: {exc}")


# A question's type from its text, as dnspython reads it; memoized, as a scan asks few types.
_qtype = functools.lru_cache(maxsize=64)(dns.rdatatype.RdataType.make)


def _skip_records(data: bytes, offset: int, authority: int, additional: int) -> tuple[int, int]:
    """Step over the authority and additional records from ``offset``: where they end, and the OPT record's TTL
    field (RFC 6891 §6.1.3: the upper 8 bits of the extended rcode live there), 0 without one. A record that runs
    past the message raises FormError, a label type that does not exist BadLabelType (as dnspython's parser)."""
    ednsflags = 0
    for index in range(authority + additional):
        offset = _past_name(data, offset)
        if offset + _RECORD_HEADER.size > len(data):
            raise dns.exception.FormError
        rdtype, _class, ttl, length = _RECORD_HEADER.unpack_from(data, offset)
        offset += _RECORD_HEADER.size + length
        if offset > len(data):
            raise dns.exception.FormError
        if rdtype == _OPT_TYPE and index >= authority:
            ednsflags = ttl
    return offset, ednsflags


def _past_name(data: bytes, offset: int) -> int:
    """Where a (possibly compressed) name starting at ``offset`` ends, RFC 1035 §4.1.4."""
    while True:
        if offset >= len(data):
            raise dns.exception.FormError
        length = data[offset]
        if length == 0:
            return offset + 1
        if length >= 0xC0:  # a pointer ends the name
            if offset + 2 > len(data):
                raise dns.exception.FormError
            return offset + 2
        if length > 63:
            raise dns.name.BadLabelType
        offset += 1 + length
        if offset > len(data):
            raise dns.exception.FormError


class WireResolver:
    """Asks nameservers directly: UDP first, TCP when the reply is truncated, retries within the lifetime."""

    def __init__(self, servers: Sequence[tuple[str, int]], *, lifetime: float, attempt: float) -> None:
        self.servers = tuple(servers)
        self.lifetime = lifetime
        self.attempt = attempt
        self.sent = 0  # queries put on the wire, UDP datagrams and TCP queries alike, retries included
        self.server_failures: dict[str, dict[str, int]] = {}  # "IP:port" -> why an attempt failed -> how often
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pools: dict[tuple[str, int], list[_Channel]] = {}
        self._active = 0

    async def resolve(self, name: str, rdtype: str) -> DnsAnswer:
        """The answer for one question: records, NXDOMAIN, NODATA, or a failure saying why.

        A reply whose CNAME chain ends before the data (the target is out of the answering server's zone) is
        followed by asking for the target, at most MAX_CNAME_LINKS links in all; a loop is a failure naming it.
        The answer keeps the question's name.
        """
        chain: list[bytes] = []
        current = name
        self._active += 1
        try:
            while True:
                question = _question(current, rdtype)
                result = question if isinstance(question, DnsAnswer) else await self._resolve(question, rdtype)
                if not isinstance(result, _Alias):
                    if current == name:
                        return result
                    return DnsAnswer(name, rdtype, result.outcome, result.records, result.error, result.server)
                links = list(result.names) if not chain else list(result.names[1:])
                for link in links:
                    if link in chain:
                        return DnsAnswer(name, rdtype, Outcome.FAILED, error=str(CnameLoop([*chain, link])))
                    chain.append(link)
                if len(chain) - 1 > MAX_CNAME_LINKS:
                    return DnsAnswer(name, rdtype, Outcome.FAILED, error=str(CnameTooLong(chain)))
                current = _text(chain[-1])
        finally:
            self._active -= 1
            if not self._active:
                self._close()  # nothing in flight: release the sockets (a later question opens new ones)

    async def _resolve(self, question: _Question, rdtype: str) -> DnsAnswer | _Alias:
        deadline = time.monotonic() + self.lifetime
        servers = list(self.servers)
        backoff = _FIRST_BACKOFF
        while True:
            for server in list(servers):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    reply = await self._ask(question, server, min(self.attempt, remaining))
                except TimeoutError:
                    self._failed(server, "timeout")
                    continue  # lost or late: ask again (next nameserver, or the next round)
                except (OSError, EOFError, dns.exception.DNSException, ValueError) as exc:
                    # This nameserver is no good for the question (unreachable, malformed reply), as dnspython decides.
                    question.errors.append(str(exc) or type(exc).__name__)
                    self._failed(server, question.errors[-1])
                    servers.remove(server)
                    continue
                answer = self._outcome(question, rdtype, reply)
                if answer is None:
                    self._failed(server, question.errors[-1] if question.errors else "unusable reply")
                if isinstance(answer, DnsAnswer) and answer.outcome is Outcome.NXDOMAIN:
                    return DnsAnswer(answer.name, answer.rdtype, answer.outcome, server=f"{server[0]}:{server[1]}")
                if answer is not None:
                    return answer
                servers.remove(server)  # an unusable rcode or answer (question.errors says which)
            remaining = deadline - time.monotonic()
            if not servers:
                detail = ", ".join(dict.fromkeys(question.errors)) or "no usable nameserver"
                return DnsAnswer(question.name, rdtype, Outcome.FAILED, error=f"no nameserver answered: {detail}")
            if remaining <= 0:
                return DnsAnswer(question.name, rdtype, Outcome.FAILED, error=f"timeout after {self.lifetime:g}s")
            await asyncio.sleep(min(backoff, remaining))
            backoff = min(backoff * 2, _MAX_BACKOFF)

    def _failed(self, server: tuple[str, int], why: str) -> None:
        """Count one failed attempt at a nameserver, by reason, for the run's DNS summary."""
        reasons = self.server_failures.setdefault(f"{server[0]}:{server[1]}", {})
        reasons[why] = reasons.get(why, 0) + 1

    def _outcome(self, question: _Question, rdtype: str, reply: _Reply) -> DnsAnswer | _Alias | None:
        """What a parsed reply establishes, or None (its reason noted) when this nameserver is no good."""
        rcode = reply.rcode
        if rcode == dns.rcode.YXDOMAIN:
            error = dns.resolver.YXDOMAIN()
            return DnsAnswer(question.name, rdtype, Outcome.FAILED, error=f"{type(error).__name__}: {error}")
        if rcode not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
            question.errors.append(dns.rcode.to_text(rcode))
            return None
        try:
            answer, names = reply.chain(question.owner, question.rdtype)  # CNAMEs in the reply, RFC 1034 §4.3.2
        except (CnameLoop, CnameTooLong) as exc:  # the zone's doing, the same from every nameserver
            return DnsAnswer(question.name, rdtype, Outcome.FAILED, error=str(exc))
        except Exception as exc:  # noqa: BLE001 (dnspython raises several kinds for a bad chain)
            question.errors.append(str(exc) or type(exc).__name__)
            return None
        if rcode == dns.rcode.NXDOMAIN:
            return DnsAnswer(question.name, rdtype, Outcome.NXDOMAIN)
        if answer is None and len(names) > 1:
            return _Alias(tuple(names))  # RFC 1034 §4.3.2 step 3a: restart the query at the CNAME's target
        if answer is None:
            return DnsAnswer(question.name, rdtype, Outcome.NODATA)
        return DnsAnswer(question.name, rdtype, Outcome.ANSWER, tuple(
            b"".join(r).decode("utf-8", errors="replace") if isinstance(r, tuple)
            else r.text if isinstance(r, _Rendered) else render_rdata(r)
            for r in answer
        ))

    async def _ask(self, question: _Question, server: tuple[str, int], timeout: float) -> _Reply:
        """One attempt at one nameserver: a UDP datagram, then TCP if the reply is truncated."""
        loop = asyncio.get_running_loop()
        channel = random.choice(self._pool(loop, server))
        qid = secrets.randbits(16)
        while qid in channel.waiting:
            qid = secrets.randbits(16)
        started = time.monotonic()
        waiter: asyncio.Future[bytes] = loop.create_future()
        channel.waiting[qid] = (waiter, question.wire)
        timer = loop.call_later(timeout, _expire, waiter)
        try:
            try:
                channel.sock.send(qid.to_bytes(2, "big") + _HEADER_TAIL + question.wire + _OPT)
            except (BlockingIOError, InterruptedError):
                pass  # the send buffer is full: as good as a lost datagram, the attempt times out and is retried
            self.sent += 1
            data = await waiter
        finally:
            timer.cancel()
            del channel.waiting[qid]
        if data[2] & 0x02:  # TC: RFC 7766 §5, ask again over TCP
            query = dns.message.make_query(dns.name.from_wire(question.wire, 0)[0], question.rdtype)
            self.sent += 1
            try:
                message = await dns.asyncquery.tcp(
                    query, server[0], timeout=max(timeout - (time.monotonic() - started), 0.05), port=server[1]
                )
            except dns.exception.Timeout:
                raise TimeoutError from None
            return _Reply.from_message(message)
        try:
            return parse_reply(data, question)
        except dns.exception.DNSException:
            raise
        except Exception as exc:  # noqa: BLE001 (hostile bytes can trip any parser error): a malformed reply
            raise dns.exception.FormError(f"malformed reply: {type(exc).__name__}: {exc}") from None

    def _pool(self, loop: asyncio.AbstractEventLoop, server: tuple[str, int]) -> list[_Channel]:
        if loop is not self._loop:
            self._close()
            self._loop = loop
        pool = self._pools.get(server)
        if pool is None:
            pool = self._pools[server] = []
            try:
                for _ in range(_SOCKETS_PER_SERVER):
                    pool.append(_Channel(loop, *server))
            except BaseException:
                for channel in pool:
                    channel.close()
                del self._pools[server]
                raise
        return pool

    def _close(self) -> None:
        for pool in self._pools.values():
            for channel in pool:
                channel.close()
        self._pools.clear()


def _answers(data: bytes, question: bytes) -> bool:
    """Whether a datagram (with our id) is a reply to our question, RFC 5452 §9.1: QR set, one question, ours.

    Others (spoofed, or stale replies to an earlier query that had the same id) are dropped and the query
    keeps waiting for its own. Names compare without case (RFC 4343); ours is lowercase already.
    """
    end = 12 + len(question)
    return bool(data[2] & 0x80) and data[4:6] == b"\x00\x01" and data[12 : end - 4].lower() == question[:-4] and (
        data[end - 4 : end] == question[-4:]
    )


def _expire(waiter: asyncio.Future[bytes]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())

"""MTA-STS (RFC 8461): the TXT record's syntax, and the policy fetched over HTTPS and parsed."""

from __future__ import annotations

import enum
import ipaddress
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from scanner.model import DnsAnswer, Outcome

if TYPE_CHECKING:
    from scanner.dns.client import DnsClient

# asyncio, ssl and h11 are imported where a policy is fetched: the checks only parse (start-up time).

POLICY_PATH = "/.well-known/mta-sts.txt"
# RFC 8461 §3.3 leaves the limit to the sender; 64 KB is what common implementations (Postfix's
# postfix-mta-sts-resolver, Google) accept, and a policy is a few hundred bytes.
MAX_POLICY_BYTES = 64 * 1024
# How much of the policy text the snapshot keeps (enough to show any real policy in full).
KEPT_TEXT = 8 * 1024
# RFC 8461 §3.2: max_age is at most 31557600 seconds (about one year).
MAX_AGE_LIMIT = 31_557_600

# RFC 8461 §3.1: records that do not begin with "v=STSv1;" are discarded (the version is case-sensitive).
_STS_VERSION = re.compile(r"^v=STSv1[ \t]*(;|$)")
# RFC 8461 §3.1: sts-id = 1*32(ALPHA / DIGIT).
_STS_ID = re.compile(r"^[A-Za-z0-9]{1,32}$")
# RFC 8461 §3.2: sts-policy-ext-name = (ALPHA / DIGIT) *31(ALPHA / DIGIT / "_" / "-" / ".").
_FIELD_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$")
# RFC 1035 §2.3.1 / RFC 5321 §4.1.2: a label of letters, digits and inner hyphens, 1-63 octets.
_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_MODES = ("enforce", "testing", "none")


def sts_records(answer: DnsAnswer | None) -> list[str]:
    """The ``_mta-sts`` TXT strings that are MTA-STS records; others are discarded (RFC 8461 §3.1)."""
    if answer is None or answer.outcome is not Outcome.ANSWER:
        return []
    return [r for r in answer.records if _STS_VERSION.match(r)]


def sts_record_problems(record: str) -> list[str]:
    """What is wrong with one ``v=STSv1`` TXT record by RFC 8461 §3.1's grammar; empty when it is valid."""
    problems: list[str] = []
    fields = [f.strip(" \t") for f in record.split(";")]
    if fields and fields[-1] == "":
        fields.pop()  # a trailing delimiter is allowed
    ids = []
    for field in fields[1:]:
        name, sep, value = field.partition("=")
        if not sep or not name:
            problems.append(f"field {field[:64]!r} is not name=value")
        elif name == "id":
            ids.append(value)
    if not ids:
        problems.append("no id= field")
    elif not _STS_ID.match(ids[0]):
        problems.append(f"id {ids[0][:64]!r} is not 1 to 32 letters and digits")
    return problems


def is_domain_name(name: str) -> bool:
    """True for an LDH host name of at least two labels (RFC 5321 §4.1.2 Domain), lowercase or not."""
    labels = name.lower().split(".")
    return len(name) <= 253 and len(labels) >= 2 and all(_LABEL.match(label) for label in labels)


def mx_pattern_matches(pattern: str, host: str) -> bool:
    """Whether an MTA-STS ``mx`` pattern matches an MX host (RFC 8461 §4.1): ``*.`` covers one label only."""
    pattern = pattern.lower().rstrip(".")
    host = host.lower().rstrip(".")
    if pattern.startswith("*."):
        first, _, rest = host.partition(".")
        return bool(first) and rest == pattern[2:]
    return host == pattern


class FetchOutcome(enum.Enum):
    """How fetching the policy went; only ``unknown`` says nothing about the domain."""

    FETCHED = "fetched"  # 200, text/plain, within the size limit
    REJECTED = "rejected"  # the host answered, but not with a usable policy (status, redirect, type, size)
    UNREACHABLE = "unreachable"  # no address for the policy host, or the connection was refused or reset
    CERTIFICATE = "certificate"  # the TLS handshake failed: certificate invalid for the host, untrusted, expired
    UNKNOWN = "unknown"  # a DNS failure or a timeout: cannot tell


@dataclass(frozen=True, slots=True)
class MtaStsPolicy:
    """The outcome of fetching one domain's MTA-STS policy, with the text as seen and its parsed fields."""

    url: str
    outcome: FetchOutcome
    reason: str = ""
    address: str = ""
    status: int | None = None
    content_type: str = ""
    size: int = 0
    text: str = ""
    version: str | None = None
    mode: str | None = None
    max_age: int | None = None
    mx: tuple[str, ...] = ()
    problems: tuple[str, ...] = ()

    @property
    def usable(self) -> bool:
        """True when the policy was fetched and is valid, so senders would apply it."""
        return self.outcome is FetchOutcome.FETCHED and not self.problems


@dataclass(frozen=True, slots=True)
class ParsedPolicy:
    """The fields of a policy body (RFC 8461 §3.2) and what is wrong with it."""

    version: str | None
    mode: str | None
    max_age: int | None
    mx: tuple[str, ...]
    problems: tuple[str, ...]


def parse_policy(text: str) -> ParsedPolicy:
    """Parse a policy body by RFC 8461 §3.2; every deviation is named in ``problems``."""
    problems: list[str] = []
    seen: dict[str, str] = {}
    mx: list[str] = []
    # RFC 8461 §3.2: fields end with CRLF or LF; blank lines (a trailing newline, say) are tolerated.
    for number, line in enumerate(text.replace("\r\n", "\n").split("\n"), start=1):
        if not line.strip(" \t"):
            continue
        shown = line[:80]
        if not line.isascii():
            problems.append(f"line {number}: non-ASCII characters in {shown!r}")
            continue
        name, sep, value = line.partition(":")
        value = value.strip(" \t")
        if not sep or not _FIELD_NAME.match(name):
            problems.append(f"line {number}: {shown!r} is not 'name: value'")
            continue
        if name == "mx":
            mx.append(value)
            pattern = value[2:] if value.startswith("*.") else value
            if not is_domain_name(pattern):
                problems.append(f"line {number}: mx {value[:80]!r} is not a host name or '*.' followed by one")
        elif name in seen:
            # RFC 8461 §3.2: only the first instance of a repeated field is used.
            problems.append(f"line {number}: repeated field {name!r} (only the first is used)")
        else:
            seen[name] = value
    version = seen.get("version")
    if version is None:
        problems.append("no 'version' field")
    elif version != "STSv1":
        problems.append(f"version {version[:40]!r} is not 'STSv1'")
    mode = seen.get("mode")
    if mode is None:
        problems.append("no 'mode' field")
    elif mode not in _MODES:
        problems.append(f"mode {mode[:40]!r} is not enforce, testing or none")
    max_age: int | None = None
    raw_age = seen.get("max_age")
    if raw_age is None:
        problems.append("no 'max_age' field")
    elif not (raw_age.isascii() and raw_age.isdigit() and len(raw_age) <= 10):
        problems.append(f"max_age {raw_age[:40]!r} is not 1 to 10 digits")
    else:
        max_age = int(raw_age)
        if max_age > MAX_AGE_LIMIT:
            problems.append(f"max_age {max_age} is over the limit of {MAX_AGE_LIMIT}")
    if not mx and mode in ("enforce", "testing"):
        problems.append(f"mode {mode} but no 'mx' field")
    return ParsedPolicy(version, mode, max_age, tuple(mx), tuple(problems))


def policy_host(domain: str) -> str:
    """The Policy Host of a domain (RFC 8461 §3.3)."""
    return f"mta-sts.{domain}"


class PolicyFetcher:
    """Fetches MTA-STS policies for one run: one TLS context, bounded concurrency, addresses from the run's DNS."""

    def __init__(
        self, *, port: int = 443, ca_bundle: Path | None = None, timeout: float = 10.0, concurrency: int = 16
    ) -> None:
        import asyncio
        import ssl

        self.port = port
        self.timeout = timeout
        # RFC 8461 §3.3: the certificate must be valid for the Policy Host (RFC 6125), chained to a trusted root.
        self._context = ssl.create_default_context(cafile=str(ca_bundle) if ca_bundle is not None else None)
        self._context.minimum_version = ssl.TLSVersion.TLSv1_2  # RFC 8996: nothing older than TLS 1.2
        self._limit = asyncio.Semaphore(concurrency)

    async def fetch_policy(self, domain: str, dns_client: DnsClient) -> MtaStsPolicy:
        """Fetch and parse ``https://mta-sts.<domain>/.well-known/mta-sts.txt`` at the address DNS gives."""
        host = policy_host(domain)
        url = f"https://{host}{'' if self.port == 443 else f':{self.port}'}{POLICY_PATH}"
        address, failure = await _address_of(host, dns_client)
        if address is None:
            outcome, reason = failure
            return MtaStsPolicy(url, outcome, reason)
        async with self._limit:
            return await self._fetch(url, host, address)

    async def _fetch(self, url: str, host: str, address: str) -> MtaStsPolicy:
        # One TLS connection per policy host, never reused for another (the certificate names one host);
        # HTTP/1.1 framing by h11, so the fetch costs a handshake and little else.
        import asyncio
        import ssl

        import h11

        try:
            async with asyncio.timeout(self.timeout):
                status, headers, body = await self._get(host, address)
        except TimeoutError:
            return MtaStsPolicy(url, FetchOutcome.UNKNOWN, f"timed out after {self.timeout:g}s", address)
        except ssl.SSLError as exc:
            return MtaStsPolicy(url, FetchOutcome.CERTIFICATE, f"TLS handshake failed: {_short(exc)}", address)
        except (OSError, EOFError, h11.ProtocolError) as exc:
            return MtaStsPolicy(url, FetchOutcome.UNREACHABLE, f"{type(exc).__name__}: {_short(exc)}", address)
        content_type = headers.get("content-type", "")[:200]
        text = bytes(body[:MAX_POLICY_BYTES]).decode("utf-8", errors="replace")
        seen = MtaStsPolicy(
            url, FetchOutcome.REJECTED, "", address, status, content_type, min(len(body), MAX_POLICY_BYTES + 1),
            text[:KEPT_TEXT],
        )
        if 300 <= status < 400:
            location = headers.get("location", "")[:200]
            return replace(seen, reason=f"HTTP {status} redirect to {location!r} (RFC 8461 §3.3: not followed)")
        if status != 200:
            return replace(seen, reason=f"HTTP {status}; RFC 8461 §3.3 requires 200")
        if len(body) > MAX_POLICY_BYTES:
            return replace(seen, reason=f"the policy is larger than the {MAX_POLICY_BYTES}-byte limit")
        if content_type.partition(";")[0].strip().lower() != "text/plain":
            return replace(seen, reason=f"media type {content_type!r} is not text/plain (RFC 8461 §3.2)")
        parsed = parse_policy(text)
        return replace(
            seen,
            outcome=FetchOutcome.FETCHED,
            version=parsed.version[:40] if parsed.version is not None else None,
            mode=parsed.mode[:40] if parsed.mode is not None else None,
            max_age=parsed.max_age,
            mx=tuple(m[:255] for m in parsed.mx[:100]),
            problems=_bounded(parsed.problems, 50),
        )

    async def _get(self, host: str, address: str) -> tuple[int, dict[str, str], bytearray]:
        """GET the policy from ``address`` with SNI, certificate check and Host naming the Policy Host (RFC 8461 §3.3)."""
        import asyncio

        import h11

        reader, writer = await asyncio.open_connection(
            address, self.port, ssl=self._context, server_hostname=host
        )
        try:
            connection = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_POLICY_BYTES)
            request = h11.Request(method="GET", target=POLICY_PATH, headers=[
                ("Host", host if self.port == 443 else f"{host}:{self.port}"),
                ("Accept", "text/plain"),
                ("Accept-Encoding", "identity"),  # the size limit applies to what is read, uncompressed
                ("Connection", "close"),
                ("User-Agent", "mailwarden"),
            ])
            writer.write(connection.send(request) + connection.send(h11.EndOfMessage()))
            status, headers, body = 0, {}, bytearray()
            while True:
                event = connection.next_event()
                if event is h11.NEED_DATA:
                    connection.receive_data(await reader.read(65536))
                elif isinstance(event, h11.Response):
                    status = event.status_code
                    for name, value in event.headers:  # repeated fields are joined, RFC 9110 §5.3
                        key = name.decode("latin-1")
                        text = value.decode("latin-1")
                        headers[key] = f"{headers[key]}, {text}" if key in headers else text
                elif isinstance(event, h11.Data):
                    body += event.data
                    if len(body) > MAX_POLICY_BYTES:
                        break
                elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                    break
            if not status:
                raise h11.RemoteProtocolError("the connection closed before a response")
            return status, headers, body
        finally:
            writer.transport.abort()  # the answer is read (or given up on): no need to wait for a TLS close


async def _address_of(host: str, dns_client: DnsClient) -> tuple[str | None, tuple[FetchOutcome, str]]:
    """The first IPv4 (else IPv6) address of the policy host, or why there is none."""
    failures = []
    for rdtype in ("A", "AAAA"):
        answer = await dns_client.ask(host, rdtype)
        for record in answer.records if answer.outcome is Outcome.ANSWER else ():
            try:
                return str(ipaddress.ip_address(record)), (FetchOutcome.FETCHED, "")
            except ValueError:
                continue
        if answer.failed:
            failures.append(f"DNS lookup of {host} {rdtype} failed: {answer.error}")
        if answer.outcome is Outcome.NXDOMAIN:
            return None, (FetchOutcome.UNREACHABLE, f"{host} does not exist (NXDOMAIN)")
    if failures:
        return None, (FetchOutcome.UNKNOWN, "; ".join(failures))
    return None, (FetchOutcome.UNREACHABLE, f"{host} has no A or AAAA record")


def _bounded(problems: tuple[str, ...], limit: int) -> tuple[str, ...]:
    """At most ``limit`` problems, the last saying how many more there were."""
    if len(problems) <= limit:
        return problems
    return (*problems[: limit - 1], f"... and {len(problems) - limit + 1} more problems")


def _short(exc: BaseException) -> str:
    """An exception's message on one line, bounded."""
    return " ".join(str(exc).split())[:300] or type(exc).__name__


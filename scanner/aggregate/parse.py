"""DMARC aggregate reports (RFC 7489 Appendix C, RFC 9990): read from files and mail messages, hardened.

A report arrives as XML, gzip or zip of XML, or a mail message carrying one of those as an attachment.
Everything is read as untrusted: decompression stops at ``MAX_XML_BYTES`` (a bomb is refused, and
memory stays bounded), XML is parsed by defusedxml with DTDs forbidden (no entity expansion, no
external entities), and a file that is not a well-formed report is refused with the reason, never
half read.
"""

from __future__ import annotations

import email
import email.policy
import functools
import io
import ipaddress
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import Message
from pathlib import Path
from xml.etree.ElementTree import Element

import defusedxml.ElementTree as safe_xml
from defusedxml import DefusedXmlException

from scanner.errors import MailwardenError

MAX_XML_BYTES = 32 * 1024 * 1024
"""The most a report may decompress to: real aggregate reports are kilobytes to a few megabytes."""
MAX_FILE_BYTES = 64 * 1024 * 1024
"""The most a report file or message may weigh before anything is decompressed."""
MAX_LAYERS = 3
"""How many gzip/zip layers may wrap one report (a zip of a gzip happens; more is not a report)."""
REPORT_SUFFIXES = (".xml", ".gz", ".zip", ".eml", ".msg")
_CHUNK = 1024 * 1024


class ReportError(MailwardenError):
    """A file or message is not a DMARC aggregate report mailwarden can read; says why."""


@dataclass(frozen=True, slots=True)
class AuthResult:
    """One DKIM or SPF result a receiver reports under ``auth_results`` (not the DMARC-aligned verdict)."""

    method: str  # dkim or spf
    domain: str
    result: str
    selector: str = ""
    scope: str = ""


@dataclass(frozen=True, slots=True)
class ReportRecord:
    """One row of a report: a source IP's messages with one set of identifiers and results."""

    source_ip: str
    count: int
    disposition: str
    dkim: str  # policy_evaluated: the DKIM result as DMARC judged it (aligned pass, or fail)
    spf: str  # policy_evaluated: the SPF result as DMARC judged it
    header_from: str
    envelope_from: str = ""
    envelope_to: str = ""
    reasons: tuple[str, ...] = ()
    auth: tuple[AuthResult, ...] = ()

    @property
    def dmarc_pass(self) -> bool:
        """DMARC passes when either identifier passed aligned (RFC 9989 §4.3); results are case-blind."""
        return self.dkim.lower() == "pass" or self.spf.lower() == "pass"


@dataclass(frozen=True, slots=True)
class AggregateReport:
    """One aggregate report: who sent it, for which period and policy, and its records."""

    org_name: str
    report_id: str
    email: str
    begin: datetime
    end: datetime
    policy_domain: str
    policy: dict[str, str] = field(default_factory=dict)
    records: tuple[ReportRecord, ...] = ()
    schema: str = ""  # the XML namespace, "" for RFC 7489 reports without one


def read_report_file(path: Path) -> list[AggregateReport]:
    """The reports in one file (a message may carry several); ``ReportError`` when it holds none."""
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise ReportError(f"{size} bytes: larger than a report file may be ({MAX_FILE_BYTES} bytes)")
        data = path.read_bytes()
    except OSError as exc:
        raise ReportError(f"cannot read it ({exc.strerror})") from None
    return read_report_bytes(data, path.name)


def read_report_bytes(data: bytes, name: str = "") -> list[AggregateReport]:
    """The reports in a file's bytes: XML, gzip, zip, or a mail message carrying them."""
    if not data.strip():
        raise ReportError("empty file")
    if data[:4] == b"\xd0\xcf\x11\xe0":
        raise ReportError("an Outlook .msg file (OLE format), not a mail message: save the message as .eml")
    if _is_message(data, name):
        return read_report_message(email.message_from_bytes(data, policy=email.policy.compat32))
    return [parse_report(unwrap(data))]


def read_report_message(message: Message) -> list[AggregateReport]:
    """The reports attached to (or making up the body of) one mail message."""
    reports, problems = [], []
    for part in message.walk():
        if part.is_multipart():
            continue
        payload = part.get_payload(decode=True)
        if not isinstance(payload, bytes) or not payload.strip():
            continue
        filename = (part.get_filename() or "").lower()
        kind = part.get_content_type()
        if not (_looks_compressed(payload) or payload.lstrip()[:1] == b"<" or filename.endswith(REPORT_SUFFIXES)):
            continue
        if kind.startswith("text/") and not filename and payload.lstrip()[:1] != b"<":
            continue  # the human-readable body
        try:
            reports.append(parse_report(unwrap(payload)))
        except ReportError as exc:
            problems.append(f"{filename or kind}: {exc}")
    if reports:
        return reports
    if problems:
        raise ReportError("; ".join(problems))
    raise ReportError("a mail message with no DMARC report attached")


def unwrap(data: bytes) -> bytes:
    """The XML inside up to ``MAX_LAYERS`` of gzip or zip, never more than ``MAX_XML_BYTES`` of it."""
    for _ in range(MAX_LAYERS + 1):
        if data[:2] == b"\x1f\x8b":
            data = _gunzip(data)
        elif data[:4] == b"PK\x03\x04":
            data = _unzip(data)
        else:
            return data
    raise ReportError(f"more than {MAX_LAYERS} layers of compression")


def _bounded_read(stream: zipfile.ZipExtFile) -> bytes:
    out = bytearray()
    while chunk := stream.read(_CHUNK):
        out += chunk
        if len(out) > MAX_XML_BYTES:
            raise ReportError(f"decompresses to more than {MAX_XML_BYTES} bytes (a compression bomb?)")
    return bytes(out)


def _gunzip(data: bytes) -> bytes:
    """Every gzip member's content, bounded; trailing line ends or NULs after the last member are tolerated
    (some reporters append a CRLF to the gzip data), anything else after it is refused."""
    out = bytearray()
    rest = data
    while rest:
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            piece = inflater.decompress(rest, MAX_XML_BYTES + 1 - len(out))
            out += piece
            while inflater.unconsumed_tail and len(out) <= MAX_XML_BYTES:
                out += inflater.decompress(inflater.unconsumed_tail, MAX_XML_BYTES + 1 - len(out))
        except zlib.error as exc:
            raise ReportError(f"not a readable gzip file ({exc})") from None
        if len(out) > MAX_XML_BYTES:
            raise ReportError(f"decompresses to more than {MAX_XML_BYTES} bytes (a compression bomb?)")
        if not inflater.eof:
            raise ReportError("not a readable gzip file (it ends before its compressed data does: truncated)")
        rest = inflater.unused_data
        if rest.strip(b"\r\n\t \x00") == b"":
            break
        if rest[:2] != b"\x1f\x8b":
            raise ReportError("not a readable gzip file (other data follows the compressed report)")
    return bytes(out)


def _unzip(data: bytes) -> bytes:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            members = [m for m in archive.infolist() if not m.is_dir()]
            xml = [m for m in members if m.filename.lower().endswith((".xml", ".gz"))] or members
            if len(xml) != 1:
                raise ReportError(f"a zip file with {len(xml)} candidate report members (expected one)")
            with archive.open(xml[0]) as stream:  # the declared size can lie: read bounded, not by it
                return _bounded_read(stream)
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error, NotImplementedError) as exc:
        raise ReportError(f"not a readable zip file ({exc or type(exc).__name__})") from None


def _looks_compressed(data: bytes) -> bool:
    return data[:2] == b"\x1f\x8b" or data[:4] == b"PK\x03\x04"


def _is_message(data: bytes, name: str) -> bool:
    if name.lower().endswith((".eml", ".msg")):
        return True
    if _looks_compressed(data) or data.lstrip()[:1] == b"<" or data[:3] == b"\xef\xbb\xbf":
        return False
    head = data[:4096].lower()
    return b"\ncontent-type:" in b"\n" + head or b"\nmime-version:" in b"\n" + head


@functools.lru_cache(maxsize=1024)
def _local(tag: object) -> str:
    """A tag's local name in lower case (namespace and case vary between reporters); tags repeat, so cached."""
    text = tag if isinstance(tag, str) else ""
    return text.rpartition("}")[2].lower()


def _child(parent: Element | None, name: str) -> Element | None:
    if parent is None:
        return None
    for child in parent:
        if _local(child.tag) == name:
            return child
    return None


def _children(parent: Element | None, name: str) -> Iterator[Element]:
    if parent is not None:
        for child in parent:
            if _local(child.tag) == name:
                yield child


def _text(parent: Element | None, *path: str) -> str:
    node = parent
    for name in path:
        node = _child(node, name)
    return (node.text or "").strip() if node is not None else ""


def parse_report(xml: bytes) -> AggregateReport:
    """One report from its XML (either schema; tag names compared without namespace or case)."""
    try:
        root = safe_xml.fromstring(xml, forbid_dtd=True)
    except DefusedXmlException as exc:
        raise ReportError(f"refused: the XML declares a DTD or entities ({type(exc).__name__})") from None
    except safe_xml.ParseError as exc:
        raise ReportError(f"not well-formed XML ({exc})") from None
    except ValueError as exc:
        raise ReportError(f"not readable XML ({exc})") from None
    if _local(root.tag) != "feedback":
        raise ReportError(f"not a DMARC aggregate report: the root element is <{_local(root.tag)}>, not <feedback>")
    metadata = _child(root, "report_metadata")
    org, report_id = _text(metadata, "org_name"), _text(metadata, "report_id")
    if not report_id:
        raise ReportError("no report_id in report_metadata")
    begin = _moment(_text(metadata, "date_range", "begin"), "begin")
    end = _moment(_text(metadata, "date_range", "end"), "end")
    published = _child(root, "policy_published")
    policy = {_local(c.tag): (c.text or "").strip() for c in published} if published is not None else {}
    domain = policy.get("domain", "").lower().rstrip(".")
    if not domain:
        raise ReportError("no domain in policy_published")
    records = tuple(_record(node, index) for index, node in enumerate(_children(root, "record"), start=1))
    namespace = root.tag[1:].partition("}")[0] if isinstance(root.tag, str) and root.tag.startswith("{") else ""
    return AggregateReport(org, report_id, _text(metadata, "email"), begin, end, domain, policy, records, namespace)


def _moment(text: str, name: str) -> datetime:
    try:
        return datetime.fromtimestamp(int(text), UTC)
    except (ValueError, OverflowError, OSError):
        raise ReportError(f"date_range {name} {text!r} is not a time in seconds since 1970") from None


def _record(node: Element, index: int) -> ReportRecord:
    row = _child(node, "row")
    ip = _text(row, "source_ip")
    try:
        ip = str(ipaddress.ip_address(ip))
    except ValueError:
        raise ReportError(f"record {index}: source_ip {ip!r} is not an IP address") from None
    try:
        count = int(_text(row, "count"))
        if count < 0:
            raise ValueError
    except ValueError:
        raise ReportError(f"record {index}: count {_text(row, 'count')!r} is not a number of messages") from None
    evaluated = _child(row, "policy_evaluated")
    identifiers = _child(node, "identifiers")
    reasons = tuple(
        " ".join(filter(None, (_text(r, "type"), _text(r, "comment")))) for r in _children(evaluated, "reason")
    )
    auth = tuple(
        AuthResult(_local(result.tag), _text(result, "domain").lower(), _text(result, "result").lower(),
                   _text(result, "selector"), _text(result, "scope"))
        for results in _children(node, "auth_results") for result in results
        if _local(result.tag) in ("dkim", "spf")
    )
    return ReportRecord(
        source_ip=ip, count=count, disposition=_text(evaluated, "disposition").lower(),
        dkim=_text(evaluated, "dkim").lower(), spf=_text(evaluated, "spf").lower(),
        header_from=_text(identifiers, "header_from").lower().rstrip("."),
        envelope_from=_text(identifiers, "envelope_from").lower(),
        envelope_to=_text(identifiers, "envelope_to").lower(), reasons=tuple(r for r in reasons if r), auth=auth,
    )

"""Importing DMARC aggregate reports into the store: from folders of files and from the rua mailbox over IMAP.

Each file or message is read on its own: a bad one is reported with its reason and every other one is
still imported. A report already stored (same reporting org and report id) is skipped, so importing
twice changes nothing. After an import, the source IPs without a recent PTR look-up are resolved.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import imaplib
import ipaddress
import logging
import re
import ssl
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dns.reversename

from scanner.config import Config, ImapConfig
from scanner.aggregate.parse import REPORT_SUFFIXES, ReportError, read_report_file, read_report_message
from scanner.aggregate.store import ReportWriter, save_ptr_names, unresolved_ips
from scanner.dns.client import DnsClient
from scanner.errors import MailwardenError
from scanner.model import Outcome
from scanner.store.database import Store

log = logging.getLogger(__name__)

PTR_MAX_AGE = timedelta(days=7)
"""How long a PTR look-up is kept before the source IP is looked up again."""
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


class ImapError(MailwardenError):
    """The rua mailbox could not be read; says which server and why (never the password)."""


@dataclass(slots=True)
class ImportResult:
    """What one import read: files or messages, reports stored and skipped, and each problem by name."""

    read: int = 0
    stored: int = 0
    skipped: int = 0
    records: int = 0
    problems: list[tuple[str, str]] = field(default_factory=list)

    def merge(self, other: ImportResult) -> None:
        """Add another import's figures to this one."""
        self.read += other.read
        self.stored += other.stored
        self.skipped += other.skipped
        self.records += other.records
        self.problems.extend(other.problems)


def report_paths(paths: Sequence[Path]) -> list[Path]:
    """The files to read: each named file, and the report files (by suffix) under each named folder."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found.extend(sorted(p for p in path.rglob("*")
                                if p.is_file() and p.name.lower().endswith(REPORT_SUFFIXES)))
        else:
            found.append(path)
    return found


def import_files(store: Store, paths: Sequence[Path], now: datetime | None = None) -> ImportResult:
    """Read every report file under ``paths`` and store the reports not stored yet."""
    result = ImportResult()
    with ReportWriter(store, now=now) as writer:
        for path in report_paths(paths):
            result.read += 1
            if not path.exists():
                result.problems.append((str(path), "no such file or folder"))
                continue
            try:
                reports = read_report_file(path)
            except ReportError as exc:
                result.problems.append((str(path), str(exc)))
                continue
            for report in reports:
                if writer.add(report, str(path)):
                    result.stored += 1
                    result.records += len(report.records)
                else:
                    result.skipped += 1
    return result


def _context(config: ImapConfig, source: Path) -> ssl.SSLContext:
    context = ssl.create_default_context()
    if config.ca_bundle is not None:
        bundle = config.ca_bundle if config.ca_bundle.is_absolute() else source.parent / config.ca_bundle
        try:
            context.load_verify_locations(cafile=str(bundle))
        except (OSError, ssl.SSLError) as exc:
            raise ImapError(f"dmarc_reports.imap.ca_bundle: cannot load {bundle} ({exc})") from None
    return context


def _connect(config: ImapConfig, source: Path) -> imaplib.IMAP4:
    where = f"{config.host}:{config.port}"
    try:
        if config.tls == "implicit":
            client: imaplib.IMAP4 = imaplib.IMAP4_SSL(config.host, config.port, ssl_context=_context(config, source),
                                                       timeout=config.timeout)
        else:
            client = imaplib.IMAP4(config.host, config.port, timeout=config.timeout)
            if config.tls == "starttls":
                client.starttls(ssl_context=_context(config, source))
        client.login(config.username, config.password.resolve())
    except imaplib.IMAP4.error as exc:
        raise ImapError(f"IMAP server {where} refused user {config.username!r}: {_said(exc)}") from None
    except (OSError, ssl.SSLError) as exc:
        raise ImapError(f"cannot reach the IMAP server {where}: {exc}") from None
    return client


def _said(exc: BaseException) -> str:
    text = str(exc)
    if isinstance(exc.args[0] if exc.args else None, bytes):
        text = exc.args[0].decode("utf-8", "replace")
    return text[:200]


def _check(answer: tuple[str, list[object]], what: str) -> list[object]:
    status, data = answer
    if status != "OK":
        detail = b" ".join(d for d in data if isinstance(d, bytes)).decode("utf-8", "replace")[:200]
        raise ImapError(f"IMAP {what} failed: {status} {detail}")
    return data


def _quote(folder: str) -> str:
    # RFC 3501 §4.3: a quoted string escapes only the backslash and the double quote.
    return '"' + folder.replace("\\", "\\\\").replace('"', '\\"') + '"'


def import_mailbox(store: Store, config: ImapConfig, source: Path, now: datetime | None = None) -> ImportResult:
    """Read every message in the configured folder; with ``archive_folder``, move each one read into it.

    A message whose reports were stored (or were already stored) is archived; one that holds no readable
    report stays where it is and is reported, so nothing is lost.
    """
    result = ImportResult()
    client = _connect(config, source)
    where = f"imap://{config.host}:{config.port}/{config.folder}"
    try:
        _check(client.select(_quote(config.folder)), f"SELECT {config.folder}")
        uids = b" ".join(d for d in _check(client.uid("SEARCH", "ALL"), "SEARCH") if isinstance(d, bytes)).split()
        done: list[bytes] = []
        for uid in uids:
            data = _check(client.uid("FETCH", uid, "(RFC822.SIZE BODY.PEEK[])"), f"FETCH {uid.decode()}")
            raw = next((part[1] for part in data if isinstance(part, tuple) and len(part) == 2), b"")
            name = f"{where};UID={uid.decode()}"
            result.read += 1
            if not isinstance(raw, bytes) or len(raw) > MAX_MESSAGE_BYTES:
                result.problems.append((name, "empty or larger than a report message may be"))
                continue
            message = email.message_from_bytes(raw, policy=email.policy.compat32)
            subject = str(message.get("Subject", ""))[:120]
            try:
                reports = read_report_message(message)
            except ReportError as exc:
                result.problems.append((f"{name} ({subject})", str(exc)))
                continue
            with ReportWriter(store, now=now) as writer:  # stored before the message is archived
                for report in reports:
                    if writer.add(report, name):
                        result.stored += 1
                        result.records += len(report.records)
                    else:
                        result.skipped += 1
            done.append(uid)
        if config.archive_folder and done:
            _archive(client, done, config.archive_folder)
    except imaplib.IMAP4.error as exc:
        raise ImapError(f"IMAP server {config.host}:{config.port}: {_said(exc)}") from None
    except OSError as exc:
        raise ImapError(f"IMAP server {config.host}:{config.port}: connection lost ({exc})") from None
    finally:
        try:
            client.logout()
        except (imaplib.IMAP4.error, OSError):
            pass
    return result


def _archive(client: imaplib.IMAP4, uids: Sequence[bytes], folder: str) -> None:
    """Move messages to the archive folder: UID MOVE (RFC 6851) where offered, else COPY, flag and expunge."""
    wanted = b",".join(uids).decode()
    capabilities = {c.upper() for c in getattr(client, "capabilities", ())}
    if "MOVE" in capabilities:
        _check(client.uid("MOVE", wanted, _quote(folder)), f"MOVE to {folder}")
        return
    _check(client.uid("COPY", wanted, _quote(folder)), f"COPY to {folder}")
    _check(client.uid("STORE", wanted, "+FLAGS.SILENT", r"(\Deleted)"), "STORE \\Deleted")
    _check(client.expunge(), "EXPUNGE")


async def _reverse(client: DnsClient, ips: Iterable[str]) -> list[tuple[str, str, str]]:
    """Each IP's PTR name, and whether it is forward-confirmed: the name's A/AAAA records include the IP.

    Anyone who holds an address block sets its PTR names, so a spoofer can name its host
    ``mail-x.google.com``; only a confirmed name may map a source to a sender.
    """
    async def one(ip: str) -> tuple[str, str, str]:
        answer = await client.lookup(dns.reversename.from_address(ip).to_text(omit_final_dot=True), "PTR")
        if answer.outcome is Outcome.FAILED:
            return ip, "", "failed"
        names = sorted(r.rstrip(".").lower() for r in answer.records) if answer.outcome is Outcome.ANSWER else []
        if not names:
            return ip, "", "absent"
        address = ipaddress.ip_address(ip)
        for name in names:
            forward = await client.lookup(name, "AAAA" if address.version == 6 else "A")
            if any(_same(address, record) for record in forward.records):
                return ip, name, "confirmed"
        return ip, names[0], "unconfirmed"

    return await asyncio.gather(*(one(ip) for ip in ips))


def _same(address: ipaddress.IPv4Address | ipaddress.IPv6Address, record: str) -> bool:
    try:
        return ipaddress.ip_address(record) == address
    except ValueError:
        return False


def resolve_sources(store: Store, config: Config, now: datetime | None = None) -> int:
    """Look up the PTR name of every source IP without a recent look-up; returns how many were asked."""
    now = now or datetime.now(UTC)
    ips = [ip for ip in unresolved_ips(store, now - PTR_MAX_AGE) if _routable(ip)]
    if not ips:
        return 0
    client = DnsClient(config.dns.nameservers, timeout=config.dns.timeout, concurrency=config.dns.concurrency)
    answers = asyncio.run(_reverse(client, ips))
    # A failed look-up is not stored as "no PTR": it is asked again next time.
    save_ptr_names(store, [a for a in answers if a[2] != "failed"], now)
    return len(ips)


def _routable(ip: str) -> bool:
    address = ipaddress.ip_address(ip)
    return not (address.is_unspecified or address.is_multicast)


def run_import(store: Store, config: Config, paths: Sequence[Path] = (), *, mailbox: bool = True,
               now: datetime | None = None) -> ImportResult:
    """The whole import: the paths given (else the configured folders), the IMAP mailbox, then PTR names."""
    settings = config.dmarc_reports
    chosen = list(paths) or ([config.resolve_path(p) for p in settings.paths] if settings else [])
    result = import_files(store, chosen, now)
    if mailbox and not paths and settings is not None and settings.imap is not None:
        try:
            result.merge(import_mailbox(store, settings.imap, config.source, now))
        except ImapError as exc:
            log.warning("the rua mailbox could not be read: %s", exc, extra={"event": "dmarc.imap_failed"})
            result.problems.append((f"imap://{settings.imap.host}:{settings.imap.port}/{settings.imap.folder}",
                                    str(exc)))
    resolve_sources(store, config, now)
    return result


_SAFE = re.compile(r"[\x00-\x1f\x7f]")


def printable(text: str) -> str:
    """A file name or reason safe to print on one terminal line."""
    return _SAFE.sub("?", text)

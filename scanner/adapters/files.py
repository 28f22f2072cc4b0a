"""The files adapter: a tenant's mailboxes, forwards, invites and catch-all from export files (CSV or JSON)."""

from __future__ import annotations

import codecs
import csv
import fcntl
import io
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import Any, TypeVar

from scanner.adapters.base import Collected, Emit, Refused, emit_all
from scanner.adapters.scopes import GOOGLE, GRAPH, mail_access
from scanner.config import Config, TenantConfig
from scanner.errors import AdapterError
from scanner.model import (
    Coverage,
    Fact,
    FactState,
    Forward,
    ForwardMechanism,
    Grant,
    GrantKind,
    Invite,
    MailAccess,
    Mailbox,
    MailboxKind,
    MailboxStatus,
    Person,
    Recovery,
    RecoveryKind,
    Tenant,
)

FILES = ("mailboxes", "forwards", "invites", "domains", "grants", "recovery")

MAILBOX_FACTS = (
    Fact.MAILBOX_LIST,
    Fact.MAILBOX_FORWARDS,
    Fact.MAILBOX_OWNERS,
    Fact.MAILBOX_DELEGATES,
    Fact.MAILBOX_LAST_LOGIN,
    Fact.MAILBOX_INVITES,
)
"""The facts that come from mailboxes.csv (forwards and invites are joined to its rows)."""

REQUIRED = {
    "mailboxes": ("address", "kind", "status"),
    "forwards": ("mailbox", "target"),
    "invites": ("address", "sent"),
    "domains": ("domain", "catch_all"),
    "roster": ("email", "left"),
    "grants": ("mailbox", "kind", "client"),
    "recovery": ("mailbox", "kind", "value"),
}
"""The columns without which a file's facts cannot be judged; a file missing one is refused, never defaulted."""

STANDING_FACTS = (Fact.MAILBOX_LIST, Fact.MAILBOX_OWNERS, Fact.MAILBOX_LAST_LOGIN)
"""What a mailbox's ``kind`` and ``status`` decide: which account and owner checks apply to it at all."""


_T = TypeVar("_T")


class RowError(ValueError):
    """One row of an export file is malformed."""


class ExportFileError(AdapterError):
    """An export file cannot be used at all: empty, cut short, not UTF-8 text, binary, of the wrong shape, or
    missing (or repeating) a column; the message starts with ``file:line`` or the file."""


@dataclass(frozen=True, slots=True)
class Table:
    """An export file: its columns and each row with its location (``file:line`` or ``file: item N``).

    A row that could not be read at all (a CSV row with the wrong number of fields, a JSON entry that is not
    an object) has ``row`` None and ``invalid`` saying why. From ``open_table`` the rows can be iterated once,
    and iterating them may raise ``ExportFileError`` (the file turns out broken or cut short further down).
    """

    path: Path
    columns: tuple[str, ...]
    rows: Iterable[tuple[str, dict[str, Any] | None, str]]


def _find(directory: Path, stem: str) -> Path | None:
    for suffix in (".csv", ".json"):
        path = directory / f"{stem}{suffix}"
        if path.is_file():
            return path
    return None


def _text_of(path: Path) -> str:
    """The file as text; empty, binary and non-UTF-8 files are refused naming the line."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ExportFileError(f"{path}: cannot read the export file ({exc.strerror})") from None
    data = data.removeprefix(codecs.BOM_UTF8)
    if not data.strip():
        raise ExportFileError(f"{path}: the file is empty (even an export with no rows has its header row)")
    if b"\x00" in data:
        line = data.count(b"\n", 0, data.index(b"\x00")) + 1
        raise ExportFileError(f"{path}:{line}: a NUL byte: this is a binary file, not CSV or JSON text")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ExportFileError(
            f"{path}:{line}: not UTF-8 text (byte 0x{data[exc.start]:02x}): export the file as UTF-8"
        ) from None


def _records(path: Path, text: str) -> Iterator[tuple[int, list[str]]]:
    """The non-empty CSV records with their line numbers; a broken quote refuses the file at that line."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        for record in reader:
            if record:
                yield reader.line_num, record
    except csv.Error as exc:
        # The csv module stops at the first broken quote; a quote still open at the end is a cut file.
        what = "the file ends inside a quoted cell (cut short?)" if "end of data" in str(exc) else str(exc)
        raise ExportFileError(f"{path}:{reader.line_num}: {what}") from None


def _csv_table(path: Path, text: str) -> Table:
    """The header read at once, the rows as they are parsed (a big export is never held as rows)."""
    records = _records(path, text)
    _, header = next(records)
    columns = [name.strip() for name in header]
    for index, name in enumerate(columns):
        if name and name in columns[:index]:
            raise ExportFileError(f"{path}:1: the column {name!r} appears twice: which one holds the data is unknown")
    return Table(path, tuple(c for c in columns if c), _csv_rows(path, text, columns, records))


def _csv_rows(path: Path, text: str, columns: list[str], records: Iterator[tuple[int, list[str]]]
              ) -> Iterator[tuple[str, dict[str, Any] | None, str]]:
    # Each record is yielded once the next one is parsed, so the last (cut short?) is known to be the last.
    held = next(records, None)
    while held is not None:
        (line, record), held = held, next(records, None)
        location = f"{path}:{line}"
        if len(record) != len(columns):
            if held is None and len(record) < len(columns) and not text.endswith(("\n", "\r")):
                raise ExportFileError(
                    f"{location}: the last row has {len(record)} of {len(columns)} fields and no line end: "
                    "the file is cut short"
                )
            yield location, None, f"{len(record)} fields where the header has {len(columns)}"
            continue
        yield location, {k: v for k, v in zip(columns, record, strict=True) if k}, ""


REPEATED = "\x00repeated"


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object; a key given twice is kept apart so the entry can be refused rather than the last win."""
    keys = [k for k, _ in pairs]
    repeated = sorted({k for k in keys if keys.count(k) > 1})
    return {REPEATED: repeated} if repeated else dict(pairs)


def _json_table(path: Path, text: str) -> Table:
    try:
        data = json.loads(text, object_pairs_hook=_pairs)
    except json.JSONDecodeError as exc:
        raise ExportFileError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg}; a file cut short ends so)") from None
    if not isinstance(data, list):
        raise ExportFileError(f"{path}: expected a JSON list of objects, found {_json_kind(data)}")
    rows: list[tuple[str, dict[str, Any] | None, str]] = []
    columns: dict[str, None] = {}
    for index, item in enumerate(data, start=1):
        location = f"{path}: item {index}"
        if not isinstance(item, dict):
            rows.append((location, None, f"expected an object, found {_json_kind(item)}"))
        elif REPEATED in item:
            rows.append((location, None, f"the key {item[REPEATED][0]!r} appears twice"))
        else:
            columns.update(dict.fromkeys(k.strip() for k in item))
            rows.append((location, {k.strip(): v for k, v in item.items()}, ""))
    return Table(path, tuple(columns), tuple(rows))


def _json_kind(value: object) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "a list",
            dict: "an object"}.get(type(value), type(value).__name__)


def open_table(path: Path, required: tuple[str, ...] = ()) -> Table:
    """A CSV (with a header row) or JSON (a list of objects) export file, refused whole when it cannot be trusted.

    Refused (``ExportFileError``): an empty file, one cut short, not UTF-8, binary, not a list of objects, a
    repeated column, or a missing ``required`` column. A header alone (or ``[]``) is a file with no rows.
    A CSV file's rows are parsed as they are iterated, so what is wrong further down (a broken quote, a cut
    last row) is raised from the iteration: a caller keeps nothing of a file until its last row is read.
    """
    text = _text_of(path)
    table = _json_table(path, text) if path.suffix == ".json" else _csv_table(path, text)
    missing = [c for c in required if c not in table.columns]
    # A JSON list holding no object has no keys to look at: its entries are refused one by one instead.
    # (A JSON file's rows are a tuple, read whole with its columns; a CSV file's are not looked at here.)
    if missing and (path.suffix != ".json" or any(row is not None for _, row, _ in table.rows)):
        found = ", ".join(table.columns) or "none"
        raise ExportFileError(f"{path}: no {', '.join(repr(c) for c in missing)} column (columns found: {found})")
    return table


def read_table(path: Path, required: tuple[str, ...] = ()) -> Table:
    """``open_table`` with every row read, so nothing is raised later and the rows can be read again."""
    table = open_table(path, required)
    return replace(table, rows=tuple(table.rows))


def read_rows(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """Each readable row of an export file with its location; raises ``ExportFileError`` for a file refused whole."""
    for location, row, _ in open_table(path).rows:
        if row is not None:
            yield location, row


def _text(row: dict[str, Any], key: str, *, required: bool = False) -> str:
    value = row.get(key)
    if isinstance(value, str):
        value = value.strip()
        if value:
            return value
    elif value is not None:
        raise RowError(f"{key!r} must be text")
    if required:
        raise RowError(f"missing {key!r}")
    return ""


WHITESPACE = re.compile(r"\s")
"""Any whitespace character (what ``str.isspace`` calls one), found in C rather than a character at a time."""


def _address(row: dict[str, Any], key: str) -> str:
    value = _text(row, key, required=True).lower()
    local, at, domain = value.rpartition("@")
    if not at or not local or "." not in domain or WHITESPACE.search(value):
        raise RowError(f"{key!r} is not an email address: {value[:80]!r}")
    return value


def _addresses(row: dict[str, Any], key: str) -> tuple[str, ...]:
    value = row.get(key)
    if value is None or value == "":
        return ()
    if not isinstance(value, str | list):
        raise RowError(f"{key!r} must be addresses separated by ';' (or a JSON list of them)")
    items = value if isinstance(value, list) else value.replace(",", ";").split(";")
    result = []
    for item in items:
        if not isinstance(item, str):
            raise RowError(f"{key!r} holds {str(item)[:80]!r}, which is not an email address")
        item = item.strip().lower()
        if not item:
            continue
        if "@" not in item:
            raise RowError(f"{key!r} holds {item[:80]!r}, which is not an email address")
        result.append(item)
    return tuple(result)


def _when(row: dict[str, Any], key: str) -> datetime | None:
    value = _text(row, key)
    if not value:
        return None
    try:
        if len(value) == 10:
            return datetime.combine(date.fromisoformat(value), time(), UTC)
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise RowError(f"{key!r} is not an ISO 8601 date: {value[:40]!r}") from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def _enum(row: dict[str, Any], key: str, kind: type[Any], default: Any) -> Any:
    value = _text(row, key, required=default is None).lower()
    if not value:
        return default
    try:
        return kind(value)
    except ValueError:
        allowed = ", ".join(m.value for m in kind)
        raise RowError(f"{key!r} is {value[:40]!r}; expected one of: {allowed}") from None


@dataclass
class _Reading:
    """Accumulates what one tenant's export files say, and every problem found on the way."""

    tenant: Tenant
    problems: list[str] = field(default_factory=list)
    coverage: list[Coverage] = field(default_factory=list)

    def whole(self, path: Path, stem: str, facts: tuple[Fact, ...], judge: Callable[[Table], _T]) -> _T | None:
        """What ``judge`` makes of the file's rows, read one at a time; None (a problem, and ``facts`` failed
        for the tenant) when the file is refused, and when that is found further down, the problems and
        coverage its earlier rows gave are taken back: a refused file says nothing but why."""
        problems, coverage = len(self.problems), len(self.coverage)
        try:
            return judge(open_table(path, REQUIRED[stem]))
        except ExportFileError as exc:
            del self.problems[problems:], self.coverage[coverage:]
            self.problems.append(str(exc))
            for fact in facts:
                self.cover(fact, FactState.FAILED, str(exc))
            return None

    def cover(self, fact: Fact, state: FactState, reason: str = "", subject: str = "") -> None:
        self.coverage.append(Coverage(self.tenant.name, fact, state, reason, subject))

    def failed(self, fact: Fact) -> bool:
        """True when the fact already failed for the whole tenant."""
        return any(c.fact is fact and not c.subject and c.state is FactState.FAILED for c in self.coverage)


class FilesAdapter:
    """Reads export files from one directory; see the README for the format."""

    name = "files"
    capabilities = frozenset((*MAILBOX_FACTS, Fact.DOMAIN_CATCH_ALL, Fact.MAILBOX_OAUTH_GRANTS,
                              Fact.MAILBOX_APP_PASSWORDS, Fact.MAILBOX_RECOVERY))

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    async def collect(self, tenant: Tenant, emit: Emit) -> Collected:
        """Read the export directory; bad rows are reported by file and line and the rest is kept.

        Each file is parsed a row at a time (never held as rows); the mailboxes are held until the files that join
        them by address (forwards, invites, grants, recovery) are read, then sent in pages.
        """
        collected = self.read(tenant)
        await emit_all(emit, collected.mailboxes)
        return replace(collected, mailboxes=())

    def read(self, tenant: Tenant) -> Collected:
        """The synchronous body of ``collect``.

        A file refused whole makes the facts it gives ``failed`` for the tenant (a problem: the tenant is
        partial, so nothing is taken as removed or resolved); a bad cell fails only the facts it gives, for
        its mailbox or domain.
        """
        if not self.directory.is_dir():
            raise AdapterError(f"export directory {self.directory} does not exist")
        reading = _Reading(tenant)
        path = _find(self.directory, "mailboxes")
        if path is None:
            raise AdapterError(f"{self.directory}: no mailboxes.csv or mailboxes.json")
        read = reading.whole(path, "mailboxes", MAILBOX_FACTS, lambda table: (table, self._mailboxes(reading, table)))
        if read is None:
            # Forwards and invites hang on the mailbox rows: without them neither can be placed.
            return Collected((), self._catch_all(reading), tuple(reading.coverage), tuple(reading.problems))
        table, mailboxes = read
        reading.cover(Fact.MAILBOX_LIST, FactState.COLLECTED)
        for fact, column in (
            (Fact.MAILBOX_OWNERS, "owners"),
            (Fact.MAILBOX_DELEGATES, "delegates"),
            (Fact.MAILBOX_LAST_LOGIN, "last_login"),
        ):
            if column in table.columns:
                reading.cover(fact, FactState.COLLECTED)
            else:
                reading.cover(fact, FactState.UNSUPPORTED, f"{path.name} has no {column!r} column")
        forwards = self._forwards(reading, mailboxes)
        invites = self._invites(reading, mailboxes)
        catch_all = self._catch_all(reading)
        grants = self._grants(reading, mailboxes)
        recovery = self._recovery(reading, mailboxes)
        result = tuple(
            _with_access(_with(m, forwards.get(m.address, ()), invites.get(m.address)), grants.get(m.address, ()),
                         recovery.get(m.address, ()))
            for m in mailboxes.values()
        )
        return Collected(result, catch_all, tuple(reading.coverage), tuple(reading.problems))

    def _mailboxes(self, reading: _Reading, table: Table) -> dict[str, Mailbox]:
        mailboxes: dict[str, Mailbox] = {}
        for location, row, invalid in table.rows:
            if row is None:
                reading.problems.append(f"{location}: {invalid}")
                continue
            try:
                address = _address(row, "address")
                if address in mailboxes:
                    raise RowError(f"mailbox {address} is listed twice; the first row is kept")
            except RowError as exc:
                reading.problems.append(f"{location}: {exc}")
                continue
            unknown: dict[Fact, str] = {}

            def cell(read: Callable[[], Any], facts: tuple[Fact, ...], fallback: Any) -> Any:
                """One cell's value; a bad cell is a problem and fails only the facts it gives, for this mailbox."""
                try:
                    return read()
                except RowError as exc:
                    reading.problems.append(f"{location}: {exc}")
                    for fact in facts:
                        unknown.setdefault(fact, f"{location}: {exc}")
                    return fallback

            mailboxes[address] = Mailbox(
                tenant=reading.tenant.name,
                address=address,
                kind=cell(lambda: _enum(row, "kind", MailboxKind, None), STANDING_FACTS, MailboxKind.USER),
                status=cell(lambda: _enum(row, "status", MailboxStatus, None), STANDING_FACTS, MailboxStatus.ACTIVE),
                display_name=cell(lambda: _text(row, "display_name"), (), ""),
                # account.never_used judges the creation date under the sign-in fact
                created=cell(lambda: _when(row, "created"), (Fact.MAILBOX_LAST_LOGIN,), None),
                last_login=cell(lambda: _when(row, "last_login"), (Fact.MAILBOX_LAST_LOGIN,), None),
                owners=cell(lambda: _addresses(row, "owners"), (Fact.MAILBOX_OWNERS,), ()),
                delegates=cell(lambda: _addresses(row, "delegates"), (Fact.MAILBOX_DELEGATES,), ()),
            )
            for fact, why in unknown.items():
                reading.cover(fact, FactState.FAILED, why, subject=address)
        return mailboxes

    def _joined(self, reading: _Reading, stem: str, facts: tuple[Fact, ...], key: str,
                mailboxes: Mapping[str, Mailbox], parse: Callable[[dict[str, Any]], _T]) -> dict[str, tuple[_T, ...]]:
        """What ``parse`` makes of each row of the file ``stem`` that joins the mailboxes by the address in ``key``,
        by mailbox; the facts it gives are unsupported without the file and failed for the tenant when it is
        refused whole (``_Reading.whole``).

        A row that cannot be read, or names no address, fails ``facts`` for the tenant: whose row it was is
        unknown, so no mailbox's list is known to be complete. A row naming a mailbox the export lacks, or with a
        bad cell, fails them for that mailbox only."""
        path = _find(self.directory, stem)
        if path is None:
            for fact in facts:
                reading.cover(fact, FactState.UNSUPPORTED, f"the export has no {stem} file")
            return {}

        def rows(table: Table) -> dict[str, list[_T]]:
            found: dict[str, list[_T]] = {}
            for location, row, invalid in table.rows:
                subject = ""
                try:
                    if row is None:
                        raise RowError(invalid)
                    subject = _address(row, key)
                    if subject not in mailboxes:
                        raise RowError(f"mailbox {subject} is not in the mailboxes file")
                    item = parse(row)
                except RowError as exc:
                    reading.problems.append(f"{location}: {exc}")
                    for fact in facts:
                        reading.cover(fact, FactState.FAILED, f"{location}: {exc}", subject=subject)
                    continue
                found.setdefault(subject, []).append(item)
            return found

        found = reading.whole(path, stem, facts, rows)
        if found is None:
            return {}
        for fact in facts:
            if not reading.failed(fact):
                reading.cover(fact, FactState.COLLECTED)
        return {address: tuple(items) for address, items in found.items()}

    def _forwards(self, reading: _Reading, mailboxes: dict[str, Mailbox]) -> dict[str, tuple[Forward, ...]]:
        """forwards.csv: ``mailbox``, ``target``; optional ``mechanism`` (default auto_forward)."""

        def forward(row: dict[str, Any]) -> Forward:
            return Forward(_address(row, "target"),
                           _enum(row, "mechanism", ForwardMechanism, ForwardMechanism.AUTO_FORWARD))

        return self._joined(reading, "forwards", (Fact.MAILBOX_FORWARDS,), "mailbox", mailboxes, forward)

    def _invites(self, reading: _Reading, mailboxes: dict[str, Mailbox]) -> dict[str, Invite]:
        """invites.csv: ``address``, ``sent``; optional ``expires``. A mailbox's last row is its invite."""

        def invite(row: dict[str, Any]) -> Invite:
            sent = _when(row, "sent")
            if sent is None:
                raise RowError("missing 'sent'")
            return Invite(sent, _when(row, "expires"))

        found = self._joined(reading, "invites", (Fact.MAILBOX_INVITES,), "address", mailboxes, invite)
        return {address: invites[-1] for address, invites in found.items()}

    def _catch_all(self, reading: _Reading) -> dict[str, str | None]:
        path = _find(self.directory, "domains")
        if path is None:
            reading.cover(Fact.DOMAIN_CATCH_ALL, FactState.UNSUPPORTED, "the export has no domains file")
            return {}

        def rows(table: Table) -> dict[str, str | None]:
            found: dict[str, str | None] = {}
            for location, row, invalid in table.rows:
                if row is None:
                    reading.problems.append(f"{location}: {invalid}")
                    continue
                try:
                    domain = _text(row, "domain", required=True).lower().rstrip(".")
                    target = _text(row, "catch_all").lower() or None
                    if target is not None and "@" not in target:
                        raise RowError(f"'catch_all' is not an email address: {target[:80]!r}")
                except RowError as exc:
                    reading.problems.append(f"{location}: {exc}")
                    continue
                found[domain] = target
            return found

        found = reading.whole(path, "domains", (Fact.DOMAIN_CATCH_ALL,), rows)
        if found is None:
            return {}
        reading.cover(Fact.DOMAIN_CATCH_ALL, FactState.COLLECTED)
        for domain in (*reading.tenant.domains, *reading.tenant.parked_domains):
            if domain not in found:
                # A row that could not be read leaves its domain here too: unknown, never "no catch-all".
                reading.cover(
                    Fact.DOMAIN_CATCH_ALL, FactState.FAILED, f"{domain} is not listed in {path.name}", subject=domain
                )
        return found

    def _grants(self, reading: _Reading, mailboxes: dict[str, Mailbox]) -> dict[str, tuple[Grant, ...]]:
        """grants.csv: ``mailbox``, ``kind`` (oauth, app_password, device_password), ``client``, ``scopes``
        (space- or semicolon-separated), ``created``, ``last_used``; optional ``id`` (default: the client) and
        ``mail`` (full, read, none; default from the scopes, full for an app password). Never a secret."""

        def grant(row: dict[str, Any]) -> Grant:
            kind = _enum(row, "kind", GrantKind, None)
            if kind is None:
                raise RowError("missing 'kind'")
            client = _text(row, "client", required=True)
            scopes = tuple(_text(row, "scopes").replace(";", " ").split())
            default = (mail_access(scopes, {**GOOGLE, **GRAPH}) if kind is GrantKind.OAUTH else
                       MailAccess.FULL if kind is GrantKind.APP_PASSWORD else MailAccess.NONE)
            return Grant(kind, _text(row, "id") or client, client, _enum(row, "mail", MailAccess, default),
                         scopes, created=_when(row, "created"), last_used=_when(row, "last_used"))

        return self._joined(reading, "grants", (Fact.MAILBOX_OAUTH_GRANTS, Fact.MAILBOX_APP_PASSWORDS), "mailbox",
                            mailboxes, grant)

    def _recovery(self, reading: _Reading, mailboxes: dict[str, Mailbox]) -> dict[str, tuple[Recovery, ...]]:
        """recovery.csv: ``mailbox``, ``kind`` (email or phone), ``value``."""

        def recovery(row: dict[str, Any]) -> Recovery:
            kind = _enum(row, "kind", RecoveryKind, None)
            if kind is None:
                raise RowError("missing 'kind'")
            return Recovery(kind, _address(row, "value") if kind is RecoveryKind.EMAIL
                            else _text(row, "value", required=True))

        return self._joined(reading, "recovery", (Fact.MAILBOX_RECOVERY,), "mailbox", mailboxes, recovery)

    # Remediation writes: only remediation jobs call these. Each rewrites one export file atomically
    # (a temporary file in the same directory, then a rename) and returns the state read back.

    async def remedy_read(self, action: str, subject: str, params: Mapping[str, Any]) -> dict[str, Any]:
        """The action's normalized state of ``subject`` as the export files say now."""
        return {"state": self._state(action, subject, params), "detail": {}}

    @contextmanager
    def _exclusive(self) -> Iterator[None]:
        """Hold the export directory's lock, so jobs running at once (threads or processes) never interleave
        their read-modify-writes of one file and lose each other's change."""
        try:
            fd = os.open(self.directory, os.O_RDONLY)
        except OSError as exc:
            raise AdapterError(f"{self.directory}: cannot open the export directory ({exc.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    async def remedy_apply(
        self, action: str, subject: str, params: Mapping[str, Any], before: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Make the action's change in the export files; returns the state read back and what the undo needs."""
        with self._exclusive():
            return self._apply(action, subject.lower(), params)

    def _apply(self, action: str, subject: str, params: Mapping[str, Any]) -> dict[str, Any]:
        detail: dict[str, Any] = {}
        if action == "forwarding.disable":
            targets = {str(t).lower() for t in params.get("targets", ())}
            detail["rows"] = self._edit("forwards", lambda rows: _split(
                rows, lambda r: _low(r, "mailbox") == subject and _low(r, "target") in targets))
        elif action == "catchall.disable":
            detail["catch_all"] = self._set_field("domains", "domain", subject, "catch_all", "")
        elif action == "account.suspend":
            detail["status"] = self._set_field("mailboxes", "address", subject, "status", "suspended")
        elif action == "invite.revoke":
            detail["rows"] = self._edit("invites", lambda rows: _split(rows, lambda r: _low(r, "address") == subject))
        elif action == "invite.resend":
            detail["row"] = self._resend(subject)
        elif action == "delegate.remove":
            delegate = str(params.get("delegate", "")).lower()
            detail["delegates"] = self._set_field(
                "mailboxes", "address", subject, "delegates",
                lambda old: ";".join(d for d in _list(old) if d.lower() != delegate))
        elif action == "grant.revoke":
            self._edit("grants", lambda rows: _split(rows, lambda r: _grant_row(r, subject, params)))
        else:
            raise Refused(f"the files adapter has no action {action!r}")
        return {"state": self._state(action, subject, params), "detail": detail}

    async def remedy_restore(
        self, action: str, subject: str, params: Mapping[str, Any], before: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Put back what ``remedy_apply`` changed, from its recorded detail; returns the state read back."""
        with self._exclusive():
            return self._restore(action, subject.lower(), params, before.get("detail") or {})

    def _restore(self, action: str, subject: str, params: Mapping[str, Any], detail: Mapping[str, Any]
                 ) -> dict[str, Any]:
        if action in ("forwarding.disable", "invite.revoke"):
            stem = "forwards" if action == "forwarding.disable" else "invites"
            self._put_back(stem, list(detail.get("rows", ())))
        elif action == "catchall.disable":
            self._set_field("domains", "domain", subject, "catch_all", detail.get("catch_all") or "")
        elif action == "account.suspend":
            self._set_field("mailboxes", "address", subject, "status", detail.get("status") or "active")
        elif action == "delegate.remove":
            self._set_field("mailboxes", "address", subject, "delegates", detail.get("delegates") or "")
        elif action == "invite.resend":
            raise Refused("a sent invitation cannot be unsent")
        elif action == "grant.revoke":
            raise Refused("a revoked grant cannot be restored; the person grants it again")
        else:
            raise Refused(f"the files adapter has no action {action!r}")
        return {"state": self._state(action, subject, params), "detail": {}}

    def _state(self, action: str, subject: str, params: Mapping[str, Any]) -> dict[str, Any]:
        subject = subject.lower()
        if action == "forwarding.disable":
            targets = {str(t).lower() for t in params.get("targets", ())}
            rows = self._raw("forwards")[1]
            return {"forwards": sorted({_low(r, "target") for r in rows
                                        if _low(r, "mailbox") == subject and _low(r, "target") in targets})}
        if action == "catchall.disable":
            found = [r for r in self._raw("domains")[1] if _low(r, "domain").rstrip(".") == subject]
            if not found:
                raise AdapterError(f"{self.directory}: domain {subject} is not in the domains file")
            return {"catch_all": _low(found[0], "catch_all") or None}
        if action in ("invite.revoke", "invite.resend"):
            rows = [r for r in self._raw("invites")[1] if _low(r, "address") == subject]
            if action == "invite.revoke":
                return {"invite": bool(rows)}
            return {"invite_sent": _iso(rows[0].get("sent")) if rows else None}
        if action == "grant.revoke":
            held = any(_grant_row(r, subject, params) for r in self._raw("grants")[1])
            return {"grants": [str(params.get("grant"))] if held else []}
        rows = [r for r in self._raw("mailboxes")[1] if _low(r, "address") == subject]
        if not rows:
            raise AdapterError(f"{self.directory}: mailbox {subject} is not in the mailboxes file")
        if action == "account.suspend":
            return {"status": _low(rows[0], "status") or "active"}
        if action == "delegate.remove":
            delegate = str(params.get("delegate", "")).lower()
            return {"delegates": [delegate] if delegate in {d.lower() for d in _list(rows[0].get("delegates"))} else []}
        raise Refused(f"the files adapter has no action {action!r}")

    def _raw(self, stem: str) -> tuple[Path, list[dict[str, Any]], list[str]]:
        """An export file's rows as written (every column kept) and its column order."""
        path = _find(self.directory, stem)
        if path is None:
            raise AdapterError(f"{self.directory}: no {stem}.csv or {stem}.json")
        table = read_table(path)
        unreadable = next(((location, why) for location, row, why in table.rows if row is None), None)
        if unreadable is not None:
            # Rewriting would drop the row it cannot read: refuse, and let the operator fix the file first.
            raise AdapterError(f"{unreadable[0]}: {unreadable[1]}: fix the export file before changing it")
        rows = [dict(row) for _, row, _ in table.rows if row is not None]
        return path, rows, [] if path.suffix == ".json" else list(table.columns)

    @staticmethod
    def _newline(path: Path) -> str:
        """The file's own line ending, kept when it is rewritten."""
        try:
            return "\r\n" if b"\r\n" in path.read_bytes()[:65536] else "\n"
        except OSError:
            return "\n"

    def _write(self, path: Path, rows: list[dict[str, Any]], columns: list[str]) -> None:
        """Replace an export file atomically: readers see the old file or the new one, never a mix."""
        newline = self._newline(path)
        handle = tempfile.NamedTemporaryFile(
            "w", encoding="utf-8", newline="", dir=path.parent, prefix=f".{path.name}.", delete=False)
        try:
            with handle:
                if path.suffix == ".json":
                    json.dump(rows, handle, indent=2, ensure_ascii=False)
                    handle.write("\n")
                else:
                    writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore", lineterminator=newline)
                    writer.writeheader()
                    writer.writerows(rows)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(handle.name, path)
        except OSError as exc:
            Path(handle.name).unlink(missing_ok=True)
            raise AdapterError(f"{path}: cannot rewrite the export file ({exc.strerror})") from None

    def _edit(
        self, stem: str, change: Callable[[list[dict[str, Any]]], tuple[list[dict[str, Any]], list[dict[str, Any]]]]
    ) -> list[dict[str, Any]]:
        """Rewrite a file's rows with ``change`` (returning the rows kept and the rows taken out, each with its
        position under ``at`` so an undo puts it back where it was)."""
        path, rows, columns = self._raw(stem)
        kept, taken = change(rows)
        self._write(path, kept, columns)
        return [{"at": rows.index(row), "row": row} for row in taken]

    def _put_back(self, stem: str, saved: list[dict[str, Any]]) -> None:
        """Re-insert rows an edit took out, at their old positions."""
        path, rows, columns = self._raw(stem)
        for item in sorted(saved, key=lambda i: int(i.get("at", len(rows)))):
            rows.insert(min(int(item.get("at", len(rows))), len(rows)), dict(item["row"]))
        self._write(path, rows, columns)

    def _set_field(self, stem: str, key: str, subject: str, column: str, value: Any) -> str:
        """Set one column of the row whose ``key`` is ``subject``; returns the value it had."""
        path, rows, columns = self._raw(stem)
        for row in rows:
            if _low(row, key).rstrip(".") == subject:
                old = row.get(column)
                old_text = ";".join(old) if isinstance(old, list) else str(old or "")
                row[column] = value(old_text) if callable(value) else value
                if columns and column not in columns:
                    columns.append(column)
                self._write(path, rows, columns)
                return old_text
        raise AdapterError(f"{path}: no row for {subject}")

    def _resend(self, subject: str) -> dict[str, Any]:
        path, rows, columns = self._raw("invites")
        for row in rows:
            if _low(row, "address") == subject:
                saved = dict(row)
                sent, expires = _iso(row.get("sent")), _iso(row.get("expires"))
                now = datetime.now(UTC).replace(microsecond=0)
                row["sent"] = now.isoformat().replace("+00:00", "Z")
                if sent and expires:
                    lasted = datetime.fromisoformat(expires) - datetime.fromisoformat(sent)
                    row["expires"] = (now + lasted).isoformat().replace("+00:00", "Z")
                self._write(path, rows, columns)
                return saved
        raise AdapterError(f"{path}: no pending invitation for {subject}")


def build(tenant: TenantConfig, config: Config) -> FilesAdapter:
    """The files adapter for a tenant, reading its ``export`` directory."""
    assert tenant.export is not None  # the config validator requires it for provider "files"
    return FilesAdapter(config.resolve_path(tenant.export))


def _with(mailbox: Mailbox, forwards: tuple[Forward, ...], invite: Invite | None) -> Mailbox:
    if not forwards and invite is None:
        return mailbox
    return replace(mailbox, forwards=forwards, invite=invite)


def _with_access(mailbox: Mailbox, grants: tuple[Grant, ...], recovery: tuple[Recovery, ...]) -> Mailbox:
    if not grants and not recovery:
        return mailbox
    return replace(mailbox, grants=grants, recovery=recovery)


def _grant_row(row: Mapping[str, Any], subject: str, params: Mapping[str, Any]) -> bool:
    """True when a grants.csv row is the grant a job names (its mailbox, kind and id, or client when no id)."""
    grant = str(params.get("grant", "")).strip().lower()
    ident = _low(row, "id") or _low(row, "client")
    return _low(row, "mailbox") == subject and _low(row, "kind") == str(params.get("kind", "")) and ident == grant


@dataclass(frozen=True, slots=True)
class RosterFile:
    """A roster read: its people, the problems of its bad rows, and whom those rows leave unknown.

    ``unknown`` pairs an address (or "" when the row's person cannot be told: everyone) with the reason.
    """

    people: tuple[Person, ...]
    problems: tuple[str, ...]
    unknown: tuple[tuple[str, str], ...] = ()


def read_roster_file(path: Path) -> RosterFile:
    """People from a roster file (CSV or JSON: email, name, left); a file refused whole raises ``AdapterError``.

    A row whose ``email`` is not an address is only a problem (it cannot be anyone's mailbox); a row that
    cannot be read at all leaves everyone unknown; a bad ``left`` leaves that person unknown, never present.
    """
    if not path.is_file():
        raise AdapterError(f"roster file {path} does not exist")
    people: list[Person] = []
    problems: list[str] = []
    unknown: list[tuple[str, str]] = []
    for location, row, invalid in open_table(path, REQUIRED["roster"]).rows:
        if row is None:
            problems.append(f"{location}: {invalid}")
            unknown.append(("", f"{location}: {invalid}"))
            continue
        try:
            email = _address(row, "email")
        except RowError as exc:
            problems.append(f"{location}: {exc}")
            continue
        try:
            left = _when(row, "left")
            name = _text(row, "name")
        except RowError as exc:
            problems.append(f"{location}: {exc}")
            unknown.append((email, f"{location}: {exc}"))
            continue
        people.append(Person(email, name, left.date() if left else None))
    return RosterFile(tuple(people), tuple(problems), tuple(unknown))


def read_roster(path: Path) -> tuple[tuple[Person, ...], tuple[str, ...]]:
    """People from a roster file and the problems of its bad rows (see ``read_roster_file``)."""
    roster = read_roster_file(path)
    return roster.people, roster.problems


def _low(row: Mapping[str, Any], key: str) -> str:
    value = row.get(key)
    return value.strip().lower() if isinstance(value, str) else ""


def _list(value: object) -> list[str]:
    items = value if isinstance(value, list) else str(value or "").replace(",", ";").split(";")
    return [str(i).strip() for i in items if str(i).strip()]


def _iso(value: object) -> str | None:
    """An export time as ISO 8601 UTC, or None when absent or unreadable."""
    try:
        parsed = _when({"v": value}, "v")
    except RowError:
        return None
    return parsed.isoformat() if parsed else None


def _split(
    rows: list[dict[str, Any]], taken: Callable[[dict[str, Any]], bool]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    return [r for r in rows if not taken(r)], [r for r in rows if taken(r)]

"""The mailcow adapter: domains, mailboxes, aliases and sieve filters through mailcow's API key API, and its writes."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from scanner.adapters.base import Collected, Emit, Refused, emit_all
from scanner.adapters.http import ApiClient, ApiError, RetryPolicy
from scanner.config import Config, MailcowOptions, SecretRef, TenantConfig
from scanner.errors import AdapterError, ConfigError
from scanner.model import (
    Coverage,
    Fact,
    FactState,
    Forward,
    ForwardMechanism,
    Grant,
    GrantKind,
    MailAccess,
    Mailbox,
    MailboxKind,
    MailboxStatus,
    Tenant,
    domain_of,
)

LOGIN_FIELDS = ("last_imap_login", "last_smtp_login", "last_pop3_login", "last_sso_login")
"""Per-protocol last successful SASL logins, Unix seconds; 0 is never (or SHOW_LAST_LOGIN off)."""

STATUSES = {0: MailboxStatus.DISABLED, 1: MailboxStatus.ACTIVE, 2: MailboxStatus.SUSPENDED}
"""Mailbox ``active``: 2 is "disallow login" (incoming mail still accepted), the closest to suspended."""

LEGACY_FLAGS = {"&#10004;": 1, "\u2714": 1, "&#10008;": 0, "\u2718": 0}
"""Older mailcow releases rendered ``active`` as HTML check marks (``active_int`` held the number)."""

OWNERS_REASON = "mailcow has no mailbox owners: no shared-mailbox type, and IMAP folder ACLs are not in its API"
INVITES_REASON = "mailcow has no invitations: a mailbox exists, with a password, from the moment it is created"
OAUTH_REASON = ("mailcow's API lists only the OAuth2 clients an admin registered (mailcow as the provider), not the "
                "grants or tokens of a mailbox")
RECOVERY_REASON = "mailcow's API exposes no recovery address or phone for a mailbox"
MAIL_PROTOCOLS = ("imap_access", "pop3_access", "eas_access")
"""App-password protocols that read the mailbox's mail (smtp, sieve and dav do not)."""
DELEGATES_NOTE = "send-as grants (sender_acl), the closest mailcow has to delegation; IMAP folder ACLs are not in its API"


class RecordError(ValueError):
    """One record of a mailcow listing is malformed."""


@dataclass(frozen=True, slots=True)
class AliasState:
    """An alias as mailcow reports it after a write: its id, address, targets and whether it is active."""

    id: str
    address: str
    goto: tuple[str, ...]
    active: bool
    created: str = ""  # as mailcow sends it (server-local, no offset); read with ``local_time``


@dataclass(frozen=True, slots=True)
class MailboxState:
    """A mailbox as mailcow reports it after a write: its status and its send-as grants."""

    address: str
    status: MailboxStatus
    sender_acl: tuple[str, ...]


def as_list(body: Any, endpoint: str) -> list[Any]:
    """A listing as a list: mailcow answers ``{}`` for an empty one and a bare object for a single item."""
    if isinstance(body, list):
        return body
    if body is None or body == {}:
        return []
    if isinstance(body, Mapping):
        if body.get("type") in ("error", "danger"):
            raise AdapterError(f"mailcow: {endpoint} answered an error: {str(body.get('msg'))[:200]}")
        return [body]
    raise AdapterError(f"mailcow: {endpoint} returned an unexpected response ({type(body).__name__}, not a list)")


def number(value: Any, name: str) -> int:
    """An integer that mailcow may send as ``1`` or ``"1"`` (``None`` and ``""`` read as 0)."""
    if value is None or value == "":
        return 0
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        text = value.strip()
        if text in LEGACY_FLAGS:
            return LEGACY_FLAGS[text]
        if re.fullmatch(r"-?\d+", text):
            return int(text)
    raise RecordError(f"{name!r} is not a number: {str(value)[:40]!r}")


def addresses(value: Any) -> tuple[str, ...]:
    """A comma-separated address list (mailcow's ``goto``) or a JSON list, lowercased, empties dropped."""
    if value is None:
        return ()
    items = value if isinstance(value, list) else str(value).split(",")
    return tuple(dict.fromkeys(s for s in (str(i).strip().lower() for i in items) if s))


def local_time(value: Any, zone: ZoneInfo, name: str) -> datetime | None:
    """A mailcow timestamp (``YYYY-MM-DD HH:MM:SS`` in the server's zone, no offset) as aware UTC."""
    if value is None or value == "" or str(value).startswith("0000-00-00"):
        return None
    try:
        parsed = datetime.fromisoformat(str(value).strip().replace("Z", "+00:00"))
    except ValueError:
        raise RecordError(f"{name!r} is not a date and time: {str(value)[:40]!r}") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=zone)
    return parsed.astimezone(UTC)


def _is_pseudo(target: str) -> bool:
    # null@localhost (discard), spam@localhost and ham@localhost (rspamd learning) never leave the server.
    return domain_of(target) == "localhost"


def sieve_redirects(script: str) -> tuple[str, ...]:
    """Addresses of ``redirect`` commands in a sieve script (RFC 5228 §4.2), read conservatively.

    Comments and strings are tokenized properly so a commented-out or quoted ``redirect`` is not
    taken for a command; only a literal address argument counts (a ``${variable}`` does not).
    """
    found: list[str] = []
    tokens = list(_sieve_tokens(script))
    for index, (kind, text) in enumerate(tokens):
        if kind != "word" or text.lower() != "redirect":
            continue
        if index > 0 and tokens[index - 1] not in (("punct", ";"), ("punct", "{"), ("punct", "}")):
            continue  # RFC 5228 §8.2: a command starts a statement
        rest = tokens[index + 1:]
        while rest and rest[0][0] == "tag":  # :copy (RFC 3894), :notify, :list ...
            rest = rest[1:]
        if len(rest) >= 2 and rest[0][0] == "string" and rest[1] == ("punct", ";"):
            target = rest[0][1].strip().lower()
            local, at, domain = target.rpartition("@")
            if at and local and domain and "$" not in target and not any(c.isspace() for c in target):
                found.append(target)
    return tuple(dict.fromkeys(found))


_SIEVE_TOKEN = re.compile(
    r"""(?P<space>\s+)
      | (?P<hash>\#[^\n]*)
      | (?P<block>/\*.*?\*/)
      | (?P<string>"(?:[^"\\]|\\.)*")
      | (?P<text>text:[ \t]*(?:\#[^\n]*)?\r?\n.*?\r?\n\.\r?\n)
      | (?P<tag>:[A-Za-z_][A-Za-z0-9_]*)
      | (?P<word>[A-Za-z_][A-Za-z0-9_.]*)
      | (?P<other>.)""",
    re.VERBOSE | re.DOTALL,
)


def _sieve_tokens(script: str) -> Iterator[tuple[str, str]]:
    # RFC 5228 §2.4.2: quoted strings escape only \" and \\; multi-line "text:" strings end at a lone ".".
    for match in _SIEVE_TOKEN.finditer(script):
        kind = match.lastgroup or "other"
        text = match.group()
        if kind in ("space", "hash", "block"):
            continue
        if kind == "string":
            yield "string", re.sub(r"\\(.)", r"\1", text[1:-1])
        elif kind == "text":
            yield "multiline", text
        elif kind == "other":
            yield "punct", text
        else:
            yield kind, text


def sieve_text(body: Any) -> str:
    """The active user sieve script from ``/get/active-user-sieve``: ``["script"]`` or ``{}`` when none."""
    if body is None or body == {} or body == []:
        return ""
    if isinstance(body, str):
        return body
    if isinstance(body, list):
        return "\n".join(item if isinstance(item, str) else "\n".join(map(str, item)) for item in body)
    raise RecordError(f"unexpected active sieve response ({type(body).__name__})")


@dataclass
class _Reading:
    """Accumulates one tenant's read: coverage and problems."""

    tenant: Tenant
    problems: list[str] = field(default_factory=list)
    coverage: list[Coverage] = field(default_factory=list)

    def cover(self, fact: Fact, state: FactState, reason: str = "", subject: str = "") -> None:
        self.coverage.append(Coverage(self.tenant.name, fact, state, reason, subject))


class MailcowAdapter:
    """Reads one mailcow server with an API key; only the tenant's own domains are kept."""

    name = "mailcow"
    capabilities = frozenset(
        {
            Fact.MAILBOX_LIST,
            Fact.MAILBOX_FORWARDS,
            Fact.MAILBOX_DELEGATES,
            Fact.MAILBOX_LAST_LOGIN,
            Fact.DOMAIN_CATCH_ALL,
            Fact.MAILBOX_APP_PASSWORDS,
        }
    )

    def __init__(
        self,
        options: MailcowOptions,
        credentials: SecretRef,
        *,
        concurrency: int = 8,
        retry: RetryPolicy = RetryPolicy(),
        timeout: float = 30.0,
        verify: str | bool = True,
    ) -> None:
        self.base = options.url.rstrip("/")
        try:
            self.zone = ZoneInfo(options.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            # An AdapterError fails this tenant only; the run goes on for the others.
            raise AdapterError(f"mailcow.timezone {options.timezone!r} is not a known IANA time zone") from None
        self._credentials = credentials
        self._concurrency = concurrency
        self._retry = retry
        self._timeout = timeout
        self._verify = verify

    def _client(self) -> ApiClient:
        try:
            key = self._credentials.resolve()
        except ConfigError as exc:  # names the reference, never the value
            raise AdapterError(f"mailcow: cannot read the API key: {exc}") from None
        return ApiClient(
            "mailcow",
            headers={"X-API-Key": key, "Accept": "application/json"},
            concurrency=self._concurrency,
            retry=self._retry,
            timeout=self._timeout,
            verify=self._verify,
        )

    async def _list(self, client: ApiClient, path: str) -> list[Any]:
        url = f"{self.base}{path}"
        return as_list(await client.get(url), f"GET {url}")

    async def collect(self, tenant: Tenant, emit: Emit) -> Collected:
        """Read domains, mailboxes, aliases and sieve filters; a part that fails is FAILED coverage.

        mailcow's API lists every mailbox and alias in one answer each, so the pages are sent at the end.
        """
        async with self._client() as client:
            reading = _Reading(tenant)
            domains = await self._list(client, "/get/domain/all")
            tenant_domains = await self._tenant_domains(reading, client)
            if tenant_domains is not None:
                # Forwards into the tenant's alias domains stay inside: judged with them from here on.
                reading.tenant = replace(tenant, provider_domains=tenant_domains)
            mailbox_rows = await self._list(client, "/get/mailbox/all")
            alias_rows = await self._list(client, "/get/alias/all")
            boxes = self._mailboxes(reading, mailbox_rows)
            aliases = self._aliases(reading, alias_rows)
            forwards = self._alias_forwards(reading, aliases, boxes)
            await self._sieve_forwards(reading, client, boxes, forwards)
            catch_all = self._catch_all(reading, domains, aliases)
            delegates = self._delegates(reading, mailbox_rows, boxes)
            boxes = await self._app_passwords(reading, client, boxes)
        reading.cover(Fact.MAILBOX_LIST, FactState.COLLECTED)
        reading.cover(Fact.MAILBOX_OAUTH_GRANTS, FactState.UNSUPPORTED, OAUTH_REASON)
        reading.cover(Fact.MAILBOX_RECOVERY, FactState.UNSUPPORTED, RECOVERY_REASON)
        reading.cover(Fact.MAILBOX_OWNERS, FactState.UNSUPPORTED, OWNERS_REASON)
        reading.cover(Fact.MAILBOX_INVITES, FactState.UNSUPPORTED, INVITES_REASON)
        self._last_login_coverage(reading, mailbox_rows)
        mailboxes = tuple(
            _with(box, tuple(dict.fromkeys(forwards.get(address, ()))), delegates.get(address, ()))
            for address, box in boxes.items()
        )
        mailboxes += tuple(self._alias_subjects(reading, aliases, mailbox_rows, boxes))
        await emit_all(emit, mailboxes)
        return Collected((), catch_all, tuple(reading.coverage), tuple(reading.problems),
                         tenant_domains=tenant_domains)

    async def _tenant_domains(self, reading: _Reading, client: ApiClient) -> tuple[str, ...] | None:
        """The tenant's domains as this server holds them: its configured domains and the alias domains that point at
        them (``GET /api/v1/get/alias-domain/all``: ``alias_domain``, ``target_domain``, ``active``; mailcow-dockerized
        data/web/api/openapi.yaml). None when the alias domains could not be read (the reason is coverage and a
        problem).

        One mailcow server usually hosts several clients, and its API key sees them all, so the server's other hosted
        domains are not taken for this tenant's: only what points into the configured domains is.
        """
        try:
            rows = await self._list(client, "/get/alias-domain/all")
        except AdapterError as exc:
            reason = f"the alias domains could not be read: {exc}"
            reading.problems.append(f"mailcow: {reason}")
            reading.cover(Fact.TENANT_DOMAINS, FactState.FAILED, reason)
            return None
        found = {*reading.tenant.domains, *reading.tenant.parked_domains}
        for index, row in enumerate(rows, start=1):
            alias = str(row.get("alias_domain") or "").strip().lower().rstrip(".") if isinstance(row, Mapping) else ""
            target = str(row.get("target_domain") or "").strip().lower().rstrip(".") if isinstance(row, Mapping) else ""
            if not alias or not target:
                reading.problems.append(f"mailcow /get/alias-domain/all item {index}: no 'alias_domain' or "
                                        "'target_domain'")
                continue
            if reading.tenant.owns(target):
                found.add(alias)
        reading.cover(Fact.TENANT_DOMAINS, FactState.COLLECTED,
                      "the configured domains and the alias domains that point at them (/get/alias-domain/all)")
        return tuple(sorted(found))

    def _mailboxes(self, reading: _Reading, rows: list[Any]) -> dict[str, Mailbox]:
        boxes: dict[str, Mailbox] = {}
        for index, row in enumerate(rows, start=1):
            where = f"mailcow /get/mailbox/all item {index}"
            try:
                if not isinstance(row, Mapping):
                    raise RecordError("not an object")
                address = str(row.get("username") or "").strip().lower()
                if "@" not in address:
                    raise RecordError(f"'username' is not an address: {address[:80]!r}")
                if not reading.tenant.owns(domain_of(address)):
                    continue  # another tenant's domain on the same server
                where = f"mailcow mailbox {address}"
                active = number(row.get("active_int", row.get("active")), "active")
                if active not in STATUSES:
                    raise RecordError(f"'active' is {active}; expected 0, 1 or 2")
                logins = [number(row.get(name), name) for name in LOGIN_FIELDS]
                last = max(logins, default=0)
                boxes[address] = Mailbox(
                    tenant=reading.tenant.name,
                    address=address,
                    kind=MailboxKind.USER,  # mailcow has no mailbox types
                    status=STATUSES[active],
                    display_name=str(row.get("name") or ""),
                    created=local_time(row.get("created"), self.zone, "created"),
                    last_login=datetime.fromtimestamp(last, UTC) if last > 0 else None,
                )
            except RecordError as exc:
                reading.problems.append(f"{where}: {exc}")
        return boxes

    def _aliases(self, reading: _Reading, rows: list[Any]) -> list[AliasState]:
        found = []
        for index, row in enumerate(rows, start=1):
            try:
                if not isinstance(row, Mapping):
                    raise RecordError("not an object")
                alias = _alias_state(row)
                if "@" not in alias.address:
                    raise RecordError(f"'address' is not an address: {alias.address[:80]!r}")
            except RecordError as exc:
                reading.problems.append(f"mailcow /get/alias/all item {index}: {exc}")
                continue
            if reading.tenant.owns(domain_of(alias.address)):
                found.append(alias)
        return found

    def _alias_forwards(
        self, reading: _Reading, aliases: list[AliasState], boxes: Mapping[str, Mailbox]
    ) -> dict[str, list[Forward]]:
        forwards: dict[str, list[Forward]] = {}
        for alias in aliases:
            if not alias.active or alias.address not in boxes:
                # An alias without a mailbox is its own subject (_alias_subjects); the catch-all is read apart.
                continue
            for target in alias.goto:
                if target == alias.address or _is_pseudo(target) or reading.tenant.owns(domain_of(target)):
                    continue
                forwards.setdefault(alias.address, []).append(Forward(target, ForwardMechanism.ALIAS))
        return forwards

    async def _app_passwords(self, reading: _Reading, client: ApiClient, boxes: dict[str, Mailbox]
                             ) -> dict[str, Mailbox]:
        """Each mailbox's active app passwords (``/get/app-passwd/all/{mailbox}``), never their hashes."""
        async def one(address: str) -> tuple[str, tuple[Grant, ...] | None]:
            url = f"{self.base}/get/app-passwd/all/{quote(address, safe='@')}"
            try:
                rows = as_list(await client.get(url), f"GET {url}")
            except ApiError as exc:
                if exc.status == 404:  # a mailcow release before app passwords: the route does not exist
                    return address, None
                reading.cover(Fact.MAILBOX_APP_PASSWORDS, FactState.FAILED, str(exc), subject=address)
                reading.problems.append(str(exc))
                return address, ()
            grants = []
            for row in rows:
                try:
                    if not isinstance(row, Mapping) or row.get("id") in (None, ""):
                        raise RecordError("an app password without an id")
                    if number(row.get("active", 1), "active") != 1:
                        continue
                    # The row carries the password hash ("password"): only the fields below are kept.
                    reads = any(number(row.get(p, 1), p) == 1 for p in MAIL_PROTOCOLS)
                    protocols = tuple(p.removesuffix("_access") for p in (*MAIL_PROTOCOLS, "smtp_access", "dav_access",
                                                                             "sieve_access")
                                      if number(row.get(p, 0), p) == 1)
                    grants.append(Grant(GrantKind.APP_PASSWORD, str(row["id"]), str(row.get("name") or ""),
                                        MailAccess.FULL if reads else MailAccess.NONE, protocols,
                                        created=local_time(row.get("created"), self.zone, "created")))
                except RecordError as exc:
                    reading.problems.append(f"mailcow app passwords of {address}: {exc}")
            return address, tuple(grants)

        found = await asyncio.gather(*(one(a) for a in boxes))
        if any(grants is None for _, grants in found):
            reading.cover(Fact.MAILBOX_APP_PASSWORDS, FactState.UNSUPPORTED,
                          "this mailcow release has no app-passwd API (GET /get/app-passwd answered 404)")
            return boxes
        reading.cover(Fact.MAILBOX_APP_PASSWORDS, FactState.COLLECTED)
        return {a: replace(boxes[a], grants=grants) if grants else boxes[a] for a, grants in found
                if grants is not None}

    def _alias_subjects(
        self, reading: _Reading, aliases: list[AliasState], mailbox_rows: list[Any], boxes: Mapping[str, Mailbox]
    ) -> list[Mailbox]:
        """An ALIAS subject for each of the tenant's aliases with no mailbox that has a target outside the tenant.

        An alias pointing only inside the tenant (or to rspamd's localhost pseudo-addresses) is internal
        routing and is left out: nothing leaves through it, and should it gain an outside target it appears
        then, as a new forward. An inactive alias is kept, DISABLED and without forwards (mailcow rejects
        mail to it, so nothing is forwarded), so that turning it back on shows as a forward added.
        """
        listed = {str(r.get("username") or "").strip().lower() for r in mailbox_rows if isinstance(r, Mapping)}
        grants = {str(r.get("username") or "").strip().lower(): addresses(r.get("sender_acl"))
                  for r in mailbox_rows if isinstance(r, Mapping) and "sender_acl" in r}
        subjects: list[Mailbox] = []
        for alias in aliases:
            local_part = alias.address.partition("@")[0]
            if not local_part or alias.address in listed:
                continue  # the catch-all (read apart), or a mailbox's own address (its forwards are the mailbox's)
            outside = [t for t in alias.goto
                       if t != alias.address and not _is_pseudo(t) and not reading.tenant.owns(domain_of(t))]
            if not outside:
                continue
            try:
                created = local_time(alias.created, self.zone, "created")
            except RecordError as exc:
                reading.problems.append(f"mailcow alias {alias.address}: {exc}")
                created = None  # the forward matters more than the date: keep the subject
            # sender_acl: the tenant's mailboxes that may send as this address (the same rule as _delegates).
            senders = sorted(g for g, acl in grants.items() if g in boxes and (
                alias.address in acl or f"@{domain_of(alias.address)}" in acl or "*" in acl))
            subjects.append(Mailbox(
                tenant=reading.tenant.name,
                address=alias.address,
                kind=MailboxKind.ALIAS,
                status=MailboxStatus.ACTIVE if alias.active else MailboxStatus.DISABLED,
                created=created,
                delegates=tuple(senders),
                forwards=tuple(Forward(t, ForwardMechanism.ALIAS) for t in outside) if alias.active else (),
            ))
            # An alias has no sieve script: its forwards are fully known from /get/alias/all even when
            # the sieve filters could not be read.
            reading.cover(Fact.MAILBOX_FORWARDS, FactState.COLLECTED, "an alias's targets (goto)",
                          subject=alias.address)
        return subjects

    async def _sieve_forwards(
        self, reading: _Reading, client: ApiClient, boxes: Mapping[str, Mailbox], forwards: dict[str, list[Forward]]
    ) -> None:
        failed = False
        try:
            filters = await self._list(client, "/get/filters/all")
        except AdapterError as exc:
            reading.problems.append(str(exc))
            reading.cover(Fact.MAILBOX_FORWARDS, FactState.FAILED, f"sieve filters could not be read: {exc}")
            failed = True
            filters = []
        for index, row in enumerate(filters, start=1):
            try:
                if not isinstance(row, Mapping):
                    raise RecordError("not an object")
                owner = str(row.get("username") or "").strip().lower()
                if owner not in boxes or number(row.get("active"), "active") != 1:
                    continue
                script = row.get("script_data")
                if not isinstance(script, str):
                    raise RecordError("'script_data' is not text")
            except RecordError as exc:
                reading.problems.append(f"mailcow /get/filters/all item {index}: {exc}")
                continue
            self._add_redirects(reading, forwards, owner, script)

        async def user_sieve(address: str) -> None:
            url = f"{self.base}/get/active-user-sieve/{quote(address, safe='@')}"
            try:
                script = sieve_text(await client.get(url))
            except (AdapterError, RecordError) as exc:
                reading.problems.append(f"mailcow mailbox {address}: active sieve script: {exc}")
                reading.cover(Fact.MAILBOX_FORWARDS, FactState.FAILED, f"active sieve script: {exc}", subject=address)
                return
            self._add_redirects(reading, forwards, address, script)

        await asyncio.gather(*(user_sieve(address) for address in boxes))
        if not failed:
            reading.cover(Fact.MAILBOX_FORWARDS, FactState.COLLECTED)

    @staticmethod
    def _add_redirects(reading: _Reading, forwards: dict[str, list[Forward]], owner: str, script: str) -> None:
        for target in sieve_redirects(script):
            if target != owner and not _is_pseudo(target) and not reading.tenant.owns(domain_of(target)):
                forwards.setdefault(owner, []).append(Forward(target, ForwardMechanism.REDIRECT))

    def _catch_all(self, reading: _Reading, rows: list[Any], aliases: list[AliasState]) -> dict[str, str | None]:
        hosted: dict[str, Mapping[str, Any]] = {}
        for index, row in enumerate(rows, start=1):
            name = str(row.get("domain_name") or "").strip().lower().rstrip(".") if isinstance(row, Mapping) else ""
            if not name:
                reading.problems.append(f"mailcow /get/domain/all item {index}: no 'domain_name'")
                continue
            hosted[name] = row
        by_address = {a.address: a for a in aliases if a.active}
        found: dict[str, str | None] = {}
        reading.cover(Fact.DOMAIN_CATCH_ALL, FactState.COLLECTED)
        for domain in (*reading.tenant.domains, *reading.tenant.parked_domains):
            row = hosted.get(domain)
            if row is None:
                reading.cover(Fact.DOMAIN_CATCH_ALL, FactState.FAILED,
                              f"{domain} is not a domain on this mailcow server", subject=domain)
                continue
            alias = by_address.get(f"@{domain}")
            try:
                relay_all = number(row.get("relay_all_recipients"), "relay_all_recipients") == 1
            except RecordError as exc:
                reading.problems.append(f"mailcow domain {domain}: {exc}")
                reading.cover(Fact.DOMAIN_CATCH_ALL, FactState.FAILED, str(exc), subject=domain)
                continue
            if alias is not None:
                found[domain] = ",".join(alias.goto) or None
            elif relay_all:
                # Backup-MX relaying of every recipient: mail for any address is accepted and passed on.
                found[domain] = f"*@{domain}"
                reading.cover(Fact.DOMAIN_CATCH_ALL, FactState.COLLECTED,
                              "relay_all_recipients is on: mailcow accepts mail for any address of the domain "
                              "and relays it onward (backup MX); reported as catch-all '*@domain'", subject=domain)
            else:
                found[domain] = None
        return found

    @staticmethod
    def _delegates(reading: _Reading, rows: list[Any], boxes: Mapping[str, Mailbox]) -> dict[str, tuple[str, ...]]:
        """Who may send as each mailbox: ``sender_acl`` lists what a mailbox may send as (an address, @domain or *)."""
        grants: dict[str, tuple[str, ...]] = {}
        seen = False
        for row in rows:
            if not isinstance(row, Mapping) or "sender_acl" not in row:
                continue
            seen = True
            grantee = str(row.get("username") or "").strip().lower()
            if grantee in boxes:
                grants[grantee] = addresses(row.get("sender_acl"))
        if not seen and boxes:
            reading.cover(Fact.MAILBOX_DELEGATES, FactState.UNSUPPORTED,
                          "this mailcow version does not report sender_acl in /get/mailbox")
            return {}
        reading.cover(Fact.MAILBOX_DELEGATES, FactState.COLLECTED, DELEGATES_NOTE)
        delegates: dict[str, list[str]] = {}
        for grantee, acl in grants.items():
            for address in boxes:
                if address != grantee and (address in acl or f"@{domain_of(address)}" in acl or "*" in acl):
                    delegates.setdefault(address, []).append(grantee)
        return {k: tuple(sorted(v)) for k, v in delegates.items()}

    @staticmethod
    def _last_login_coverage(reading: _Reading, rows: list[Any]) -> None:
        """Judged over the whole server: one tenant's never-used mailboxes must not hide a real setting."""
        reported, seen = False, False
        for row in rows:
            if not isinstance(row, Mapping):
                continue
            for name in LOGIN_FIELDS:
                if name in row:
                    reported = True
                    try:
                        seen = seen or number(row.get(name), name) > 0
                    except RecordError:
                        pass  # already a problem if the mailbox is the tenant's
        if rows and not reported:
            reading.cover(Fact.MAILBOX_LAST_LOGIN, FactState.UNSUPPORTED,
                          "this mailcow version does not report last logins in /get/mailbox")
        elif rows and not seen:
            reading.cover(Fact.MAILBOX_LAST_LOGIN, FactState.UNSUPPORTED,
                          "every mailbox reports last login 0: the server runs with SHOW_LAST_LOGIN off, "
                          "so 'never' cannot be told from 'not recorded'")
        else:
            reading.cover(Fact.MAILBOX_LAST_LOGIN, FactState.COLLECTED)

    # Remediation writes: only remediation jobs call these. mailcow answers HTTP 200 even when a write
    # fails, so every element's "type" is checked, and each write returns the state read back afterwards.

    async def _write(self, client: ApiClient, path: str, body: Any) -> None:
        url = f"{self.base}{path}"
        _, answer = await client.request("POST", url, json_body=body)
        results = answer if isinstance(answer, list) else [answer]
        failures = [r for r in results if not (isinstance(r, Mapping) and r.get("type") == "success")]
        if not results or failures:
            first = failures[0] if failures else None
            message = first.get("msg") if isinstance(first, Mapping) else first
            raise AdapterError(f"mailcow: POST {url} was refused: {str(message)[:200]}")

    async def _alias(self, client: ApiClient, alias_id: str) -> AliasState:
        url = f"{self.base}/get/alias/{quote(str(alias_id), safe='')}"
        rows = as_list(await client.get(url), f"GET {url}")
        if not rows or not isinstance(rows[0], Mapping):
            raise AdapterError(f"mailcow: alias {alias_id} does not exist")
        try:
            return _alias_state(rows[0])
        except RecordError as exc:
            raise AdapterError(f"mailcow: alias {alias_id}: {exc}") from None

    async def _find_alias(self, client: ApiClient, address: str) -> AliasState:
        url = f"{self.base}/get/alias/all"
        for row in as_list(await client.get(url), f"GET {url}"):
            if isinstance(row, Mapping) and str(row.get("address") or "").strip().lower() == address.lower():
                try:
                    return _alias_state(row)
                except RecordError as exc:
                    raise AdapterError(f"mailcow: alias {address}: {exc}") from None
        raise AdapterError(f"mailcow: no alias {address} on this server")

    async def _mailbox(self, client: ApiClient, address: str) -> MailboxState:
        url = f"{self.base}/get/mailbox/{quote(address, safe='@')}"
        rows = as_list(await client.get(url), f"GET {url}")
        if not rows or not isinstance(rows[0], Mapping):
            raise AdapterError(f"mailcow: mailbox {address} does not exist")
        row = rows[0]
        try:
            active = number(row.get("active_int", row.get("active")), "active")
        except RecordError as exc:
            raise AdapterError(f"mailcow: mailbox {address}: {exc}") from None
        if active not in STATUSES:
            raise AdapterError(f"mailcow: mailbox {address}: 'active' is {active}")
        return MailboxState(address.lower(), STATUSES[active], addresses(row.get("sender_acl")))

    async def disable_alias(self, address: str) -> AliasState:
        """Deactivate a forwarding alias (undo: ``enable_alias``); returns the alias as read back."""
        async with self._client() as client:
            alias = await self._find_alias(client, address)
            await self._write(client, "/edit/alias", {"items": [alias.id], "attr": {"active": "0"}})
            return await self._alias(client, alias.id)

    async def enable_alias(self, address: str) -> AliasState:
        """Reactivate an alias (the undo of ``disable_alias``); returns the alias as read back."""
        async with self._client() as client:
            alias = await self._find_alias(client, address)
            await self._write(client, "/edit/alias", {"items": [alias.id], "attr": {"active": "1"}})
            return await self._alias(client, alias.id)

    async def disable_catch_all(self, domain: str) -> AliasState:
        """Deactivate the domain's catch-all alias ``@domain``; returns it as read back."""
        return await self.disable_alias(f"@{domain.strip().lower().rstrip('.')}")

    async def drop_forward_target(self, address: str, target: str) -> AliasState:
        """Remove one target from an alias's ``goto``, keeping the rest; returns the alias as read back."""
        target = target.strip().lower()
        async with self._client() as client:
            alias = await self._find_alias(client, address)
            remaining = [t for t in alias.goto if t != target]
            if len(remaining) == len(alias.goto):
                raise AdapterError(f"mailcow: alias {address} does not forward to {target}")
            if not remaining:
                raise AdapterError(f"mailcow: {target} is the only target of alias {address}; disable the alias instead")
            await self._write(client, "/edit/alias", {"items": [alias.id], "attr": {"goto": ",".join(remaining)}})
            return await self._alias(client, alias.id)

    async def set_forward_targets(self, address: str, goto: Iterable[str]) -> AliasState:
        """Set an alias's ``goto`` (the undo of ``drop_forward_target``, with the saved targets)."""
        async with self._client() as client:
            alias = await self._find_alias(client, address)
            await self._write(client, "/edit/alias", {"items": [alias.id], "attr": {"goto": ",".join(goto)}})
            return await self._alias(client, alias.id)

    async def set_mailbox_status(self, address: str, status: MailboxStatus) -> MailboxState:
        """Suspend (login refused, mail still accepted), disable or reactivate a mailbox; returns it as read back."""
        values = {v: k for k, v in STATUSES.items()}
        if status not in values:
            raise AdapterError(f"mailcow has no mailbox status {status.value!r}")
        async with self._client() as client:
            await self._write(client, "/edit/mailbox", {"items": [address], "attr": {"active": str(values[status])}})
            return await self._mailbox(client, address)

    async def suspend_mailbox(self, address: str) -> MailboxState:
        """Refuse the mailbox's logins while still accepting its mail (mailcow ``active`` 2)."""
        return await self.set_mailbox_status(address, MailboxStatus.SUSPENDED)

    async def disable_mailbox(self, address: str) -> MailboxState:
        """Disable the mailbox entirely (mailcow ``active`` 0)."""
        return await self.set_mailbox_status(address, MailboxStatus.DISABLED)

    async def remove_send_as(self, grantee: str, send_as: str) -> MailboxState:
        """Remove one entry from ``grantee``'s sender_acl (a full-list replace); returns the grantee as read back."""
        send_as = send_as.strip().lower()
        async with self._client() as client:
            before = await self._mailbox(client, grantee)
            if send_as not in before.sender_acl:
                wide = [e for e in before.sender_acl if e in ("*", f"@{domain_of(send_as)}")]
                hint = f" (it holds the wider grant {wide[0]!r}, which covers it)" if wide else ""
                raise AdapterError(f"mailcow: {grantee} has no send-as grant for {send_as}{hint}")
            remaining = [e for e in before.sender_acl if e != send_as]
            # mailcow replaces the whole list; the lone value "default" clears it.
            await self._write(client, "/edit/mailbox",
                              {"items": [grantee], "attr": {"sender_acl": remaining or ["default"]}})
            return await self._mailbox(client, grantee)

    async def remove_delegate(self, mailbox: str, delegate: str) -> MailboxState:
        """Stop ``delegate`` sending as ``mailbox`` (its send-as grant); returns the delegate as read back."""
        return await self.remove_send_as(delegate, mailbox)


    async def set_send_as(self, grantee: str, entries: Iterable[str]) -> MailboxState:
        """Set ``grantee``'s whole sender_acl (the undo of ``remove_send_as``); returns it as read back."""
        async with self._client() as client:
            await self._write(client, "/edit/mailbox",
                              {"items": [grantee], "attr": {"sender_acl": list(entries) or ["default"]}})
            return await self._mailbox(client, grantee)

    # The remediation surface (scanner/adapters/base.py REMEDY_STATES): the actions mapped onto the writes above.

    async def remedy_read(self, action: str, subject: str, params: Mapping[str, Any]) -> dict[str, Any]:
        """The action's normalized state of ``subject``, read from mailcow now, with what an undo would need."""
        subject = subject.lower()
        async with self._client() as client:
            if action == "forwarding.disable":
                if set(params.get("mechanisms", ())) - {ForwardMechanism.ALIAS.value}:
                    raise Refused("mailcow's API cannot edit a user's sieve script; only alias forwards can be "
                                  "turned off")
                targets = {str(t).lower() for t in params.get("targets", ())}
                alias = await self._find_alias(client, subject)
                live = set(alias.goto) & targets if alias.active else set()
                return {"state": {"forwards": sorted(live)},
                        "detail": {"goto": list(alias.goto), "active": alias.active}}
            if action == "catchall.disable":
                try:
                    alias = await self._find_alias(client, f"@{subject.rstrip('.')}")
                except AdapterError:
                    return {"state": {"catch_all": None}, "detail": {}}
                target = alias.goto[0] if alias.active and alias.goto else None
                return {"state": {"catch_all": target}, "detail": {"active": alias.active}}
            if action == "account.suspend":
                box = await self._mailbox(client, subject)
                return {"state": {"status": box.status.value}, "detail": {}}
            if action == "delegate.remove":
                delegate = str(params.get("delegate", "")).lower()
                grantee = await self._mailbox(client, delegate)
                return {"state": {"delegates": [delegate] if subject in grantee.sender_acl else []},
                        "detail": {"sender_acl": list(grantee.sender_acl)}}
            if action == "grant.revoke":
                if params.get("kind") != GrantKind.APP_PASSWORD.value:
                    raise Refused(OAUTH_REASON)
                url = f"{self.base}/get/app-passwd/all/{quote(subject, safe='@')}"
                grant = str(params.get("grant"))
                held = any(isinstance(r, Mapping) and str(r.get("id")) == grant for r in as_list(
                    await client.get(url), f"GET {url}"))
                return {"state": {"grants": [grant] if held else []}, "detail": {}}
        raise Refused(_refusal(action))

    async def remedy_apply(
        self, action: str, subject: str, params: Mapping[str, Any], before: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Make the action's change through the mailcow API; returns the state read back afterwards."""
        subject = subject.lower()
        detail = dict(before.get("detail") or {})
        if action == "forwarding.disable":
            targets = {str(t).lower() for t in params.get("targets", ())}
            remaining = [t for t in detail.get("goto", ()) if t not in targets]
            if remaining:
                await self.set_forward_targets(subject, remaining)
            else:
                await self.disable_alias(subject)
        elif action == "catchall.disable":
            await self.disable_catch_all(subject)
        elif action == "account.suspend":
            await self.suspend_mailbox(subject)
        elif action == "delegate.remove":
            await self.remove_delegate(subject, str(params.get("delegate", "")))
        elif action == "grant.revoke":
            # Deleted, not deactivated: a deactivated password is one edit away from working again.
            async with self._client() as client:
                await self._write(client, "/delete/app-passwd", [str(params.get("grant"))])
        else:
            raise Refused(_refusal(action))
        after = await self.remedy_read(action, subject, params)
        return {"state": after["state"], "detail": detail}

    async def remedy_restore(
        self, action: str, subject: str, params: Mapping[str, Any], before: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Undo ``remedy_apply`` from the recorded before-state; returns the state read back afterwards."""
        subject = subject.lower()
        detail = before.get("detail") or {}
        state = before.get("state") or {}
        if action == "forwarding.disable":
            await self.set_forward_targets(subject, detail.get("goto", ()))
            if detail.get("active"):
                await self.enable_alias(subject)
        elif action == "catchall.disable":
            if detail.get("active"):
                await self.enable_alias(f"@{subject.rstrip('.')}")
        elif action == "account.suspend":
            await self.set_mailbox_status(subject, MailboxStatus(state.get("status", "active")))
        elif action == "delegate.remove":
            await self.set_send_as(str(params.get("delegate", "")), detail.get("sender_acl", ()))
        elif action == "grant.revoke":
            raise Refused("a revoked grant cannot be restored; the person grants it again")
        else:
            raise Refused(_refusal(action))
        return await self.remedy_read(action, subject, params)


def _refusal(action: str) -> str:
    if action.startswith("invite."):
        return INVITES_REASON
    return f"mailcow has no remediation action {action!r}"

def _alias_state(row: Mapping[str, Any]) -> AliasState:
    alias_id = row.get("id")
    if alias_id is None or str(alias_id).strip() == "":
        raise RecordError("no 'id'")
    return AliasState(
        id=str(alias_id).strip(),
        address=str(row.get("address") or "").strip().lower(),
        goto=addresses(row.get("goto")),
        active=number(row.get("active_int", row.get("active")), "active") == 1,
        created=str(row.get("created") or ""),
    )


def _with(mailbox: Mailbox, forwards: tuple[Forward, ...], delegates: tuple[str, ...]) -> Mailbox:
    if not forwards and not delegates:
        return mailbox
    return replace(mailbox, delegates=delegates, forwards=forwards)


def build(tenant: TenantConfig, config: Config) -> MailcowAdapter:
    """The mailcow adapter for a tenant, from its [tenants.mailcow] table and the [http] settings."""
    assert tenant.mailcow is not None and tenant.credentials is not None  # the config validator requires both
    http = config.http
    verify: str | bool = str(config.resolve_path(http.ca_bundle)) if http.ca_bundle else True
    return MailcowAdapter(
        tenant.mailcow,
        tenant.credentials,
        concurrency=http.concurrency,
        retry=RetryPolicy(http.attempts, http.backoff_base, http.backoff_cap, http.max_retry_after),
        timeout=http.timeout,
        verify=verify,
    )

"""The TrekMail adapter: domains, mailboxes, forwarding, members and app/device passwords through REST API v1.

Read with an ops token (``tm_live_…``) holding read-only scopes; see README "TrekMail" for the list. Field
names and behaviours follow the contract notes; where they are uncertain (paging metadata, status
spellings, where the catch-all is read) both readings are accepted.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import httpx

from scanner.adapters.base import Collected, Emit, Pages, Refused
from scanner.adapters.http import ApiClient, ApiError, RetryPolicy
from scanner.adapters.mailcow import sieve_redirects
from scanner.config import Config, SecretRef, TenantConfig, TrekMailOptions
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

STATUSES = {
    "active": MailboxStatus.ACTIVE, "enabled": MailboxStatus.ACTIVE,
    "login_suspended": MailboxStatus.SUSPENDED, "sign_in_suspended": MailboxStatus.SUSPENDED,
    "suspended": MailboxStatus.SUSPENDED,
    "paused": MailboxStatus.DISABLED, "disabled": MailboxStatus.DISABLED, "trashed": MailboxStatus.DISABLED,
    "deleting": MailboxStatus.DISABLED,
    "pending": MailboxStatus.PENDING, "setup_pending": MailboxStatus.PENDING, "invited": MailboxStatus.PENDING,
}
"""Mailbox status spellings (the API does not enumerate them): paused (no delivery, no sending) and trashed
are disabled; sign-in suspended (delivery goes on) is suspended; setup pending (invite not redeemed) is
pending. Any other value is a problem for that mailbox, never read as active."""

REDIRECTS = ("redirect", "redirect_copy")
"""Filter actions that send mail on to another address."""

LAST_LOGIN_REASON = ("TrekMail's API reports no last sign-in for a mailbox (an app password's last use is a "
                     "client's activity, not the person's sign-in)")
OWNERS_REASON = ("TrekMail has no owner of record for a mailbox; the members of a shared mailbox are read as its "
                 "delegates")
INVITES_REASON = ("TrekMail's API can create invitations but not list, resend or revoke them (dashboard only); "
                  "unredeemed mailboxes show as pending")
OAUTH_REASON = ("TrekMail's API does not list OAuth connections or API tokens (dashboard only: AI Agents & API → "
                "Tokens / Active OAuth Connections)")
RECOVERY_REASON = "TrekMail's API exposes no recovery address or phone for a mailbox"
INVITE_REFUSAL = "TrekMail invitations can be revoked or resent only in the dashboard: its API has no call for it"
GRANT_GONE = "a revoked grant cannot be restored; the person grants it again"


class RecordError(ValueError):
    """One TrekMail record is malformed."""


def _when(value: Any, name: str) -> datetime | None:
    """An ISO 8601 time, read leniently (the zone is not documented; none given is taken as UTC)."""
    if value in (None, ""):
        return None
    try:
        parsed = datetime.fromisoformat(str(value).strip().replace("Z", "+00:00").replace(" ", "T"))
    except ValueError:
        raise RecordError(f"{name!r} is not an ISO 8601 time: {str(value)[:40]!r}") from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def _address(row: Mapping[str, Any], *names: str) -> str:
    for name in names:
        value = row.get(name)
        if isinstance(value, str) and "@" in value:
            return value.strip().lower()
    raise RecordError(f"no address in {'/'.join(names)}")


def _rows(body: Any, endpoint: str) -> list[Any]:
    """The rows of a TrekMail answer: ``data`` as a list (or a bare list)."""
    data = body.get("data") if isinstance(body, Mapping) else body
    if isinstance(data, list):
        return data
    raise AdapterError(f"trekmail: {endpoint} returned no 'data' list")


def _object(body: Any, endpoint: str) -> Mapping[str, Any]:
    """The object of a TrekMail answer: ``data`` as an object (or the body itself)."""
    data = body.get("data", body) if isinstance(body, Mapping) else None
    if isinstance(data, Mapping):
        return data
    raise AdapterError(f"trekmail: {endpoint} returned no object")


def retry_hint(response: httpx.Response) -> tuple[bool, float | None]:
    """TrekMail's own word on a throttled or failed answer: ``retryable: false`` stops, ``error.retry_after``
    (seconds) is the wait when no Retry-After header came (the official client reads both)."""
    try:
        error = response.json().get("error")
    except (ValueError, AttributeError):
        return True, None
    if not isinstance(error, Mapping):
        return True, None
    again = error.get("retryable") is not False
    wait = error.get("retry_after")
    return again, float(wait) if isinstance(wait, int | float) and not isinstance(wait, bool) and wait >= 0 else None


def scope_missing(exc: ApiError) -> bool:
    """True when TrekMail refused the call for a scope the token lacks."""
    return exc.status == 403 and exc.code == "insufficient_scope"


@dataclass
class _Reading:
    """One tenant's read: coverage, problems and notes."""

    tenant: Tenant
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    coverage: list[Coverage] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)  # endpoint kind -> why the token may not call it

    def cover(self, fact: Fact, state: FactState, reason: str = "", subject: str = "") -> None:
        self.coverage.append(Coverage(self.tenant.name, fact, state, reason, subject))


class TrekMailAdapter:
    """Reads one TrekMail account (or a token constrained to some of its domains); keeps the tenant's domains."""

    name = "trekmail"
    capabilities = frozenset({Fact.MAILBOX_LIST, Fact.MAILBOX_FORWARDS, Fact.MAILBOX_DELEGATES, Fact.DOMAIN_CATCH_ALL,
                              Fact.MAILBOX_APP_PASSWORDS})

    def __init__(self, options: TrekMailOptions, credentials: SecretRef, *, concurrency: int = 8,
                 retry: RetryPolicy = RetryPolicy(), timeout: float = 30.0, verify: str | bool = True) -> None:
        self.base = options.url.rstrip("/") + "/api/v1"
        self.per_page = options.per_page
        self._credentials = credentials
        self._concurrency = concurrency
        self._retry = retry
        self._timeout = timeout
        self._verify = verify

    def _client(self) -> ApiClient:
        try:
            token = self._credentials.resolve()
        except ConfigError as exc:  # names the reference, never the value
            raise AdapterError(f"trekmail: cannot read the ops token: {exc}") from None
        return ApiClient("trekmail", headers={"Authorization": f"Bearer {token}", "Accept": "application/json",
                                              "User-Agent": "mailwarden"},
                         concurrency=self._concurrency, retry=self._retry, timeout=self._timeout, verify=self._verify,
                         hint=retry_hint)

    async def _listing(self, client: ApiClient, path: str, params: Mapping[str, Any] | None = None
                       ) -> AsyncIterator[list[Any]]:
        """Each page's rows: stop at ``meta.last_page`` when the answer has it, else at a short page."""
        page = 1
        while True:
            url = f"{self.base}{path}"
            body = await client.get(url, {**(params or {}), "page": page, "per_page": self.per_page})
            rows = _rows(body, f"GET {url}")
            yield rows
            meta = body.get("meta") if isinstance(body, Mapping) else None
            last = meta.get("last_page") if isinstance(meta, Mapping) else None
            if isinstance(last, int) and not isinstance(last, bool):
                if page >= last:
                    return
            elif len(rows) < self.per_page:
                return
            page += 1

    async def collect(self, tenant: Tenant, emit: Emit) -> Collected:
        """Read domains (status, catch-all, forwarding addresses), then mailboxes page by page with their
        forwarding, filters, sieve, members and app passwords; Drive devices are matched to their mailbox."""
        reading = _Reading(tenant)
        async with self._client() as client:
            domains = await self._domains(reading, client)
            catch_all = await self._catch_all(reading, client, domains)
            devices = await self._devices(reading, client)
            pages = Pages(emit)
            async for rows in self._listing(client, "/mailboxes"):
                boxes = await asyncio.gather(*(self._mailbox(reading, client, row, devices) for row in rows))
                for box in boxes:
                    if box is not None:
                        await pages.add(box)
            for alias in await self._forwarding_addresses(reading, client, domains):
                await pages.add(alias)
            await pages.flush()
        reading.cover(Fact.MAILBOX_LIST, FactState.COLLECTED)
        for fact in (Fact.MAILBOX_FORWARDS, Fact.MAILBOX_DELEGATES, Fact.MAILBOX_APP_PASSWORDS, Fact.DOMAIN_CATCH_ALL):
            if not any(c.fact is fact and not c.subject for c in reading.coverage):
                reading.cover(fact, FactState.COLLECTED)
        reading.cover(Fact.MAILBOX_LAST_LOGIN, FactState.UNSUPPORTED, LAST_LOGIN_REASON)
        reading.cover(Fact.MAILBOX_OWNERS, FactState.UNSUPPORTED, OWNERS_REASON)
        reading.cover(Fact.MAILBOX_INVITES, FactState.UNSUPPORTED, INVITES_REASON)
        reading.cover(Fact.MAILBOX_OAUTH_GRANTS, FactState.UNSUPPORTED, OAUTH_REASON)
        reading.cover(Fact.MAILBOX_RECOVERY, FactState.UNSUPPORTED, RECOVERY_REASON)
        return Collected((), catch_all, tuple(reading.coverage), tuple(reading.problems), tuple(reading.notes))

    async def _domains(self, reading: _Reading, client: ApiClient) -> dict[str, int]:
        """The tenant's domains on the account by name -> id; their TrekMail status is noted when not active."""
        found: dict[str, int] = {}
        async for rows in self._listing(client, "/domains"):
            for row in rows:
                if not isinstance(row, Mapping) or row.get("id") is None:
                    reading.problems.append("trekmail /domains: a row without an id")
                    continue
                name = str(row.get("name") or row.get("domain") or "").strip().lower().rstrip(".")
                if name not in reading.tenant.domains and name not in reading.tenant.parked_domains:
                    continue  # another client's domain on the same account
                found[name] = int(row["id"])
                status = str(row.get("status") or "")
                if status and status != "active":
                    why = ": its DNS requirements are not met yet" if status == "pending_dns" else ""
                    reading.notes.append(f"TrekMail reports {name} as {status}{why}")
        for name in reading.tenant.domains:
            if name not in found:
                # Like Graph's unverified domains: its mailboxes are not seen, so the tenant is partial.
                reading.problems.append(f"{name} is not on this TrekMail account (or the token is constrained "
                                        "away from it); its mailboxes are not seen")
        return found

    async def _catch_all(self, reading: _Reading, client: ApiClient, domains: Mapping[str, int]
                         ) -> dict[str, str | None]:
        """The catch-all where the domain record carries it (the notes found no other place to read it)."""
        found: dict[str, str | None] = {}
        for name, ident in domains.items():
            url = f"{self.base}/domains/{ident}"
            record = _object(await client.get(url), f"GET {url}")
            setting = record.get("catch_all")
            if isinstance(setting, Mapping) and "enabled" in setting:
                destination = str(setting.get("destination") or "").strip().lower()
                # On without a destination shown still accepts every address: reported as "@domain".
                found[name] = (destination or f"@{name}") if setting.get("enabled") else None
            else:
                reading.cover(Fact.DOMAIN_CATCH_ALL, FactState.UNSUPPORTED,
                              "TrekMail's domain record does not show the catch-all setting", subject=name)
        if domains and not found:
            reading.cover(Fact.DOMAIN_CATCH_ALL, FactState.UNSUPPORTED,
                          "TrekMail's domain records do not show the catch-all setting (it can be written, not read)")
        for name in (*reading.tenant.domains, *reading.tenant.parked_domains):
            if name not in domains:  # unknown, never "no catch-all"
                reading.cover(Fact.DOMAIN_CATCH_ALL, FactState.FAILED,
                              f"{name} is not on this TrekMail account (or the token is constrained away from it)",
                              subject=name)
        return found

    async def _devices(self, reading: _Reading, client: ApiClient) -> dict[str, list[Grant]]:
        """Drive sync-device passwords by mailbox id; account-wide ones are noted (they belong to no mailbox)."""
        url = f"{self.base}/drive/devices"
        try:
            rows = _rows(await client.get(url), f"GET {url}")
        except ApiError as exc:
            if not scope_missing(exc):
                raise
            reading.cover(Fact.MAILBOX_APP_PASSWORDS, FactState.UNSUPPORTED,
                          "Drive device passwords cannot be read: the ops token lacks the drive:devices:read scope")
            return {}
        found: dict[str, list[Grant]] = {}
        loose = 0
        for row in rows:
            try:
                if not isinstance(row, Mapping) or row.get("id") is None:
                    raise RecordError("a row without an id")
                if row.get("active") is False or row.get("revoked_at"):
                    continue
                owner = row.get("mailbox_id")
                if owner is None and isinstance(row.get("mailbox"), Mapping):
                    owner = row["mailbox"].get("id")
                if owner is None:
                    loose += 1
                    continue
                scopes = tuple(str(s) for s in row.get("scopes") or ())
                found.setdefault(str(owner), []).append(Grant(
                    GrantKind.DEVICE_PASSWORD, str(row["id"]), str(row.get("label") or ""), MailAccess.NONE, scopes,
                    created=_when(row.get("created_at"), "created_at"),
                    last_used=_when(row.get("last_used_at"), "last_used_at")))
            except RecordError as exc:
                reading.problems.append(f"trekmail /drive/devices: {exc}")
        if loose:
            reading.notes.append(f"{loose} Drive device password(s) are account-wide, bound to no mailbox")
        return found

    async def _sub(self, reading: _Reading, client: ApiClient, kind: str, path: str, fact: Fact, address: str,
                   scope: str) -> Any:
        """One per-mailbox read; a scope the token lacks is asked once, then the fact is marked for every mailbox."""
        if kind in reading.refused:
            return None
        url = f"{self.base}{path}"
        try:
            return await client.get(url)
        except ApiError as exc:
            if scope_missing(exc):
                why = f"the ops token lacks the {scope} scope ({kind} cannot be read)"
                reading.refused[kind] = why
                state = FactState.UNSUPPORTED if fact is Fact.MAILBOX_APP_PASSWORDS else FactState.FAILED
                reading.cover(fact, state, why)
                if state is FactState.FAILED:
                    reading.problems.append(f"trekmail: {why}")
                return None
            if kind == "sieve" and exc.status == 404:
                return {"script": ""}  # no raw sieve script of the mailbox's own
            if kind == "app passwords" and exc.status == 404 and exc.code == "not_found":
                reading.refused[kind] = "off"
                reading.notes.append("app passwords are turned off on this TrekMail platform (404 not_found)")
                return None
            reading.cover(fact, FactState.FAILED, str(exc), subject=address)
            reading.problems.append(str(exc))
            return None

    async def _mailbox(self, reading: _Reading, client: ApiClient, row: Any,
                       devices: Mapping[str, list[Grant]]) -> Mailbox | None:
        try:
            if not isinstance(row, Mapping) or row.get("id") is None:
                raise RecordError("a mailbox row without an id")
            address = _address(row, "email", "address")
            status_text = str(row.get("status") or "").strip().lower()
            if status_text not in STATUSES:
                raise RecordError(f"{address}: unknown status {status_text[:40]!r} (not read as active)")
        except RecordError as exc:
            reading.problems.append(f"trekmail /mailboxes: {exc}")
            return None
        if not reading.tenant.owns(domain_of(address)):
            return None
        status = STATUSES[status_text]
        if status is MailboxStatus.ACTIVE and row.get("login_suspended") is True:
            status = MailboxStatus.SUSPENDED
        shared = str(row.get("type") or "").lower() == "shared"
        ident = quote(str(row["id"]), safe="")
        forwards: list[Forward] = []
        body = await self._sub(reading, client, "forwarding", f"/mailboxes/{ident}/forwarding",
                               Fact.MAILBOX_FORWARDS, address, "mailboxes:forwarding:read")
        if body is not None:
            setting = _object(body, "forwarding")
            if setting.get("enabled"):
                forwards += [Forward(str(t).strip().lower(), ForwardMechanism.AUTO_FORWARD)
                             for t in setting.get("targets") or () if "@" in str(t)]
        body = await self._sub(reading, client, "filters", f"/mailboxes/{ident}/rules", Fact.MAILBOX_FORWARDS,
                               address, "mailboxes:rules:read")
        if body is not None:
            for rule in _rows(body, "rules"):
                if not isinstance(rule, Mapping) or rule.get("enabled") is False:
                    continue
                for action in rule.get("actions") or ():
                    redirect = isinstance(action, Mapping) and action.get("type") in REDIRECTS
                    if redirect and "@" in str(action.get("value")):
                        forwards.append(Forward(str(action["value"]).strip().lower(), ForwardMechanism.INBOX_RULE))
        body = await self._sub(reading, client, "sieve", f"/mailboxes/{ident}/sieve", Fact.MAILBOX_FORWARDS,
                               address, "mailboxes:rules:read")
        if body is not None:
            script = body.get("data", body) if isinstance(body, Mapping) else body
            if isinstance(script, Mapping):
                script = script.get("script") or script.get("content") or ""
            known = {f.target for f in forwards}
            # Filters are compiled into the sieve too: a target a filter already names is not counted twice.
            forwards += [Forward(t, ForwardMechanism.REDIRECT) for t in sieve_redirects(str(script or ""))
                         if t not in known]
        delegates: tuple[str, ...] = ()
        if shared:
            body = await self._sub(reading, client, "members", f"/mailboxes/{ident}/members",
                                   Fact.MAILBOX_DELEGATES, address, "mailboxes:read")
            if body is not None:
                found = []
                for member in _rows(body, "members"):
                    try:
                        found.append(_address(member, "email", "member_email", "mailbox_email"))
                    except (RecordError, AttributeError):
                        reading.problems.append(f"trekmail {address} members: a member without an address")
                delegates = tuple(dict.fromkeys(found))
        grants: list[Grant] = []
        if not shared:  # shared mailboxes have no sign-in and no app passwords
            body = await self._sub(reading, client, "app passwords", f"/mailboxes/{ident}/app-passwords",
                                   Fact.MAILBOX_APP_PASSWORDS, address, "mailboxes:read")
            if body is not None:
                for password in _rows(body, "app-passwords"):
                    try:
                        if not isinstance(password, Mapping) or password.get("id") is None:
                            raise RecordError("an app password without an id")
                        if password.get("active") is False or password.get("revoked_at"):
                            continue
                        # An app password signs in to IMAP/SMTP/DAV: the whole mailbox. No secret is listed.
                        grants.append(Grant(GrantKind.APP_PASSWORD, str(password["id"]),
                                               str(password.get("name") or ""), MailAccess.FULL, ("imap",),
                                               created=_when(password.get("created_at"), "created_at"),
                                               last_used=_when(password.get("last_used_at"), "last_used_at")))
                    except RecordError as exc:
                        reading.problems.append(f"trekmail {address} app passwords: {exc}")
        grants += devices.get(str(row["id"]), ())
        return Mailbox(tenant=reading.tenant.name, address=address,
                       kind=MailboxKind.SHARED if shared else MailboxKind.USER, status=status,
                       display_name=str(row.get("name") or row.get("display_name") or ""),
                       delegates=delegates, forwards=tuple(dict.fromkeys(forwards)), grants=tuple(grants))

    async def _forwarding_addresses(self, reading: _Reading, client: ApiClient, domains: Mapping[str, int]
                                    ) -> list[Mailbox]:
        """Domain forwarding addresses with a recipient outside the tenant, as ALIAS subjects (a paused one is
        DISABLED with no forwards); ones that stay inside are internal routing and are left out."""
        found = []
        for name, ident in domains.items():
            url = f"{self.base}/domains/{ident}/forwarding-addresses"
            body = await client.get(url)
            delivery = body.get("delivery") if isinstance(body, Mapping) else None
            delivering = not isinstance(delivery, Mapping) or delivery.get("active") is not False
            for row in _rows(body, f"GET {url}"):
                try:
                    if not isinstance(row, Mapping):
                        raise RecordError("not an object")
                    local = str(row.get("local_part") or "").strip().lower()
                    address = str(row.get("address") or (f"{local}@{name}" if local else "")).strip().lower()
                    if "@" not in address:
                        raise RecordError("no address or local_part")
                    recipients = [str(r).strip().lower() for r in row.get("recipients") or () if "@" in str(r)]
                except RecordError as exc:
                    reading.problems.append(f"trekmail {name} forwarding addresses: {exc}")
                    continue
                outside = [r for r in recipients if not reading.tenant.owns(domain_of(r))]
                if not outside:
                    continue
                active = row.get("is_active") is not False and delivering
                found.append(Mailbox(tenant=reading.tenant.name, address=address, kind=MailboxKind.ALIAS,
                                     status=MailboxStatus.ACTIVE if active else MailboxStatus.DISABLED,
                                     forwards=tuple(Forward(r, ForwardMechanism.ALIAS) for r in outside) if active
                                     else ()))
        return found

    # Remediation writes: only remediation jobs call these. Each write carries a fresh Idempotency-Key (one per
    # job attempt, kept across that request's transport retries): a key derived from the action and subject
    # would replay an earlier answer inside TrekMail's idempotency window and change nothing.

    async def _write(self, client: ApiClient, method: str, path: str, body: Any) -> Any:
        url = f"{self.base}{path}"
        _, answer = await client.request(method, url, json_body=body, headers={"Idempotency-Key": str(uuid.uuid4()),
                                                                                 "Content-Type": "application/json"})
        return answer

    async def _find_mailbox(self, client: ApiClient, address: str) -> Mapping[str, Any]:
        async for rows in self._listing(client, "/mailboxes", {"search": address}):
            for row in rows:
                if isinstance(row, Mapping) and str(row.get("email") or row.get("address") or "").lower() == address:
                    return row
        raise AdapterError(f"trekmail: no mailbox {address} on this account")

    async def _find_domain(self, client: ApiClient, name: str) -> int:
        async for rows in self._listing(client, "/domains", {"search": name}):
            for row in rows:
                if isinstance(row, Mapping) and str(row.get("name") or row.get("domain") or "").lower() == name:
                    return int(row["id"])
        raise AdapterError(f"trekmail: no domain {name} on this account")

    async def _forwarding_address(self, client: ApiClient, address: str) -> tuple[int, Mapping[str, Any]] | None:
        domain = await self._find_domain(client, domain_of(address))
        url = f"{self.base}/domains/{domain}/forwarding-addresses"
        for row in _rows(await client.get(url), f"GET {url}"):
            local = str(row.get("local_part") or "").lower()
            if str(row.get("address") or f"{local}@{domain_of(address)}").lower() == address:
                return domain, row
        return None

    async def remedy_read(self, action: str, subject: str, params: Mapping[str, Any]) -> dict[str, Any]:
        """The action's normalized state of ``subject``, read from TrekMail now, with what an undo would need."""
        subject = subject.lower()
        async with self._client() as client:
            if action == "forwarding.disable":
                return await self._read_forwards(client, subject, params)
            if action == "catchall.disable":
                ident = await self._find_domain(client, subject.rstrip("."))
                url = f"{self.base}/domains/{ident}"
                setting = _object(await client.get(url), f"GET {url}").get("catch_all")
                if not isinstance(setting, Mapping) or "enabled" not in setting:
                    raise Refused("TrekMail's domain record does not show the catch-all, so a change could not be "
                                  "verified; turn it off in the dashboard")
                target = str(setting.get("destination") or "").lower() or f"@{subject}"
                return {"state": {"catch_all": target if setting.get("enabled") else None},
                        "detail": {"domain_id": ident, "destination": setting.get("destination")}}
            if action == "account.suspend":
                row = await self._find_mailbox(client, subject)
                status = STATUSES.get(str(row.get("status") or "").lower())
                if status is None:
                    raise AdapterError(f"trekmail: {subject} has an unknown status {str(row.get('status'))[:40]!r}")
                if status is MailboxStatus.ACTIVE and row.get("login_suspended") is True:
                    status = MailboxStatus.SUSPENDED
                return {"state": {"status": status.value}, "detail": {"id": row["id"]}}
            if action == "grant.revoke":
                return await self._read_grant(client, subject, params)
        raise Refused(_refusal(action))

    async def _read_forwards(self, client: ApiClient, subject: str, params: Mapping[str, Any]) -> dict[str, Any]:
        targets = {str(t).lower() for t in params.get("targets", ())}
        mechanisms = set(params.get("mechanisms", ()))
        if ForwardMechanism.REDIRECT.value in mechanisms:
            raise Refused("a redirect in a raw sieve script cannot be edited safely through TrekMail's API; "
                          "change the script in the dashboard")
        if ForwardMechanism.ALIAS.value in mechanisms:
            found = await self._forwarding_address(client, subject)
            if found is None:
                return {"state": {"forwards": []}, "detail": {}}
            domain, row = found
            live = sorted(targets & {str(r).lower() for r in row.get("recipients") or ()}) if row.get(
                "is_active") is not False else []
            return {"state": {"forwards": live}, "detail": {"alias": [domain, row["id"]]}}
        box = await self._find_mailbox(client, subject)
        ident = quote(str(box["id"]), safe="")
        setting = _object(await client.get(f"{self.base}/mailboxes/{ident}/forwarding"), "forwarding")
        live = set()
        if setting.get("enabled"):
            live |= {str(t).lower() for t in setting.get("targets") or ()} & targets
        rules = _rows(await client.get(f"{self.base}/mailboxes/{ident}/rules"), "rules")
        forwarding_rules = []
        for rule in rules:
            hits = {str(a.get("value")).lower() for a in rule.get("actions") or ()
                    if isinstance(a, Mapping) and a.get("type") in REDIRECTS} & targets
            if hits and rule.get("enabled") is not False:
                live |= hits
                forwarding_rules.append(dict(rule))
        return {"state": {"forwards": sorted(live)},
                "detail": {"id": box["id"], "forwarding": dict(setting), "rules": forwarding_rules}}

    async def _read_grant(self, client: ApiClient, subject: str, params: Mapping[str, Any]) -> dict[str, Any]:
        kind, grant = str(params.get("kind")), str(params.get("grant"))
        if kind == GrantKind.OAUTH.value:
            raise Refused(OAUTH_REASON)
        if kind == GrantKind.DEVICE_PASSWORD.value:
            rows = _rows(await client.get(f"{self.base}/drive/devices"), "GET /drive/devices")
            held = any(str(r.get("id")) == grant and r.get("active") is not False and not r.get("revoked_at")
                       for r in rows if isinstance(r, Mapping))
            return {"state": {"grants": [grant] if held else []}, "detail": {}}
        box = await self._find_mailbox(client, subject)
        url = f"{self.base}/mailboxes/{quote(str(box['id']), safe='')}/app-passwords"
        rows = _rows(await client.get(url), f"GET {url}")
        held = any(str(r.get("id")) == grant and r.get("active") is not False and not r.get("revoked_at")
                   for r in rows if isinstance(r, Mapping))
        return {"state": {"grants": [grant] if held else []}, "detail": {"id": box["id"]}}

    async def remedy_apply(self, action: str, subject: str, params: Mapping[str, Any], before: Mapping[str, Any]
                           ) -> dict[str, Any]:
        """Make the action's change through TrekMail's API; returns the state read back afterwards."""
        subject = subject.lower()
        detail = dict(before.get("detail") or {})
        async with self._client() as client:
            if action == "forwarding.disable":
                await self._stop_forwards(client, params, detail)
            elif action == "catchall.disable":
                await self._write(client, "PATCH", f"/domains/{detail['domain_id']}/catch-all", {"enabled": False})
            elif action == "account.suspend":
                # Blocks webmail, IMAP, SMTP and app passwords and ends sessions; delivery goes on.
                await self._write(client, "POST", f"/mailboxes/{detail['id']}:suspend-login",
                                  {"reason": "mailwarden remediation job"})
            elif action == "grant.revoke":
                grant = quote(str(params.get("grant")), safe="")
                if params.get("kind") == GrantKind.DEVICE_PASSWORD.value:
                    await self._write(client, "DELETE", f"/drive/devices/{grant}", None)
                else:
                    await self._write(client, "DELETE", f"/mailboxes/{detail['id']}/app-passwords/{grant}", None)
            else:
                raise Refused(_refusal(action))
        after = await self.remedy_read(action, subject, params)
        return {"state": after["state"], "detail": detail}

    async def _stop_forwards(self, client: ApiClient, params: Mapping[str, Any], detail: Mapping[str, Any]) -> None:
        targets = {str(t).lower() for t in params.get("targets", ())}
        if "alias" in detail:
            domain, fid = detail["alias"]
            await self._write(client, "PATCH", f"/domains/{domain}/forwarding-addresses/{fid}", {"is_active": False})
            return
        setting = detail.get("forwarding") or {}
        if setting.get("enabled") and targets & {str(t).lower() for t in setting.get("targets") or ()}:
            remaining = [t for t in setting.get("targets") or () if str(t).lower() not in targets]
            # One forwarding config per mailbox: keep the other targets, or turn it off when none remain.
            body = ({"enabled": True, "targets": remaining, "keep_copy": setting.get("keep_copy", True)} if remaining
                    else {"enabled": False, "keep_copy": setting.get("keep_copy", True)})
            await self._write(client, "PUT", f"/mailboxes/{detail['id']}/forwarding", body)
        for rule in detail.get("rules") or ():
            await self._write(client, "PUT", f"/mailboxes/{detail['id']}/rules/{rule['id']}",
                              {k: v for k, v in dict(rule, enabled=False).items() if k != "id"})

    async def remedy_restore(self, action: str, subject: str, params: Mapping[str, Any], before: Mapping[str, Any]
                             ) -> dict[str, Any]:
        """Undo ``remedy_apply`` from the recorded before-state; returns the state read back afterwards."""
        subject = subject.lower()
        detail = before.get("detail") or {}
        async with self._client() as client:
            if action == "forwarding.disable":
                if "alias" in detail:
                    domain, fid = detail["alias"]
                    await self._write(client, "PATCH", f"/domains/{domain}/forwarding-addresses/{fid}",
                                      {"is_active": True})
                else:
                    setting = detail.get("forwarding") or {}
                    await self._write(client, "PUT", f"/mailboxes/{detail['id']}/forwarding",
                                      {k: setting.get(k) for k in ("enabled", "targets", "keep_copy") if k in setting})
                    for rule in detail.get("rules") or ():
                        await self._write(client, "PUT", f"/mailboxes/{detail['id']}/rules/{rule['id']}",
                                          {k: v for k, v in rule.items() if k != "id"})
            elif action == "catchall.disable":
                await self._write(client, "PATCH", f"/domains/{detail['domain_id']}/catch-all",
                                  {"enabled": True, "destination": detail.get("destination")})
            elif action == "account.suspend":
                # Resuming does not bring back the app and device passwords the suspension revoked.
                await self._write(client, "POST", f"/mailboxes/{detail['id']}:resume-login", {})
            elif action == "grant.revoke":
                raise Refused(GRANT_GONE)
            else:
                raise Refused(_refusal(action))
        return await self.remedy_read(action, subject, params)


def _refusal(action: str) -> str:
    if action.startswith("invite."):
        return INVITE_REFUSAL
    if action == "delegate.remove":
        return "TrekMail's API has no call that removes a shared-mailbox member; remove it in the dashboard"
    return f"the trekmail adapter has no remediation action {action!r}"


def build(tenant: TenantConfig, config: Config) -> TrekMailAdapter:
    """The TrekMail adapter for a tenant, from its [tenants.trekmail] table and the [http] settings."""
    assert tenant.trekmail is not None and tenant.credentials is not None  # the config validator requires both
    http = config.http
    verify: str | bool = str(config.resolve_path(http.ca_bundle)) if http.ca_bundle else True
    return TrekMailAdapter(tenant.trekmail, tenant.credentials, concurrency=http.concurrency,
                           retry=RetryPolicy(http.attempts, http.backoff_base, http.backoff_cap, http.max_retry_after),
                           timeout=http.timeout, verify=verify)

"""The Google Workspace adapter: Directory users, groups and domains, Gmail settings per user, Cloud Identity invitations.

Auth is a service account with domain-wide delegation: an RS256 JWT assertion (google-auth signs it) is
exchanged at the key's ``token_uri`` for an access token per impersonated subject (RFC 7523 §2.1). Directory
and Cloud Identity calls impersonate the configured admin; Gmail settings calls impersonate each user.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import quote, unquote

import google.auth.crypt
import google.auth.jwt
import httpx

from scanner.adapters.base import Collected, Emit, Pages, Refused
from scanner.adapters.http import ApiClient, ApiError, RetryPolicy, endpoint_of
from scanner.adapters.scopes import GOOGLE, mail_access
from scanner.config import Config, GoogleOptions, SecretRef, TenantConfig
from scanner.errors import AdapterError, ConfigError
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
    Recovery,
    RecoveryKind,
    Tenant,
    domain_of,
)

T = TypeVar("T")

AUTH = "https://www.googleapis.com/auth/"
READ_DIRECTORY = tuple(
    AUTH + s
    for s in ("admin.directory.user.readonly", "admin.directory.domain.readonly", "admin.directory.group.readonly")
)
READ_GMAIL = (AUTH + "gmail.settings.basic",)
READ_INVITES = (AUTH + "cloud-identity.userinvitations.readonly",)
READ_POLICIES = (AUTH + "cloud-identity.policies.readonly",)
READ_ORG_UNITS = (AUTH + "admin.directory.orgunit.readonly",)
WRITE_USER = (AUTH + "admin.directory.user",)
WRITE_GMAIL = (AUTH + "gmail.settings.basic", AUTH + "gmail.settings.sharing")
WRITE_INVITES = (AUTH + "cloud-identity.userinvitations",)
SECURITY = (AUTH + "admin.directory.user.security",)
"""Directory tokens and asps (list and delete): an extra scope the domain-wide delegation must grant."""
SECURITY_MISSING = (
    "needs the https://www.googleapis.com/auth/admin.directory.user.security scope in the service account's "
    "domain-wide delegation (Directory tokens and asps)"
)

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"  # RFC 7523 §2.1
TOKEN_LIFETIME = 3600  # Google refuses assertions whose exp is more than one hour after iat
TOKEN_MARGIN = 60.0  # renew a cached token this many seconds before it expires

THROTTLE_REASONS = frozenset(
    {"userRateLimitExceeded", "rateLimitExceeded", "quotaExceeded", "concurrentLimitExceeded", "backendError"}
)
"""errors[].reason values that mean "slow down", which Google sends with 403 as well as 429."""

NEVER = datetime(1970, 1, 1, tzinfo=UTC)
"""Directory's lastLoginTime for a user who never signed in (observed convention, not documented)."""

CATCH_ALL_UNSUPPORTED = (
    "Google Workspace sets catch-all (default routing) in the Admin console only; "
    "the Directory, Gmail and Policy APIs do not expose it"
)
INVITES_NEED_CUSTOMER_ID = (
    "pending invitations come from the Cloud Identity userinvitations API, which needs the numeric "
    "customer ID: set google.customer_id (C0...) for this tenant"
)
INVITES_WITHOUT_CUSTOMER_ID = (
    "pending first sign-ins only (Directory users with agreedToTerms false, waiting since creationTime); "
    "invitations to unmanaged accounts come from the Cloud Identity userinvitations API, which needs "
    "google.customer_id (C0...)"
)
AUTO_FORWARDING_SETTING = "gmail.auto_forwarding"
"""The Policy API setting type (listed as ``settings/gmail.auto_forwarding``) of the Admin console's
"Allow users to automatically forward email to another address"; its value is ``enableAutoForwarding``."""
PROBLEMS_SHOWN = 20
SUSPENDED_REASON = (
    "suspended: Gmail refuses delegated access (the service account's token exchange for a suspended user answers "
    "invalid_grant), so its Gmail settings were not read"
)
FIRST_SIGN_IN_REFUSAL = (
    "is a Workspace user who never completed first sign-in (agreedToTerms false), not an invitation: there is "
    "nothing to resend or revoke; hand the person new sign-in details, or suspend the account"
)
NOT_SUPER_ADMIN = (
    "the Cloud Identity Policy API answered 403 (it needs a super admin as google.admin and the Cloud Identity "
    "API enabled for the service account's project): the org-wide automatic-forwarding setting is unknown, so "
    "every user's Gmail forwarding settings were read"
)


@dataclass(frozen=True, slots=True)
class AutoForwarding:
    """A Gmail user's automatic forwarding setting as read back from the API."""

    enabled: bool
    email: str = ""
    disposition: str = ""


@dataclass(frozen=True, slots=True)
class GmailFilter:
    """A Gmail filter; ``forward`` is its forwarding target, if any. Criteria and action are kept for undo."""

    id: str
    forward: str = ""
    criteria: Mapping[str, Any] = field(default_factory=dict)
    action: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Delegate:
    """A Gmail delegate of a user and the delegation's verification status."""

    email: str
    status: str


@dataclass(frozen=True, slots=True)
class Invitation:
    """A Cloud Identity invitation of an unmanaged account on one of the tenant's domains."""

    email: str
    state: str
    mails_sent: int = 0
    updated: datetime | None = None


def google_transient(response: httpx.Response) -> bool:
    """Google throttles with 403 as well as 429, naming the limit in ``errors[].reason``; retry those."""
    if response.status_code not in (403, 429):
        return False
    try:
        body = response.json()
    except ValueError:
        return False
    error = body.get("error") if isinstance(body, Mapping) else None
    reasons = error.get("errors") if isinstance(error, Mapping) else None
    if not isinstance(reasons, list):
        return False
    return any(isinstance(r, Mapping) and r.get("reason") in THROTTLE_REASONS for r in reasons)


def parse_time(value: object) -> datetime | None:
    """An RFC 3339 timestamp as an aware UTC datetime; None when absent. Raises ValueError when unreadable."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ValueError(f"not a timestamp: {str(value)[:40]!r}")
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def _flag(value: object) -> bool:
    return value is True or (isinstance(value, str) and value.lower() == "true")


def _items(body: Any, key: str, endpoint: str) -> list[Mapping[str, Any]]:
    """The list under ``key`` of a Google response; Google omits the key when the list is empty."""
    if not isinstance(body, Mapping):
        raise AdapterError(f"{endpoint} returned an unexpected response: expected a JSON object")
    value = body.get(key, [])
    if not isinstance(value, list) or not all(isinstance(item, Mapping) for item in value):
        raise AdapterError(f"{endpoint} returned an unexpected response: {key!r} is not a list of objects")
    return value


def _next_page(body: Any, url: str, params: Mapping[str, Any] | None) -> tuple[str, Mapping[str, Any] | None] | None:
    """Directory and Cloud Identity paging: send ``pageToken`` while the response has ``nextPageToken``."""
    token = body.get("nextPageToken") if isinstance(body, Mapping) else None
    if not token or not isinstance(token, str):
        return None
    return url, {**(params or {}), "pageToken": token}


async def _together(*jobs: Coroutine[Any, Any, Any]) -> list[Any]:
    """Run coroutines concurrently; the first failure cancels the rest and is raised as itself."""
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(job) for job in jobs]
    except BaseExceptionGroup as failures:
        first = failures.exceptions[0]
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        raise first from None
    return [task.result() for task in tasks]


@dataclass(frozen=True, slots=True)
class _ServiceAccount:
    """The parts of a service-account key the JWT-bearer grant needs."""

    email: str
    token_url: str
    signer: google.auth.crypt.RSASigner

    @classmethod
    def load(cls, ref: SecretRef, token_url: str) -> _ServiceAccount:
        """Read the key JSON the reference points to; errors name the reference, never the key."""
        text = ref.resolve()
        try:
            info = json.loads(text)
        except ValueError:
            raise ConfigError(f"credentials {ref}: not a service-account key (JSON expected)") from None
        if not isinstance(info, dict) or not all(
            isinstance(info.get(k), str) and info.get(k) for k in ("client_email", "private_key")
        ):
            raise ConfigError(f"credentials {ref}: the service-account key needs 'client_email' and 'private_key'")
        url = token_url or info.get("token_uri") or ""
        if not isinstance(url, str) or not url.startswith(("https://", "http://")):
            raise ConfigError(f"credentials {ref}: the key has no usable 'token_uri' and google.token_url is not set")
        try:
            signer = google.auth.crypt.RSASigner.from_service_account_info(info)  # type: ignore[no-untyped-call]
        except (ValueError, TypeError):
            raise ConfigError(f"credentials {ref}: the service-account key's private key cannot be read") from None
        return cls(info["client_email"], url, signer)


@dataclass(slots=True)
class _Cached:
    value: str
    expires: float


class _Delegation:
    """Access tokens for one impersonated subject and scope set; the value outlives the session in ``cache``."""

    def __init__(self, session: _Session, subject: str, scopes: tuple[str, ...]) -> None:
        self._session = session
        self._subject = subject
        self._scopes = scopes
        self._key = (subject, scopes)
        self._lock = asyncio.Lock()
        self._generation = 0

    async def token(self, *, refresh: bool = False) -> str:
        """A cached token, or a new one when it is near expiry or the API refused it."""
        seen = self._generation
        cache = self._session.cache
        async with self._lock:
            cached = cache.get(self._key)
            if cached is not None and self._generation != seen:
                return cached.value  # another request refreshed it while this one waited
            if cached is not None and not refresh and cached.expires > time.monotonic():
                return cached.value
            cache[self._key] = await self._session.grant(self._subject, self._scopes)
            self._generation += 1
            return cache[self._key].value


class _Session:
    """One event loop's HTTP client plus token sources over the adapter's token cache."""

    def __init__(self, adapter: GoogleAdapter, client: ApiClient) -> None:
        self.adapter = adapter
        self.client = client
        self.cache = adapter.tokens
        self._delegations: dict[tuple[str, tuple[str, ...]], _Delegation] = {}

    def as_user(self, subject: str, scopes: tuple[str, ...]) -> _Delegation:
        """The token source impersonating ``subject`` with ``scopes``."""
        key = (subject, scopes)
        if key not in self._delegations:
            self._delegations[key] = _Delegation(self, subject, scopes)
        return self._delegations[key]

    @contextmanager
    def as_user_once(self, subject: str, scopes: tuple[str, ...]) -> Iterator[_Delegation]:
        """The token source for a subject needed only in the block (a user's Gmail reads): its token is
        dropped afterwards, so a crawl's memory does not grow with the number of users."""
        key = (subject, scopes)
        try:
            yield self.as_user(subject, scopes)
        finally:
            self._delegations.pop(key, None)
            self.cache.pop(key, None)

    def as_admin(self, scopes: tuple[str, ...] = READ_DIRECTORY) -> _Delegation:
        """The token source impersonating the tenant's admin."""
        return self.as_user(self.adapter.options.admin, scopes)

    async def grant(self, subject: str, scopes: tuple[str, ...]) -> _Cached:
        """Exchange a signed JWT assertion for an access token (RFC 7523 §2.1)."""
        account = self.adapter.account()
        now = int(time.time())
        claims = {"iss": account.email, "sub": subject, "scope": " ".join(scopes), "aud": account.token_url,
                  "iat": now, "exp": now + TOKEN_LIFETIME}
        assertion = google.auth.jwt.encode(account.signer, claims).decode("ascii")  # type: ignore[no-untyped-call]
        try:
            _, body = await self.client.request(
                "POST", account.token_url, form={"grant_type": JWT_BEARER, "assertion": assertion}
            )
        except ApiError as exc:
            hint = {
                "unauthorized_client": "domain-wide delegation is not granted to this service account for the scopes",
                "invalid_grant": "the assertion was refused or the user does not exist",
            }.get(exc.code, "")
            raise AdapterError(f"{exc} (impersonating {subject}{'; ' + hint if hint else ''})") from None
        endpoint = endpoint_of("POST", account.token_url)
        if not isinstance(body, Mapping) or not isinstance(body.get("access_token"), str):
            raise AdapterError(f"{self.client.label}: {endpoint} returned an unexpected response: no access_token")
        try:
            lifetime = float(body.get("expires_in", TOKEN_LIFETIME))
        except (TypeError, ValueError):
            lifetime = TOKEN_LIFETIME
        return _Cached(body["access_token"], time.monotonic() + max(0.0, lifetime - TOKEN_MARGIN))


@dataclass
class _Crawl:
    """One tenant's collection: sends mailboxes on as they are read, accumulates coverage and problems."""

    adapter: GoogleAdapter
    session: _Session
    tenant: Tenant
    pages: Pages
    internal: set[str] = field(default_factory=set)
    tenant_domains: tuple[str, ...] | None = None
    invites: dict[str, Invite] = field(default_factory=dict)
    coverage: list[Coverage] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    forwarding: ForwardingPolicy = field(default_factory=lambda: ForwardingPolicy())
    security: bool = True  # the security scope is delegated: tokens and asps are read

    @property
    def directory(self) -> str:
        return f"{self.adapter.options.directory_url.rstrip('/')}/admin/directory/v1"

    def fail(self, facts: Iterable[Fact], reason: str, subject: str = "") -> None:
        """Record that facts could not be read (for one subject, or for the tenant)."""
        for fact in facts:
            self.coverage.append(Coverage(self.tenant.name, fact, FactState.FAILED, reason, subject))
        self.problems.append(f"{subject}: {reason}" if subject else reason)

    async def run(self) -> Collected:
        options = self.adapter.options
        await _together(self.read_domains(), self.read_forwarding_policy(), self.probe_security())
        if options.customer_id:
            # First (a page or two), so each user can carry its invitation as it is sent on.
            await self.read_invitations()
        await _together(self.read_users(), self.read_groups())
        for address, invite in self.invites.items():
            # An invitation is for an unmanaged account, so normally no user has its address.
            await self.pages.add(Mailbox(self.tenant.name, address, MailboxKind.USER, MailboxStatus.PENDING,
                                         invite=invite))
        await self.pages.flush()
        if not options.customer_id:
            self.coverage.append(Coverage(self.tenant.name, Fact.MAILBOX_INVITES, FactState.COLLECTED,
                                          INVITES_WITHOUT_CUSTOMER_ID))
        for fact in self.adapter.capabilities:
            if not any(c.fact is fact and not c.subject for c in self.coverage):
                self.coverage.append(Coverage(self.tenant.name, fact, FactState.COLLECTED))
        self.coverage.append(Coverage(self.tenant.name, Fact.DOMAIN_CATCH_ALL, FactState.UNSUPPORTED,
                                      CATCH_ALL_UNSUPPORTED))
        problems = self.problems
        if len(problems) > PROBLEMS_SHOWN:
            problems = [*problems[:PROBLEMS_SHOWN], f"... and {len(problems) - PROBLEMS_SHOWN} more problems"]
        return Collected((), {}, tuple(self.coverage), tuple(problems), tuple(self.notes), self.tenant_domains)

    async def read_domains(self) -> None:
        """The Workspace's verified domains and domain aliases: the tenant's own (group members there are inside).

        Directory API domains.list (developers.google.com/admin-sdk/directory/reference/rest/v1/domains): each
        domain has ``domainName``, ``verified`` and ``domainAliases[]`` (DomainAlias: ``domainAliasName``,
        ``parentDomainName``, ``verified``). A domain not verified is not proven the customer's, so it stays outside.
        A list that cannot be read leaves the configured domains alone inside, and says so.
        """
        url = f"{self.directory}/customer/{quote(self.adapter.options.customer)}/domains"
        self.internal = set(self.tenant.domains) | set(self.tenant.parked_domains)
        try:
            body = await self.session.client.get(url, token=self.session.as_admin())
            listed = _items(body, "domains", endpoint_of("GET", url))
        except AdapterError as exc:
            self.fail((Fact.TENANT_DOMAINS,), f"the Workspace's domains could not be read: {exc}")
            return
        found: set[str] = set()
        for domain in listed:
            if isinstance(domain.get("domainName"), str) and domain.get("verified") is not False:
                found.add(domain["domainName"].lower().rstrip("."))
            for alias in domain.get("domainAliases") or ():
                if (isinstance(alias, Mapping) and isinstance(alias.get("domainAliasName"), str)
                        and alias.get("verified") is not False):
                    found.add(alias["domainAliasName"].lower().rstrip("."))
        self.internal |= found
        self.tenant_domains = tuple(sorted(found))
        self.coverage.append(Coverage(self.tenant.name, Fact.TENANT_DOMAINS, FactState.COLLECTED,
                                      "verified domains and domain aliases from Directory domains.list"))

    def inside(self, address: str) -> bool:
        domain = domain_of(address)
        while domain:
            if domain in self.internal:
                return True
            domain = domain.partition(".")[2]
        return False

    async def read_users(self) -> None:
        """Users page by page; a bounded pool of workers reads each user's Gmail settings meanwhile."""
        url = f"{self.directory}/users"
        params = {"customer": self.adapter.options.customer, "maxResults": 500, "projection": "basic"}
        workers = self.adapter.http.concurrency
        queue: asyncio.Queue[Mapping[str, Any] | None] = asyncio.Queue(maxsize=workers * 4)

        async def produce() -> None:
            endpoint = endpoint_of("GET", url)
            async for page in self.session.client.pages(url, params, _next_page, token=self.session.as_admin()):
                for raw in _items(page, "users", endpoint):
                    await queue.put(raw)
            for _ in range(workers):
                await queue.put(None)

        async def work() -> None:
            while (raw := await queue.get()) is not None:
                mailbox = self.user(raw)
                if mailbox is not None:
                    mailbox = await self.access(await self.gmail(mailbox, raw))
                    invite = self.invites.pop(mailbox.address, None)
                    await self.pages.add(replace(mailbox, invite=invite) if invite else mailbox)

        await _together(produce(), *(work() for _ in range(workers)))

    def user(self, raw: Mapping[str, Any]) -> Mailbox | None:
        """A Directory user as a mailbox (without its Gmail settings)."""
        address = raw.get("primaryEmail")
        if not isinstance(address, str) or "@" not in address:
            self.problems.append(f"a Directory user (id {str(raw.get('id'))[:40]}) has no primaryEmail")
            return None
        address = address.lower()
        if _flag(raw.get("suspended")):
            status = MailboxStatus.SUSPENDED
        elif _flag(raw.get("archived")):
            status = MailboxStatus.DISABLED
        else:
            status = MailboxStatus.ACTIVE
        try:
            created = parse_time(raw.get("creationTime"))
        except ValueError:
            created = None
            self.problems.append(f"{address}: unreadable creationTime")
        try:
            last_login = parse_time(raw.get("lastLoginTime"))
        except ValueError:
            last_login = None
            self.fail((Fact.MAILBOX_LAST_LOGIN,), "unreadable lastLoginTime", address)
        if last_login is not None and last_login <= NEVER:
            last_login = None  # 1970-01-01: never signed in
        name = raw.get("name")
        display = name.get("fullName") if isinstance(name, Mapping) else None
        invite = None
        if status is MailboxStatus.ACTIVE and raw.get("agreedToTerms") is False:
            # Created but first sign-in never completed (the Terms are accepted then): a pending account that
            # has waited since it was created. Workspace sets no expiry on it. Absent agreedToTerms: unknown.
            status = MailboxStatus.PENDING
            if created is not None:
                invite = Invite(created)
            else:
                self.fail((Fact.MAILBOX_INVITES,), "agreedToTerms is false but creationTime is unreadable, so how "
                          "long the account has waited is unknown", address)
        return Mailbox(self.tenant.name, address, MailboxKind.USER, status,
                       display if isinstance(display, str) else "", created, last_login, invite=invite)

    async def gmail(self, mailbox: Mailbox, raw: Mapping[str, Any]) -> Mailbox:
        """A user's forwards (auto-forwarding, forwarding filters) and delegates, read as that user."""
        if raw.get("isMailboxSetup") is False:
            return mailbox  # no Gmail mailbox: nothing can forward or be delegated
        if mailbox.status is MailboxStatus.SUSPENDED:
            self.suspended(mailbox)
            return mailbox
        with self.session.as_user_once(mailbox.address, READ_GMAIL) as token:
            if self.forwarding.forbids(raw.get("orgUnitPath")):
                return await self.delegates_only(mailbox, token)
            return await self._gmail(mailbox, token)

    def suspended(self, mailbox: Mailbox) -> None:
        """A suspended user's Gmail settings are not read: the token exchange impersonating a suspended user is
        refused (invalid_grant, as GAM reports it), so its forwards and delegates are unsupported, not failed, and
        the tenant stays complete."""
        for fact in (Fact.MAILBOX_FORWARDS, Fact.MAILBOX_DELEGATES):
            self.coverage.append(Coverage(self.tenant.name, fact, FactState.UNSUPPORTED, SUSPENDED_REASON,
                                          mailbox.address))

    async def _gmail(self, mailbox: Mailbox, token: _Delegation) -> Mailbox:
        """The reads of ``gmail``, with a token impersonating the user."""
        client = self.session.client
        base = f"{self.adapter.options.gmail_url.rstrip('/')}/gmail/v1/users/{quote(mailbox.address, safe='@')}/settings"
        try:
            addresses, delegates = await _together(
                client.get(f"{base}/forwardingAddresses", token=token), client.get(f"{base}/delegates", token=token)
            )
            verified = _items(addresses, "forwardingAddresses", endpoint_of("GET", f"{base}/forwardingAddresses"))
            forwards: list[Forward] = []
            # Gmail forwards (automatically or by filter) only to an address on the user's forwarding-address
            # list ("must be a verified member of the forwarding addresses"): with none, skip both reads.
            if verified:
                auto, filters = await _together(
                    client.get(f"{base}/autoForwarding", token=token), client.get(f"{base}/filters", token=token)
                )
                state = _auto_forwarding(auto, endpoint_of("GET", f"{base}/autoForwarding"))
                if state.enabled and state.email:
                    forwards.append(Forward(state.email.lower(), ForwardMechanism.AUTO_FORWARD))
                for item in _filters(filters, endpoint_of("GET", f"{base}/filters")):
                    if item.forward:
                        forwards.append(Forward(item.forward.lower(), ForwardMechanism.INBOX_RULE))
            people = _delegates(delegates, endpoint_of("GET", f"{base}/delegates"))
        except AdapterError as exc:
            self.fail((Fact.MAILBOX_FORWARDS, Fact.MAILBOX_DELEGATES), str(exc), mailbox.address)
            return mailbox
        live = sorted({d.email for d in people if d.status.lower() in ("accepted", "pending")})
        unique = sorted(set(forwards), key=lambda f: (f.target, f.mechanism.value))
        return replace(mailbox, forwards=tuple(unique), delegates=tuple(live))

    async def delegates_only(self, mailbox: Mailbox, token: _Delegation) -> Mailbox:
        """A user whose org unit turns automatic forwarding off: no forwards, so only the delegates are read."""
        url = (f"{self.adapter.options.gmail_url.rstrip('/')}/gmail/v1/users/{quote(mailbox.address, safe='@')}"
               "/settings/delegates")
        try:
            people = _delegates(await self.session.client.get(url, token=token), endpoint_of("GET", url))
        except AdapterError as exc:
            self.fail((Fact.MAILBOX_DELEGATES,), str(exc), mailbox.address)
            return mailbox
        live = sorted({d.email for d in people if d.status.lower() in ("accepted", "pending")})
        return replace(mailbox, delegates=tuple(live))

    async def probe_security(self) -> None:
        """Ask once for a token with the security scope; without its delegation, tokens and asps are unsupported."""
        try:
            await self.session.as_admin(SECURITY).token()
        except AdapterError as exc:
            if "unauthorized_client" not in str(exc):
                raise
            self.security = False
            for fact in (Fact.MAILBOX_OAUTH_GRANTS, Fact.MAILBOX_APP_PASSWORDS):
                self.coverage.append(Coverage(self.tenant.name, fact, FactState.UNSUPPORTED, SECURITY_MISSING))

    async def access(self, mailbox: Mailbox) -> Mailbox:
        """A user's OAuth tokens and app-specific passwords (one call each: neither list pages) and recovery
        email and phone, read as the admin. Never a secret: neither API returns one."""
        client = self.session.client
        base = f"{self.directory}/users/{quote(mailbox.address, safe='@')}"
        grants: list[Grant] = []
        if self.security:
            token = self.session.as_admin(SECURITY)
            try:
                tokens, asps = await _together(client.get(f"{base}/tokens", token=token),
                                               client.get(f"{base}/asps", token=token))
                grants += [_token_grant(t) for t in _items(tokens, "items", endpoint_of("GET", f"{base}/tokens"))
                           if t.get("clientId")]
                grants += [_asp_grant(a) for a in _items(asps, "items", endpoint_of("GET", f"{base}/asps"))
                           if a.get("codeId") is not None]
            except (AdapterError, ValueError) as exc:
                self.fail((Fact.MAILBOX_OAUTH_GRANTS, Fact.MAILBOX_APP_PASSWORDS), str(exc), mailbox.address)
        recovery: list[Recovery] = []
        try:
            # users.list does not promise these fields with projection=basic: ask for them by name.
            raw = await client.get(base, {"fields": "recoveryEmail,recoveryPhone"}, token=self.session.as_admin())
            if isinstance(raw, Mapping) and isinstance(raw.get("recoveryEmail"), str) and raw["recoveryEmail"]:
                recovery.append(Recovery(RecoveryKind.EMAIL, raw["recoveryEmail"].strip().lower()))
            if isinstance(raw, Mapping) and isinstance(raw.get("recoveryPhone"), str) and raw["recoveryPhone"]:
                recovery.append(Recovery(RecoveryKind.PHONE, raw["recoveryPhone"].strip()))
        except AdapterError as exc:
            self.fail((Fact.MAILBOX_RECOVERY,), str(exc), mailbox.address)
        if not grants and not recovery:
            return mailbox
        return replace(mailbox, grants=tuple(grants), recovery=tuple(recovery))

    async def read_forwarding_policy(self) -> None:
        """The org-wide automatic-forwarding setting (Cloud Identity Policy API): the org units where it is off.

        Google documents that when an admin turns automatic forwarding off, "users don't see the forwarding option
        in their Gmail settings, and any existing forwarding rules or filters no longer forward messages"
        (Admin Help, "Disable automatic forwarding", https://support.google.com/a/answer/2491924). Users there
        therefore forward nothing automatically and their forwarding settings need not be read. Any failure here
        (403: not a super admin or the API is off; a scope not delegated; a malformed page) only costs that
        saving: every user's settings are read as without a policy, and the tenant's problems say why.
        """
        try:
            policy = await self._forwarding_policy()
        except ApiError as exc:
            self.notes.append(NOT_SUPER_ADMIN if exc.status == 403 else
                              f"{exc}; every user's Gmail forwarding settings were read instead")
            return
        except AdapterError as exc:
            self.notes.append(f"{exc}; the org-wide automatic-forwarding setting is unknown, so every user's "
                                 "Gmail forwarding settings were read")
            return
        self.forwarding = policy
        off = policy.off_paths()
        if off:
            shown = ", ".join(off[:10]) + (f" and {len(off) - 10} more" if len(off) > 10 else "")
            self.coverage.append(Coverage(self.tenant.name, Fact.MAILBOX_FORWARDS, FactState.COLLECTED, (
                f"the Policy API setting gmail.auto_forwarding turns automatic forwarding off for org units {shown} "
                "(and their children without a setting of their own): Gmail forwards nothing automatically there, "
                "existing forwarding and forwarding filters included (support.google.com/a/answer/2491924), so "
                "those users' Gmail forwarding settings were not read; an Admin console change can take up to 24 "
                "hours to reach users")))

    async def _forwarding_policy(self) -> ForwardingPolicy:
        url = f"{self.adapter.options.cloudidentity_url.rstrip('/')}/v1/policies"
        endpoint = endpoint_of("GET", url)
        params = {"filter": "setting.type.matches('^settings/gmail\\..*$')", "pageSize": 100}
        rows: list[_PolicyRow] = []
        token = self.session.as_admin(READ_POLICIES)
        async for page in self.session.client.pages(url, params, _next_page, token=token):
            for raw in _items(page, "policies", endpoint):
                row = _forwarding_row(raw, endpoint)
                if row is not None:
                    rows.append(row)
        if any(not r.whole_unit and r.enabled is not False for r in rows):
            return ForwardingPolicy()  # a policy for some users only (a group) may allow forwarding anywhere
        rows = [r for r in rows if r.whole_unit]
        if not any(r.enabled is False for r in rows):
            return ForwardingPolicy()  # nothing turns forwarding off: no org unit needs placing
        paths = await self._org_unit_paths({r.org_unit for r in rows})
        winners: dict[str, _PolicyRow] = {}
        for row in rows:
            path = paths.get(row.org_unit)
            if path is None:
                raise AdapterError(f"{endpoint}: an auto-forwarding policy names org unit {row.org_unit[:40]!r}, "
                                   "which the Directory does not list")
            path = path.rstrip("/") or "/"
            if path not in winners or row.sort_order > winners[path].sort_order:
                winners[path] = row  # the higher sortOrder wins within one org unit
        return ForwardingPolicy({p: r.enabled for p, r in winners.items()})

    async def _org_unit_paths(self, wanted: set[str]) -> dict[str, str]:
        """Org unit id -> path for the policies' org units: the orgunits list, then orgunits.get for the rest."""
        url = f"{self.directory}/customer/{quote(self.adapter.options.customer)}/orgunits"
        token = self.session.as_admin(READ_ORG_UNITS)
        paths = _org_unit_ids(await self.session.client.get(url, {"type": "all"}, token=token), endpoint_of("GET", url))
        for unit in sorted(wanted - paths.keys()):
            # orgunits.get takes "the full path of the organizational unit (minus the leading /) or its unique ID";
            # the root, which the list leaves out, is found this way when it has no child units.
            one = f"{url}/{quote('id:' + unit, safe=':')}"
            raw = await self.session.client.get(one, token=token)
            if isinstance(raw, Mapping) and isinstance(raw.get("orgUnitPath"), str):
                paths[unit] = raw["orgUnitPath"]
        return paths

    async def read_groups(self) -> None:
        """Groups as shared mailboxes: OWNER members are the owners, outside members are forwards."""
        url = f"{self.directory}/groups"
        endpoint = endpoint_of("GET", url)
        params = {"customer": self.adapter.options.customer, "maxResults": 200}
        async for page in self.session.client.pages(url, params, _next_page, token=self.session.as_admin()):
            groups = [g for g in _items(page, "groups", endpoint) if isinstance(g.get("email"), str)]
            for mailbox in await _together(*(self.group(g) for g in groups)):
                await self.pages.add(mailbox)

    async def group(self, raw: Mapping[str, Any]) -> Mailbox:
        address = str(raw["email"]).lower()
        name = raw.get("name")
        mailbox = Mailbox(self.tenant.name, address, MailboxKind.SHARED, MailboxStatus.ACTIVE,
                          name if isinstance(name, str) else "")
        url = f"{self.directory}/groups/{quote(address, safe='@')}/members"
        owners: set[str] = set()
        outside: set[str] = set()
        try:
            async for page in self.session.client.pages(url, {"maxResults": 200}, _next_page,
                                                        token=self.session.as_admin()):
                for member in _items(page, "members", endpoint_of("GET", url)):
                    email = member.get("email")
                    if not isinstance(email, str) or "@" not in email:
                        continue  # the whole-customer member (type CUSTOMER) has no address
                    email = email.lower()
                    if str(member.get("role", "")).upper() == "OWNER":
                        owners.add(email)
                    if not self.inside(email):
                        outside.add(email)
        except AdapterError as exc:
            self.fail((Fact.MAILBOX_OWNERS, Fact.MAILBOX_FORWARDS), str(exc), address)
            return mailbox
        return replace(mailbox, owners=tuple(sorted(owners)),
                       forwards=tuple(Forward(e, ForwardMechanism.ALIAS) for e in sorted(outside)))

    async def read_invitations(self) -> None:
        """Invitations still waiting for the unmanaged account's owner: pending mailboxes with their send time."""
        options = self.adapter.options
        url = f"{options.cloudidentity_url.rstrip('/')}/v1/customers/{quote(options.customer_id)}/userinvitations"
        endpoint = endpoint_of("GET", url)
        found: dict[str, Invite] = {}
        try:
            async for page in self.session.client.pages(url, {"filter": "state=='invited'", "pageSize": 200},
                                                        _next_page, token=self.session.as_admin(READ_INVITES)):
                for raw in _items(page, "userInvitations", endpoint):
                    invitation = _invitation(raw)
                    # Filtered server-side already; keep the client-side test in case the filter is ignored.
                    if invitation is None or invitation.state.upper() != "INVITED" or invitation.updated is None:
                        continue
                    found[invitation.email] = Invite(invitation.updated)
        except AdapterError as exc:
            self.fail((Fact.MAILBOX_INVITES,), str(exc))
            return
        self.invites = found



def _token_grant(raw: Mapping[str, Any]) -> Grant:
    """A Directory token (an app's OAuth grant); revoking it by clientId removes all of the user's tokens for it."""
    scopes = tuple(str(s) for s in raw.get("scopes") or ())
    client_id = str(raw["clientId"])
    name = raw.get("displayText")
    return Grant(GrantKind.OAUTH, client_id, str(name) if name else client_id, mail_access(scopes, GOOGLE), scopes,
                 client_id)


def _epoch(value: Any) -> datetime | None:
    """An asps time: int64 (as a string) "Unix time", unit not stated; above 1e12 it can only be milliseconds."""
    if value in (None, "", "0", 0):
        return None
    number = int(str(value))
    return datetime.fromtimestamp(number / 1000 if number > 1e12 else number, UTC)


def _asp_grant(raw: Mapping[str, Any]) -> Grant:
    """An application-specific password: it signs in to IMAP, POP and SMTP as the user (the whole mailbox)."""
    return Grant(GrantKind.APP_PASSWORD, str(raw["codeId"]), str(raw.get("name") or ""), MailAccess.FULL,
                 created=_epoch(raw.get("creationTime")), last_used=_epoch(raw.get("lastTimeUsed")))


def _auto_forwarding(body: Any, endpoint: str) -> AutoForwarding:
    if not isinstance(body, Mapping):
        raise AdapterError(f"{endpoint} returned an unexpected response: expected a JSON object")
    email = body.get("emailAddress")
    disposition = body.get("disposition")
    return AutoForwarding(_flag(body.get("enabled")), email if isinstance(email, str) else "",
                          disposition if isinstance(disposition, str) else "")


def _filters(body: Any, endpoint: str) -> tuple[GmailFilter, ...]:
    found = []
    for raw in _items(body, "filter", endpoint):
        action: Mapping[str, Any] = raw["action"] if isinstance(raw.get("action"), Mapping) else {}
        criteria: Mapping[str, Any] = raw["criteria"] if isinstance(raw.get("criteria"), Mapping) else {}
        forward = action.get("forward")
        found.append(GmailFilter(str(raw.get("id", "")), forward if isinstance(forward, str) else "",
                                 dict(criteria), dict(action)))
    return tuple(found)


def _delegates(body: Any, endpoint: str) -> tuple[Delegate, ...]:
    return tuple(
        Delegate(str(d["delegateEmail"]).lower(), str(d.get("verificationStatus", "")))
        for d in _items(body, "delegates", endpoint)
        if isinstance(d.get("delegateEmail"), str)
    )


def _invitation(raw: Mapping[str, Any]) -> Invitation | None:
    """An invitation resource; its ``name`` ends in the invitee's address (possibly percent-encoded)."""
    name = raw.get("name")
    if not isinstance(name, str):
        return None
    email = unquote(name.rpartition("/")[2]).lower()
    if "@" not in email:
        return None
    try:
        updated = parse_time(raw.get("updateTime"))
    except ValueError:
        updated = None
    try:
        sent = int(raw.get("mailsSentCount") or 0)
    except (TypeError, ValueError):
        sent = 0
    return Invitation(email, str(raw.get("state", "")), sent, updated)


@dataclass(frozen=True, slots=True)
class ForwardingPolicy:
    """The automatic-forwarding setting per org unit path as the Policy API states it; None: not known to be off."""

    by_path: Mapping[str, bool | None] = field(default_factory=dict)

    def forbids(self, path: object) -> bool:
        """True only when the setting in force for the org unit at ``path`` turns automatic forwarding off."""
        if not isinstance(path, str) or not path.startswith("/"):
            return False  # no readable orgUnitPath: the user's own settings decide
        path = path.rstrip("/") or "/"
        while True:
            # A child org unit inherits its parent's setting unless it has a policy of its own.
            if path in self.by_path:
                return self.by_path[path] is False
            if path == "/":
                return False  # nothing set anywhere: Gmail's default allows automatic forwarding
            path = path.rpartition("/")[0] or "/"

    def off_paths(self) -> list[str]:
        """The org units whose own policy turns automatic forwarding off (for the coverage note)."""
        return sorted(p for p, enabled in self.by_path.items() if enabled is False)


@dataclass(frozen=True, slots=True)
class _PolicyRow:
    """One auto-forwarding policy: its org unit id (empty when it is not scoped to exactly one) and value."""

    org_unit: str
    enabled: bool | None
    sort_order: float
    whole_unit: bool


def _forwarding_row(raw: Mapping[str, Any], endpoint: str) -> _PolicyRow | None:
    """An auto-forwarding policy from a policies page; None for other settings. Raises AdapterError when malformed."""
    setting = raw.get("setting")
    kind = setting.get("type") if isinstance(setting, Mapping) else None
    if not isinstance(kind, str):
        raise AdapterError(f"{endpoint} returned an unexpected response: a policy without setting.type")
    if kind.removeprefix("settings/") != AUTO_FORWARDING_SETTING:
        return None
    assert isinstance(setting, Mapping)
    value = setting.get("value")
    query = raw.get("policyQuery")
    if not isinstance(value, Mapping) or not isinstance(query, Mapping):
        raise AdapterError(f"{endpoint} returned an unexpected response: an auto-forwarding policy without "
                           "setting.value or policyQuery")
    enabled = value.get("enableAutoForwarding")
    org_unit = query.get("orgUnit")
    try:
        sort_order = float(query.get("sortOrder") or 0)
    except (TypeError, ValueError):
        raise AdapterError(f"{endpoint} returned an unexpected response: policyQuery.sortOrder is not a number") from None
    # orgUnit is set only when exactly one org unit satisfies the query; a group or licence clause narrows the
    # policy to some of the unit's users, so it cannot speak for the whole unit.
    text = str(query.get("query") or "")
    whole = not query.get("group") and "entity.groups" not in text and "entity.licenses" not in text
    unit = org_unit.removeprefix("orgUnits/").removeprefix("id:") if isinstance(org_unit, str) else ""
    # Only an explicit false turns forwarding off; an absent value is not taken for one.
    return _PolicyRow(unit, enabled if isinstance(enabled, bool) else None, sort_order, whole and bool(unit))


def _org_unit_ids(body: Any, endpoint: str) -> dict[str, str]:
    """Org unit id (without the "id:" prefix) -> path from an orgunits list, the root's id included via parents."""
    found: dict[str, str] = {}
    for unit in _items(body, "organizationUnits", endpoint):
        uid, path = unit.get("orgUnitId"), unit.get("orgUnitPath")
        if isinstance(uid, str) and isinstance(path, str):
            found[uid.removeprefix("id:")] = path
        parent, parent_path = unit.get("parentOrgUnitId"), unit.get("parentOrgUnitPath")
        if isinstance(parent, str) and isinstance(parent_path, str):
            found.setdefault(parent.removeprefix("id:"), parent_path)
    return found


class GoogleAdapter:
    """Reads (and, for remediation jobs only, changes) one Google Workspace tenant."""

    name = "google"

    def __init__(self, label: str, options: GoogleOptions, credentials: SecretRef, config: Config) -> None:
        self.label = label
        self.options = options
        self.credentials = credentials
        self.http = config.http
        self.verify: str | bool = str(config.resolve_path(config.http.ca_bundle)) if config.http.ca_bundle else True
        self.tokens: dict[tuple[str, tuple[str, ...]], _Cached] = {}
        self._account: _ServiceAccount | None = None
        # Invites: Directory users who never completed first sign-in always; unmanaged-account invitations with
        # customer_id only (the coverage reason says which).
        self.capabilities: frozenset[Fact] = frozenset({
            Fact.MAILBOX_LIST, Fact.MAILBOX_FORWARDS, Fact.MAILBOX_OWNERS, Fact.MAILBOX_DELEGATES,
            Fact.MAILBOX_LAST_LOGIN, Fact.MAILBOX_INVITES, Fact.MAILBOX_OAUTH_GRANTS, Fact.MAILBOX_APP_PASSWORDS,
            Fact.MAILBOX_RECOVERY})

    def account(self) -> _ServiceAccount:
        """The service account, its key read on first use."""
        if self._account is None:
            try:
                self._account = _ServiceAccount.load(self.credentials, self.options.token_url)
            except ConfigError as exc:
                raise AdapterError(f"{self.label}: {exc}") from None
        return self._account

    @asynccontextmanager
    async def _session(self) -> AsyncIterator[_Session]:
        http = self.http
        retry = RetryPolicy(http.attempts, http.backoff_base, http.backoff_cap, http.max_retry_after)
        async with ApiClient(self.label, concurrency=http.concurrency, retry=retry, timeout=http.timeout,
                             verify=self.verify, transient=google_transient) as client:
            yield _Session(self, client)

    async def collect(self, tenant: Tenant, emit: Emit) -> Collected:
        """Users with Gmail settings, groups with owners, invitations; a failed listing fails the tenant."""
        self.account()
        async with self._session() as session:
            return await _Crawl(self, session, tenant, Pages(emit)).run()

    # Remediation writes: each re-reads the state afterwards, so a write that "succeeded" without effect shows.

    async def _write(self, job: Callable[[_Session], Awaitable[T]]) -> T:
        self.account()
        async with self._session() as session:
            return await job(session)

    def _gmail(self, user: str) -> str:
        return f"{self.options.gmail_url.rstrip('/')}/gmail/v1/users/{quote(user.lower(), safe='@')}/settings"

    async def auto_forwarding(self, user: str) -> AutoForwarding:
        """The user's automatic forwarding setting."""
        async def job(s: _Session) -> AutoForwarding:
            url = f"{self._gmail(user)}/autoForwarding"
            return _auto_forwarding(await s.client.get(url, token=s.as_user(user, READ_GMAIL)), endpoint_of("GET", url))
        return await self._write(job)

    async def disable_auto_forwarding(self, user: str) -> AutoForwarding:
        """Turn the user's automatic forwarding off; returns the setting as read back."""
        return await self.set_auto_forwarding(user, AutoForwarding(False))

    async def set_auto_forwarding(self, user: str, state: AutoForwarding) -> AutoForwarding:
        """Write an automatic forwarding setting (the undo of a disable passes the saved one); returns it read back."""
        async def job(s: _Session) -> AutoForwarding:
            url = f"{self._gmail(user)}/autoForwarding"
            token = s.as_user(user, WRITE_GMAIL)
            body: dict[str, Any] = {"enabled": state.enabled}
            if state.enabled:
                body.update(emailAddress=state.email, disposition=state.disposition or "leaveInInbox")
            await s.client.request("PUT", url, json_body=body, token=token)
            return _auto_forwarding(await s.client.get(url, token=token), endpoint_of("GET", url))
        return await self._write(job)

    async def filters(self, user: str) -> tuple[GmailFilter, ...]:
        """The user's Gmail filters."""
        async def job(s: _Session) -> tuple[GmailFilter, ...]:
            url = f"{self._gmail(user)}/filters"
            return _filters(await s.client.get(url, token=s.as_user(user, READ_GMAIL)), endpoint_of("GET", url))
        return await self._write(job)

    async def delete_filter(self, user: str, filter_id: str) -> tuple[GmailFilter, ...]:
        """Delete one of the user's filters (a forwarding one); returns the filters left, as read back."""
        async def job(s: _Session) -> tuple[GmailFilter, ...]:
            url = f"{self._gmail(user)}/filters"
            token = s.as_user(user, WRITE_GMAIL)
            await s.client.request("DELETE", f"{url}/{quote(filter_id, safe='')}", token=token)
            return _filters(await s.client.get(url, token=token), endpoint_of("GET", url))
        return await self._write(job)

    async def create_filter(self, user: str, saved: GmailFilter) -> tuple[GmailFilter, ...]:
        """Re-create a deleted filter from its saved criteria and action (the undo); returns the filters."""
        async def job(s: _Session) -> tuple[GmailFilter, ...]:
            url = f"{self._gmail(user)}/filters"
            token = s.as_user(user, WRITE_GMAIL)
            await s.client.request("POST", url, json_body={"criteria": dict(saved.criteria),
                                                          "action": dict(saved.action)}, token=token)
            return _filters(await s.client.get(url, token=token), endpoint_of("GET", url))
        return await self._write(job)

    async def remove_delegate(self, user: str, delegate: str) -> tuple[Delegate, ...]:
        """Remove a delegate (by primary address) from the user's mailbox; returns the delegates left."""
        async def job(s: _Session) -> tuple[Delegate, ...]:
            url = f"{self._gmail(user)}/delegates"
            token = s.as_user(user, WRITE_GMAIL)
            await s.client.request("DELETE", f"{url}/{quote(delegate.lower(), safe='@')}", token=token)
            return _delegates(await s.client.get(url, token=token), endpoint_of("GET", url))
        return await self._write(job)

    async def add_delegate(self, user: str, delegate: str) -> tuple[Delegate, ...]:
        """Add a delegate back (the undo of a removal); returns the delegates."""
        async def job(s: _Session) -> tuple[Delegate, ...]:
            url = f"{self._gmail(user)}/delegates"
            token = s.as_user(user, WRITE_GMAIL)
            await s.client.request("POST", url, json_body={"delegateEmail": delegate.lower()}, token=token)
            return _delegates(await s.client.get(url, token=token), endpoint_of("GET", url))
        return await self._write(job)

    async def suspend_user(self, user: str) -> MailboxStatus:
        """Suspend a user; returns the account status as read back."""
        return await self._suspension(user, True)

    async def unsuspend_user(self, user: str) -> MailboxStatus:
        """Lift a user's suspension (the undo); returns the account status as read back."""
        return await self._suspension(user, False)

    async def _suspension(self, user: str, suspended: bool) -> MailboxStatus:
        async def job(s: _Session) -> MailboxStatus:
            url = f"{self.options.directory_url.rstrip('/')}/admin/directory/v1/users/{quote(user.lower(), safe='@')}"
            token = s.as_admin(WRITE_USER)
            await s.client.request("PUT", url, json_body={"suspended": suspended}, token=token)
            raw = await s.client.get(url, token=token)
            if not isinstance(raw, Mapping):
                raise AdapterError(f"{endpoint_of('GET', url)} returned an unexpected response: expected an object")
            if _flag(raw.get("suspended")):
                return MailboxStatus.SUSPENDED
            return MailboxStatus.DISABLED if _flag(raw.get("archived")) else MailboxStatus.ACTIVE
        return await self._write(job)

    async def cancel_invitation(self, email: str) -> Invitation | None:
        """Cancel a pending invitation; returns it as read back (None when it no longer exists)."""
        return await self._invitation_action(email, "cancel")

    async def send_invitation(self, email: str) -> Invitation | None:
        """Send (or re-send) an invitation; returns it as read back."""
        return await self._invitation_action(email, "send")

    async def _invitation_action(self, email: str, action: str) -> Invitation | None:
        if not self.options.customer_id:
            raise AdapterError(f"{self.label}: {INVITES_NEED_CUSTOMER_ID}")
        if await self._is_user(email):
            raise Refused(f"{email.lower()} {FIRST_SIGN_IN_REFUSAL}")

        async def job(s: _Session) -> Invitation | None:
            base = (f"{self.options.cloudidentity_url.rstrip('/')}/v1/customers/"
                    f"{quote(self.options.customer_id)}/userinvitations/{quote(email.lower(), safe='@')}")
            token = s.as_admin(WRITE_INVITES)
            _, operation = await s.client.request("POST", f"{base}:{action}", json_body={}, token=token)
            # The answer is a long-running Operation (uncertain): an error inside it is a failure.
            if isinstance(operation, Mapping) and isinstance(operation.get("error"), Mapping):
                message = str(operation["error"].get("message", ""))[:300]
                raise AdapterError(f"{self.label}: {endpoint_of('POST', base + ':' + action)} failed: {message}")
            status, raw = await s.client.request("GET", base, token=token, allow=frozenset({404}))
            if status == 404 or not isinstance(raw, Mapping):
                return None
            return _invitation(raw)
        return await self._write(job)


    # The remediation surface (scanner/adapters/base.py REMEDY_STATES): the actions mapped onto the writes above.

    async def remedy_read(self, action: str, subject: str, params: Mapping[str, Any]) -> dict[str, Any]:
        """The action's normalized state of ``subject``, read from Google now, with what an undo would need."""
        subject = subject.lower()
        if action == "forwarding.disable":
            _gmail_mechanisms(params)
            auto, filters = await self.auto_forwarding(subject), await self.filters(subject)
            targets = {str(t).lower() for t in params.get("targets", ())}
            live = ({auto.email.lower()} if auto.enabled and auto.email else set()) | {
                f.forward.lower() for f in filters if f.forward}
            detail = {"auto": {"enabled": auto.enabled, "email": auto.email, "disposition": auto.disposition},
                      "filters": [{"id": f.id, "forward": f.forward, "criteria": dict(f.criteria),
                                   "action": dict(f.action)} for f in filters if f.forward.lower() in targets]}
            return {"state": {"forwards": sorted(live & targets)}, "detail": detail}
        if action == "account.suspend":
            return {"state": {"status": (await self._user_status(subject)).value}, "detail": {}}
        if action in ("invite.revoke", "invite.resend"):
            if await self._is_user(subject):
                raise Refused(f"{subject} {FIRST_SIGN_IN_REFUSAL}")
            invitation = await self._invitation(subject)
            pending = invitation is not None and invitation.state.upper() == "INVITED"
            if action == "invite.revoke":
                return {"state": {"invite": pending}, "detail": {}}
            sent = invitation.updated.isoformat() if pending and invitation and invitation.updated else None
            return {"state": {"invite_sent": sent}, "detail": {}}
        if action == "delegate.remove":
            delegate = str(params.get("delegate", "")).lower()
            found = {d.email.lower() for d in await self._delegates(subject)}
            return {"state": {"delegates": [delegate] if delegate in found else []}, "detail": {}}
        if action == "grant.revoke":
            return {"state": {"grants": await self._held(subject, params)}, "detail": {}}
        raise Refused(_refusal(action))

    async def remedy_apply(
        self, action: str, subject: str, params: Mapping[str, Any], before: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Make the action's change through the Google APIs; returns the state read back afterwards."""
        subject = subject.lower()
        detail = dict(before.get("detail") or {})
        if action == "forwarding.disable":
            targets = {str(t).lower() for t in params.get("targets", ())}
            auto = detail.get("auto") or {}
            if auto.get("enabled") and str(auto.get("email", "")).lower() in targets:
                await self.disable_auto_forwarding(subject)
            for saved in detail.get("filters", ()):
                await self.delete_filter(subject, str(saved["id"]))
        elif action == "account.suspend":
            await self.suspend_user(subject)
        elif action == "invite.revoke":
            await self.cancel_invitation(subject)
        elif action == "invite.resend":
            await self.send_invitation(subject)
        elif action == "delegate.remove":
            await self.remove_delegate(subject, str(params.get("delegate", "")))
        elif action == "grant.revoke":
            await self._revoke(subject, params)
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
        if action == "forwarding.disable":
            auto = detail.get("auto") or {}
            targets = {str(t).lower() for t in params.get("targets", ())}
            if auto.get("enabled") and str(auto.get("email", "")).lower() in targets:
                await self.set_auto_forwarding(subject, AutoForwarding(True, str(auto["email"]),
                                                                       str(auto.get("disposition") or "")))
            for saved in detail.get("filters", ()):
                await self.create_filter(subject, GmailFilter(str(saved["id"]), str(saved.get("forward", "")),
                                                              saved.get("criteria") or {}, saved.get("action") or {}))
        elif action == "account.suspend":
            if (before.get("state") or {}).get("status") == MailboxStatus.ACTIVE.value:
                await self.unsuspend_user(subject)
        elif action == "delegate.remove":
            await self.add_delegate(subject, str(params.get("delegate", "")))
        elif action == "invite.revoke":
            await self.send_invitation(subject)
        elif action == "invite.resend":
            raise Refused("a sent invitation cannot be unsent")
        elif action == "grant.revoke":
            raise Refused("a revoked grant cannot be restored; the person grants it again")
        else:
            raise Refused(_refusal(action))
        return await self.remedy_read(action, subject, params)

    async def _user_status(self, user: str) -> MailboxStatus:
        async def job(s: _Session) -> MailboxStatus:
            url = f"{self.options.directory_url.rstrip('/')}/admin/directory/v1/users/{quote(user.lower(), safe='@')}"
            raw = await s.client.get(url, token=s.as_admin())
            if not isinstance(raw, Mapping):
                raise AdapterError(f"{endpoint_of('GET', url)} returned an unexpected response: expected an object")
            if _flag(raw.get("suspended")):
                return MailboxStatus.SUSPENDED
            return MailboxStatus.DISABLED if _flag(raw.get("archived")) else MailboxStatus.ACTIVE
        return await self._write(job)

    async def _is_user(self, address: str) -> bool:
        """Whether the Directory has a user with this address (a pending first sign-in, not an invitation)."""
        async def job(s: _Session) -> bool:
            url = f"{self.options.directory_url.rstrip('/')}/admin/directory/v1/users/{quote(address.lower(), safe='@')}"
            status, _ = await s.client.request("GET", url, token=s.as_admin(), allow=frozenset({404}))
            return status != 404
        return await self._write(job)

    async def _invitation(self, email: str) -> Invitation | None:
        if not self.options.customer_id:
            raise Refused(f"{self.label}: {INVITES_NEED_CUSTOMER_ID}")

        async def job(s: _Session) -> Invitation | None:
            url = (f"{self.options.cloudidentity_url.rstrip('/')}/v1/customers/"
                   f"{quote(self.options.customer_id)}/userinvitations/{quote(email.lower(), safe='@')}")
            status, raw = await s.client.request("GET", url, token=s.as_admin(READ_INVITES), allow=frozenset({404}))
            return None if status == 404 or not isinstance(raw, Mapping) else _invitation(raw)
        return await self._write(job)

    def _grant_url(self, user: str, params: Mapping[str, Any]) -> str:
        kind = {GrantKind.OAUTH.value: "tokens", GrantKind.APP_PASSWORD.value: "asps"}.get(str(params.get("kind")))
        if kind is None:
            raise Refused(f"Google Workspace has no {params.get('kind')} grants")
        return (f"{self.options.directory_url.rstrip('/')}/admin/directory/v1/users/{quote(user, safe='@')}/{kind}")

    async def _held(self, user: str, params: Mapping[str, Any]) -> list[str]:
        """``[grant]`` while the user still holds the token (by clientId) or app password (by codeId)."""
        url, grant = self._grant_url(user, params), str(params.get("grant"))

        async def job(s: _Session) -> list[str]:
            items = _items(await s.client.get(url, token=s.as_admin(SECURITY)), "items", endpoint_of("GET", url))
            ids = {str(i.get("clientId") if "clientId" in i else i.get("codeId")) for i in items}
            return [grant] if grant in ids else []
        return await self._write(job)

    async def _revoke(self, user: str, params: Mapping[str, Any]) -> None:
        """DELETE tokens/{clientId} (every token of the app for this user) or asps/{codeId}."""
        url = f"{self._grant_url(user, params)}/{quote(str(params.get('grant')), safe='')}"

        async def job(s: _Session) -> None:
            await s.client.request("DELETE", url, token=s.as_admin(SECURITY))
        await self._write(job)

    async def _delegates(self, user: str) -> tuple[Delegate, ...]:
        async def job(s: _Session) -> tuple[Delegate, ...]:
            url = f"{self._gmail(user)}/delegates"
            return _delegates(await s.client.get(url, token=s.as_user(user, READ_GMAIL)), endpoint_of("GET", url))
        return await self._write(job)


def _gmail_mechanisms(params: Mapping[str, Any]) -> None:
    """Refuse forwards Gmail settings cannot turn off: a group's outside members are its forwards."""
    if ForwardMechanism.ALIAS.value in params.get("mechanisms", ()):
        raise Refused("the forward is an outside member of a Google group; remove the member in the Admin "
                      "console or Groups (membership changes are not a remediation action)")


def _refusal(action: str) -> str:
    if action == "catchall.disable":
        return CATCH_ALL_UNSUPPORTED
    return f"Google Workspace has no remediation action {action!r}"

def build(tenant: TenantConfig, config: Config) -> GoogleAdapter:
    """The Google Workspace adapter for a tenant with a [tenants.google] table."""
    assert tenant.google is not None and tenant.credentials is not None  # the config validator requires both
    return GoogleAdapter(f"google {tenant.name}", tenant.google, tenant.credentials, config)

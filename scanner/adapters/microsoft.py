"""The Microsoft 365 adapter: Graph users, sign-in activity, mailbox purpose, forwarding inbox rules, guest invites."""

from __future__ import annotations

import asyncio
import logging
import random
import re
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
import msal

from scanner.adapters.base import Collected, Emit, Refused
from scanner.adapters.http import RETRY_STATUSES, ApiClient, ApiError, RetryPolicy, endpoint_of, retry_after
from scanner.adapters.scopes import GRAPH, mail_access
from scanner.config import Config, HttpConfig, MicrosoftOptions, SecretRef, TenantConfig
from scanner.errors import AdapterError, MailwardenError
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
)

log = logging.getLogger(__name__)

NON_PREMIUM = "Authentication_RequestFromNonPremiumTenantOrB2CTenant"
"""Graph's 403 code when signInActivity is selected in a tenant without Entra ID P1/P2."""

DENIED = "Authorization_RequestDenied"
"""Graph's 403 code when the app lacks a permission (here: AuditLog.Read.All for signInActivity)."""

NO_MAILBOX = "MailboxNotEnabledForRESTAPI"
"""Graph's 404 code for a user without an Exchange Online mailbox (or with an on-premises one)."""

NO_REST = frozenset({NO_MAILBOX, "MailboxNotSupportedForRESTAPI"})
"""Graph's 404 codes for a mailbox the REST API cannot read. Microsoft KB 4462988 ("REST API is not yet supported
for this mailbox", learn.microsoft.com/exchange/troubleshoot/user-and-shared-mailboxes/rest-api-is-not-yet-supported-
for-this-mailbox-error) documents both codes alike; Graph's message names the cases: "The mailbox is either inactive,
soft-deleted, or is hosted on-premise." A user with no Exchange Online licence answers the same."""

PENDING = "PendingAcceptance"

USER_FIELDS = (
    "id", "userPrincipalName", "mail", "displayName", "accountEnabled", "userType", "createdDateTime",
    "externalUserState", "externalUserStateChangeDateTime",
)
SIGN_IN_PAGE = 500  # Graph's maximum $top when signInActivity is selected
PLAIN_PAGE = 999  # Graph's maximum $top for /users otherwise

PURPOSE_KINDS = {
    "user": MailboxKind.USER,
    "linked": MailboxKind.USER,
    "shared": MailboxKind.SHARED,
    "room": MailboxKind.RESOURCE,
    "equipment": MailboxKind.RESOURCE,
}
"""mailboxSettings.userPurpose -> kind; ``others`` and ``unknownFutureValue`` stay USER."""

RULE_ACTIONS = (
    ("forwardTo", ForwardMechanism.INBOX_RULE),
    ("forwardAsAttachmentTo", ForwardMechanism.INBOX_RULE),
    ("redirectTo", ForwardMechanism.REDIRECT),
)
"""messageRuleActions fields that send mail on, and the mechanism each one is."""

NOT_IN_GRAPH = {
    Fact.MAILBOX_OWNERS: (
        "Graph does not expose shared-mailbox owners: FullAccess and SendAs permissions are Exchange Online "
        "PowerShell only (the Exchange Online Admin API that shows Send-on-behalf is a preview)"
    ),
    Fact.MAILBOX_DELEGATES: (
        "Graph does not expose mailbox delegates: FullAccess, SendAs and Send-on-behalf grants are Exchange "
        "Online PowerShell only (the Exchange Online Admin API is a preview)"
    ),
    Fact.DOMAIN_CATCH_ALL: (
        "Exchange Online has no native catch-all and Graph exposes none (the usual workaround, an "
        "InternalRelay accepted domain plus a transport rule, is only visible in Exchange Online PowerShell)"
    ),
}
APP_PASSWORDS_REASON = (
    "Microsoft Graph does not list a user's app passwords (legacy per-user MFA); they are visible only to the "
    "user in My Sign-Ins"
)
GRANTS_PERMISSION = (
    "needs the Graph application permission Directory.Read.All to read oauth2PermissionGrants"
)
METHODS_PERMISSION = (
    "needs the Graph application permission UserAuthenticationMethod.Read.All (or UserAuthMethod-Email.Read.All "
    "and UserAuthMethod-Phone.Read.All) to read email and phone authentication methods"
)
FORWARDS_NOTE = (
    "inbox rules (forwardTo, forwardAsAttachmentTo, redirectTo) only: mailbox-level forwarding "
    "(ForwardingSmtpAddress, ForwardingAddress) is not exposed by Graph"
)
NON_PREMIUM_REASON = (
    "signInActivity needs an Entra ID P1/P2 licence; Graph answered 403 " + NON_PREMIUM
)
DOMAINS_NOTE = "verified domains from Graph GET /domains (the initial *.onmicrosoft.com domain included)"


def no_rest_reason(code: str) -> str:
    """Why a mailbox's settings and inbox rules are unsupported when Graph answers 404 ``code`` (one of NO_REST)."""
    return (f"Graph answered 404 {code}: the REST API cannot read this mailbox's settings or inbox rules; Microsoft "
            "gives the mailbox being hosted on-premises (hybrid), inactive or soft-deleted, or having no Exchange "
            "Online licence (KB 4462988)")

_FRACTION = re.compile(r"(\.\d{6})\d+")


def parse_time(value: object) -> datetime | None:
    """A Graph timestamp as an aware UTC datetime; None for null and for the ``0001-01-01`` placeholder."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ValueError(f"not a timestamp: {str(value)[:40]!r}")
    try:
        # Graph sends up to 7 fractional digits; Python reads at most 6.
        parsed = datetime.fromisoformat(_FRACTION.sub(r"\1", value.strip()).replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"not an ISO 8601 timestamp: {value[:40]!r}") from None
    parsed = parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    return None if parsed.year < 1970 else parsed


def last_sign_in(activity: object) -> datetime | None:
    """The last successful sign-in if Graph recorded one, else the later of interactive and non-interactive."""
    if not isinstance(activity, Mapping):
        return None
    successful = parse_time(activity.get("lastSuccessfulSignInDateTime"))
    if successful is not None:
        return successful
    # lastSuccessfulSignInDateTime exists since Dec 2023 and is not back-filled; the other two count failures too.
    seen = [parse_time(activity.get(k)) for k in ("lastSignInDateTime", "lastNonInteractiveSignInDateTime")]
    return max((s for s in seen if s is not None), default=None)


def recipients(value: object) -> tuple[str, ...]:
    """Addresses of a recipient collection, or of one recipient (beta documents redirectTo as a single one)."""
    items = value if isinstance(value, list) else [value] if isinstance(value, Mapping) else []
    found = []
    for item in items:
        email = item.get("emailAddress") if isinstance(item, Mapping) else None
        address = email.get("address") if isinstance(email, Mapping) else None
        if isinstance(address, str) and address.strip():
            found.append(address.strip().lower())
    return tuple(found)


def rule_forwards(rules: object) -> tuple[Forward, ...]:
    """The forwards that a mailbox's enabled inbox rules make, sorted and without duplicates."""
    found: set[Forward] = set()
    for rule in rules if isinstance(rules, list) else ():
        if not isinstance(rule, Mapping) or rule.get("isEnabled") is False:
            continue
        actions = rule.get("actions")
        if not isinstance(actions, Mapping):
            continue
        for key, mechanism in RULE_ACTIONS:
            found.update(Forward(target, mechanism) for target in recipients(actions.get(key)))
    return tuple(sorted(found, key=lambda f: (f.target, f.mechanism.value)))


@dataclass(frozen=True, slots=True)
class RuleState:
    """An inbox rule as Graph reports it after a write: whether it is on and where it sends mail."""

    user: str
    rule_id: str
    display_name: str
    enabled: bool
    forwards: tuple[Forward, ...]
    raw: Mapping[str, Any]  # the rule as read, to re-create it when undoing a delete


@dataclass(frozen=True, slots=True)
class AccountState:
    """A user object's sign-in state as Graph reports it after a write."""

    user: str
    address: str
    enabled: bool
    user_type: str
    external_state: str | None


@dataclass(frozen=True, slots=True)
class InviteState:
    """A guest invitation as Graph reports it after a (re)send."""

    user: str
    address: str
    state: str | None
    changed: datetime | None
    redeem_url: str = ""


class MsalTransport:
    """The synchronous HTTP transport msal uses (discovery and token requests), retrying like the shared client."""

    def __init__(
        self, label: str, *, verify: ssl.SSLContext | bool, timeout: float, retry: RetryPolicy,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.label = label
        self._client = httpx.Client(verify=verify, timeout=timeout, follow_redirects=False)
        self._retry = retry
        self._sleep = sleep
        self._rng = random.Random()

    def get(self, url: str, params: Any = None, headers: Any = None, **ignored: Any) -> httpx.Response:
        """GET for msal (OpenID discovery)."""
        return self._send("GET", url, params=params, headers=headers)

    def post(self, url: str, params: Any = None, data: Any = None, headers: Any = None, **ignored: Any) -> httpx.Response:
        """POST for msal (the token request)."""
        return self._send("POST", url, params=params, data=data, headers=headers)

    def close(self) -> None:
        """Close the connection pool."""
        self._client.close()

    def _send(self, method: str, url: str, *, params: Any, headers: Any, data: Any = None) -> httpx.Response:
        endpoint = endpoint_of(method, url)
        clean = {k: v for k, v in (headers or {}).items() if v is not None}
        body: dict[str, Any] = {"content": data} if isinstance(data, str | bytes) else {"data": data}
        attempt = 0
        while True:
            attempt += 1
            try:
                response = self._client.request(method, url, params=params, headers=clean, **body)
            except httpx.TransportError as exc:
                if attempt >= self._retry.attempts:
                    raise AdapterError(
                        f"{self.label}: {endpoint} failed after {attempt} attempts: {type(exc).__name__}"
                    ) from None
                self._sleep(self._retry.backoff(attempt, self._rng))
                continue
            if response.status_code in RETRY_STATUSES and attempt < self._retry.attempts:
                hinted = retry_after(response)
                delay = self._retry.backoff(attempt, self._rng) if hinted is None else min(
                    hinted, self._retry.max_retry_after)
                log.info("retrying", extra={"adapter": self.label, "endpoint": endpoint,
                                            "why": str(response.status_code), "delay": round(delay, 3)})
                self._sleep(delay)
                continue
            return response


class GraphSignIn:
    """Client-credentials tokens for Graph through msal; the client secret is read only here, when first needed."""

    def __init__(self, label: str, options: MicrosoftOptions, secret: SecretRef, transport: MsalTransport) -> None:
        self.label = label
        self._options = options
        self._secret = secret
        self._transport = transport
        origin = urlsplit(options.graph_url)
        self.scope = f"{origin.scheme}://{origin.netloc}/.default"  # the Graph resource's .default scope
        self._app: msal.ConfidentialClientApplication | None = None
        self._lock = threading.Lock()

    def acquire(self, *, refresh: bool) -> tuple[str, float]:
        """A token and its lifetime in seconds (blocking: call it from a worker thread)."""
        with self._lock:
            secret = ""
            try:
                if self._app is None:
                    secret = self._secret.resolve()
                    self._app = msal.ConfidentialClientApplication(
                        self._options.client_id,
                        client_credential=secret,
                        authority=f"{self._options.login_url.rstrip('/')}/{self._options.tenant_id}",
                        http_client=self._transport,
                        instance_discovery=False,  # a configured login_url is trusted as given
                    )
                if refresh:
                    self._app.remove_tokens_for_client()
                result = self._app.acquire_token_for_client(scopes=[self.scope])
            except MailwardenError as exc:
                raise AdapterError(_scrub(str(exc), secret)) from None
            except Exception as exc:  # msal raises ValueError, MsalServiceError or JSON errors on a bad answer
                raise AdapterError(
                    f"{self.label}: signing in at {self._options.login_url} failed: {type(exc).__name__}: "
                    f"{_scrub(str(exc), secret)[:300]}"
                ) from None
        if not isinstance(result, Mapping) or not isinstance(result.get("access_token"), str):
            error = result.get("error") if isinstance(result, Mapping) else None
            description = result.get("error_description") if isinstance(result, Mapping) else None
            first = str(description or "").splitlines()[0] if description else "no access token in the answer"
            raise AdapterError(
                f"{self.label}: the token endpoint refused client {self._options.client_id}: "
                f"{_scrub(str(error or 'error'), secret)}: {_scrub(first, secret)[:300]} "
                "(check the tenant id, client id and client secret)"
            )
        try:
            lifetime = float(result.get("expires_in", 0))
        except (TypeError, ValueError):
            lifetime = 0.0
        return result["access_token"], lifetime


class GraphToken:
    """The TokenSource for one collect: caches the token, asks msal for a new one when refused."""

    def __init__(self, sign_in: GraphSignIn) -> None:
        self._sign_in = sign_in
        self._token = ""
        self._until = 0.0
        self._lock = asyncio.Lock()

    async def token(self, *, refresh: bool = False) -> str:
        """A current access token; ``refresh`` drops the cached one (it was refused)."""
        seen = self._token
        async with self._lock:
            if refresh and self._token != seen:
                return self._token  # another request refreshed it while this one waited
            if refresh or not self._token or time.monotonic() >= self._until:
                self._token, lifetime = await asyncio.to_thread(self._sign_in.acquire, refresh=refresh)
                self._until = time.monotonic() + max(0.0, lifetime - 60)
            return self._token


def _scrub(text: str, secret: str) -> str:
    return text.replace(secret, "[secret]") if secret else text


@dataclass
class _Crawl:
    """What one tenant's crawl has found so far."""

    tenant: Tenant
    sign_in: bool
    emitted: int
    coverage: list[Coverage]
    rule_failures: list[str]
    settings_failures: list[str]
    problems: list[str]
    refused: dict[Fact, str] = field(default_factory=dict)  # a permission the app lacks: asked once, then not
    clients: dict[str, tuple[str, str]] = field(default_factory=dict)  # service principal id -> (name, appId)
    sign_in_gap: tuple[FactState, str] | None = None  # why signInActivity stopped being read, once it did
    asked_again: bool = False  # a signInActivity 403 was asked once more already in this run
    emitted_with_sign_in: int = 0  # mailboxes sent with signInActivity before Graph refused it
    seen: set[str] = field(default_factory=set)  # user ids read so far (a listing restarted skips them)

    def cover(self, fact: Fact, state: FactState, reason: str = "", subject: str = "") -> None:
        self.coverage.append(Coverage(self.tenant.name, fact, state, reason, subject))


class MicrosoftAdapter:
    """Reads a Microsoft 365 tenant through Microsoft Graph; writes only when a remediation job asks."""

    name = "microsoft"
    capabilities = frozenset({Fact.MAILBOX_LIST, Fact.MAILBOX_FORWARDS, Fact.MAILBOX_LAST_LOGIN, Fact.MAILBOX_INVITES,
                              Fact.MAILBOX_OAUTH_GRANTS, Fact.MAILBOX_RECOVERY})

    def __init__(self, label: str, options: MicrosoftOptions, secret: SecretRef, http: HttpConfig,
                 verify: ssl.SSLContext | bool = True) -> None:
        self.label = label
        self.graph = options.graph_url.rstrip("/")
        self._http = http
        self._verify = verify
        self._retry = RetryPolicy(http.attempts, http.backoff_base, http.backoff_cap, http.max_retry_after)
        transport = MsalTransport(f"{label} sign-in", verify=verify, timeout=http.timeout, retry=self._retry)
        self._sign_in = GraphSignIn(label, options, secret, transport)

    def client(self) -> ApiClient:
        """A Graph client for one collect or write (its pool and limits belong to the running event loop)."""
        return ApiClient(
            self.label, token=GraphToken(self._sign_in), concurrency=self._http.concurrency, retry=self._retry,
            timeout=self._http.timeout, verify=self._verify,
        )

    async def collect(self, tenant: Tenant, emit: Emit) -> Collected:
        """Read domains, users (with sign-in activity when licensed), mailbox purpose, inbox rules and invites."""
        async with self.client() as api:
            problems, verified = await self._check_domains(api, tenant)
            crawl = await self._crawl(api, _Crawl(tenant, True, 0, [], [], [], []), emit)
        crawl.problems[:0] = problems
        sign_in_gap = crawl.sign_in_gap
        if sign_in_gap is not None and sign_in_gap[0] is FactState.FAILED:
            crawl.problems.append(f"{self.label}: {sign_in_gap[1]}")
        if crawl.rule_failures:
            crawl.problems.append(
                f"{self.label}: inbox rules could not be read for {len(crawl.rule_failures)} mailbox(es), "
                f"first: {crawl.rule_failures[0]}")
        if crawl.settings_failures:
            crawl.problems.append(
                f"{self.label}: mailbox settings could not be read for {len(crawl.settings_failures)} mailbox(es) "
                f"(their kind may be wrong), first: {crawl.settings_failures[0]}")
        crawl.cover(Fact.MAILBOX_LIST, FactState.COLLECTED)
        crawl.cover(Fact.MAILBOX_FORWARDS, FactState.COLLECTED, FORWARDS_NOTE)
        crawl.cover(Fact.MAILBOX_INVITES, FactState.COLLECTED)
        notes: list[str] = []
        if sign_in_gap is None:
            crawl.cover(Fact.MAILBOX_LAST_LOGIN, FactState.COLLECTED)
        elif crawl.emitted_with_sign_in:
            # Graph refused signInActivity part-way through the listing: the users read before keep their sign-ins.
            crawl.cover(Fact.MAILBOX_LAST_LOGIN, FactState.COLLECTED)
            notes.append(f"{self.label}: {sign_in_gap[1]} (from a later page of /users on, asked twice); the "
                         f"{crawl.emitted - crawl.emitted_with_sign_in} users listed after it have no last sign-in")
        else:
            crawl.cover(Fact.MAILBOX_LAST_LOGIN, *sign_in_gap)
        if verified is None:
            crawl.cover(Fact.TENANT_DOMAINS, FactState.FAILED, problems[0] if problems else "not read")
        else:
            crawl.cover(Fact.TENANT_DOMAINS, FactState.COLLECTED, DOMAINS_NOTE)
        for fact, reason in NOT_IN_GRAPH.items():
            crawl.cover(fact, FactState.UNSUPPORTED, reason)
        notes = [*notes, *await self._access_coverage(crawl)]
        return Collected((), {}, tuple(crawl.coverage), tuple(crawl.problems), tuple(notes),
                         tuple(sorted(verified)) if verified is not None else None)

    async def _check_domains(self, api: ApiClient, tenant: Tenant) -> tuple[list[str], set[str] | None]:
        """The tenant's verified domains, and problems for configured domains the tenant does not hold as verified.

        The verified set is None when Graph refused the list (403: Domain.Read.All missing).
        """
        verified: set[str] = set()
        try:
            async for page in api.pages(f"{self.graph}/domains", None, self._next_link):
                for item in self._values(page, "/domains"):
                    name = item.get("id")
                    if isinstance(name, str) and item.get("isVerified") is True:
                        verified.add(name.lower().rstrip("."))
        except ApiError as exc:
            if exc.status != 403:
                raise
            return [f"{self.label}: the tenant's domains could not be read (Domain.Read.All missing?): {exc}"], None
        return [
            f"{self.label}: {domain} is not a verified domain of the Microsoft 365 tenant; its mailboxes are not seen"
            for domain in tenant.domains if domain not in verified
        ], verified

    async def _crawl(self, api: ApiClient, crawl: _Crawl, emit: Emit) -> _Crawl:
        """List the users page by page, sending each page's mailboxes (with their details) to ``emit``.

        Selecting signInActivity in a tenant without Entra ID P1/P2 (or without AuditLog.Read.All) fails the whole
        request with 403. One refusal is not taken as the tenant's answer: it is asked once more in the run, and only
        refused again is the listing read (on) without signInActivity: from the start when nothing was sent yet, else
        restarted with the users already sent skipped (a nextLink is followed verbatim, so its $select cannot change).
        """
        while True:
            fields = (*USER_FIELDS, "signInActivity") if crawl.sign_in else USER_FIELDS
            params = {"$select": ",".join(fields), "$top": str(SIGN_IN_PAGE if crawl.sign_in else PLAIN_PAGE)}
            request: tuple[str, Mapping[str, Any] | None] | None = (f"{self.graph}/users", params)
            while request is not None:
                page = await self._users_page(api, crawl, *request)
                if page is None:
                    break  # signInActivity refused twice: start over without it
                await self._emit_page(api, crawl, page, emit)
                request = self._next_link(page, *request)
            else:
                return crawl

    async def _users_page(self, api: ApiClient, crawl: _Crawl, url: str, params: Mapping[str, Any] | None) -> Any:
        """One page of /users; None when signInActivity is refused for good (``crawl.sign_in`` is then off)."""
        while True:
            try:
                return await api.get(url, params)
            except ApiError as exc:
                if not crawl.sign_in or exc.status != 403 or exc.code not in (NON_PREMIUM, DENIED):
                    raise
                if not crawl.asked_again:
                    crawl.asked_again = True
                    log.info("asking again for signInActivity", extra={"adapter": self.label, "why": exc.code})
                    continue
                crawl.sign_in = False
                crawl.emitted_with_sign_in = crawl.emitted
                crawl.sign_in_gap = (FactState.UNSUPPORTED, NON_PREMIUM_REASON) if exc.code == NON_PREMIUM else (
                    FactState.FAILED, f"signInActivity could not be read (AuditLog.Read.All missing?): {exc}")
                log.info("reading users without signInActivity", extra={"adapter": self.label, "why": exc.code})
                return None

    async def _emit_page(self, api: ApiClient, crawl: _Crawl, page: Any, emit: Emit) -> None:
        """Send one /users page's mailboxes, with their details read concurrently within the client's limit."""
        users = []
        for item in self._values(page, "/users"):
            uid = item.get("id")
            if isinstance(uid, str) and uid in crawl.seen:
                continue  # sent before the listing was restarted without signInActivity
            mailbox, uid = self._user(crawl, item)
            crawl.seen.add(str(item["id"]))
            if mailbox is not None:
                if not crawl.sign_in and crawl.emitted_with_sign_in:
                    assert crawl.sign_in_gap is not None
                    crawl.cover(Fact.MAILBOX_LAST_LOGIN, *crawl.sign_in_gap, mailbox.address)
                users.append((mailbox, uid))
        found = await asyncio.gather(*(self._with_access(api, crawl, mailbox, uid) for mailbox, uid in users))
        mailboxes = [m for m in found if m is not None]
        crawl.emitted += len(mailboxes)
        await emit(mailboxes)

    def _user(self, crawl: _Crawl, item: Mapping[str, Any]) -> tuple[Mailbox | None, str]:
        """The mailbox a user object describes before its mailbox details, or None for accepted guests."""
        uid = item.get("id")
        address = item.get("mail") or item.get("userPrincipalName")
        if not isinstance(uid, str) or not uid or not isinstance(address, str) or not address:
            raise AdapterError(f"{self.label}: GET {self.graph}/users returned a user without id or address")
        address = address.strip().lower()
        state = item.get("externalUserState")
        guest = str(item.get("userType") or "").lower() == "guest"
        if guest and state != PENDING:
            return None, uid  # an accepted guest has no mailbox here; it is someone else's account
        invite = None
        try:
            created = parse_time(item.get("createdDateTime"))
            if state == PENDING:
                sent = parse_time(item.get("externalUserStateChangeDateTime")) or created
                invite = Invite(sent) if sent is not None else None
        except ValueError as exc:
            crawl.problems.append(f"{self.label}: GET {self.graph}/users: user {address}: {exc}")
            created = None
        last_login = None
        if crawl.sign_in:
            try:
                last_login = last_sign_in(item.get("signInActivity"))
            except ValueError as exc:
                crawl.cover(Fact.MAILBOX_LAST_LOGIN, FactState.FAILED, f"signInActivity: {exc}", address)
        status = MailboxStatus.PENDING if state == PENDING else (
            MailboxStatus.SUSPENDED if item.get("accountEnabled") is False else MailboxStatus.ACTIVE)
        display = item.get("displayName")
        mailbox = Mailbox(
            tenant=crawl.tenant.name, address=address, status=status,
            display_name=display if isinstance(display, str) else "", created=created, last_login=last_login,
            invite=invite,
        )
        return mailbox, ("" if guest else uid)

    async def _details(self, api: ApiClient, crawl: _Crawl, mailbox: Mailbox, uid: str) -> Mailbox:
        """Add the mailbox's purpose and forwarding rules; one request at a time per mailbox (Outlook allows 4)."""
        if not uid:
            return mailbox  # a pending guest: a user object with no mailbox in this tenant
        base = f"{self.graph}/users/{quote(uid, safe='')}"
        try:
            status, settings = await api.request("GET", f"{base}/mailboxSettings", allow=frozenset({404}))
        except AdapterError as exc:
            crawl.settings_failures.append(f"{mailbox.address}: {exc}")
            crawl.cover(Fact.MAILBOX_FORWARDS, FactState.FAILED, str(exc), mailbox.address)
            return mailbox
        if status == 404:
            if _code(settings) in NO_REST:
                return self._unreadable(crawl, mailbox, _code(settings))
            reason = f"GET {base}/mailboxSettings answered 404 {_code(settings)}"
            crawl.settings_failures.append(f"{mailbox.address}: {reason}")
            crawl.cover(Fact.MAILBOX_FORWARDS, FactState.FAILED, reason, mailbox.address)
            return mailbox
        purpose = settings.get("userPurpose") if isinstance(settings, Mapping) else None
        kind = PURPOSE_KINDS.get(str(purpose or "").lower(), MailboxKind.USER)
        if kind is not MailboxKind.USER and mailbox.status is MailboxStatus.SUSPENDED:
            # Shared, room and equipment mailboxes are user objects whose sign-in is normally blocked.
            mailbox = replace(mailbox, kind=kind, status=MailboxStatus.ACTIVE)
        else:
            mailbox = replace(mailbox, kind=kind)
        try:
            rules = await self._rules(api, base)
        except AdapterError as exc:
            if isinstance(exc, ApiError) and exc.status == 404 and exc.code in NO_REST:
                return self._unreadable(crawl, mailbox, exc.code)
            crawl.rule_failures.append(f"{mailbox.address}: {exc}")
            crawl.cover(Fact.MAILBOX_FORWARDS, FactState.FAILED, str(exc), mailbox.address)
            return mailbox
        forwards = rule_forwards(rules)
        return replace(mailbox, forwards=forwards) if forwards else mailbox

    async def _with_access(self, api: ApiClient, crawl: _Crawl, mailbox: Mailbox, uid: str) -> Mailbox:
        """The mailbox with its details, then its delegated OAuth grants and email/phone authentication methods."""
        mailbox = await self._details(api, crawl, mailbox, uid)
        if not uid:
            return mailbox  # a pending guest: its grants and methods belong to its home tenant
        base = f"{self.graph}/users/{quote(uid, safe='')}"
        grants: list[Grant] = []
        recovery: list[Recovery] = []
        if Fact.MAILBOX_OAUTH_GRANTS not in crawl.refused:
            try:
                # Only the user's own consents (Principal); tenant-wide admin consents are read once, as notes.
                async for page in api.pages(f"{base}/oauth2PermissionGrants", None, self._next_link):
                    for item in self._values(page, "/users/{id}/oauth2PermissionGrants"):
                        grants.append(await self._grant(api, crawl, item))
            except ApiError as exc:
                self._access_failed(crawl, Fact.MAILBOX_OAUTH_GRANTS, exc, GRANTS_PERMISSION, mailbox.address)
        if Fact.MAILBOX_RECOVERY not in crawl.refused:
            try:
                for kind in ("emailMethods", "phoneMethods"):
                    async for page in api.pages(f"{base}/authentication/{kind}", None, self._next_link):
                        for item in self._values(page, f"/users/{{id}}/authentication/{kind}"):
                            value = item.get("emailAddress" if kind == "emailMethods" else "phoneNumber")
                            if isinstance(value, str) and value.strip():
                                recovery.append(Recovery(RecoveryKind.EMAIL if kind == "emailMethods" else
                                                         RecoveryKind.PHONE, value.strip().lower() if kind ==
                                                         "emailMethods" else value.strip()))
            except ApiError as exc:
                recovery = []
                self._access_failed(crawl, Fact.MAILBOX_RECOVERY, exc, METHODS_PERMISSION, mailbox.address)
        if not grants and not recovery:
            return mailbox
        return replace(mailbox, grants=tuple(grants), recovery=tuple(recovery))

    def _access_failed(self, crawl: _Crawl, fact: Fact, exc: ApiError, permission: str, address: str) -> None:
        if exc.status == 403:  # Authorization_RequestDenied: the app lacks the permission, for every user alike
            crawl.refused.setdefault(fact, f"{permission} ({exc.code or 'HTTP 403'})")
        else:
            crawl.cover(fact, FactState.FAILED, str(exc), address)
            crawl.problems.append(f"{address}: {exc}")

    async def _grant(self, api: ApiClient, crawl: _Crawl, item: Mapping[str, Any]) -> Grant:
        """One delegated permission grant; its clientId is the client's service principal, named once per crawl."""
        client = str(item.get("clientId") or "")
        if client and client not in crawl.clients:
            name, app = client, ""
            try:
                body = await api.get(f"{self.graph}/servicePrincipals/{quote(client, safe='')}",
                                     {"$select": "displayName,appId"})
                if isinstance(body, Mapping):
                    name, app = str(body.get("displayName") or client), str(body.get("appId") or "")
            except ApiError:
                pass  # the grant stands without a name: its client id still identifies it
            crawl.clients[client] = (name, app)
        name, app = crawl.clients.get(client, (client, ""))
        scopes = tuple(str(item.get("scope") or "").split())
        return Grant(GrantKind.OAUTH, str(item.get("id") or ""), name, mail_access(scopes, GRAPH), scopes,
                     app or client)

    async def _access_coverage(self, crawl: _Crawl) -> tuple[str, ...]:
        """Coverage of the access facts, and the tenant-wide admin consents that reach mail, as notes."""
        crawl.cover(Fact.MAILBOX_APP_PASSWORDS, FactState.UNSUPPORTED, APP_PASSWORDS_REASON)
        for fact in (Fact.MAILBOX_OAUTH_GRANTS, Fact.MAILBOX_RECOVERY):
            if fact in crawl.refused:
                crawl.cover(fact, FactState.UNSUPPORTED, crawl.refused[fact])
            else:
                crawl.cover(fact, FactState.COLLECTED)
        if Fact.MAILBOX_OAUTH_GRANTS in crawl.refused:
            return ()
        notes = []
        try:
            async with self.client() as api:
                params = {"$filter": "consentType eq 'AllPrincipals'"}
                async for page in api.pages(f"{self.graph}/oauth2PermissionGrants", params, self._next_link):
                    for item in self._values(page, "/oauth2PermissionGrants"):
                        grant = await self._grant(api, crawl, item)
                        if grant.mail is not MailAccess.NONE:
                            reach = "read and change" if grant.mail is MailAccess.FULL else "read"
                            notes.append(f"tenant-wide admin consent: {grant.client} may {reach} the mail of every "
                                         f"user who signs in to it ({' '.join(grant.scopes)})")
        except ApiError as exc:
            crawl.problems.append(f"{self.label}: tenant-wide admin consents could not be read: {exc}")
        return tuple(notes)

    @staticmethod
    def _unreadable(crawl: _Crawl, mailbox: Mailbox, code: str) -> Mailbox:
        """A mailbox Graph's REST API cannot read (404 ``code``): its forwards are unsupported, the tenant complete."""
        crawl.cover(Fact.MAILBOX_FORWARDS, FactState.UNSUPPORTED, no_rest_reason(code), mailbox.address)
        return mailbox

    async def _rules(self, api: ApiClient, base: str) -> list[Any]:
        rules: list[Any] = []
        url: str | None = f"{base}/mailFolders/inbox/messageRules"
        while url is not None:
            status, page = await api.request("GET", url, allow=frozenset({404}))
            if status == 404:
                raise ApiError(f"{self.label}: GET {base}/mailFolders/inbox/messageRules answered 404 {_code(page)}",
                               status=404, code=_code(page))
            rules.extend(self._values(page, "/mailFolders/inbox/messageRules"))
            following = self._next_link(page, url, None)
            url = following[0] if following else None
        return rules

    def _values(self, page: Any, path: str) -> list[Mapping[str, Any]]:
        values = page.get("value") if isinstance(page, Mapping) else None
        if not isinstance(values, list) or not all(isinstance(v, Mapping) for v in values):
            raise AdapterError(f"{self.label}: {path} returned an unexpected response (no 'value' list of objects)")
        return values

    def _next_link(self, page: Any, url: str, params: Mapping[str, Any] | None) -> tuple[str, None] | None:
        """The ``@odata.nextLink`` to follow verbatim, refusing one that leaves the Graph endpoint (it gets the token)."""
        link = page.get("@odata.nextLink") if isinstance(page, Mapping) else None
        if link is None:
            return None
        origin = urlsplit(self.graph)
        parts = urlsplit(link) if isinstance(link, str) else None
        if parts is None or (parts.scheme, parts.netloc) != (origin.scheme, origin.netloc):
            raise AdapterError(f"{self.label}: {endpoint_of('GET', url)} returned an @odata.nextLink "
                               "that is not on the Graph endpoint")
        return link, None

    # Remediation writes: only remediation jobs call these. Each returns the state Graph reports afterwards.

    async def find_user(self, address: str) -> str | None:
        """The Graph id of the user whose mail or user principal name is ``address``."""
        literal = address.strip().lower().replace("'", "''")  # OData string literal quoting
        async with self.client() as api:
            body = await api.get(f"{self.graph}/users", {
                "$filter": f"mail eq '{literal}' or userPrincipalName eq '{literal}'", "$select": "id"})
        values = self._values(body, "/users")
        uid = values[0].get("id") if values else None
        return uid if isinstance(uid, str) else None

    async def forwarding_rules(self, user: str) -> tuple[RuleState, ...]:
        """The user's inbox rules that forward or redirect mail (to pick one to disable or delete)."""
        async with self.client() as api:
            rules = await self._rules(api, f"{self.graph}/users/{quote(user, safe='')}")
        states = (self._rule_state(user, rule) for rule in rules)
        return tuple(s for s in states if s is not None and s.forwards)

    async def disable_forwarding_rule(self, user: str, rule_id: str) -> RuleState | None:
        """Turn a forwarding rule off (undo: ``enable_forwarding_rule``); returns the rule as re-read."""
        return await self._set_rule(user, rule_id, enabled=False)

    async def enable_forwarding_rule(self, user: str, rule_id: str) -> RuleState | None:
        """Turn a rule back on (the undo of ``disable_forwarding_rule``); returns the rule as re-read."""
        return await self._set_rule(user, rule_id, enabled=True)

    async def delete_forwarding_rule(self, user: str, rule_id: str) -> RuleState | None:
        """Delete a rule; returns the rule as re-read afterwards: None when it is gone."""
        url = self._rule_url(user, rule_id)
        async with self.client() as api:
            await api.request("DELETE", url, allow=frozenset({404}))
            return await self._read_rule(api, user, url)

    async def restore_forwarding_rule(self, user: str, saved: Mapping[str, Any]) -> RuleState | None:
        """Re-create a deleted rule from its saved form (the undo of a delete); returns the new rule as re-read."""
        # id, hasError and isReadOnly are read-only properties of messageRule
        body = {k: v for k, v in saved.items()
                if k not in ("id", "hasError", "isReadOnly") and not k.startswith("@odata")}
        url = f"{self.graph}/users/{quote(user, safe='')}/mailFolders/inbox/messageRules"
        async with self.client() as api:
            _, created = await api.request("POST", url, json_body=body)
            rule_id = created.get("id") if isinstance(created, Mapping) else None
            if not isinstance(rule_id, str):
                raise AdapterError(f"{self.label}: POST {url} returned no rule id")
            return await self._read_rule(api, user, self._rule_url(user, rule_id))

    async def disable_account(self, user: str) -> AccountState | None:
        """Block sign-in (``accountEnabled: false``; undo: ``enable_account``); returns the account as re-read."""
        return await self._set_account(user, enabled=False)

    async def enable_account(self, user: str) -> AccountState | None:
        """Allow sign-in again; returns the account as re-read."""
        return await self._set_account(user, enabled=True)

    async def revoke_invite(self, user: str) -> AccountState | None:
        """Delete a guest whose invitation is still pending; returns the account as re-read: None when gone."""
        async with self.client() as api:
            before = await self._read_account(api, user)
            if before is None:
                return None
            if before.user_type.lower() != "guest" or before.external_state != PENDING:
                raise AdapterError(f"{self.label}: {before.address} is not a guest with a pending invitation; "
                                   "not deleting it")
            await api.request("DELETE", f"{self.graph}/users/{quote(user, safe='')}", allow=frozenset({404}))
            return await self._read_account(api, user)

    async def resend_invite(self, address: str, redirect_url: str = "https://myapps.microsoft.com") -> InviteState:
        """Send the invitation to ``address`` again; returns the invited user's state as re-read."""
        url = f"{self.graph}/invitations"
        async with self.client() as api:
            _, body = await api.request("POST", url, json_body={
                "invitedUserEmailAddress": address, "inviteRedirectUrl": redirect_url, "sendInvitationMessage": True})
            if not isinstance(body, Mapping):
                raise AdapterError(f"{self.label}: POST {url} returned an unexpected response")
            invited = body.get("invitedUser")
            uid = invited.get("id") if isinstance(invited, Mapping) else None
            if not isinstance(uid, str):
                raise AdapterError(f"{self.label}: POST {url} returned no invited user id")
            raw = await self._get_user(api, uid)
        redeem = body.get("inviteRedeemUrl")
        if raw is None:
            return InviteState(uid, address.lower(), None, None, redeem if isinstance(redeem, str) else "")
        try:
            changed = parse_time(raw.get("externalUserStateChangeDateTime"))
        except ValueError:
            changed = None
        state = raw.get("externalUserState")
        return InviteState(uid, address.lower(), state if isinstance(state, str) else None, changed,
                           redeem if isinstance(redeem, str) else "")

    def _rule_url(self, user: str, rule_id: str) -> str:
        return f"{self.graph}/users/{quote(user, safe='')}/mailFolders/inbox/messageRules/{quote(rule_id, safe='')}"

    async def _set_rule(self, user: str, rule_id: str, *, enabled: bool) -> RuleState | None:
        url = self._rule_url(user, rule_id)
        async with self.client() as api:
            await api.request("PATCH", url, json_body={"isEnabled": enabled})
            return await self._read_rule(api, user, url)

    async def _read_rule(self, api: ApiClient, user: str, url: str) -> RuleState | None:
        status, rule = await api.request("GET", url, allow=frozenset({404}))
        if status == 404:
            return None
        state = self._rule_state(user, rule)
        if state is None:
            raise AdapterError(f"{self.label}: {endpoint_of('GET', url)} returned an unexpected rule")
        return state

    def _rule_state(self, user: str, rule: Any) -> RuleState | None:
        if not isinstance(rule, Mapping) or not isinstance(rule.get("id"), str):
            return None
        forwards = rule_forwards([{**rule, "isEnabled": True}])  # where it sends mail when on
        name = rule.get("displayName")
        return RuleState(user, rule["id"], name if isinstance(name, str) else "", rule.get("isEnabled") is not False,
                         forwards, dict(rule))

    async def _set_account(self, user: str, *, enabled: bool) -> AccountState | None:
        async with self.client() as api:
            await api.request("PATCH", f"{self.graph}/users/{quote(user, safe='')}",
                              json_body={"accountEnabled": enabled})
            return await self._read_account(api, user)

    async def _get_user(self, api: ApiClient, user: str) -> Mapping[str, Any] | None:
        status, body = await api.request(
            "GET", f"{self.graph}/users/{quote(user, safe='')}",
            params={"$select": "id,userPrincipalName,mail,accountEnabled,userType,externalUserState,"
                               "externalUserStateChangeDateTime"},
            allow=frozenset({404}))
        if status == 404:
            return None
        if not isinstance(body, Mapping):
            raise AdapterError(f"{self.label}: GET {self.graph}/users/{{id}} returned an unexpected response")
        return body

    async def _read_account(self, api: ApiClient, user: str) -> AccountState | None:
        raw = await self._get_user(api, user)
        if raw is None:
            return None
        address = raw.get("mail") or raw.get("userPrincipalName") or user
        state = raw.get("externalUserState")
        return AccountState(str(raw.get("id") or user), str(address).lower(), raw.get("accountEnabled") is not False,
                            str(raw.get("userType") or ""), state if isinstance(state, str) else None)


    # The remediation surface (scanner/adapters/base.py REMEDY_STATES): the actions mapped onto the writes above.

    async def _uid(self, address: str) -> str:
        uid = await self.find_user(address)
        if uid is None:
            raise AdapterError(f"{self.label}: no user {address} in the directory")
        return uid

    async def remedy_read(self, action: str, subject: str, params: Mapping[str, Any]) -> dict[str, Any]:
        """The action's normalized state of ``subject``, read from Graph now, with what an undo would need."""
        subject = subject.lower()
        if action == "forwarding.disable":
            unsupported = set(params.get("mechanisms", ())) - {ForwardMechanism.INBOX_RULE.value,
                                                                ForwardMechanism.REDIRECT.value}
            if unsupported:
                raise Refused(f"Graph turns off inbox-rule forwards only, not {', '.join(sorted(unsupported))} "
                              "(set mailbox forwarding in Exchange admin)")
            uid = await self._uid(subject)
            targets = {str(t).lower() for t in params.get("targets", ())}
            rules = [r for r in await self.forwarding_rules(uid)
                     if r.enabled and {f.target.lower() for f in r.forwards} & targets]
            live = {f.target.lower() for r in rules for f in r.forwards} & targets
            return {"state": {"forwards": sorted(live)}, "detail": {"user": uid, "rules": [r.rule_id for r in rules]}}
        if action in ("account.suspend", "invite.revoke", "invite.resend"):
            uid = await self.find_user(subject)
            async with self.client() as api:
                account = await self._read_account(api, uid) if uid else None
                raw = await self._get_user(api, uid) if uid else None
            pending = account is not None and account.user_type.lower() == "guest" and account.external_state == PENDING
            if action == "account.suspend":
                if account is None:
                    raise AdapterError(f"{self.label}: no user {subject} in the directory")
                status = MailboxStatus.ACTIVE if account.enabled else MailboxStatus.DISABLED
                return {"state": {"status": status.value}, "detail": {"user": account.user}}
            if action == "invite.revoke":
                return {"state": {"invite": pending}, "detail": {"user": uid or ""}}
            changed = parse_time(raw.get("externalUserStateChangeDateTime")) if pending and raw else None
            return {"state": {"invite_sent": changed.isoformat() if changed else None}, "detail": {}}
        if action == "grant.revoke":
            if params.get("kind") != GrantKind.OAUTH.value:
                raise Refused(APP_PASSWORDS_REASON)
            uid, grant = await self._uid(subject), str(params.get("grant"))
            held = False
            async with self.client() as api:
                url = f"{self.graph}/users/{quote(uid, safe='')}/oauth2PermissionGrants"
                async for page in api.pages(url, None, self._next_link):
                    held = held or any(str(i.get("id")) == grant for i in self._values(page, url))
            return {"state": {"grants": [grant] if held else []}, "detail": {"user": uid}}
        raise Refused(_refusal(action))

    async def remedy_apply(
        self, action: str, subject: str, params: Mapping[str, Any], before: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Make the action's change through Graph; returns the state read back afterwards."""
        detail = dict(before.get("detail") or {})
        if action == "forwarding.disable":
            for rule_id in detail.get("rules", ()):
                await self.disable_forwarding_rule(str(detail["user"]), str(rule_id))
        elif action == "account.suspend":
            await self.disable_account(str(detail["user"]))
        elif action == "invite.revoke":
            await self.revoke_invite(str(detail["user"]))
        elif action == "invite.resend":
            await self.resend_invite(subject.lower())
        elif action == "grant.revoke":
            # Needs DelegatedPermissionGrant.ReadWrite.All; Graph may take a while to replicate the delete.
            async with self.client() as api:
                await api.request("DELETE", f"{self.graph}/oauth2PermissionGrants/{quote(str(params['grant']), safe='')}")
        else:
            raise Refused(_refusal(action))
        after = await self.remedy_read(action, subject, params)
        return {"state": after["state"], "detail": detail}

    async def remedy_restore(
        self, action: str, subject: str, params: Mapping[str, Any], before: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Undo ``remedy_apply`` from the recorded before-state; returns the state read back afterwards."""
        detail = before.get("detail") or {}
        if action == "forwarding.disable":
            for rule_id in detail.get("rules", ()):
                await self.enable_forwarding_rule(str(detail["user"]), str(rule_id))
        elif action == "account.suspend":
            if (before.get("state") or {}).get("status") == MailboxStatus.ACTIVE.value:
                await self.enable_account(str(detail["user"]))
        elif action == "invite.revoke":
            await self.resend_invite(subject.lower())
        elif action == "invite.resend":
            raise Refused("a sent invitation cannot be unsent")
        elif action == "grant.revoke":
            raise Refused("a revoked grant cannot be restored; the person grants it again")
        else:
            raise Refused(_refusal(action))
        return await self.remedy_read(action, subject, params)


def _refusal(action: str) -> str:
    if action == "catchall.disable":
        return "Exchange Online has no catch-all address to turn off through Graph"
    if action == "delegate.remove":
        return "Graph does not expose mailbox permissions (FullAccess, SendAs); remove them in Exchange admin"
    return f"Microsoft 365 has no remediation action {action!r}"


def _code(body: Any) -> str:
    error = body.get("error") if isinstance(body, Mapping) else None
    code = error.get("code") if isinstance(error, Mapping) else None
    return str(code) if code is not None else ""


def build(tenant: TenantConfig, config: Config) -> MicrosoftAdapter:
    """The Graph adapter for a tenant: its app registration, endpoints and the shared HTTP settings."""
    assert tenant.microsoft is not None and tenant.credentials is not None  # the config validator requires both
    verify: ssl.SSLContext | bool = True
    if config.http.ca_bundle is not None:
        bundle = config.resolve_path(config.http.ca_bundle)
        try:
            verify = ssl.create_default_context(cafile=str(bundle))
        except (OSError, ssl.SSLError) as exc:
            raise AdapterError(f"http.ca_bundle {bundle}: cannot load the CA certificates ({exc})") from None
    return MicrosoftAdapter(f"microsoft ({tenant.name})", tenant.microsoft, tenant.credentials, config.http, verify)

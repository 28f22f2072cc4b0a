"""The normalized inventory: tenants, domains, mailboxes, people, DNS facts, exceptions and findings."""

from __future__ import annotations

import enum
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from scanner.dns.mtasts import MtaStsPolicy
    from scanner.dns.spf import SpfEvaluation


class Severity(enum.Enum):
    """How much a failing check matters; ordered from least to most severe."""

    INFO = "info"
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        """Position in the order info < low < medium < high < critical."""
        return list(Severity).index(self)


class Status(enum.Enum):
    """The verdict of one check on one subject."""

    PASS = "pass"
    FAIL = "fail"
    ERROR = "error"
    EXCEPTED = "excepted"
    UNSUPPORTED = "unsupported"
    SKIPPED = "skipped"  # would only restate a more basic failure of the same subject: see Finding.caused_by


class Scope(enum.Enum):
    """What kind of subject a check judges."""

    TENANT = "tenant"
    DOMAIN = "domain"
    MAILBOX = "mailbox"


class Fact(enum.Enum):
    """An inventory fact a check can require; collection records whether each was collected."""

    MAILBOX_LIST = "mailbox.list"
    MAILBOX_FORWARDS = "mailbox.forwards"
    MAILBOX_OWNERS = "mailbox.owners"
    MAILBOX_DELEGATES = "mailbox.delegates"
    MAILBOX_LAST_LOGIN = "mailbox.last_login"
    MAILBOX_INVITES = "mailbox.invites"
    MAILBOX_OAUTH_GRANTS = "mailbox.oauth_grants"
    MAILBOX_APP_PASSWORDS = "mailbox.app_passwords"
    MAILBOX_RECOVERY = "mailbox.recovery"
    DOMAIN_CATCH_ALL = "domain.catch_all"
    TENANT_DOMAINS = "tenant.domains"  # the domains the provider itself reports as the tenant's
    ROSTER = "roster"
    DNS_MX = "dns.mx"
    DNS_SPF = "dns.spf"
    DNS_DMARC = "dns.dmarc"
    DNS_DKIM = "dns.dkim"
    DNS_MTA_STS = "dns.mta_sts"
    DNS_TLSRPT = "dns.tlsrpt"
    DMARC_REPORTS = "dmarc.reports"  # DMARC aggregate reports imported for the tenant's domains


class MailboxKind(enum.Enum):
    """Who a mailbox is for."""

    USER = "user"
    SHARED = "shared"
    ROLE = "role"
    RESOURCE = "resource"
    ALIAS = "alias"  # an address with no mailbox of its own that only forwards (nothing signs in, nothing is stored)


class MailboxStatus(enum.Enum):
    """Account state as the provider reports it."""

    ACTIVE = "active"
    SUSPENDED = "suspended"
    DISABLED = "disabled"
    PENDING = "pending"


class ForwardMechanism(enum.Enum):
    """How mail leaves a mailbox for another address."""

    AUTO_FORWARD = "auto_forward"
    INBOX_RULE = "inbox_rule"
    REDIRECT = "redirect"
    ALIAS = "alias"


class Outcome(enum.Enum):
    """What a DNS lookup established: an answer, a definite absence, or nothing (failure)."""

    ANSWER = "answer"
    NXDOMAIN = "nxdomain"
    NODATA = "nodata"
    FAILED = "failed"


class FactState(enum.Enum):
    """Whether a fact was collected for a tenant."""

    COLLECTED = "collected"
    FAILED = "failed"
    UNSUPPORTED = "unsupported"


def domain_of(address: str) -> str:
    """The domain part of an email address, lowercased."""
    return address.rpartition("@")[2].lower()


@dataclass(frozen=True, slots=True)
class Forward:
    """Mail from a mailbox copied or redirected to another address."""

    target: str
    mechanism: ForwardMechanism

    @property
    def target_domain(self) -> str:
        """The domain the forwarded mail goes to."""
        return domain_of(self.target)


class GrantKind(enum.Enum):
    """A credential that outlives a password reset: an app's OAuth grant, or a password for one client."""

    OAUTH = "oauth"
    APP_PASSWORD = "app_password"
    DEVICE_PASSWORD = "device_password"


class MailAccess(enum.Enum):
    """What a grant lets its holder do with the mailbox's mail, as its scopes (or protocols) say."""

    FULL = "full"  # read, change and send every message (IMAP, https://mail.google.com/, Mail.ReadWrite)
    READ = "read"  # read every message
    NONE = "none"  # no message content (profile, calendar, files, metadata)


@dataclass(frozen=True, slots=True)
class Grant:
    """An OAuth grant, app password or device password a mailbox holds; never a secret or a hash of one."""

    kind: GrantKind
    id: str  # the provider's id of the grant, as its revoke call takes it
    client: str  # the app's name, or the label the person gave the password
    mail: MailAccess = MailAccess.NONE
    scopes: tuple[str, ...] = ()
    client_id: str = ""
    created: datetime | None = None
    last_used: datetime | None = None


class RecoveryKind(enum.Enum):
    """A self-service way back into an account."""

    EMAIL = "email"
    PHONE = "phone"


@dataclass(frozen=True, slots=True)
class Recovery:
    """A recovery address or number of an account: where a password reset can be sent."""

    kind: RecoveryKind
    value: str


@dataclass(frozen=True, slots=True)
class Invite:
    """A setup invitation that has not been completed."""

    sent: datetime
    expires: datetime | None = None


@dataclass(frozen=True, slots=True)
class Mailbox:
    """One mailbox as the provider reports it."""

    tenant: str
    address: str
    kind: MailboxKind = MailboxKind.USER
    status: MailboxStatus = MailboxStatus.ACTIVE
    display_name: str = ""
    created: datetime | None = None
    last_login: datetime | None = None
    owners: tuple[str, ...] = ()
    delegates: tuple[str, ...] = ()
    forwards: tuple[Forward, ...] = ()
    invite: Invite | None = None
    grants: tuple[Grant, ...] = ()
    recovery: tuple[Recovery, ...] = ()

    @property
    def domain(self) -> str:
        """The mailbox's domain."""
        return domain_of(self.address)


@dataclass(frozen=True, slots=True)
class DnsAnswer:
    """The result of one DNS query, keeping failure apart from absence."""

    name: str
    rdtype: str
    outcome: Outcome
    records: tuple[str, ...] = ()
    error: str | None = None
    server: str = ""  # with NXDOMAIN: the nameserver ("IP:port") that said the name does not exist

    @property
    def failed(self) -> bool:
        """True when the lookup could not establish anything."""
        return self.outcome is Outcome.FAILED


@dataclass(frozen=True, slots=True)
class DnsFacts:
    """What DNS (and the MTA-STS policy host) said about one domain.

    ``answers`` holds every raw answer, keyed by purpose: ``mx``, ``txt`` (apex), ``dmarc``,
    ``dmarc_walk:<name>`` (the DMARC tree walk above the domain, RFC 9989 §4.10), ``dkim:<selector>``,
    ``mta_sts``, ``tlsrpt``, ``rua_auth:<destination>``, and for a domain whose apex is NXDOMAIN,
    ``parent_soa`` (the SOA of the closest existing parent zone).
    ``spf`` is the recursive SPF evaluation; ``mta_sts_policy`` the fetched policy, if any.
    """

    answers: Mapping[str, DnsAnswer] = field(default_factory=dict)
    spf: SpfEvaluation | None = None
    mta_sts_policy: MtaStsPolicy | None = None

    def get(self, key: str) -> DnsAnswer | None:
        """The answer stored under ``key``, if that lookup was made."""
        return self.answers.get(key)


@dataclass(frozen=True, slots=True)
class Domain:
    """A managed domain with its provider-side settings and DNS facts."""

    name: str
    tenant: str
    parked: bool = False
    catch_all: str | None = None
    dns: DnsFacts = field(default_factory=DnsFacts)


@dataclass(frozen=True, slots=True)
class Person:
    """A roster entry: someone who works (or worked) for the tenant."""

    email: str
    name: str = ""
    left: date | None = None

    def has_left(self, today: date) -> bool:
        """True when the leave date is today or earlier."""
        return self.left is not None and self.left <= today


@dataclass(frozen=True, slots=True)
class PolicyException:
    """An approved, expiring exception for one check on one subject."""

    check: str
    subject: str
    reason: str
    approved_by: str
    expires: date

    def valid_on(self, today: date) -> bool:
        """True while the exception has not expired (it is valid through its expiry date)."""
        return today <= self.expires


@dataclass(frozen=True, slots=True)
class Tenant:
    """A client organisation: its provider, domains and declared senders."""

    name: str
    provider: str | None
    domains: tuple[str, ...]
    senders: tuple[str, ...] = ()
    parked_domains: tuple[str, ...] = ()
    dkim_selectors: tuple[str, ...] = ()
    allowed_apps: tuple[str, ...] = ()  # OAuth clients (names or ids, lowercased) allowed full mail access
    provider_domains: tuple[str, ...] = ()
    """Domains the provider reports as the tenant's (verified, aliases included) besides the configured ones:
    internal like them, but outside the DNS scan's scope."""
    provider_domains_gap: str = ""
    """Why the provider's own list of the tenant's domains is unknown (it could not be read), else empty."""

    def owns(self, domain: str) -> bool:
        """True when ``domain`` (or a parent of it) is one of the tenant's domains, configured or provider-reported."""
        return _within(domain, (*self.domains, *self.parked_domains, *self.provider_domains))

    def owns_by_provider_only(self, domain: str) -> bool:
        """True when ``domain`` is internal only because the provider reports it as the tenant's."""
        return not _within(domain, (*self.domains, *self.parked_domains)) and _within(domain, self.provider_domains)


def _within(domain: str, owned: tuple[str, ...]) -> bool:
    """True when ``domain`` or a parent of it is in ``owned``."""
    domain = domain.lower().rstrip(".")
    names = set(owned)
    while domain:
        if domain in names:
            return True
        domain = domain.partition(".")[2]
    return False


@dataclass(frozen=True, slots=True)
class Coverage:
    """Whether one fact was collected for a tenant (or, with ``subject``, for one mailbox or domain of it)."""

    tenant: str
    fact: Fact
    state: FactState
    reason: str = ""
    subject: str = ""


@dataclass(frozen=True, slots=True)
class DomainState:
    """A domain as the store last recorded it: raw DNS answers (failures replaced by the last known answer)."""

    answers: Mapping[str, DnsAnswer] = field(default_factory=dict)
    catch_all: str | None = None
    mta_sts_mode: str | None = None


@dataclass(frozen=True, slots=True)
class PreviousState:
    """The recorded state before this run, the reference for drift checks; keys are ``tenant/name``."""

    run_id: str
    taken: datetime
    tenants: frozenset[str] = frozenset()
    domains: Mapping[str, DomainState] = field(default_factory=dict)
    forwards: Mapping[str, tuple[Forward, ...]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Baseline:
    """What a domain's mail DNS is declared to be; a None field is not part of the baseline."""

    mx: tuple[str, ...] | None = None
    spf_terms: tuple[str, ...] | None = None
    dmarc_policy: str | None = None
    dmarc_rua: tuple[str, ...] | None = None
    dkim_selectors: tuple[str, ...] | None = None
    mta_sts_mode: str | None = None
    source: str = ""


_T = TypeVar("_T")


class InventoryIndex:
    """Lookups over an inventory's rosters and coverage, each built on first use and rebuilt only when the
    inventory's tuple behind it is a different one: judging a mailbox costs a dictionary lookup, not a pass
    over the whole roster or coverage (100,000 mailboxes against a roster of 100,000 were quadratic)."""

    __slots__ = ("_people", "_coverage", "_derived")

    def __init__(self) -> None:
        self._people: dict[str, tuple[object, dict[str, Person]]] = {}
        self._coverage: tuple[object, dict[tuple[str, Fact, str], Coverage]] | None = None
        self._derived: dict[tuple[str, str], tuple[tuple[object, ...], object]] = {}

    def derived(self, name: str, tenant: str, sources: tuple[object, ...], build: Callable[[], _T]) -> _T:
        """A tenant's value ``name`` built from ``sources`` (parts of the inventory), built again only when one of
        them is a different object: a view a check asks for per mailbox is then a lookup, not a build."""
        held = self._derived.get((name, tenant))
        if held is None or not all(map(operator.is_, held[0], sources)):
            held = (sources, build())
            self._derived[(name, tenant)] = held
        return held[1]  # type: ignore[return-value]

    def people(self, tenant: str, roster: object) -> Mapping[str, Person]:
        """The tenant's roster by lowercased address."""
        held = self._people.get(tenant)
        if held is None or held[0] is not roster:
            held = (roster, {p.email.lower(): p for p in roster})  # type: ignore[attr-defined]
            self._people[tenant] = held
        return held[1]

    def coverage(self, entries: tuple[Coverage, ...]) -> Mapping[tuple[str, Fact, str], Coverage]:
        """The first coverage entry per (tenant, fact, subject)."""
        if self._coverage is None or self._coverage[0] is not entries:
            found: dict[tuple[str, Fact, str], Coverage] = {}
            for entry in entries:
                found.setdefault((entry.tenant, entry.fact, entry.subject), entry)
            self._coverage = (entries, found)
        return self._coverage[1]


@dataclass(frozen=True, slots=True)
class SourceTraffic:
    """What one source IP sent as one domain (header_from) over a window, as the receivers' reports say."""

    domain: str
    source_ip: str
    messages: int
    dmarc_pass: int
    spf_aligned: int
    dkim_aligned: int
    first_seen: datetime
    last_seen: datetime
    reports: int
    ptr: str = ""
    ptr_confirmed: bool = False  # the PTR name resolves back to the IP (only then may it name a sender)

    @property
    def dmarc_fail(self) -> int:
        """Messages that failed DMARC (neither aligned SPF nor aligned DKIM passed)."""
        return self.messages - self.dmarc_pass

    @property
    def trusted_ptr(self) -> str:
        """The PTR name when it is forward-confirmed, else "" (an unconfirmed name proves nothing)."""
        return self.ptr if self.ptr_confirmed else ""


@dataclass(frozen=True, slots=True)
class DomainTraffic:
    """A domain's mail as DMARC aggregate reports describe it over the run's window."""

    domain: str
    since: datetime
    until: datetime
    reports: int  # reports whose published policy is this domain's
    sources: tuple[SourceTraffic, ...] = ()


@dataclass(frozen=True, slots=True)
class Inventory:
    """Everything one run collected, with its coverage."""

    tenants: tuple[Tenant, ...] = ()
    domains: tuple[Domain, ...] = ()
    mailboxes: tuple[Mailbox, ...] = ()
    people: Mapping[str, tuple[Person, ...]] = field(default_factory=dict)
    exceptions: tuple[PolicyException, ...] = ()
    coverage: tuple[Coverage, ...] = ()
    previous: PreviousState | None = None
    baselines: Mapping[str, Baseline] = field(default_factory=dict)
    traffic: Mapping[str, DomainTraffic] = field(default_factory=dict)
    """Per configured domain, what the imported DMARC aggregate reports say of its mail in the window."""
    report_addresses: tuple[str, ...] = ()
    """The rua addresses whose mail this installation imports ([dmarc_reports] addresses)."""
    lookup: Callable[[str], Mailbox | None] | None = None
    """Finds any mailbox of the run by address, also one outside ``mailboxes`` (a scan evaluates its mailboxes
    page by page, and a page's owners may be on another page); None: search ``mailboxes``."""
    index: InventoryIndex = field(default_factory=InventoryIndex, compare=False, repr=False)
    """Lookups built on first use; a copy made with ``replace`` (a page of mailboxes) shares them."""

    def __repr__(self) -> str:
        """What the inventory holds, counted: in full, a portfolio's runs to megabytes (and Python 3.11's
        asyncio.run reprs its result when it restores the SIGINT handler, so a scan would build it each run)."""
        return (f"Inventory({len(self.tenants)} tenants, {len(self.domains)} domains, {len(self.mailboxes)} "
                f"mailboxes, {len(self.coverage)} coverage entries)")

    def roster(self, tenant: str) -> Mapping[str, Person]:
        """The tenant's roster by lowercased address (empty when none was configured)."""
        return self.index.people(tenant, self.people.get(tenant, ()))

    def coverage_entry(self, tenant: str, fact: Fact, subject: str = "") -> Coverage | None:
        """How ``fact`` was collected for the tenant: the subject's own entry first, then the tenant-wide one."""
        entries = self.index.coverage(self.coverage)
        return (entries.get((tenant, fact, subject)) if subject else None) or entries.get((tenant, fact, ""))

    def mailbox(self, address: str) -> Mailbox | None:
        """The run's mailbox with this address, in any tenant, or None."""
        address = address.lower()
        if self.lookup is not None:
            return self.lookup(address)
        return next((m for m in self.mailboxes if m.address == address), None)


@dataclass(frozen=True, slots=True)
class Remediation:
    """The action that would fix a finding, with its parameters."""

    action: str
    params: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Finding:
    """One check's verdict on one subject (or one item of it) in one run."""

    id: str
    check: str
    status: Status
    severity: Severity
    tenant: str
    domain: str
    subject: str
    title: str
    item: str = ""
    evidence: Mapping[str, object] = field(default_factory=dict)
    reason: str = ""
    remediation: Remediation | None = None
    run_id: str = ""
    first_seen: datetime | None = None
    last_seen: datetime | None = None
    caused_by: str = ""  # with status SKIPPED: the id (fingerprint) of the root finding this one restates


_SCALARS = frozenset({str, int, float, bool})


def plain(value: object) -> object:
    """A JSON-ready form of a model value: dataclasses as dicts, enums as values, times as ISO 8601."""
    if value is None or type(value) in _SCALARS:
        return value  # most of a snapshot's leaves: answered before the slower tests below
    # A snapshot is dataclasses, tuples and dicts of scalars: those are told apart by their exact type, and a
    # scalar inside is taken as it is, without a call.
    kind = type(value)
    fields = getattr(kind, "__dataclass_fields__", None)
    if fields is not None:
        return {name: field if field is None or type(field) in _SCALARS else plain(field)
                for name in fields for field in (getattr(value, name),)}
    if kind is tuple or kind is list:
        return [v if v is None or type(v) in _SCALARS else plain(v) for v in value]  # type: ignore[attr-defined]
    if kind is dict:
        return {str(k): v if v is None or type(v) in _SCALARS else plain(v)
                for k, v in value.items()}  # type: ignore[attr-defined]
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(k): v if v is None or type(v) in _SCALARS else plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        items = [v if v is None or type(v) in _SCALARS else plain(v) for v in value]
        return sorted(items, key=str) if isinstance(value, set | frozenset) else items
    return value


def mailbox_from_plain(body: Mapping[str, object]) -> Mailbox:
    """A mailbox back from its plain form (``plain(mailbox)``), as the store keeps it."""

    def when(value: object) -> datetime | None:
        return datetime.fromisoformat(value) if isinstance(value, str) else None

    invite = body.get("invite")
    return Mailbox(
        tenant=str(body["tenant"]),
        address=str(body["address"]),
        kind=MailboxKind(body.get("kind", "user")),
        status=MailboxStatus(body.get("status", "active")),
        display_name=str(body.get("display_name") or ""),
        created=when(body.get("created")),
        last_login=when(body.get("last_login")),
        owners=tuple(str(o) for o in body.get("owners") or ()),  # type: ignore[attr-defined]
        delegates=tuple(str(d) for d in body.get("delegates") or ()),  # type: ignore[attr-defined]
        forwards=tuple(
            Forward(str(f["target"]), ForwardMechanism(f["mechanism"]))
            for f in body.get("forwards") or ()  # type: ignore[attr-defined]
        ),
        invite=Invite(when(invite["sent"]), when(invite.get("expires")))  # type: ignore[arg-type]
        if isinstance(invite, Mapping) else None,
        grants=tuple(
            Grant(GrantKind(g["kind"]), str(g["id"]), str(g.get("client") or ""), MailAccess(g.get("mail", "none")),
                  tuple(str(s) for s in g.get("scopes") or ()), str(g.get("client_id") or ""),
                  when(g.get("created")), when(g.get("last_used")))
            for g in body.get("grants") or ()  # type: ignore[attr-defined]
        ),
        recovery=tuple(
            Recovery(RecoveryKind(r["kind"]), str(r["value"]))
            for r in body.get("recovery") or ()  # type: ignore[attr-defined]
        ),
    )

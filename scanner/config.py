"""Load and validate the TOML configuration; pydantic lives here and nowhere else."""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
from datetime import date
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    PlainValidator,
    Strict,
    StrictFloat,
    StrictInt,
    ValidationError,
    field_validator,
    model_validator,
)

from pydantic_core import core_schema

from scanner.bundle import BUNDLED
from scanner.errors import ConfigError
from scanner.model import PolicyException, Tenant
from scanner.sections import (
    ScheduleConfig,
    StoreConfig,
    TableProblem,
    read_toml,
    schedule_config,
    store_config,
    store_url_from,
)


PROVIDERS = ("google", "microsoft", "mailcow", "files", "trekmail")


class SecretRef(str):
    """A reference to a secret (``env:NAME`` or ``file:PATH``); the value is read only by ``resolve``."""

    def resolve(self) -> str:
        """Read the secret now; errors name the reference, never the value."""
        scheme, _, target = self.partition(":")
        if scheme == "env":
            value = os.environ.get(target)
            if value is None:
                raise ConfigError(f"secret reference {self}: environment variable {target} is not set")
            return value
        try:
            return Path(target).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"secret reference {self}: cannot read the file ({exc.strerror})") from None

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        """Validate with ``_secret_ref`` so a literal secret is refused without being echoed."""
        return core_schema.no_info_plain_validator_function(_secret_ref)


def _secret_ref(value: object) -> SecretRef:
    if not isinstance(value, str):
        raise ValueError("must be a secret reference string such as 'env:NAME' or 'file:PATH'")
    scheme, sep, target = value.partition(":")
    if not sep or scheme not in ("env", "file") or not target:
        # Never echo the value: it may be the secret itself pasted by mistake.
        raise ValueError("must be a secret reference 'env:NAME' or 'file:PATH', not a literal value")
    return SecretRef(value)


FilePath = Annotated[Path, Strict(False)]
"""A path from the config (TOML gives a string); numbers and booleans are strict: "0.5" is not 0.5, "yes" not true."""


def networks(value: list[str]) -> list[str]:
    """The entries, each an IP address or network (CIDR); a ValueError naming the first that is neither."""
    for entry in value:
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError:
            raise ValueError(f"{entry!r} is not an IP address or network such as 192.0.2.0/24") from None
    return value


class _Strict(BaseModel):
    # allow_inf_nan: an infinite timeout never times out, and NaN compares false with every bound.
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True, allow_inf_nan=False)


class DnsConfig(_Strict):
    """How DNS is queried."""

    nameservers: list[str] = []
    timeout: StrictFloat = Field(default=3.0, gt=0, le=60)
    concurrency: StrictInt = Field(default=64, ge=1, le=1024)

    @field_validator("nameservers")
    @classmethod
    def _valid_nameservers(cls, value: list[str]) -> list[str]:
        for entry in value:
            if entry.startswith("["):
                host, _, port = entry[1:].partition("]:")
            elif entry.count(":") == 1:
                host, _, port = entry.partition(":")
            else:
                host, port = entry, "53"
            try:
                ipaddress.ip_address(host)
                if not 0 < int(port) < 65536:
                    raise ValueError
            except ValueError:
                raise ValueError(f"{entry!r} is not 'IP', 'IP:PORT' or '[IPv6]:PORT'") from None
        return value


class HttpConfig(_Strict):
    """How provider adapters talk HTTP: timeouts, concurrency per tenant, retries, trusted CAs."""

    timeout: StrictFloat = Field(default=30.0, gt=0, le=600)
    concurrency: StrictInt = Field(default=8, ge=1, le=64)
    attempts: StrictInt = Field(default=6, ge=1, le=20)
    backoff_base: StrictFloat = Field(default=0.5, ge=0, le=60)
    backoff_cap: StrictFloat = Field(default=30.0, ge=0, le=3600)
    max_retry_after: StrictFloat = Field(default=120.0, ge=0, le=3600)
    ca_bundle: FilePath | None = None


class MtaStsConfig(_Strict):
    """How MTA-STS policies are fetched (RFC 8461 §3.3)."""

    port: StrictInt = Field(default=443, ge=1, le=65535)
    ca_bundle: str = ""
    timeout: StrictFloat = Field(default=10.0, gt=0, le=300)


class PolicyConfig(_Strict):
    """Thresholds the checks judge against; defaults come from config/default.toml."""

    inactive_days: StrictInt = Field(ge=1, le=3650)
    invite_stale_days: StrictInt = Field(ge=1, le=365)
    dkim_min_bits: StrictInt = Field(ge=512, le=16384)
    dmarc_min_policy: Literal["none", "quarantine", "reject"]
    dmarc_window_days: int = Field(default=14, ge=1, le=366)
    dmarc_min_messages: int = Field(default=10, ge=1, le=1_000_000_000)
    dmarc_max_fail_ratio: float = Field(default=0.05, ge=0, lt=1)


class ImapConfig(_Strict):
    """The mailbox the DMARC ``rua`` mail lands in, read over IMAP (TLS unless said otherwise)."""

    host: str = Field(min_length=1)
    port: int = Field(default=993, ge=1, le=65535)
    username: str = Field(min_length=1)
    password: SecretRef
    folder: str = "INBOX"
    archive_folder: str = ""  # empty: read messages stay where they are (reports are stored once anyway)
    tls: Literal["implicit", "starttls", "none"] = "implicit"  # none: plain text, for a server on loopback only
    ca_bundle: Path | None = None  # extra CA certificates to trust (relative to this file)
    timeout: float = Field(default=30.0, gt=0, le=600)


class DmarcReportsConfig(_Strict):
    """Where DMARC aggregate reports are read from: folders of report files and an IMAP mailbox."""

    paths: list[Path] = []  # folders (or files) of reports, relative to this file
    addresses: list[str] = []  # the rua addresses whose mail this installation reads (dmarc.reports_missing)
    imap: ImapConfig | None = None

    @field_validator("addresses")
    @classmethod
    def _addresses(cls, value: list[str]) -> list[str]:
        for entry in value:
            local, at, domain = entry.partition("@")
            if not (local and at and domain and "." in domain) or any(c.isspace() for c in entry):
                raise ValueError(f"{entry!r} is not an email address")
        return [entry.lower() for entry in value]


class SenderConfig(_Strict):
    """One entry of the sender catalogue: a service that sends mail as a customer's domain."""

    title: str = ""
    spf_include: list[str] = []
    dkim_selectors: list[str] = []
    mx_patterns: list[str] = []
    return_path: Literal["customer", "own"] = "own"
    ip_ranges: list[str] = []  # networks its outbound mail comes from (CIDR), where the sender publishes them
    ptr_patterns: list[str] = []  # shell patterns of its outbound hosts' PTR names, such as "*.outbound.protection.outlook.com"

    @field_validator("ip_ranges")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        return networks(value)

    @field_validator("spf_include", mode="before")
    @classmethod
    def _one_or_many(cls, value: object) -> object:
        return [value] if isinstance(value, str) else value


IDENTITY = re.compile(r"[\w.+-]{1,128}(@[\w-]{1,63}(\.[\w-]{1,63}){0,8})?")
"""An operator identity as the reverse proxy names it: an email address or a user name (Unicode letters allowed)."""


class RemediationConfig(_Strict):
    """The remediation service that report links point to, who may use it, and where its audit log is copied."""

    base_url: str = Field(default="", pattern=r"^(https?://[^\s/?#]+(/[^\s?#]*)?)?$")
    secret: SecretRef | None = None
    link_ttl_days: StrictInt = Field(default=7, ge=1, le=90)
    identity_header: str = Field(default="X-Forwarded-User", pattern=r"^[A-Za-z0-9-]+$")
    trusted_proxies: list[str] = ["127.0.0.1", "::1"]
    audit_sink: FilePath | None = None
    audit_key: SecretRef | None = None  # keys the audit chain (HMAC); never the link secret, never in the store
    audit_legacy_entries: int = Field(default=0, ge=0, le=10**12)  # unkeyed entries a store upgraded to the keyed log holds
    operators: dict[str, list[str]] = {}  # identity -> tenants it may act on ("*": every tenant)

    @field_validator("operators")
    @classmethod
    def _operators(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        scopes: dict[str, list[str]] = {}
        for identity, tenants in value.items():
            if not IDENTITY.fullmatch(identity):
                raise ValueError(f"{identity[:80]!r} is not an operator identity (an email address or a user name)")
            if not tenants:
                raise ValueError(f"{identity}: name at least one tenant, or \"*\" for every tenant")
            scopes[identity.lower()] = list(tenants)
        return scopes

    @model_validator(mode="after")
    def _separate_keys(self) -> RemediationConfig:
        if self.audit_key is not None and self.audit_key == self.secret:
            raise ValueError("audit_key: must be a secret reference of its own, not the link secret's")
        return self

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        return networks(value)

    @property
    def links(self) -> bool:
        """True when report links can be issued: a base URL and a secret are configured."""
        return bool(self.base_url) and self.secret is not None



class EmailList(_Strict):
    """One set of recipients and the tenants whose report they get (all tenants when none are named)."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9_. -]*$")
    to: list[str] = Field(min_length=1)
    tenants: list[str] = []

    @field_validator("to")
    @classmethod
    def _addresses(cls, value: list[str]) -> list[str]:
        for address in value:
            local, at, domain = address.partition("@")
            if not at or not local or not domain or any(c in address for c in " ,;<>\r\n"):
                raise ValueError(f"{address!r} is not a plain email address")
        return value


class EmailConfig(_Strict):
    """The weekly email: the SMTP server, how to reach it, and who gets which tenants' report."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True, populate_by_name=True)

    host: str = Field(min_length=1)
    port: StrictInt = Field(default=587, ge=1, le=65535)
    security: Literal["starttls", "tls", "none"] = "starttls"
    username: str | None = None
    password: SecretRef | None = None
    sender: str = Field(alias="from", min_length=3, pattern=r"^[^@\s<>,;]+@[^@\s<>,;]+$")
    lists: list[EmailList] = Field(min_length=1)
    retries: StrictInt = Field(default=3, ge=0, le=10)
    retry_delay: StrictFloat = Field(default=5.0, ge=0, le=3600)
    timeout: StrictFloat = Field(default=30.0, gt=0, le=600)
    ca_bundle: FilePath | None = None
    report_url: str = Field(default="", pattern=r"^(https?://\S+)?$")
    top: StrictInt = Field(default=10, ge=1, le=100)

    @model_validator(mode="after")
    def _auth(self) -> EmailConfig:
        if (self.username is None) != (self.password is None):
            raise ValueError("'username' and 'password' go together: give both or neither")
        if self.password is not None and self.security == "none":
            raise ValueError("a password is never sent unencrypted: use security = \"starttls\" or \"tls\"")
        names = [entry.name for entry in self.lists]
        for i, name in enumerate(names):
            if name in names[:i]:
                raise ValueError(f"lists[{i}].name: list {name!r} is declared twice")
        return self


class ScanConfig(_Strict):
    """How one scan runs its units of work (one per tenant): how many at once, and how long each may take."""

    tenant_concurrency: StrictInt = Field(default=4, ge=1, le=256)
    tenant_timeout: StrictFloat = Field(default=1800.0, gt=0, le=86400)


class ServeConfig(_Strict):
    """Where ``mailwarden serve`` listens, and how it logs."""

    host: str = "127.0.0.1"
    port: StrictInt = Field(default=8080, ge=0, le=65535)
    log_format: Literal["text", "json"] = "text"


class GoogleOptions(_Strict):
    """Google Workspace: the admin to impersonate and the API endpoints (overridable for tests)."""

    admin: str = Field(min_length=3)
    customer: str = "my_customer"
    customer_id: str = ""  # the numeric "C0..." id, needed for Cloud Identity invitations
    directory_url: str = "https://admin.googleapis.com"
    gmail_url: str = "https://gmail.googleapis.com"
    cloudidentity_url: str = "https://cloudidentity.googleapis.com"
    token_url: str = ""  # empty: the token_uri in the service-account key


class MicrosoftOptions(_Strict):
    """Microsoft 365 through Graph: the app registration and the endpoints (overridable for tests)."""

    tenant_id: str = Field(min_length=1)
    client_id: str = Field(min_length=1)
    graph_url: str = "https://graph.microsoft.com/v1.0"
    login_url: str = "https://login.microsoftonline.com"


class MailcowOptions(_Strict):
    """mailcow: the API base URL and the server's time zone (its timestamps carry none)."""

    url: str = Field(min_length=8)
    timezone: str = "UTC"


class TrekMailOptions(_Strict):
    """TrekMail: the origin of its REST API v1 (``/api/v1`` is added), for white-label instances and tests."""

    url: str = Field(default="https://trekmail.net", min_length=8)
    per_page: int = Field(default=100, ge=1, le=100)  # rows per listing page (the API caps it at 100)


class TenantConfig(_Strict):
    """One client tenant."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    provider: Literal["google", "microsoft", "mailcow", "files", "trekmail"] | None = None
    credentials: SecretRef | None = None
    domains: list[str] = []
    domains_file: FilePath | None = None
    senders: list[str] = []
    parked_domains: list[str] = []
    dkim_selectors: list[str] = []
    roster: FilePath | None = None
    export: FilePath | None = None
    baselines: list[FilePath] = []  # baseline files (see README "Baselines"), relative to the config file
    google: GoogleOptions | None = None
    microsoft: MicrosoftOptions | None = None
    mailcow: MailcowOptions | None = None
    trekmail: TrekMailOptions | None = None
    allowed_apps: list[str] = []  # OAuth apps (name or client id) allowed full mail access (access.mail_grant)


    @field_validator("baselines", mode="before")
    @classmethod
    def _one_or_many_files(cls, value: object) -> object:
        return [value] if isinstance(value, str) else value

    @field_validator("domains", "parked_domains", mode="after")
    @classmethod
    def _normalize_domains(cls, value: list[str]) -> list[str]:
        return [normalize_domain(d) for d in value]

    @model_validator(mode="after")
    def _files_need_export(self) -> TenantConfig:
        if self.provider == "files" and self.export is None:
            raise ValueError("provider 'files' needs 'export', the directory holding the export files")
        for provider in ("google", "microsoft", "mailcow", "trekmail"):
            if self.provider == provider:
                if getattr(self, provider) is None:
                    raise ValueError(f"provider '{provider}' needs a [tenants.{provider}] table")
                if self.credentials is None:
                    raise ValueError(f"provider '{provider}' needs 'credentials', a secret reference")
            elif getattr(self, provider) is not None:
                raise ValueError(f"a [tenants.{provider}] table is only for provider '{provider}'")
        if not self.domains and self.domains_file is None and not self.parked_domains:
            raise ValueError("a tenant needs 'domains' or 'domains_file'")
        return self


class ExceptionConfig(_Strict):
    """An approved exception: one check on one subject, until it expires."""

    check: str = Field(min_length=1)
    subject: str = Field(min_length=1)
    reason: str = Field(min_length=1)
    approved_by: str = Field(min_length=1)
    expires: Annotated[date, Strict()]  # a TOML date; a quoted "2027-01-31" is text, refused rather than guessed


class Config(_Strict):
    """The whole validated configuration."""

    store: Annotated[StoreConfig, PlainValidator(store_config)] = StoreConfig()
    dns: DnsConfig = DnsConfig()
    http: HttpConfig = HttpConfig()
    mta_sts: MtaStsConfig = MtaStsConfig()
    policy: PolicyConfig
    senders: dict[str, SenderConfig] = {}
    remediation: RemediationConfig = RemediationConfig()
    email: EmailConfig | None = None
    scan: ScanConfig = ScanConfig()
    schedule: Annotated[ScheduleConfig, PlainValidator(schedule_config)] = ScheduleConfig()
    serve: ServeConfig = ServeConfig()
    dmarc_reports: DmarcReportsConfig | None = None
    tenants: list[TenantConfig] = []
    exceptions: list[ExceptionConfig] = []

    source: Path = Field(default=Path("mailwarden.toml"), exclude=True)
    digest: str = Field(default="", exclude=True)

    @model_validator(mode="after")
    def _cross_references(self) -> Config:
        if not self.tenants:
            raise ValueError("tenants: no [[tenants]] table: declare at least one tenant to scan")
        names = [t.name for t in self.tenants]
        for i, name in enumerate(names):
            if name in names[:i]:
                raise ValueError(f"tenants[{i}].name: tenant {name!r} is declared twice")
        for i, tenant in enumerate(self.tenants):
            for sender in tenant.senders:
                if sender not in self.senders:
                    raise ValueError(
                        f"tenants[{i}].senders: {sender!r} is not in the sender catalogue "
                        f"(known: {', '.join(sorted(self.senders))})"
                    )
        if self.email is not None:
            for i, entry in enumerate(self.email.lists):
                for listed in entry.tenants:
                    if listed not in names:
                        raise ValueError(f"email.lists[{i}].tenants: no tenant named {listed!r}")
        return self

    def tenant_models(self) -> tuple[Tenant, ...]:
        """The tenants as model objects, with domains_file read and merged."""
        return tuple(_tenant_model(t, self.source) for t in self.tenants)

    def exception_models(self) -> tuple[PolicyException, ...]:
        """The approved exceptions as model objects."""
        return tuple(
            PolicyException(e.check, e.subject.lower(), e.reason, e.approved_by, e.expires) for e in self.exceptions
        )

    def resolve_path(self, path: Path) -> Path:
        """A path from the config, relative to the config file's directory."""
        return path if path.is_absolute() else self.source.parent / path


_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


def normalize_domain(name: str) -> str:
    """Lowercase IDNA form of a domain name without a trailing dot; anything that is not a host name is refused."""
    name = name.strip().rstrip(".").lower()
    try:
        ascii_name = name.encode("idna").decode("ascii")
    except UnicodeError:
        raise ValueError(f"{name[:80]!r} is not a valid domain name") from None
    labels = ascii_name.split(".")
    # RFC 1035 §2.3.1 and RFC 5890: letters, digits and hyphens, 1-63 per label, at most 253 in all; a
    # managed mail domain has at least two labels.
    if len(labels) < 2 or len(ascii_name) > 253 or not all(_LABEL.match(label) for label in labels):
        raise ValueError(f"{name[:80]!r} is not a valid domain name (letters, digits, hyphens and dots, "
                         "such as 'acme.example')")
    return ascii_name


def _tenant_model(tenant: TenantConfig, source: Path) -> Tenant:
    domains = list(tenant.domains)
    if tenant.domains_file is not None:
        path = tenant.domains_file if tenant.domains_file.is_absolute() else source.parent / tenant.domains_file
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise ConfigError(f"{source}: tenants.{tenant.name}.domains_file: cannot read {path} ({exc.strerror})")
        for number, line in enumerate(lines, start=1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            try:
                domains.append(normalize_domain(line))
            except ValueError as exc:
                raise ConfigError(f"{path}:{number}: {exc}") from None
    return Tenant(
        name=tenant.name,
        provider=tenant.provider,
        domains=tuple(dict.fromkeys(domains)),
        senders=tuple(tenant.senders),
        parked_domains=tuple(tenant.parked_domains),
        dkim_selectors=tuple(tenant.dkim_selectors),
        allowed_apps=tuple(dict.fromkeys(a.strip().lower() for a in tenant.allowed_apps if a.strip())),
    )


def _format_location(loc: tuple[int | str, ...]) -> str:
    """Turn a pydantic location into the user's key path, such as ``tenants[1].domains``."""
    parts: list[str] = []
    for step in loc:
        if isinstance(step, int) and parts:
            parts[-1] = f"{parts[-1]}[{step}]"
        else:
            parts.append(str(step))
    return ".".join(parts) or "(top level)"


def load_config(path: Path, *, overrides: dict[str, Any] | None = None) -> Config:
    """Read, merge with the bundled defaults and validate a config file; raises ConfigError."""
    path = Path(path)
    data = read_toml(path)
    defaults = read_toml(BUNDLED / "default.toml")
    catalogue = read_toml(BUNDLED / "senders.toml")
    merged = dict(data)
    merged["policy"] = {**defaults.get("policy", {}), **_table(data, "policy", path)}
    merged["senders"] = {**catalogue.get("senders", {}), **_table(data, "senders", path)}
    for key, value in (overrides or {}).items():
        merged[key] = {**_table(merged, key, path), **value}
    try:
        config = Config.model_validate(merged)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = _format_location(tuple(error["loc"]))
        message = error["msg"].removeprefix("Value error, ")
        problem = error.get("ctx", {}).get("error")
        if isinstance(problem, TableProblem):  # [store] or [schedule]: worded as `mailwarden status` words it
            where, message = problem.where(where), problem.problem
        elif error["type"] == "extra_forbidden":
            message = "unknown key"
        elif error["type"] in ("date_type", "date_parsing", "date_from_datetime_inexact"):
            message = "must be a date such as 2027-01-31 (a TOML date, without quotes)"
        elif error["type"] in ("int_type", "float_type", "bool_type", "int_from_float"):
            message = f"{message} (written without quotes; no conversion is made)"
        more = f" (and {exc.error_count() - 1} more problem(s))" if exc.error_count() > 1 else ""
        # A whole-config rule (the loc is empty) names its own keys in the message.
        where = f"{where}: " if error["loc"] else ""
        raise ConfigError(f"{path}: {where}{message}{more}") from None
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    store = StoreConfig(url=store_url_from(config.store.url, path.resolve().parent))
    return config.model_copy(update={"source": path.resolve(), "digest": digest, "store": store})


def _table(data: dict[str, Any], key: str, path: Path) -> dict[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: {key}: must be a table")
    return value

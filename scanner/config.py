"""Load and validate the TOML configuration; pydantic lives here and nowhere else."""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
import tomllib
from datetime import date
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo

from apscheduler.triggers.cron import CronTrigger
from pydantic import GetCoreSchemaHandler, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pydantic_core import core_schema

from scanner.errors import ConfigError
from scanner.model import PolicyException, Tenant

BUNDLED = Path(__file__).resolve().parent.parent / "config"
"""The bundled data directory: default policy, sender catalogue, demo estate."""

PROVIDERS = ("google", "microsoft", "mailcow", "files")


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


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)


class StoreConfig(_Strict):
    """Where runs, snapshots and findings are kept."""

    url: str = "sqlite:///mailwarden.db"


class DnsConfig(_Strict):
    """How DNS is queried."""

    nameservers: list[str] = []
    timeout: float = Field(default=3.0, gt=0)
    concurrency: int = Field(default=64, ge=1)

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

    timeout: float = Field(default=30.0, gt=0)
    concurrency: int = Field(default=8, ge=1, le=64)
    attempts: int = Field(default=6, ge=1, le=20)
    backoff_base: float = Field(default=0.5, ge=0)
    backoff_cap: float = Field(default=30.0, ge=0)
    max_retry_after: float = Field(default=120.0, ge=0)
    ca_bundle: Path | None = None


class MtaStsConfig(_Strict):
    """How MTA-STS policies are fetched (RFC 8461 §3.3)."""

    port: int = Field(default=443, ge=1, le=65535)
    ca_bundle: str = ""
    timeout: float = Field(default=10.0, gt=0)


class PolicyConfig(_Strict):
    """Thresholds the checks judge against; defaults come from config/default.toml."""

    inactive_days: int = Field(ge=1)
    invite_stale_days: int = Field(ge=1)
    dkim_min_bits: int = Field(ge=512)
    dmarc_min_policy: Literal["none", "quarantine", "reject"]


class SenderConfig(_Strict):
    """One entry of the sender catalogue: a service that sends mail as a customer's domain."""

    title: str = ""
    spf_include: list[str] = []
    dkim_selectors: list[str] = []
    mx_patterns: list[str] = []
    return_path: Literal["customer", "own"] = "own"

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
    link_ttl_days: int = Field(default=7, ge=1, le=90)
    identity_header: str = Field(default="X-Forwarded-User", pattern=r"^[A-Za-z0-9-]+$")
    trusted_proxies: list[str] = ["127.0.0.1", "::1"]
    audit_sink: Path | None = None
    audit_key: SecretRef | None = None  # keys the audit chain (HMAC); never the link secret, never in the store
    audit_legacy_entries: int = Field(default=0, ge=0)  # unkeyed entries a store upgraded to the keyed log holds
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
        for entry in value:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(f"{entry!r} is not an IP address or network") from None
        return value

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
    port: int = Field(default=587, ge=1, le=65535)
    security: Literal["starttls", "tls", "none"] = "starttls"
    username: str | None = None
    password: SecretRef | None = None
    sender: str = Field(alias="from", min_length=3, pattern=r"^[^@\s<>,;]+@[^@\s<>,;]+$")
    lists: list[EmailList] = Field(min_length=1)
    retries: int = Field(default=3, ge=0, le=10)
    retry_delay: float = Field(default=5.0, ge=0)
    timeout: float = Field(default=30.0, gt=0)
    ca_bundle: Path | None = None
    report_url: str = Field(default="", pattern=r"^(https?://\S+)?$")
    top: int = Field(default=10, ge=1, le=100)

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


def _cron_trigger(spec: str, timezone: str) -> CronTrigger:
    """An APScheduler cron trigger from 5 fields (minute hour day month weekday) or 6 (seconds first)."""
    fields = spec.split()
    if len(fields) == 5:
        return CronTrigger.from_crontab(spec, timezone=timezone)
    if len(fields) == 6:
        second, minute, hour, day, month, weekday = fields
        return CronTrigger(second=second, minute=minute, hour=hour, day=day, month=month, day_of_week=weekday,
                           timezone=timezone)
    raise ValueError(f"{spec!r} is not a cron expression: give 5 fields (minute hour day month weekday) or 6 "
                     "(seconds first)")


class ScanConfig(_Strict):
    """How one scan runs its units of work (one per tenant): how many at once, and how long each may take."""

    tenant_concurrency: int = Field(default=4, ge=1, le=256)
    tenant_timeout: float = Field(default=1800.0, gt=0)


class ScheduleConfig(_Strict):
    """When ``mailwarden serve`` scans and emails the report (cron expressions in ``timezone``)."""

    scan: str = "0 6 * * *"  # empty: no scheduled scan
    report: str = "0 7 * * MON"  # empty: no scheduled report (needs [email] otherwise)
    timezone: str = "UTC"
    misfire_grace_time: int = Field(default=3600, ge=1)  # seconds a missed run may still start late
    coalesce: bool = True  # several missed runs start once
    out: Path = Path("mailwarden-out")  # where each scheduled scan writes its outputs (relative to this file)
    lease_ttl: float = Field(default=600.0, gt=0)  # seconds without a heartbeat after which a scan is orphaned

    @model_validator(mode="after")
    def _valid_schedule(self) -> ScheduleConfig:
        try:
            ZoneInfo(self.timezone)
        except (KeyError, ValueError, OSError):
            raise ValueError(f"timezone: {self.timezone!r} is not an IANA time zone such as 'Europe/Berlin'") from None
        for name in ("scan", "report"):
            spec = getattr(self, name)
            if spec.strip():
                try:
                    _cron_trigger(spec, self.timezone)
                except ValueError as exc:
                    raise ValueError(f"{name}: {exc}") from None
        return self

    def trigger(self, job: str) -> CronTrigger | None:
        """The APScheduler trigger of a job (``scan`` or ``report``), or None when it is not scheduled."""
        spec = getattr(self, job).strip()
        return _cron_trigger(spec, self.timezone) if spec else None


class ServeConfig(_Strict):
    """Where ``mailwarden serve`` listens, and how it logs."""

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
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


class TenantConfig(_Strict):
    """One client tenant."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    provider: Literal["google", "microsoft", "mailcow", "files"] | None = None
    credentials: SecretRef | None = None
    domains: list[str] = []
    domains_file: Path | None = None
    senders: list[str] = []
    parked_domains: list[str] = []
    dkim_selectors: list[str] = []
    roster: Path | None = None
    export: Path | None = None
    baselines: list[Path] = []  # baseline files (see README "Baselines"), relative to the config file
    google: GoogleOptions | None = None
    microsoft: MicrosoftOptions | None = None
    mailcow: MailcowOptions | None = None


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
        for provider in ("google", "microsoft", "mailcow"):
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
    expires: date


class Config(_Strict):
    """The whole validated configuration."""

    store: StoreConfig = StoreConfig()
    dns: DnsConfig = DnsConfig()
    http: HttpConfig = HttpConfig()
    mta_sts: MtaStsConfig = MtaStsConfig()
    policy: PolicyConfig
    senders: dict[str, SenderConfig] = {}
    remediation: RemediationConfig = RemediationConfig()
    email: EmailConfig | None = None
    scan: ScanConfig = ScanConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    serve: ServeConfig = ServeConfig()
    tenants: list[TenantConfig] = []
    exceptions: list[ExceptionConfig] = []

    source: Path = Field(default=Path("mailwarden.toml"), exclude=True)
    digest: str = Field(default="", exclude=True)

    @model_validator(mode="after")
    def _cross_references(self) -> Config:
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


def normalize_domain(name: str) -> str:
    """Lowercase IDNA form of a domain name without a trailing dot."""
    name = name.strip().rstrip(".").lower()
    try:
        return name.encode("idna").decode("ascii")
    except UnicodeError:
        raise ValueError(f"{name!r} is not a valid domain name") from None


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
    )


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: the config file is not UTF-8 text") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None


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
    data = _read_toml(path)
    defaults = _read_toml(BUNDLED / "default.toml")
    catalogue = _read_toml(BUNDLED / "senders.toml")
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
        if error["type"] == "extra_forbidden":
            message = "unknown key"
        more = f" (and {exc.error_count() - 1} more problem(s))" if exc.error_count() > 1 else ""
        raise ConfigError(f"{path}: {where}: {message}{more}") from None
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return config.model_copy(update={"source": path.resolve(), "digest": digest})


def _table(data: dict[str, Any], key: str, path: Path) -> dict[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: {key}: must be a table")
    return value

"""Check metadata, the ``@check`` decorator, results, the run context, and loading checks from entry points."""

from __future__ import annotations

import fnmatch
import functools
import ipaddress
import operator
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Protocol, TypeAlias, TypeVar

from scanner.errors import RunFailed, nearest
from scanner.model import Coverage, Domain, Fact, Inventory, Mailbox, Person, Scope, Severity, Status, Tenant

GROUP = "mailwarden.checks"
_Derived = TypeVar("_Derived")
_ID = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$")


class RegistryError(RunFailed):
    """A check package is broken: it cannot be imported, or its metadata is wrong."""


@dataclass(frozen=True, slots=True)
class Policy:
    """The thresholds checks judge against."""

    inactive_days: int = 90
    invite_stale_days: int = 7
    dkim_min_bits: int = 2048
    dmarc_min_policy: str = "quarantine"
    dmarc_window_days: int = 14
    dmarc_min_messages: int = 10
    dmarc_max_fail_ratio: float = 0.05


@dataclass(frozen=True, slots=True)
class Sender:
    """One service that may send mail as a customer's domain."""

    name: str
    title: str = ""
    spf_include: tuple[str, ...] = ()
    dkim_selectors: tuple[str, ...] = ()
    mx_patterns: tuple[str, ...] = ()
    return_path: str = "own"
    ip_ranges: tuple[str, ...] = ()  # networks its outbound mail comes from (CIDR), where it publishes them
    ptr_patterns: tuple[str, ...] = ()  # shell patterns of its outbound hosts' PTR names

    def sends_from(self, ip: str, ptr: str = "") -> bool:
        """Whether mail from this source IP (with this PTR name) is this sender's, by its ranges or PTR names."""
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return False
        for network in self.ip_ranges:
            try:
                if address in ipaddress.ip_network(network, strict=False):
                    return True
            except ValueError:
                continue
        name = ptr.lower().rstrip(".")
        return bool(name) and any(fnmatch.fnmatchcase(name, p.lower()) for p in self.ptr_patterns)


def sender_of(ip: str, ptr: str, senders: Mapping[str, Sender]) -> str:
    """The catalogue sender a source IP belongs to (the first by name that claims it), or "" when unknown."""
    return next((name for name in sorted(senders) if senders[name].sends_from(ip, ptr)), "")


@dataclass(frozen=True, slots=True)
class RunContext:
    """What a check may know besides its subject: the tenant, policy, senders, the run's time and inventory."""

    tenant: Tenant
    policy: Policy
    now: datetime
    senders: Mapping[str, Sender] = field(default_factory=dict)
    inventory: Inventory = field(default_factory=Inventory)

    @property
    def today(self) -> date:
        """The run's date (UTC)."""
        return self.now.date()

    @property
    def roster(self) -> tuple[Person, ...]:
        """The tenant's roster (empty when none was configured)."""
        return tuple(self.inventory.people.get(self.tenant.name, ()))

    def coverage(self, fact: Fact, subject: str = "") -> Coverage | None:
        """How ``fact`` was collected for this tenant: the subject's own entry first, then the tenant-wide one."""
        return self.inventory.coverage_entry(self.tenant.name, fact, subject)


@dataclass(frozen=True, slots=True)
class Result:
    """A check's verdict on one subject, or on one named item of it."""

    status: Status
    evidence: Mapping[str, Any] = field(default_factory=dict)
    item: str = ""
    reason: str = ""
    blocks: bool = True
    """With FAIL: the checks that rest on this one (``rests_on``) would only restate it, so they are skipped.
    False for a failure that leaves the rest of the subject judgeable (a bad report URI in a valid policy)."""

    @classmethod
    def passed(cls, *, item: str = "", **evidence: Any) -> Result:
        """The subject meets the rule."""
        return _new_result(cls, Status.PASS, evidence, item, "", True)

    @classmethod
    def failed(cls, *, item: str = "", blocks: bool = True, **evidence: Any) -> Result:
        """The subject breaks the rule; evidence lets a reviewer believe it (``blocks``: see the field)."""
        return _new_result(cls, Status.FAIL, evidence, item, "", blocks)

    @classmethod
    def error(cls, reason: str, *, item: str = "") -> Result:
        """The check could not decide, and says why."""
        return _new_result(cls, Status.ERROR, {}, item, reason, True)

    @classmethod
    def unsupported(cls, reason: str, *, item: str = "") -> Result:
        """The provider does not expose what the check needs."""
        return _new_result(cls, Status.UNSUPPORTED, {}, item, reason, True)


_RESULT_SETTERS = tuple(Result.__dict__[name].__set__ for name in Result.__dataclass_fields__)
"""Each field's slot setter, in field order: a field added to Result fails ``_new_result``'s unpacking at once."""


def _new_result(cls: type[Result], status: Status, evidence: Mapping[str, Any], item: str, reason: str,
                blocks: bool) -> Result:
    """``cls(status, evidence, item, reason, blocks)``, filled slot by slot for Result itself: the frozen
    dataclass's __init__ sets each field through object.__setattr__, at twice the cost, and every finding of a
    run starts as one of these (a subclass gets its own __init__)."""
    if cls is not Result:
        return cls(status, evidence, item, reason, blocks)
    set_status, set_evidence, set_item, set_reason, set_blocks = _RESULT_SETTERS
    result = object.__new__(Result)
    set_status(result, status)
    set_evidence(result, evidence)
    set_item(result, item)
    set_reason(result, reason)
    set_blocks(result, blocks)
    return result


Subject: TypeAlias = Tenant | Domain | Mailbox
CheckFunction: TypeAlias = Callable[[Any, RunContext], "Result | Iterable[Result]"]


@dataclass(frozen=True, slots=True)
class CheckMeta:
    """A check's metadata, attached by ``@check`` beside its code."""

    id: str
    title: str
    severity: Severity
    scope: Scope
    requires: tuple[Fact, ...]
    rationale: str
    references: tuple[str, ...] = ()
    remediation: str | None = None
    rests_on: tuple[str, ...] = ()
    """Checks whose failure of the same subject this one would only restate: when one of them fails, this
    check's failure (or error) is recorded ``skipped`` with ``caused_by`` naming that root finding."""


class Check(Protocol):
    """A check function carrying its metadata."""

    meta: CheckMeta

    def __call__(self, subject: Any, ctx: RunContext, /) -> Result | Iterable[Result]: ...


def check(
    *,
    id: str,
    title: str,
    severity: Severity,
    scope: Scope,
    rationale: str,
    requires: Iterable[str | Fact] = (),
    references: Iterable[str] = (),
    remediation: str | None = None,
    rests_on: Iterable[str] = (),
) -> Callable[[CheckFunction], Check]:
    """Attach metadata to a check function; registration itself is the entry point's job."""
    if not _ID.match(id):
        raise RegistryError(f"check id {id!r} is not of the form '<area>.<condition>' in lowercase")
    meta = CheckMeta(
        id=id,
        title=title,
        severity=severity,
        scope=scope,
        requires=tuple(Fact(r) for r in requires),
        rationale=rationale,
        references=tuple(references),
        remediation=remediation,
        rests_on=tuple(rests_on),
    )

    def attach(function: CheckFunction) -> Check:
        function.meta = meta  # type: ignore[attr-defined]
        return function  # type: ignore[return-value]

    return attach


def _package(entry: EntryPoint, unknown: str = "?") -> str:
    """The distribution that registers an entry point (else ``unknown``), named only in errors: reading it parses the
    package's whole metadata."""
    return entry.dist.name if entry.dist is not None else unknown


def per_subject(function: Callable[..., _Derived]) -> Callable[..., _Derived]:
    """Memoize what a function derives from its arguments (a subject, its run context) for the arguments it was
    last called with, compared by identity.

    The evaluate stage runs every check of a subject before the next subject, so what several checks derive from
    one domain (its DMARC tree walk, its DKIM selectors) is worked out once. Model objects are immutable, so the
    same objects give the same result; unlike functools.lru_cache, no argument needs to be hashable (a domain's
    DNS answers are a mapping) and only one result is held. The last arguments stay referenced until the next
    call: pass small objects (a domain, a tenant), not a RunContext, which holds the whole inventory.
    """
    latest: list[tuple[tuple[object, ...], _Derived] | None] = [None]

    @functools.wraps(function)
    def memoized(*args: object) -> _Derived:
        held = latest[0]  # read once: another thread may replace it meanwhile
        if held is not None and len(held[0]) == len(args) and all(map(operator.is_, held[0], args)):
            return held[1]
        value = function(*args)
        latest[0] = (args, value)
        return value

    return memoized


def _load_one(entry: EntryPoint) -> Check:
    module = entry.value.partition(":")[0]
    try:
        loaded = entry.load()
    except Exception as exc:  # any import failure of a plug-in is the user's to see, with its package
        raise RegistryError(
            f"check {entry.name!r} from package {_package(entry, module)!r} cannot be loaded ({entry.value}): "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    meta = getattr(loaded, "meta", None)
    if not isinstance(meta, CheckMeta) or not callable(loaded):
        raise RegistryError(
            f"check {entry.name!r} from package {_package(entry, module)!r} ({entry.value}) is not declared with @check"
        )
    if meta.id != entry.name:
        raise RegistryError(
            f"entry point {entry.name!r} from package {_package(entry, module)!r} names a check whose id is {meta.id!r}"
        )
    return loaded  # type: ignore[no-any-return]


def unknown_check_ids(wanted: Iterable[str], checks: Iterable[Check]) -> list[tuple[str, str]]:
    """Each wanted check id that no loaded check has, with the nearest id suggested (or "")."""
    ids = {c.meta.id for c in checks}
    return [(name, nearest(name, ids)) for name in wanted if name not in ids]


def load_checks(entries: Iterable[EntryPoint] | None = None) -> tuple[Check, ...]:
    """Load every check registered in the ``mailwarden.checks`` entry-point group, sorted by id."""
    if entries is None:
        entries = entry_points(group=GROUP)
    found: dict[str, tuple[Check, EntryPoint]] = {}
    for entry in entries:
        loaded = _load_one(entry)
        if loaded.meta.id in found:
            other, package = _package(found[loaded.meta.id][1]), _package(entry)
            raise RegistryError(
                f"check id {loaded.meta.id!r} is registered twice: by package {other!r} and by package {package!r}"
            )
        found[loaded.meta.id] = (loaded, entry)
    if not found:
        raise RegistryError(
            f"no checks are registered in the {GROUP!r} entry-point group: is mailwarden installed (pip install -e .)?"
        )
    return tuple(found[key][0] for key in sorted(found))

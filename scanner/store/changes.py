"""The change log's derivation: per object (DNS record set, domain, mailbox, forward, invite, exception,
person), each field's before and after, from two stored bodies of the same snapshot object."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

FAILED = "failed"
ANSWER = "answer"

VOLATILE = frozenset({"last_login"})
"""Mailbox fields that are activity, not configuration: kept in the snapshot, left out of the change log."""


@dataclass(frozen=True, slots=True)
class FieldChange:
    """One field of one object, before and after (None before: added; None after: removed)."""

    object_type: str
    object_key: str
    tenant: str
    domain: str
    subject: str
    field: str
    action: str  # added, removed, changed
    before: Any
    after: Any


@dataclass(frozen=True, slots=True)
class _Part:
    """One change-log object carved out of a snapshot body, with its fields flattened."""

    object_type: str
    object_key: str
    tenant: str
    domain: str
    subject: str
    fields: Mapping[str, Any]


def answer_value(answer: Mapping[str, Any]) -> Any:
    """A DNS answer as the change log shows it: sorted records, [] for a definite absence, FAILED for unknown."""
    if answer.get("outcome") == FAILED:
        return FAILED
    if answer.get("outcome") != ANSWER:
        return []
    return sorted(str(r) for r in answer.get("records", ()))


def _mta_sts_mode(dns: Mapping[str, Any]) -> str | None:
    policy = dns.get("mta_sts_policy")
    if isinstance(policy, Mapping) and policy.get("mode") is not None:
        return str(policy["mode"]).lower()
    return None


def _parts(kind: str, key: str, body: Mapping[str, Any]) -> Iterator[_Part]:
    tenant = key.partition("/")[0] if kind != "exception" else ""
    if kind == "domain":
        name = str(body.get("name", key.partition("/")[2]))
        yield _Part("domain", name, tenant, name, name,
                    {"parked": body.get("parked"), "catch_all": body.get("catch_all")})
        dns = body.get("dns") or {}
        fields = {k: answer_value(a) for k, a in sorted((dns.get("answers") or {}).items()) if isinstance(a, Mapping)}
        mode = _mta_sts_mode(dns)
        if mode is not None:
            fields["mta_sts_policy.mode"] = mode
        yield _Part("dns", name, tenant, name, name, fields)
    elif kind == "mailbox":
        address = str(body.get("address", key.partition("/")[2]))
        domain = address.rpartition("@")[2]
        plain = {k: v for k, v in body.items()
                 if k not in ("tenant", "address", "forwards", "invite", "grants", "recovery") and k not in VOLATILE}
        yield _Part("mailbox", address, tenant, domain, address, plain)
        for grant in body.get("grants") or ():
            # last_used moves with every use: a grant changes when it appears, goes, or its reach changes
            yield _Part("grant", f"{address} {grant.get('kind')} {grant.get('id')}", tenant, domain, address,
                        {"client": grant.get("client"), "mail": grant.get("mail"), "scopes": grant.get("scopes")})
        for path in body.get("recovery") or ():
            yield _Part("recovery", f"{address} {path.get('kind')} {path.get('value')}", tenant, domain, address,
                        {"kind": path.get("kind")})
        for forward in body.get("forwards") or ():
            target = str(forward.get("target", ""))
            yield _Part("forward", f"{address} -> {target}", tenant, domain, address,
                        {"mechanism": forward.get("mechanism")})
        invite = body.get("invite")
        if invite:
            yield _Part("invite", address, tenant, domain, address, dict(invite))
    elif kind == "exception":
        subject = str(body.get("subject", key.partition("/")[2]))
        domain = subject.rpartition("@")[2] if "@" in subject else subject
        yield _Part("exception", key, "", domain, subject,
                    {k: v for k, v in body.items() if k not in ("check", "subject")})
    else:
        email = str(body.get("email", key.partition("/")[2]))
        yield _Part(kind, email, tenant, email.rpartition("@")[2], email,
                    {k: v for k, v in body.items() if k != "email"})


def object_changes(kind: str, key: str, before: Mapping[str, Any] | None,
                   after: Mapping[str, Any] | None) -> list[FieldChange]:
    """Field changes between two bodies of one snapshot object (None: the object did not exist).

    A DNS field that is FAILED on either side is unknown, never a change: the caller passes the
    last known answers as ``before`` when the previous run's lookup failed.
    """
    old = {(p.object_type, p.object_key): p for p in _parts(kind, key, before)} if before is not None else {}
    new = {(p.object_type, p.object_key): p for p in _parts(kind, key, after)} if after is not None else {}
    out: list[FieldChange] = []
    for ident in sorted(old.keys() | new.keys()):
        a, b = old.get(ident), new.get(ident)
        part = b or a
        assert part is not None

        def change(name: str, action: str, was: Any, now: Any, part: _Part = part) -> FieldChange:
            return FieldChange(part.object_type, part.object_key, part.tenant, part.domain, part.subject,
                               name, action, was, now)

        if a is None and b is not None:
            out.append(change("", "added", None, _known(b.fields)))
        elif b is None and a is not None:
            out.append(change("", "removed", _known(a.fields), None))
        elif a is not None and b is not None:
            for name in sorted(a.fields.keys() | b.fields.keys()):
                if part.object_type == "dns" and (name not in a.fields or name not in b.fields):
                    continue  # looked up in one run only (a selector added to or dropped from config)
                was, now = a.fields.get(name), b.fields.get(name)
                if was == now or FAILED in (was, now):
                    continue
                out.append(change(name, "changed", was, now))
    return out


def _known(fields: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in fields.items() if v != FAILED}

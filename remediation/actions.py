"""The remediation actions: what each changes, the state it reads, its target state, and the DNS publish job."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import dns.exception
import dns.rdata
import dns.rdataclass
import dns.rdatatype

from scanner.adapters.base import Refused
from scanner.collect import adapter_for
from scanner.config import Config, TenantConfig
from scanner.dns.client import DnsClient
from scanner.dns.wire import render_rdata
from scanner.errors import AdapterError
from scanner.model import Finding, MailboxStatus, Outcome
from scanner.store.database import canonical

DNS_PUBLISH = "dns.publish"
"""The job for DNS findings: publish the record the finding names; verified by querying DNS, never written."""

ACTIONS = ("forwarding.disable", "catchall.disable", "account.suspend", "invite.revoke", "invite.resend",
           "delegate.remove", "grant.revoke")
"""The provider actions, each carried out through the tenant's adapter."""

GRANT_GONE = "a revoked grant cannot be restored; the person grants it again"
IRREVERSIBLE = {"invite.resend": "a sent invitation cannot be unsent", DNS_PUBLISH: "nothing was written to undo",
                "grant.revoke": GRANT_GONE}


class Remedies(Protocol):
    """An adapter's remediation surface (see scanner/adapters/base.py REMEDY_STATES)."""

    async def remedy_read(self, action: str, subject: str, params: Mapping[str, Any]) -> dict[str, Any]:
        """The action's normalized state of the subject, with what an undo would need."""
        ...

    async def remedy_apply(
        self, action: str, subject: str, params: Mapping[str, Any], before: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Make the change; the state read back afterwards."""
        ...

    async def remedy_restore(
        self, action: str, subject: str, params: Mapping[str, Any], before: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Undo the change from the recorded before-state; the state read back afterwards."""
        ...


@dataclass(frozen=True, slots=True)
class Plan:
    """One action on one subject: what a job will do, and the state the finding saw it in."""

    action: str
    tenant: str
    domain: str
    subject: str
    params: Mapping[str, Any] = field(default_factory=dict)
    issued: Mapping[str, Any] = field(default_factory=dict)
    finding: str = ""
    check: str = ""
    run_id: str = ""

    @property
    def state_hash(self) -> str:
        """SHA-256 of the issued state: what a link is bound to."""
        return state_hash(self.issued)


def state_hash(state: Mapping[str, Any]) -> str:
    """SHA-256 of a normalized state's canonical JSON."""
    return hashlib.sha256(canonical(dict(state)).encode("utf-8")).hexdigest()


def _list(value: object) -> list[str]:
    if isinstance(value, list | tuple):
        return [str(v) for v in value]
    return [str(value)] if value not in (None, "") else []


def publish_records(evidence: Mapping[str, object]) -> list[str]:
    """The records a DNS finding says to publish, one text line each (a dict is flattened as key: value)."""
    publish = evidence.get("publish")
    if isinstance(publish, Mapping):
        return [f"{k}: {v}" for k, v in publish.items()]
    return _list(publish)


def plan_for(finding: Finding) -> Plan | None:
    """The job that would fix a failing finding, or None when it has none."""
    base = {"tenant": finding.tenant, "domain": finding.domain, "subject": finding.subject, "finding": finding.id,
            "check": finding.check, "run_id": finding.run_id}
    evidence = finding.evidence
    if finding.remediation is None:
        records = publish_records(evidence)
        if not records:
            return None
        return Plan(DNS_PUBLISH, params={"records": records}, issued={"records": records}, **base)
    action = finding.remediation.action
    if action == "forwarding.disable":
        targets = sorted({t.lower() for t in _list(evidence.get("targets") or evidence.get("added"))})
        return Plan(action, params={"targets": targets, "mechanisms": sorted(_list(evidence.get("mechanisms")))},
                    issued={"forwards": targets}, **base)
    if action == "catchall.disable":
        target = evidence.get("catch_all")
        return Plan(action, issued={"catch_all": str(target).lower() if target else None}, **base)
    if action == "account.suspend":
        return Plan(action, issued={"status": MailboxStatus.ACTIVE.value}, **base)
    if action == "invite.revoke":
        return Plan(action, issued={"invite": True}, **base)
    if action == "invite.resend":
        sent = str(evidence.get("sent") or "")
        return Plan(action, params={"sent": sent}, issued={"invite_sent": _moment(sent)}, **base)
    if action == "delegate.remove":
        delegate = str(evidence.get("delegate") or finding.item).lower()
        return Plan(action, params={"delegate": delegate}, issued={"delegates": [delegate]}, **base)
    if action == "grant.revoke":
        return grant_plan(finding, base)
    return None


def grant_plan(finding: Finding, base: Mapping[str, Any]) -> Plan | None:
    """The revoke of the one grant a finding names (its kind, provider id and app)."""
    evidence = finding.evidence
    grant, kind = str(evidence.get("grant") or ""), str(evidence.get("kind") or "")
    if not grant or not kind:
        return None
    params = {"kind": kind, "grant": grant, "client": str(evidence.get("client") or ""),
              "client_id": str(evidence.get("client_id") or "")}
    return Plan("grant.revoke", params=params, issued={"grants": [grant]}, **base)


def _moment(value: object) -> str | None:
    """An ISO 8601 time normalized (UTC offset form), so the same instant compares equal however written."""
    if not value:
        return None
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).isoformat()
    except ValueError:
        return str(value)


def normalized(action: str, state: Mapping[str, Any]) -> dict[str, Any]:
    """A read state in the form plans are issued in (times normalized)."""
    if action == "invite.resend":
        return {"invite_sent": _moment(state.get("invite_sent"))}
    return dict(state)


def reached(action: str, state: Mapping[str, Any], params: Mapping[str, Any]) -> bool:
    """True when ``state`` is the action's target state."""
    if action == "forwarding.disable":
        return not state.get("forwards")
    if action == "catchall.disable":
        return state.get("catch_all") is None
    if action == "account.suspend":
        return state.get("status") in (MailboxStatus.SUSPENDED.value, MailboxStatus.DISABLED.value)
    if action == "invite.revoke":
        return state.get("invite") is False
    if action == "invite.resend":
        now, was = _moment(state.get("invite_sent")), _moment(params.get("sent"))
        return bool(now and was and datetime.fromisoformat(now) > datetime.fromisoformat(was))
    if action == "delegate.remove":
        return not state.get("delegates")
    if action == "grant.revoke":
        return not state.get("grants")
    if action == DNS_PUBLISH:
        return bool(state.get("live")) and not state.get("missing")
    raise Refused(f"unknown action {action!r}")


def describe(action: str, subject: str, params: Mapping[str, Any]) -> str:
    """The planned change in one sentence."""
    match action:
        case "forwarding.disable":
            return f"Turn off {subject}'s forwards to {', '.join(params.get('targets', ())) or 'outside addresses'}."
        case "catchall.disable":
            return f"Turn off the catch-all of {subject}: mail for unknown recipients bounces."
        case "account.suspend":
            return f"Suspend the account {subject}; its mail is kept."
        case "invite.revoke":
            return f"Revoke the pending invitation of {subject}."
        case "invite.resend":
            return f"Send {subject} a new invitation."
        case "delegate.remove":
            return f"Remove {params.get('delegate', '')}'s delegated access to {subject}."
        case "grant.revoke":
            what = {"oauth": "the OAuth grant of", "app_password": "the app password", "device_password":
                    "the device password"}.get(str(params.get("kind")), "the grant")
            name = params.get("client") or params.get("grant", "")
            return f"Revoke {what} {name} on {subject}; it cannot be restored."
        case "dns.publish":
            return f"Publish in {subject}'s DNS zone: " + "; ".join(params.get("records", ()))
    return f"{action} on {subject}"


def tenant_settings(config: Config, tenant: str) -> TenantConfig:
    """A tenant's config; a name not in the config is refused."""
    for entry in config.tenants:
        if entry.name == tenant:
            return entry
    raise Refused(f"no tenant named {tenant!r} in the config")


def remedies_for(config: Config, tenant: str) -> Remedies:
    """The tenant's adapter as a remediation surface; a DNS-only tenant or an adapter without one is refused."""
    adapter = adapter_for(tenant_settings(config, tenant), config)
    if adapter is None or not hasattr(adapter, "remedy_read"):
        raise Refused(f"tenant {tenant!r} has no provider that can make changes (DNS-only)")
    return adapter  # type: ignore[return-value]


# DNS publish: parse the "name. TYPE rdata" lines a finding names and check them against live DNS.

_LINE = re.compile(r"^\s*(?P<name>\S+?)\.?\s+(?:IN\s+)?(?P<type>[A-Za-z0-9]+)\s+(?P<rdata>.+?)\s*$")


@dataclass(frozen=True, slots=True)
class Expected:
    """One record to publish: owner name, type and the data as DNS would answer it."""

    name: str
    rdtype: str
    data: str


def parse_record(line: str) -> Expected | None:
    """A master-file line as an expected record; None when it is prose or holds a placeholder (<...>)."""
    match = _LINE.match(line)
    if match is None or "<" in line:
        return None
    rdtype = match["type"].upper()
    try:
        kind = dns.rdatatype.from_text(rdtype)
        rdata = dns.rdata.from_text(dns.rdataclass.IN, kind, match["rdata"])
    except (dns.exception.DNSException, ValueError):
        return None
    return Expected(match["name"].lower().rstrip("."), rdtype, _comparable(rdtype, render_rdata(rdata)))


def _comparable(rdtype: str, text: str) -> str:
    return text if rdtype == "TXT" else text.lower().rstrip(".")


async def dns_state(config: Config, records: Sequence[str]) -> dict[str, Any]:
    """Which of the records are live in DNS now; a failed lookup is an error, never "not published"."""
    client = DnsClient(config.dns.nameservers, timeout=config.dns.timeout, concurrency=config.dns.concurrency)
    live: list[str] = []
    missing: list[str] = []
    unverifiable: list[str] = []
    for line in records:
        expected = parse_record(line)
        if expected is None:
            unverifiable.append(line)
            continue
        answer = await client.lookup(expected.name, expected.rdtype)
        if answer.outcome is Outcome.FAILED:
            raise AdapterError(f"DNS lookup {expected.name} {expected.rdtype} failed: {answer.error}")
        seen = {_comparable(expected.rdtype, r) for r in answer.records}
        (live if expected.data in seen else missing).append(line)
    return {"records": list(records), "live": live, "missing": missing, "unverifiable": unverifiable}

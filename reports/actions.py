"""What a finding's remediation action would change, in words a reviewer can check before anyone clicks."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from remediation.actions import DNS_PUBLISH, plan_for, publish_records
from remediation.links import Signer
from scanner.config import RemediationConfig
from scanner.model import Finding, Status


@dataclass(frozen=True, slots=True)
class ActionChange:
    """The change an action would make to one subject: a sentence, and the state before and after."""

    action: str
    summary: str
    before: str
    after: str


def _items(evidence: Mapping[str, object], key: str) -> str:
    value = evidence.get(key)
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value) or "none"
    return "" if value is None else str(value)


def _forwarding(f: Finding) -> tuple[str, str, str]:
    if f.evidence.get("targets"):
        targets = _items(f.evidence, "targets")
        return (f"Turn off the forwards of {f.subject} to outside addresses ({targets}).",
                f"forwards to {targets}", "no forward outside the tenant")
    # drift.forwarding_added names the forwards added since the previous run as "added"
    added = _items(f.evidence, "added") or "the forwards the finding names"
    return (f"Turn off the forwards of {f.subject} added since the previous run ({added}).",
            f"forwards to {added}", "none of these forwards")


def _catchall(f: Finding) -> tuple[str, str, str]:
    target = _items(f.evidence, "catch_all")
    return (f"Stop {f.subject} accepting mail for unknown recipients; such mail is rejected instead of "
            f"delivered to {target}.", f"catch-all to {target}", "no catch-all: unknown recipients bounce")


def _delegate(f: Finding) -> tuple[str, str, str]:
    delegate = _items(f.evidence, "delegate") or f.item
    return (f"Remove {delegate}'s delegated access to {f.subject}.",
            f"{delegate} can read and send as {f.subject}", f"{delegate} has no access")


def _suspend(f: Finding) -> tuple[str, str, str]:
    return (f"Suspend the account {f.subject}: it can no longer sign in or receive new sessions; "
            "its mail is kept.", "active", "suspended")


def _resend(f: Finding) -> tuple[str, str, str]:
    sent = _items(f.evidence, "sent")
    return (f"Send {f.subject} a new setup invitation.", f"invitation pending since {sent}",
            "a fresh invitation sent today")


def _revoke(f: Finding) -> tuple[str, str, str]:
    return (f"Revoke the expired setup invitation of {f.subject}.", "expired invitation outstanding",
            "no invitation")


_DESCRIBERS: Mapping[str, Callable[[Finding], tuple[str, str, str]]] = {
    "forwarding.disable": _forwarding,
    "catchall.disable": _catchall,
    "delegate.remove": _delegate,
    "account.suspend": _suspend,
    "invite.resend": _resend,
    "invite.revoke": _revoke,
}


def action_change(finding: Finding) -> ActionChange | None:
    """What the finding's remediation action would change, or None when it has no action."""
    if finding.remediation is None:
        records = publish_records(finding.evidence) if finding.status is Status.FAIL else []
        if not records:
            return None
        return ActionChange(DNS_PUBLISH, f"Publish in {finding.domain}'s DNS zone (mailwarden verifies it, it never "
                            "writes DNS): " + "; ".join(records), "as seen in the evidence", "the record live in DNS")
    action = finding.remediation.action
    describe = _DESCRIBERS.get(action)
    if describe is None:
        params = ", ".join(f"{k}={v}" for k, v in sorted(finding.remediation.params.items()))
        return ActionChange(action, f"Run {action} on {finding.subject} ({params}).", "as seen in the evidence",
                            "as the action defines")
    return ActionChange(action, *describe(finding))


def link_signer(settings: RemediationConfig | None) -> Signer | None:
    """The link signer when ``[remediation]`` names a base URL and a secret; None otherwise (no links)."""
    if settings is None or not settings.links:
        return None
    return Signer(settings)


def remediation_link(finding: Finding, signer: Signer | None = None) -> str | None:
    """The signed one-click link ``{base_url}/r/{token}`` for a failing finding's job; None without a signer.

    The HTML report's ``<template id="remediation-link">`` and the weekly email's ``remediation_link``
    block render whatever this returns.
    """
    if signer is None or finding.status is not Status.FAIL:
        return None
    plan = plan_for(finding)
    return signer.link(plan) if plan is not None else None

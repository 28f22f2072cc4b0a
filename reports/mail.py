"""The emailed report: a multipart message per recipient list, sent over SMTP with retries, never dropped silently."""

from __future__ import annotations

import smtplib
import ssl
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from pathlib import Path
from typing import Any
from urllib.parse import quote

from reports.actions import link_signer
from reports.rootcause import RootCause, root_causes
from remediation.links import Signer
from reports.csv_out import findings_csv_text
from reports.html import environment
from scanner.config import Config, EmailConfig, EmailList
from scanner.errors import MailwardenError
from scanner.model import Finding, Severity, Status
from scanner.store.database import RunRecord, Store


class DeliveryError(MailwardenError):
    """A message could not be delivered after every attempt."""

    def __init__(self, message: str, attempts: int = 1) -> None:
        super().__init__(message)
        self.attempts = attempts


@dataclass(frozen=True, slots=True)
class Delivery:
    """How sending one list's message went."""

    list_name: str
    recipients: tuple[str, ...]
    delivered: bool
    attempts: int
    problem: str = ""

    @property
    def line(self) -> str:
        """One line for the terminal."""
        if self.delivered:
            return f"sent to list {self.list_name} ({', '.join(self.recipients)})"
        return f"mailwarden: NOT delivered to list {self.list_name} ({', '.join(self.recipients)}): {self.problem}"


def _link(base: str, key: str, value: str) -> str:
    return f"{base}#{key}={quote(value, safe='@.')}" if base else ""


def message_context(
    run: RunRecord, findings: Sequence[Finding], events: dict[str, list[str]], entry: EmailList, email: EmailConfig,
    signer: Signer | None = None, history: bool = True,
) -> dict[str, Any]:
    """What the email says about the list's tenants: summary, what is new, and the root causes with one fix each.

    Only root causes are listed (a finding that follows from another is counted under it), and each fix
    is stated once: the record to publish, or the action and what it changes, with its one-click link
    when ``[remediation]`` has links. Without an earlier run (``history`` false) nothing is called new.
    """
    mine = [f for f in findings if not entry.tenants or f.tenant in entry.tenants]
    by_status = Counter(f.status.value for f in mine)
    causes = root_causes(mine, signer)
    by_severity = Counter(c.severity.value for c in causes)
    fresh = set(events.get("new", ())) | set(events.get("reopened", ())) if history else set()
    new = sorted((f for f in mine if f.id in fresh and f.status is not Status.SKIPPED),
                 key=lambda f: (-f.severity.rank, f.tenant, f.subject, f.check))
    # New causes first within a severity: what changed this week is what the reader has not seen.
    top = sorted(causes, key=lambda c: (-c.severity.rank, not any(f.id in fresh for f in c.findings), -c.reach,
                                        c.first.tenant, c.first.subject, c.first.check))[: email.top]
    numbers = {c.key: i for i, c in enumerate(top, start=1)}
    tenants: dict[str, Counter[str]] = {}
    for f in mine:
        tenants.setdefault(f.tenant, Counter())[f.status.value] += 1

    def fix(cause: RootCause) -> dict[str, Any]:
        f = cause.first
        return {
            "action": cause.change.action if cause.change and not cause.publish else "",
            "change": cause.change.summary if cause.change and not cause.publish else "",
            "records": cause.publish,
            "domain": f.domain,
            "note": cause.note,
            "see": numbers.get(cause.superseded_by, 0),
            "links": cause.links,
            "dependants": sorted({d.check for d in cause.dependants}),
            "items": [g.item for g in cause.findings if g.item],
            "report_link": _link(email.report_url, "finding", f.id),
            "domain_link": _link(email.report_url, "domain", f.domain),
        }

    return {
        "run": run,
        "list": entry,
        "statuses": [s.value for s in Status],
        "severities": [s.value for s in reversed(Severity)],
        "by_status": by_status,
        "by_severity": by_severity,
        "tenants": sorted(tenants.items()),
        "history": history,
        "new": new[:20],
        "new_count": len(new),
        "top": [(c.first, fix(c)) for c in top],
        "failing": len(causes),
        "failing_sources": failing_sources(mine),
        "more": max(len(causes) - len(top), 0),
        "report_url": email.report_url,
        "findings": mine,
    }


FAILING_SOURCES = 5
"""How many failing sources (dmarc.source_failing) the email names, most failed messages first."""


def failing_sources(findings: Sequence[Finding]) -> list[dict[str, Any]]:
    """The sources that fail DMARC in the receivers' reports, most failed messages first."""
    failing = [f for f in findings if f.check == "dmarc.source_failing" and f.status is Status.FAIL]
    failing.sort(key=lambda f: (-int(f.evidence.get("dmarc_fail") or 0), f.domain, f.item))
    return [
        {"domain": f.subject, "tenant": f.tenant, "source_ip": f.item, "ptr": f.evidence.get("ptr") or "no PTR",
         "sender": f.evidence.get("sender") or "unknown", "dmarc_fail": f.evidence.get("dmarc_fail"),
         "messages": f.evidence.get("messages"), "failed": ", ".join(f.evidence.get("failed") or ())}
        for f in failing[:FAILING_SOURCES]
    ]


def build_message(
    run: RunRecord, findings: Sequence[Finding], events: dict[str, list[str]], entry: EmailList, email: EmailConfig,
    signer: Signer | None = None, history: bool = True,
) -> EmailMessage:
    """The multipart message for one list: plain text and HTML alternatives, and findings.csv attached."""
    context = message_context(run, findings, events, entry, email, signer, history)
    env = environment()
    message = EmailMessage()
    message["Subject"] = (f"mailwarden report {run.started.date().isoformat()} for {entry.name}: "
                          f"{context['failing']} failing" + (f", {context['new_count']} new" if history else ""))
    message["From"] = email.sender
    message["To"] = ", ".join(entry.to)
    message["Date"] = format_datetime(run.finished or run.started)
    message["Message-ID"] = make_msgid(domain=email.sender.rpartition("@")[2])
    message["X-Mailwarden-Run"] = run.id
    message.set_content(env.get_template("email.txt.j2").render(**context))
    message.add_alternative(env.get_template("email.html.j2").render(**context), subtype="html")
    message.add_attachment(findings_csv_text(context["findings"]).encode("utf-8"), maintype="text", subtype="csv",
                           filename="findings.csv")
    return message


def _permanent(exc: BaseException) -> bool:
    # RFC 5321 §4.2.1: a 5yz reply is a permanent failure; sending again will not help.
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        return all(500 <= code < 600 for code, _ in exc.recipients.values())
    return isinstance(exc, smtplib.SMTPResponseException) and 500 <= exc.smtp_code < 600


def _describe(exc: BaseException) -> str:
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        return "every recipient refused: " + "; ".join(
            f"{rcpt} ({code} {reply.decode('utf-8', 'replace')})" for rcpt, (code, reply) in exc.recipients.items())
    if isinstance(exc, smtplib.SMTPResponseException):
        reply = exc.smtp_error.decode("utf-8", "replace") if isinstance(exc.smtp_error, bytes) else str(exc.smtp_error)
        return f"the server replied {exc.smtp_code} {reply}"
    if isinstance(exc, ssl.SSLError | ssl.CertificateError):
        return f"TLS failed: {exc}"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    return f"{type(exc).__name__}: {exc}"


def deliver(
    message: EmailMessage, email: EmailConfig, *, password: str | None, ca_bundle: Path | None,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Send one message, retrying transient failures with backoff; returns the attempts made or raises DeliveryError."""
    context = ssl.create_default_context(cafile=str(ca_bundle) if ca_bundle else None)
    attempts = email.retries + 1
    last: BaseException | None = None
    for attempt in range(1, attempts + 1):
        try:
            if email.security == "tls":
                smtp: smtplib.SMTP = smtplib.SMTP_SSL(email.host, email.port, timeout=email.timeout, context=context)
            else:
                smtp = smtplib.SMTP(email.host, email.port, timeout=email.timeout)
            with smtp:
                if email.security == "starttls":
                    smtp.starttls(context=context)  # RFC 3207; raises when the server does not offer it
                if email.username is not None and password is not None:
                    smtp.login(email.username, password)
                refused = smtp.send_message(message)
            if refused:
                # Some recipients took it; sending again would duplicate theirs, so this is reported, not retried.
                raise DeliveryError(f"{email.host}:{email.port} refused " + "; ".join(
                    f"{rcpt} ({code} {reply.decode('utf-8', 'replace')})" for rcpt, (code, reply) in refused.items()),
                    attempt)
            return attempt
        except (smtplib.SMTPException, OSError) as exc:
            last = exc
            if _permanent(exc) or attempt == attempts:
                break
            sleep(email.retry_delay * 2 ** (attempt - 1))
    assert last is not None
    raise DeliveryError(
        f"could not deliver to {email.host}:{email.port} ({email.security}) after {attempt} attempt(s): "
        f"{_describe(last)}",
        attempt,
    )


def send_reports(store: Store, run_id: str, config: Config) -> Iterator[Delivery]:
    """Build and send each list's message for a stored run; yields how each went (failures included)."""
    email = config.email
    if email is None:
        raise DeliveryError(f"{config.source}: email: there is no [email] table")
    run = store.run(run_id)
    findings = store.findings_for_run(run_id)
    events = store.lifecycle_events(run_id)
    password = email.password.resolve() if email.password is not None else None
    ca_bundle = config.resolve_path(email.ca_bundle) if email.ca_bundle is not None else None
    signer = link_signer(config.remediation)
    history = any(r.started <= run.started and r.id != run.id and r.state in ("complete", "partial")
                  for r in store.runs())
    for entry in email.lists:
        message = build_message(run, findings, events, entry, email, signer, history)
        try:
            attempts = deliver(message, email, password=password, ca_bundle=ca_bundle)
        except DeliveryError as exc:
            yield Delivery(entry.name, tuple(entry.to), False, exc.attempts, str(exc))
        else:
            yield Delivery(entry.name, tuple(entry.to), True, attempts)

"""The remediation web app (Starlette): confirmation pages for signed links, job history and undo.

GET never changes anything (mail scanners fetch every link). A change happens only on a POST from the
confirmation page, carrying its CSRF token, by an operator the trusted reverse proxy names.
"""

from __future__ import annotations

import ipaddress
import json
import logging
from contextlib import asynccontextmanager
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import jinja2
import sqlalchemy as sa
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from remediation.actions import DNS_PUBLISH, Plan, describe, dns_state, normalized, plan_for, reached, remedies_for, state_hash
from remediation.audit import entries
from remediation.jobs import DONE, JobError, Jobs, LinkUsed
from remediation.links import LinkClaim, LinkError, Signer
from scanner.adapters.base import Refused
from scanner.config import Config
from scanner.errors import AdapterError, MailwardenError
from scanner.model import Finding
from scanner.store import Store, findings, jobs, run_findings

log = logging.getLogger(__name__)

HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",  # the token is in the URL: never send it on to another site
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'",
}


class _Service:
    """What the handlers share: config, store, signer, jobs, templates and the trusted proxies."""

    def __init__(self, config: Config, store_url: str | None) -> None:
        self.config = config
        self.settings = config.remediation
        self.store = Store(store_url or config.store.url)
        self.signer = Signer(self.settings)
        sink = config.resolve_path(self.settings.audit_sink) if self.settings.audit_sink else None
        self.jobs = Jobs(self.store, config, sink)
        self.proxies = [ipaddress.ip_network(p, strict=False) for p in self.settings.trusted_proxies]
        self.templates = jinja2.Environment(
            loader=jinja2.FileSystemLoader(Path(__file__).resolve().parent / "templates"),
            autoescape=True, undefined=jinja2.StrictUndefined,
        )

    def actor(self, request: Request) -> str:
        """The operator the trusted reverse proxy names; "" when anonymous or from an untrusted address."""
        host = request.client.host if request.client else ""
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return ""
        if not any(address in network for network in self.proxies):
            return ""
        value = request.headers.get(self.settings.identity_header, "").strip()
        return value if value and len(value) <= 200 and value.isprintable() else ""

    def page(self, request: Request, name: str, status: int = 200, **context: Any) -> HTMLResponse:
        html = self.templates.get_template(name).render(
            root=request.scope.get("root_path", ""), actor=self.actor(request), **context)
        return HTMLResponse(html, status_code=status, headers=HEADERS)

    def message(self, request: Request, status: int, heading: str, message: str, tone: str = "bad",
                job_id: str = "") -> HTMLResponse:
        return self.page(request, "message.html.j2", status, heading=heading, message=message, tone=tone,
                         job_id=job_id)

    def finding(self, run_id: str, fingerprint: str) -> Finding | None:
        """One stored finding of one run."""
        from scanner.store import _finding

        query = (sa.select(run_findings, findings.c.first_seen, findings.c.last_seen)
                 .join(findings, findings.c.fingerprint == run_findings.c.fingerprint)
                 .where(run_findings.c.run_id == run_id, run_findings.c.fingerprint == fingerprint))
        with self.store.engine.connect() as conn:
            row = conn.execute(query).one_or_none()
        return _finding(row) if row is not None else None

    def used_by(self, nonce: str) -> str | None:
        """The job a link already started, if any."""
        with self.store.engine.connect() as conn:
            return conn.execute(sa.select(jobs.c.id).where(jobs.c.link == nonce)).scalar()


def _plan(service: _Service, claim: LinkClaim) -> tuple[Finding, Plan]:
    """The finding and plan a link names; refused when they do not agree with the link (tenant, action, state)."""
    finding = service.finding(claim.run_id, claim.finding)
    if finding is None:
        raise LinkError("the finding this link names is not in the store (pruned, or another installation)")
    plan = plan_for(finding)
    if plan is None or finding.tenant != claim.tenant or finding.subject != claim.subject \
            or plan.action != claim.action or plan.state_hash != claim.state_hash:
        raise LinkError("this link does not match its finding (tenant, subject, action or state)")
    return finding, plan


async def _live(service: _Service, plan: Plan) -> dict[str, Any]:
    """The subject's state now: through the adapter, or DNS for a publish job."""
    if plan.action == DNS_PUBLISH:
        return await dns_state(service.config, plan.params.get("records", ()))
    remedies = remedies_for(service.config, plan.tenant)
    read = await remedies.remedy_read(plan.action, plan.subject, plan.params)
    return dict(read["state"])


def _blocked(plan: Plan, live: Mapping[str, Any] | None) -> str:
    """Why nothing can be run from this page, or "" when the change can go ahead."""
    if live is None:
        return "The current state could not be read, so nothing can be run now."
    if plan.action == DNS_PUBLISH:
        return ""
    if reached(plan.action, live, plan.params):
        return "The subject is already in the target state: there is nothing to run."
    if state_hash(normalized(plan.action, live)) != plan.state_hash:
        return ("The live state no longer matches the state this link was issued against; nothing is offered. "
                "Run a new scan and use the new report's link.")
    return ""


def build_app(config: Config, store_url: str | None = None) -> Starlette:
    """The remediation app: ``/r/{token}`` (GET confirm, POST execute), ``/jobs``, ``/jobs/{id}`` and undo."""
    service = _Service(config, store_url)

    async def confirm(request: Request) -> Response:
        token = request.path_params["token"]
        try:
            claim = service.signer.check(token)
            finding, plan = _plan(service, claim)
        except LinkError as exc:
            return service.message(request, 400, "This link cannot be used", str(exc))
        used = service.used_by(claim.nonce)
        if used is not None:
            return service.message(request, 410, "This link was already used",
                                   "Each link starts one job; see what it did.", "warn", used)
        live: dict[str, Any] | None = None
        live_error = ""
        try:
            live = await _live(service, plan)
        except (Refused, AdapterError, MailwardenError) as exc:
            live_error = str(exc)
        records = list(plan.params.get("records", ())) if plan.action == DNS_PUBLISH else []
        return service.page(
            request, "confirm.html.j2", finding=finding, plan=plan, token=token,
            evidence=json.dumps(finding.evidence, indent=2, sort_keys=True, ensure_ascii=False),
            live=json.dumps(live, indent=2, sort_keys=True, ensure_ascii=False), live_error=live_error,
            issued=json.dumps(dict(plan.issued), sort_keys=True, ensure_ascii=False),
            summary=describe(plan.action, plan.subject, plan.params), records=records,
            provider=next((t.provider or "DNS" for t in config.tenants if t.name == plan.tenant), "?"),
            blocked=_blocked(plan, live), header=service.settings.identity_header,
            csrf=service.signer.form_token(token),
            button="Verify the record is published" if plan.action == DNS_PUBLISH else "Make this change",
        )

    async def execute(request: Request) -> Response:
        token = request.path_params["token"]
        actor = service.actor(request)
        if not actor:
            return service.message(request, 403, "Refused",
                                   "Anonymous requests cannot change anything: sign in through the reverse proxy.")
        form = await request.form()
        try:
            service.signer.check_form(str(form.get("csrf", "")), token)
            claim = service.signer.check(token)
            finding, plan = _plan(service, claim)
        except LinkError as exc:
            return service.message(request, 403, "Refused", str(exc))
        try:
            live = await _live(service, plan)
        except (Refused, AdapterError, MailwardenError) as exc:
            return service.message(request, 409, "Nothing was changed", f"The current state could not be read: {exc}")
        blocked = _blocked(plan, live)
        if blocked:
            return service.message(request, 409, "Nothing was changed", blocked, "warn")
        reason = str(form.get("reason", "")).strip()[:500] or f"fix finding {finding.id}"
        try:
            job = service.jobs.create(plan, actor, reason, link=claim.nonce)
        except LinkUsed as exc:
            return service.message(request, 409, "This link was already used", str(exc), "warn",
                                   service.used_by(claim.nonce) or "")
        job = await service.jobs.execute(job.id)
        return RedirectResponse(f"{request.scope.get('root_path', '')}/jobs/{job.id}", status_code=303,
                                headers=HEADERS)

    async def history(request: Request) -> Response:
        return service.page(request, "jobs.html.j2", jobs=service.jobs.history())

    async def job_page(request: Request) -> Response:
        try:
            job = service.jobs.get(request.path_params["job_id"])
        except JobError as exc:
            return service.message(request, 404, "No such job", str(exc))
        undo_refusal = ""
        undo_csrf = ""
        try:
            service.jobs.plan_undo(job.id)
            undo_csrf = service.signer.form_token(f"undo:{job.id}")
        except JobError as exc:
            undo_refusal = str(exc) if job.state == DONE else ""
        undone_by = next((j.id for j in service.jobs.history(finding=job.finding)
                          if j.undo_of == job.id and j.state == DONE), "")
        return service.page(
            request, "job.html.j2", job=job, entries=entries(service.store, job.id),
            before=json.dumps((job.before or {}).get("state"), indent=2, sort_keys=True, ensure_ascii=False),
            after=json.dumps((job.after or {}).get("state"), indent=2, sort_keys=True, ensure_ascii=False),
            undo_csrf=undo_csrf, undo_refusal=undo_refusal, undone_by=undone_by,
        )

    async def undo(request: Request) -> Response:
        job_id = request.path_params["job_id"]
        actor = service.actor(request)
        if not actor:
            return service.message(request, 403, "Refused",
                                   "Anonymous requests cannot change anything: sign in through the reverse proxy.")
        form = await request.form()
        try:
            service.signer.check_form(str(form.get("csrf", "")), f"undo:{job_id}")
        except LinkError as exc:
            return service.message(request, 403, "Refused", str(exc))
        reason = str(form.get("reason", "")).strip()[:500] or f"undo job {job_id}"
        try:
            job = await service.jobs.undo(job_id, actor, reason)
        except JobError as exc:
            return service.message(request, 409, "Nothing was changed", str(exc), "warn", job_id)
        return RedirectResponse(f"{request.scope.get('root_path', '')}/jobs/{job.id}", status_code=303,
                                headers=HEADERS)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        service.store.close()

    routes = [
        Route("/r/{token}", confirm, methods=["GET"]),
        Route("/r/{token}", execute, methods=["POST"]),
        Route("/jobs", history, methods=["GET"]),
        Route("/jobs/{job_id}", job_page, methods=["GET"]),
        Route("/jobs/{job_id}/undo", undo, methods=["POST"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan)

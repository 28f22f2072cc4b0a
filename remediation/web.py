"""The remediation web app (Starlette): confirmation pages for signed links, job history and undo.

GET never changes anything (mail scanners fetch every link). A change happens only on a POST from the
confirmation page, carrying its CSRF token, by an operator the trusted reverse proxy names.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import jinja2
import sqlalchemy as sa
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from remediation.actions import DNS_PUBLISH, Plan, describe, dns_state, normalized, plan_for, reached, remedies_for, state_hash
from remediation.audit import entries
from remediation.jobs import DONE, ChangeBusy, Job, JobError, Jobs, LinkUsed
from remediation.links import LinkClaim, LinkError, Signer
from scanner.adapters.base import Refused
from scanner.config import IDENTITY, Config
from scanner.errors import AdapterError, ConfigError, MailwardenError
from scanner.model import Finding
from remediation.headers import HEADERS, SecurityHeaders
from scanner.store.database import Store, jobs

log = logging.getLogger(__name__)

T = TypeVar("T")
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
ACTOR = "mailwarden.actor"
"""The ASGI scope key the guard stores the request's operator under."""


class IdentityError(MailwardenError):
    """The identity header is duplicated, not UTF-8 or not an email address or user name."""


def identify(scope: Mapping[str, Any], header: str, proxies: Sequence[IPNetwork]) -> str:
    """The operator the trusted reverse proxy names; "" when anonymous or when the peer is not a trusted proxy.

    The peer is the TCP connection's own address (``mailwarden serve`` runs uvicorn with proxy headers off,
    so nothing a client sends can rewrite it). The header must appear once, be UTF-8 and be an email address
    or a user name; anything else from a trusted proxy is an IdentityError (the request is refused).
    """
    client = scope.get("client")
    try:
        address = ipaddress.ip_address(client[0] if client else "")
    except ValueError:
        return ""
    if not any(address in network for network in proxies):
        return ""
    name = header.lower().encode("latin-1")
    values = [value for key, value in scope.get("headers", ()) if key.lower() == name]
    if not values:
        return ""
    if len(values) > 1:
        raise IdentityError(f"the {header} header appears {len(values)} times; the proxy must send exactly one")
    try:
        text = bytes(values[0]).decode("utf-8").strip(" \t")
    except UnicodeDecodeError:
        raise IdentityError(f"the {header} header is not UTF-8") from None
    if not IDENTITY.fullmatch(text):
        raise IdentityError(f"the {header} header is not an email address or a user name")
    return text.lower()


def cross_site(scope: Mapping[str, Any], origin: str) -> str:
    """Why a state-changing request comes from another site ("" when it does not): Fetch Metadata, then Origin."""
    headers = Headers(scope=scope)
    site = headers.get("sec-fetch-site")
    if site is not None and site.strip().lower() not in ("same-origin", "none"):
        return f"the browser says the form was sent from another site (Sec-Fetch-Site: {site[:40]})"
    sent = headers.get("origin")
    if sent is None:
        return ""
    sent = sent.strip().rstrip("/").lower()
    # Fetch §3.1 (serializing a request origin): under Referrer-Policy no-referrer a browser sends
    # "Origin: null" even for its own form, so "null" passes only where Fetch Metadata says same-origin.
    if sent == "null":
        return "" if site is not None and site.strip().lower() == "same-origin" else (
            "the form's origin is hidden (Origin: null) and the browser does not say it is this service's own")
    if sent != origin:
        return "the form was sent from another origin than this service's"
    return ""


def _origin(base_url: str) -> str:
    parts = urlsplit(base_url)
    return f"{parts.scheme}://{parts.netloc}".lower()


class _Guard:
    """ASGI middleware: resolves the operator once per request (400 and logged for a malformed identity) and
    refuses a cross-site POST before any handler runs."""

    def __init__(self, app: Any, service: _Service) -> None:
        self.app = app
        self.service = service

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        service = self.service
        peer = scope["client"][0] if scope.get("client") else ""
        try:
            scope[ACTOR] = identify(scope, service.settings.identity_header, service.proxies)
        except IdentityError as exc:
            log.warning("request refused: %s", exc, extra={"event": "remediation.identity_refused", "peer": peer,
                                                            "path": scope.get("path", "")[:80]})
            await service.message_for(scope, 400, "Refused", str(exc))(scope, receive, send)
            return
        if scope.get("method") not in ("GET", "HEAD", "OPTIONS"):
            why = cross_site(scope, service.origin)
            if why:
                log.warning("cross-site request refused: %s", why, extra={
                    "event": "remediation.cross_site_refused", "peer": peer, "path": scope.get("path", "")[:80]})
                await service.message_for(scope, 403, "Refused", why + "; nothing was changed")(scope, receive, send)
                return
        await self.app(scope, receive, send)


class _Service:
    """What the handlers share: config, store, signer, jobs, templates, the trusted proxies and operator scopes."""

    def __init__(self, config: Config, store_url: str | None) -> None:
        self.config = config
        self.settings = config.remediation
        self.store = Store(store_url or config.store.url)
        self.signer = Signer(self.settings)
        sink = config.resolve_path(self.settings.audit_sink) if self.settings.audit_sink else None
        self.jobs = Jobs(self.store, config, sink)
        self.proxies = [ipaddress.ip_network(p, strict=False) for p in self.settings.trusted_proxies]
        self.origin = _origin(self.settings.base_url)
        known = {t.name for t in config.tenants}
        for identity, tenants in self.settings.operators.items():
            unknown = sorted(set(tenants) - known - {"*"})
            if unknown:
                raise ConfigError(f"{config.source}: remediation.operators: {identity} names no tenant "
                                  f"{', '.join(map(repr, unknown))}")
        self.templates = jinja2.Environment(
            loader=jinja2.FileSystemLoader(Path(__file__).resolve().parent / "templates"),
            autoescape=True, undefined=jinja2.StrictUndefined,
        )

    def actor(self, request: Request) -> str:
        """The operator the guard resolved for this request ("" when anonymous)."""
        return str(request.scope.get(ACTOR, ""))

    def may(self, actor: str, tenant: str) -> bool:
        """True when ``[remediation.operators]`` gives the operator this tenant."""
        tenants = self.settings.operators.get(actor, ()) if actor else ()
        return "*" in tenants or tenant in tenants

    def scope_of(self, actor: str) -> list[str] | None:
        """The operator's tenants (None: every tenant)."""
        tenants = self.settings.operators.get(actor, []) if actor else []
        return None if "*" in tenants else list(tenants)

    def render(self, scope: Mapping[str, Any], name: str, status: int = 200, **context: Any) -> HTMLResponse:
        html = self.templates.get_template(name).render(
            root=scope.get("root_path", ""), actor=str(scope.get(ACTOR, "")), **context)
        return HTMLResponse(html, status_code=status, headers=HEADERS)

    def page(self, request: Request, name: str, status: int = 200, **context: Any) -> HTMLResponse:
        return self.render(request.scope, name, status, **context)

    def message_for(self, scope: Mapping[str, Any], status: int, heading: str, message: str, tone: str = "bad",
                    job_id: str = "") -> HTMLResponse:
        return self.render(scope, "message.html.j2", status, heading=heading, message=message, tone=tone,
                           job_id=job_id)

    def message(self, request: Request, status: int, heading: str, message: str, tone: str = "bad",
                job_id: str = "") -> HTMLResponse:
        return self.message_for(request.scope, status, heading, message, tone, job_id)

    def finding(self, run_id: str, fingerprint: str) -> Finding | None:
        """One stored finding of one run."""
        return self.store.finding(run_id, fingerprint)

    def used_by(self, nonce: str) -> str | None:
        """The job a link already started, if any."""
        with self.store.engine.connect() as conn:
            return conn.execute(sa.select(jobs.c.id).where(jobs.c.link == nonce)).scalar()


async def _off_loop(work: Callable[..., Awaitable[T]], *args: Any) -> T:
    """Run a coroutine (adapter calls, store writes, file locks) in a worker thread with its own event loop,
    so nothing it blocks on holds up other requests or /healthz."""
    return await run_in_threadpool(lambda: asyncio.run(work(*args)))  # type: ignore[arg-type]


SIGN_IN = ("You are not signed in: the remediation service shows and changes nothing without the operator the "
           "reverse proxy names.")


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
        actor = service.actor(request)
        if not actor:
            return service.message(request, 403, "Sign in first", SIGN_IN)
        try:
            claim = service.signer.check(token)
            if not service.may(actor, claim.tenant):
                raise LinkError("this link is for a tenant outside your scope ([remediation.operators])")
            finding, plan = await run_in_threadpool(_plan, service, claim)
        except LinkError as exc:
            return service.message(request, 400, "This link cannot be used", str(exc))
        used = await run_in_threadpool(service.used_by, claim.nonce)
        if used is not None:
            return service.message(request, 410, "This link was already used",
                                   "Each link starts one job; see what it did.", "warn", used)
        live: dict[str, Any] | None = None
        live_error = ""
        try:
            live = await _off_loop(_live, service, plan)
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
            csrf=service.signer.form_token(token, actor),
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
            service.signer.check_form(str(form.get("csrf", "")), token, actor)
            claim = service.signer.check(token)
            if not service.may(actor, claim.tenant):
                raise LinkError("this link is for a tenant outside your scope ([remediation.operators])")
            finding, plan = await run_in_threadpool(_plan, service, claim)
        except LinkError as exc:
            return service.message(request, 403, "Refused", str(exc))
        try:
            live = await _off_loop(_live, service, plan)
        except (Refused, AdapterError, MailwardenError) as exc:
            return service.message(request, 409, "Nothing was changed", f"The current state could not be read: {exc}")
        blocked = _blocked(plan, live)
        if blocked:
            return service.message(request, 409, "Nothing was changed", blocked, "warn")
        reason = str(form.get("reason", "")).strip()[:500] or f"fix finding {finding.id}"
        try:
            job = await run_in_threadpool(lambda: service.jobs.create(plan, actor, reason, link=claim.nonce))
        except LinkUsed as exc:
            return service.message(request, 409, "This link was already used", str(exc), "warn",
                                   await run_in_threadpool(service.used_by, claim.nonce) or "")
        except ChangeBusy as exc:
            return service.message(request, 409, "Nothing was started", str(exc), "warn", exc.job_id)
        except MailwardenError as exc:  # e.g. no audit key configured: nothing runs without its audit entry
            return service.message(request, 503, "Nothing was started", str(exc))
        job = await _off_loop(service.jobs.execute, job.id)
        return RedirectResponse(f"{request.scope.get('root_path', '')}/jobs/{job.id}", status_code=303,
                                headers=HEADERS)

    async def history(request: Request) -> Response:
        actor = service.actor(request)
        if not actor:
            return service.message(request, 403, "Sign in first", SIGN_IN)
        tenants = service.scope_of(actor)
        found = await run_in_threadpool(service.jobs.history)
        return service.page(request, "jobs.html.j2",
                            jobs=[j for j in found if tenants is None or j.tenant in tenants])

    async def scoped_job(request: Request, actor: str) -> Job | None:
        """The job the path names, when it is in the operator's scope (else None: it is not shown to exist)."""
        try:
            job = await run_in_threadpool(service.jobs.get, request.path_params["job_id"])
        except JobError:
            return None
        return job if service.may(actor, job.tenant) else None

    async def job_page(request: Request) -> Response:
        actor = service.actor(request)
        if not actor:
            return service.message(request, 403, "Sign in first", SIGN_IN)
        job = await scoped_job(request, actor)
        if job is None:
            return service.message(request, 404, "No such job", "There is no such job in your scope.")
        undo_refusal = ""
        undo_csrf = ""
        try:
            await run_in_threadpool(service.jobs.plan_undo, job.id)
            difference = await _off_loop(service.jobs.undo_difference, job.id)
            if difference:
                undo_refusal = ("the subject changed after this job, so an undo would overwrite a later change; "
                                f"nothing is offered. {difference}")
            else:
                undo_csrf = service.signer.form_token(f"undo:{job.id}", actor)
        except (JobError, Refused, AdapterError) as exc:
            undo_refusal = str(exc) if job.state == DONE else ""
        except MailwardenError as exc:
            undo_refusal = f"the live state could not be read: {exc}" if job.state == DONE else ""
        undone_by = next((j.id for j in await run_in_threadpool(lambda: service.jobs.history(finding=job.finding))
                          if j.undo_of == job.id and j.state == DONE), "")
        return service.page(
            request, "job.html.j2", job=job, entries=await run_in_threadpool(entries, service.store, job.id),
            before=json.dumps((job.before or {}).get("state"), indent=2, sort_keys=True, ensure_ascii=False),
            after=json.dumps((job.after or {}).get("state"), indent=2, sort_keys=True, ensure_ascii=False),
            undo_csrf=undo_csrf, undo_refusal=undo_refusal, undone_by=undone_by,
        )

    async def undo(request: Request) -> Response:
        actor = service.actor(request)
        if not actor:
            return service.message(request, 403, "Refused",
                                   "Anonymous requests cannot change anything: sign in through the reverse proxy.")
        job_found = await scoped_job(request, actor)
        if job_found is None:
            return service.message(request, 404, "No such job", "There is no such job in your scope.")
        job_id = job_found.id
        form = await request.form()
        try:
            service.signer.check_form(str(form.get("csrf", "")), f"undo:{job_id}", actor)
        except LinkError as exc:
            return service.message(request, 403, "Refused", str(exc))
        reason = str(form.get("reason", "")).strip()[:500] or f"undo job {job_id}"
        try:
            plan = await run_in_threadpool(service.jobs.plan_undo, job_id)
            created = await run_in_threadpool(lambda: service.jobs.create(plan, actor, reason, undo_of=job_id))
        except ChangeBusy as exc:
            return service.message(request, 409, "Nothing was changed", str(exc), "warn", exc.job_id)
        except JobError as exc:
            return service.message(request, 409, "Nothing was changed", str(exc), "warn", job_id)
        except MailwardenError as exc:
            return service.message(request, 503, "Nothing was changed", str(exc), "bad", job_id)
        job = await _off_loop(service.jobs.execute, created.id)
        return RedirectResponse(f"{request.scope.get('root_path', '')}/jobs/{job.id}", status_code=303,
                                headers=HEADERS)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            await _off_loop(service.jobs.recover)
        except MailwardenError as exc:
            log.error("jobs left pending or running were not recovered: %s", exc,
                      extra={"event": "remediation.recover_failed"})
        yield
        service.store.close()

    routes = [
        Route("/r/{token}", confirm, methods=["GET"]),
        Route("/r/{token}", execute, methods=["POST"]),
        Route("/jobs", history, methods=["GET"]),
        Route("/jobs/{job_id}", job_page, methods=["GET"]),
        Route("/jobs/{job_id}/undo", undo, methods=["POST"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan,
                     middleware=[Middleware(SecurityHeaders), Middleware(_Guard, service=service)])

"""TrekMail's REST API v1 on loopback, built from the contract notes (providers-trekmail.md).

Bearer ops token with fine scopes (403 ``insufficient_scope``), ``page``/``per_page`` listings with rows in
``data`` (paging ``meta`` on or off), 429 ``rate_limited`` with ``Retry-After`` (or only
``error.retry_after``), the ``{"error": {code, message, hint, request_id, retryable}}`` envelope, and
``Idempotency-Key`` on writes: replay with ``x-idempotency-replayed``, 409 ``idempotency_mismatch``,
422 ``missing_idempotency_key``. Every write changes the state so a job can be verified by reading back.
"""

from __future__ import annotations

import hashlib
import threading
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from scanner.model import (
    Fact, Forward, ForwardMechanism, Grant, GrantKind, MailAccess, Mailbox, MailboxKind, MailboxStatus,
)
from tests.contract.estate import NOW, Estate
from tests.contract.server import ContractServer, Reply, Request

TOKEN = "tm_live_7c1e0f9a2b3d4c5e6f708192a3b4c5d6"
PREFIX = "/api/v1"
READ_SCOPES = frozenset({
    "account:read", "domains:read", "domains:dns:read", "mailboxes:read", "mailboxes:forwarding:read",
    "mailboxes:rules:read", "drive:devices:read",
})
WRITE_SCOPES = frozenset({"mailboxes:forwarding:write", "mailboxes:rules:write", "domains:write", "mailboxes:write",
                          "drive:devices:write"})
STATUS_SPELLING = {MailboxStatus.ACTIVE: "active", MailboxStatus.SUSPENDED: "login_suspended",
                   MailboxStatus.DISABLED: "paused", MailboxStatus.PENDING: "setup_pending"}


def stamp(when: datetime) -> str:
    """A time as Laravel serialises it: ISO 8601 with microseconds and a Z."""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def error(status: int, code: str, message: str, *, retryable: bool = False, **extra: Any) -> Reply:
    """TrekMail's error envelope: the five keys the live tests assert, plus any extra inside ``error``."""
    body = {"code": code, "message": message, "hint": "see https://trekmail.net/docs", "request_id":
            f"req_{uuid.uuid4().hex[:12]}", "retryable": retryable, **extra}
    return Reply(status, {"error": body})


@dataclass
class TrekState:
    """What the TrekMail account holds, and switches for what the notes leave uncertain."""

    domains: dict[int, dict[str, Any]] = field(default_factory=dict)
    forwarding_addresses: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    mailboxes: dict[int, dict[str, Any]] = field(default_factory=dict)
    devices: list[dict[str, Any]] = field(default_factory=list)
    scopes: set[str] = field(default_factory=lambda: set(READ_SCOPES | WRITE_SCOPES))
    page_meta: bool = True  # Laravel's meta/links beside data, or a bare data list
    catch_all_on_domain: bool = True  # GET /domains/{id} carries catch_all, or says nothing of it
    pending_rows: bool = True  # setup-pending mailboxes appear in the mailbox list
    app_passwords_off: bool = False  # the platform feature is off: 404 not_found on every list
    retry_after_header: bool = True  # 429 with Retry-After, or only error.retry_after in the body
    require_key: bool = True  # writes without Idempotency-Key answer 422 missing_idempotency_key
    status_spelling: dict[MailboxStatus, str] = field(default_factory=lambda: dict(STATUS_SPELLING))
    idempotency: dict[str, tuple[str, Reply]] = field(default_factory=dict)
    writes: list[tuple[str, str, str]] = field(default_factory=list)  # (method, path, idempotency key)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def mailbox_by_email(self, email: str) -> dict[str, Any] | None:
        """A mailbox record by address."""
        return next((m for m in self.mailboxes.values() if m["email"] == email), None)


def _page(state: TrekState, rows: list[Any], request: Request) -> Reply:
    try:
        page = max(1, int(request.query.get("page", "1")))
        per_page = int(request.query.get("per_page", "25"))
    except ValueError:
        return error(422, "validation_error", "page and per_page must be integers")
    if not 1 <= per_page <= 100:
        return error(422, "validation_error", "per_page must be between 1 and 100")
    last = max(1, -(-len(rows) // per_page))
    body: dict[str, Any] = {"data": rows[(page - 1) * per_page: page * per_page]}
    if state.page_meta:
        body["meta"] = {"current_page": page, "last_page": last, "per_page": per_page, "total": len(rows)}
        body["links"] = {"next": f"{PREFIX}/x?page={page + 1}" if page < last else None}
    return Reply(200, body)


def _mailbox_view(state: TrekState, box: dict[str, Any]) -> dict[str, Any]:
    view = {k: v for k, v in box.items() if k not in ("forwarding", "rules", "sieve", "members", "app_passwords",
                                                        "status_model")}
    view["status"] = state.status_spelling[box["status_model"]]
    view["app_passwords_count"] = sum(1 for p in box["app_passwords"] if p["active"])
    return view


def trek_app(state: TrekState) -> Any:
    """The request handler: token and scopes, reads, and writes that change ``state``."""

    def need(scope: str) -> Reply | None:
        if scope not in state.scopes:
            return error(403, "insufficient_scope", f"This token is missing the {scope} scope.", required_scope=scope)
        return None

    def app(request: Request) -> Reply:
        if request.bearer != TOKEN:
            return error(401, "unauthenticated", "Missing or invalid API token.")
        if not request.path.startswith(PREFIX + "/"):
            return error(404, "not_found", "Route not found.")
        parts = [unquote(p) for p in request.path[len(PREFIX) + 1:].split("/")]
        with state.lock:
            if request.method == "GET":
                return read(parts, request)
            return idempotent(request, parts)

    def read(parts: list[str], request: Request) -> Reply:
        if parts == ["domains"]:
            return need("domains:read") or _page(state, [
                {k: v for k, v in d.items() if k != "catch_all"} for d in state.domains.values()], request)
        if parts[0] == "domains" and len(parts) >= 2 and parts[1].isdigit() and int(parts[1]) in state.domains:
            domain = state.domains[int(parts[1])]
            if len(parts) == 2:
                view = dict(domain) if state.catch_all_on_domain else {
                    k: v for k, v in domain.items() if k != "catch_all"}
                return need("domains:read") or Reply(200, {"data": view})
            if parts[2:] == ["forwarding-addresses"]:
                return need("domains:read") or Reply(200, {
                    "data": state.forwarding_addresses.get(domain["id"], []), "limits": {"max": 50},
                    "delivery": {"active": True, "requires_plan": None}})
        if parts == ["mailboxes"]:
            rows = [_mailbox_view(state, m) for m in state.mailboxes.values()
                    if state.pending_rows or m["status_model"] is not MailboxStatus.PENDING]
            search = request.query.get("search")
            if search:
                rows = [r for r in rows if search.lower() in r["email"]]
            return need("mailboxes:read") or _page(state, rows, request)
        if parts[0] == "mailboxes" and len(parts) >= 2 and parts[1].isdigit() and int(parts[1]) in state.mailboxes:
            box = state.mailboxes[int(parts[1])]
            rest = parts[2:]
            if not rest:
                return need("mailboxes:read") or Reply(200, {"data": _mailbox_view(state, box)})
            if rest == ["forwarding"]:
                return need("mailboxes:forwarding:read") or Reply(200, {"data": dict(box["forwarding"],
                                                                                      destination_limit=15)})
            if rest == ["rules"]:
                return need("mailboxes:rules:read") or Reply(200, {"data": box["rules"]})
            if rest == ["sieve"]:
                return need("mailboxes:rules:read") or Reply(200, {"data": {"script": box["sieve"]}})
            if rest == ["members"]:
                if box["type"] != "shared":
                    return error(422, "validation_error", "Only shared mailboxes have members.")
                return need("mailboxes:read") or Reply(200, {"data": box["members"]})
            if rest == ["app-passwords"]:
                if state.app_passwords_off:
                    return error(404, "not_found", "App passwords are not available.")
                rows = box["app_passwords"]
                return need("mailboxes:read") or Reply(200, {
                    "client_auth_mode": "password_or_app_password", "limit": 25,
                    "active_count": sum(1 for p in rows if p["active"]), "data": rows})
        if parts == ["drive", "devices"]:
            return need("drive:devices:read") or Reply(200, {"data": state.devices})
        return error(404, "not_found", "Resource not found.")

    def idempotent(request: Request, parts: list[str]) -> Reply:
        key = request.headers.get("idempotency-key")
        if not key:
            if state.require_key:
                return error(422, "missing_idempotency_key", "Send an Idempotency-Key header with this request.")
            return write(request, parts)
        digest = hashlib.sha256(request.method.encode() + request.path.encode() + request.body).hexdigest()
        if key in state.idempotency:
            seen, reply = state.idempotency[key]
            if seen != digest:
                return error(409, "idempotency_mismatch", "This Idempotency-Key was used with a different request.")
            return Reply(reply.status, reply.body, {**reply.headers, "x-idempotency-replayed": "true"})
        state.writes.append((request.method, request.path, key))
        reply = write(request, parts)
        if reply.status < 500:
            state.idempotency[key] = (digest, reply)
        return reply

    def write(request: Request, parts: list[str]) -> Reply:
        body = request.json() or {}
        if parts[0] == "domains" and len(parts) >= 3 and parts[1].isdigit() and int(parts[1]) in state.domains:
            domain = state.domains[int(parts[1])]
            if request.method == "PATCH" and parts[2:] == ["catch-all"]:
                denied = need("domains:write")
                if denied:
                    return denied
                enabled = bool(body.get("enabled"))
                destination = body.get("destination", domain["catch_all"]["destination"])
                if enabled and not destination:
                    return error(422, "validation_error", "A destination is required to enable the catch-all.")
                domain["catch_all"] = {"enabled": enabled, "destination": destination if enabled else None}
                return Reply(200, {"data": domain["catch_all"]})
            if request.method == "PATCH" and len(parts) == 4 and parts[2] == "forwarding-addresses":
                denied = need("domains:write")
                if denied:
                    return denied
                for row in state.forwarding_addresses.get(domain["id"], []):
                    if str(row["id"]) == parts[3]:
                        row["is_active"] = bool(body.get("is_active"))
                        return Reply(200, {"data": row})
        if parts[0] == "mailboxes" and len(parts) > 1:
            ident, _, action = (parts[1] if len(parts) > 1 else "").partition(":")
            box = state.mailboxes.get(int(ident)) if ident.isdigit() else None
            if box is None:
                return error(404, "not_found", "Mailbox not found.")
            rest = parts[2:]
            if request.method == "POST" and action in ("suspend-login", "resume-login") and not rest:
                denied = need("mailboxes:write")
                if denied:
                    return denied
                if box["type"] == "shared":
                    return error(422, "validation_error", "Shared mailboxes have no sign-in; suspend their members.")
                if action == "suspend-login":
                    box["status_model"] = MailboxStatus.SUSPENDED
                    for password in box["app_passwords"]:  # suspending revokes every app password
                        if password["active"]:
                            password.update(active=False, revoked_at=stamp(NOW), revoked_reason="login_suspended")
                elif box["status_model"] is MailboxStatus.SUSPENDED:
                    box["status_model"] = MailboxStatus.ACTIVE
                return Reply(200, {"data": _mailbox_view(state, box)})
            if request.method == "PUT" and rest == ["forwarding"]:
                denied = need("mailboxes:forwarding:write")
                if denied:
                    return denied
                targets = body.get("targets", box["forwarding"]["targets"])
                if body.get("enabled") and not targets:
                    return error(422, "validation_error", "At least one target is required.")
                box["forwarding"] = {"enabled": bool(body.get("enabled")), "targets": list(targets),
                                     "keep_copy": bool(body.get("keep_copy", True))}
                return Reply(200, {"data": box["forwarding"]})
            if request.method == "PUT" and len(rest) == 2 and rest[0] == "rules":
                denied = need("mailboxes:rules:write")
                if denied:
                    return denied
                for index, rule in enumerate(box["rules"]):
                    if str(rule["id"]) == rest[1]:
                        if not all(k in body for k in ("match_type", "conditions", "actions")):
                            return error(422, "validation_error", "match_type, conditions and actions are required.")
                        box["rules"][index] = dict(body, id=rule["id"])
                        return Reply(200, {"data": box["rules"][index]})
                return error(404, "not_found", "Rule not found.")
            if request.method == "DELETE" and len(rest) == 2 and rest[0] == "app-passwords":
                denied = need("mailboxes:write")
                if denied:
                    return denied
                for password in box["app_passwords"]:
                    if str(password["id"]) == rest[1]:
                        if not password["active"]:
                            return error(409, "conflict", "This app password is already revoked.")
                        password.update(active=False, revoked_at=stamp(NOW), revoked_reason="api")
                        return Reply(200, {"data": password})
                return error(404, "not_found", "App password not found.")
        if parts[:2] == ["drive", "devices"] and len(parts) == 3 and request.method == "DELETE":
            denied = need("drive:devices:write")
            if denied:
                return denied
            for device in state.devices:
                if str(device["id"]) == parts[2]:
                    device["active"] = False  # a no-op when already revoked
                    return Reply(200, {"data": device})
            return error(404, "not_found", "Device not found.")
        return error(404, "not_found", "Resource not found.")

    return app


def throttled(state: TrekState) -> Any:
    """429 ``rate_limited``: with Retry-After, or (switch) only ``error.retry_after`` in the body."""

    def reply(request: Request) -> Reply:
        answer = error(429, "rate_limited", "Too many requests.", retryable=True, retry_after=1)
        if state.retry_after_header:
            answer.headers["Retry-After"] = "1"
        return answer

    return reply


APP_PASSWORDS = {"ana@acme.example": [("Thunderbird", True), ("Old phone", False)]}
"""App passwords the published estate holds (label, still active), so the adapter has one of each to read."""
DEVICE = ("ana@acme.example", "Laptop sync")
"""A Drive sync-device password bound to a mailbox; one more bound to no mailbox is published too."""


def state_for(estate: Estate) -> TrekState:
    """How TrekMail shows the estate.

    Auto-forwards are mailbox forwarding; inbox rules are filters with a ``redirect_copy`` action (and the
    same target in the raw sieve, which must not count twice); shared mailboxes list their owners as
    members; a pending mailbox is a setup-pending row. Extra records: another client's domain on the
    same account, a filter that only files mail, a domain forwarding address with an outside recipient
    (an ALIAS subject) and an internal one (left out), one active and one revoked app password, a bound
    and an account-wide Drive device.
    """
    state = TrekState()
    ids: dict[str, int] = {}
    for number, name in enumerate((*estate.domains, "other-client.example"), start=1):
        target = estate.catch_all.get(name)
        state.domains[number] = {"id": number, "name": name, "status": "active" if number == 1 else "pending_dns",
                                 "catch_all": {"enabled": target is not None, "destination": target}}
        ids[name] = number
    owners = {b.address: b.owners for b in estate.mailboxes}
    for number, box in enumerate(estate.mailboxes, start=101):
        auto = [t for t, m in box.forwards if m is ForwardMechanism.AUTO_FORWARD]
        rules = [t for t, m in box.forwards if m in (ForwardMechanism.INBOX_RULE, ForwardMechanism.REDIRECT)]
        domain = box.address.partition("@")[2]
        record: dict[str, Any] = {
            "id": number, "email": box.address, "domain_id": ids[domain], "domain": domain,
            "type": "shared" if box.kind is MailboxKind.SHARED else "regular", "status_model": box.status,
            "used_mb": 12, "quota_mb": 10240, "allocation_mb": 10240, "is_pooled": False,
            "client_auth_mode": "password_or_app_password",
            "forwarding": {"enabled": bool(auto), "targets": auto, "keep_copy": True},
            "rules": [{"id": 1, "name": "Junk", "enabled": True, "match_type": "any", "stop": False,
                       "conditions": [{"field": "subject", "operator": "contains", "value": "[SPAM]"}],
                       "actions": [{"type": "fileinto", "value": "Junk"}]}],
            "sieve": "", "members": [], "app_passwords": [],
        }
        for index, target in enumerate(rules, start=2):
            record["rules"].append({"id": index, "name": f"to {target}", "enabled": True, "match_type": "all",
                                    "stop": False, "conditions": [], "actions": [{"type": "redirect_copy",
                                                                                 "value": target}]})
            record["sieve"] += f'require ["copy"];\nif true {{ redirect :copy "{target}"; }}\n'
        state.mailboxes[number] = record
    for record in state.mailboxes.values():
        for position, owner in enumerate(owners[record["email"]], start=1):
            member = state.mailbox_by_email(owner)
            record["members"].append({"id": record["id"] * 10 + position, "member_mailbox_id":
                                      member["id"] if member else None, "email": owner, "can_read": True,
                                      "can_send": True})
    for address, passwords in APP_PASSWORDS.items():
        record = state.mailbox_by_email(address)
        if record is None:
            continue
        for position, (label, active) in enumerate(passwords, start=1):
            record["app_passwords"].append({
                "id": record["id"] * 100 + position, "name": label, "created_at": stamp(NOW.replace(month=1)),
                "created_via": "dashboard", "last_used_at": stamp(NOW) if active else None,
                "last_used_ip": "127.0.0.1" if active else None, "last_used_protocol": "imap" if active else None,
                "revoked_at": None if active else stamp(NOW.replace(month=2)),
                "revoked_reason": None if active else "user", "active": active})
    bound = state.mailbox_by_email(DEVICE[0])
    state.devices = [
        {"id": 501, "label": DEVICE[1], "scopes": ["drive:read", "drive:write"], "mailbox_id": bound["id"] if bound
         else None, "mailbox_email": DEVICE[0] if bound else None, "created_at": stamp(NOW.replace(month=3)),
         "last_used_at": None, "active": True, "server_url": "https://dav.trekmail.net/"},
        {"id": 502, "label": "Office NAS", "scopes": ["drive:read"], "mailbox_id": None, "mailbox_email": None,
         "created_at": stamp(NOW.replace(month=3)), "last_used_at": None, "active": True,
         "server_url": "https://dav.trekmail.net/"},
    ]
    first = ids[estate.domains[0]]
    state.forwarding_addresses[first] = [
        {"id": 71, "local_part": "sales", "address": f"sales@{estate.domains[0]}",
         "recipients": [estate.mailboxes[0].address, "sales@partner.test"], "is_active": True},
        {"id": 72, "local_part": "hello", "address": f"hello@{estate.domains[0]}",
         "recipients": [estate.mailboxes[0].address], "is_active": True},
    ]
    state.forwarding_addresses[ids["other-client.example"]] = [
        {"id": 73, "local_part": "carl", "address": "carl@other-client.example", "recipients": ["carl@gmail.test"],
         "is_active": True}]
    state.mailboxes[999] = dict(state.mailboxes[101], id=999, email="carl@other-client.example",
                                domain_id=ids["other-client.example"], domain="other-client.example",
                                app_passwords=[], members=[])
    return state


def _when(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


class TrekMailHarness:
    """The shared suite's view of TrekMail: its contract server and what the adapter must read from it."""

    provider = "trekmail"
    capabilities = frozenset({Fact.MAILBOX_LIST, Fact.MAILBOX_FORWARDS, Fact.MAILBOX_DELEGATES,
                              Fact.DOMAIN_CATCH_ALL, Fact.MAILBOX_APP_PASSWORDS})
    list_path = PREFIX + "/mailboxes"
    token_path = ""  # a static ops token

    def serve(self, estate: Estate, *, page_size: int) -> ContractServer:
        """TrekMail pages at the client's ``per_page``; ``page_size`` is not the server's to choose."""
        state = state_for(estate)
        server = ContractServer(trek_app(state), throttled=throttled(state))
        server.state = state  # type: ignore[attr-defined]  # tests flip its switches
        return server.start()

    def tenant_toml(self, server: ContractServer, estate: Estate, workdir: Path) -> str:
        """The tenant with its ops token in a file and the server as its origin; small pages so paging shows."""
        (workdir / "trekmail.token").write_text(TOKEN + "\n", encoding="utf-8")
        domains = ", ".join(f'"{d}"' for d in estate.domains)
        return (
            f'\n[[tenants]]\nname = "{estate.tenant}"\nprovider = "trekmail"\n'
            f'credentials = "file:{workdir / "trekmail.token"}"\ndomains = [{domains}]\n'
            f'[tenants.trekmail]\nurl = "{server.url}"\nper_page = 4\n'
        )

    def secret_values(self, workdir: Path) -> list[str]:
        """The ops token."""
        return [TOKEN]

    def expire_tokens(self, server: ContractServer) -> None:
        """An ops token lives until its expiry date; the tests do not reach it."""

    def expected(self, estate: Estate) -> dict[str, Mailbox]:
        """TrekMail's reading of the estate: no created time or last login; members of a shared mailbox as its
        delegates (a user mailbox's delegate cannot be shown); auto-forwards as AUTO_FORWARD, filter redirects
        as INBOX_RULE; the active app password and the bound device password as grants."""
        state = state_for(estate)
        result = {}
        for record in state.mailboxes.values():
            if record["email"].endswith("@other-client.example"):
                continue
            box = next(b for b in estate.mailboxes if b.address == record["email"])
            forwards = [Forward(t, ForwardMechanism.AUTO_FORWARD) for t in record["forwarding"]["targets"]]
            forwards += [Forward(a["value"], ForwardMechanism.INBOX_RULE) for r in record["rules"]
                         for a in r["actions"] if a["type"] in ("redirect", "redirect_copy")]
            grants = [Grant(GrantKind.APP_PASSWORD, str(p["id"]), p["name"], MailAccess.FULL, ("imap",),
                            created=_when(p["created_at"]), last_used=_when(p["last_used_at"]))
                      for p in record["app_passwords"] if p["active"]]
            grants += [Grant(GrantKind.DEVICE_PASSWORD, str(d["id"]), d["label"], MailAccess.NONE, tuple(d["scopes"]),
                             created=_when(d["created_at"])) for d in state.devices if d["mailbox_id"] == record["id"]]
            result[box.address] = Mailbox(
                tenant=estate.tenant, address=box.address, kind=box.kind if box.kind is MailboxKind.SHARED else
                MailboxKind.USER, status=box.status, display_name="",
                delegates=tuple(m["email"] for m in record["members"]), forwards=tuple(forwards),
                grants=tuple(grants))
        sales = f"sales@{estate.domains[0]}"
        result[sales] = Mailbox(tenant=estate.tenant, address=sales, kind=MailboxKind.ALIAS,
                                forwards=(Forward("sales@partner.test", ForwardMechanism.ALIAS),))
        return result

    def expected_catch_all(self, estate: Estate) -> dict[str, str | None]:
        """The catch-all as GET /domains/{id} carries it."""
        return dict(estate.catch_all)


HARNESS = TrekMailHarness()


def with_state(server: ContractServer) -> TrekState:
    """The state behind a server started by ``TrekMailHarness.serve``."""
    state: TrekState = server.state  # type: ignore[attr-defined]
    return state


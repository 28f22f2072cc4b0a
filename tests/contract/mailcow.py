"""mailcow's API on loopback: API-key auth, whole-array listings ({} when empty), HTTP-200 write results."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote
from zoneinfo import ZoneInfo

from scanner.model import Fact, Forward, ForwardMechanism, Mailbox, MailboxKind, MailboxStatus
from tests.contract.estate import NOW, Estate
from tests.contract.server import ContractServer, Reply, Request

API_KEY = "mc-rw-5f0e8c1d2b3a49687766554433221100"
READ_ONLY_KEY = "mc-ro-0011223344556677889900aabbccddee"
ZONE = "Europe/Berlin"
PREFIX = "/api/v1"

ACTIVE = {MailboxStatus.ACTIVE: 1, MailboxStatus.PENDING: 1, MailboxStatus.SUSPENDED: 2, MailboxStatus.DISABLED: 0}
STATUS = {1: MailboxStatus.ACTIVE, 2: MailboxStatus.SUSPENDED, 0: MailboxStatus.DISABLED}


def local(when: datetime) -> str:
    """A time as mailcow shows it: ``YYYY-MM-DD HH:MM:SS`` in the server's zone, no offset."""
    return when.astimezone(ZoneInfo(ZONE)).strftime("%Y-%m-%d %H:%M:%S")


@dataclass
class MailcowState:
    """What the server holds, plus switches for the behaviours mailcow releases and setups differ in."""

    domains: list[dict[str, Any]] = field(default_factory=list)
    mailboxes: dict[str, dict[str, Any]] = field(default_factory=dict)
    aliases: dict[int, dict[str, Any]] = field(default_factory=dict)
    filters: list[dict[str, Any]] = field(default_factory=list)
    user_sieve: dict[str, str] = field(default_factory=dict)
    numbers_as_strings: bool = True  # "1" vs 1: releases differ
    show_last_login: bool = True  # SHOW_LAST_LOGIN=n makes every last_*_login 0
    refuse_writes: bool = False  # HTTP 200 with [{"type": "danger", ...}]
    ignore_writes: bool = False  # HTTP 200 "success" but nothing changes (a re-read must show it)
    broken_sieve: set[str] = field(default_factory=set)  # mailboxes whose active-sieve read answers 500
    app_passwords: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # mailbox -> rows (with hashes)
    no_app_passwd_api: bool = False  # a release before app passwords: the route does not exist
    alias_domains: list[dict[str, Any]] = field(default_factory=list)  # /get/alias-domain rows
    broken_alias_domains: bool = False  # True: /get/alias-domain/all answers 500
    lock: threading.Lock = field(default_factory=threading.Lock)

    def number(self, value: int) -> int | str:
        """A number in the release's style."""
        return str(value) if self.numbers_as_strings else value

    def mailbox_view(self, box: dict[str, Any]) -> dict[str, Any]:
        """A mailbox as /get/mailbox shows it."""
        view = dict(box)
        for key in ("active", "active_int"):
            view[key] = self.number(box["active"])
        for key in ("last_imap_login", "last_smtp_login", "last_pop3_login", "last_sso_login"):
            view[key] = self.number(box.get(key, 0) if self.show_last_login else 0)
        return view

    def alias_view(self, alias: dict[str, Any]) -> dict[str, Any]:
        """An alias as /get/alias shows it."""
        view = dict(alias)
        view["active"] = view["active_int"] = self.number(alias["active"])
        view["is_catch_all"] = 1 if alias["address"].startswith("@") else 0
        return view


def _listing(items: list[Any]) -> Any:
    return items if items else {}  # mailcow answers {} for an empty listing


def _write_result(kind: str, name: str, ok: bool, what: str) -> Reply:
    if ok:
        return Reply(200, [{"type": "success", "log": ["mailbox", "edit", kind, {}, None], "msg": [what, name]}])
    return Reply(200, [{"type": "danger", "log": ["mailbox", "edit", kind, {}, None], "msg": "access_denied"}])


def mailcow_app(state: MailcowState) -> Any:
    """The request handler: routes, API-key check, reads and the writes that change ``state``."""

    def app(request: Request) -> Reply:
        key = request.headers.get("x-api-key")
        if key not in (API_KEY, READ_ONLY_KEY):
            return Reply(401, {"type": "error", "msg": "authentication failed"})
        if not request.path.startswith(PREFIX + "/"):
            return Reply(404, {"type": "error", "msg": "route not found"})
        parts = [unquote(p) for p in request.path[len(PREFIX) + 1:].split("/")]
        with state.lock:
            if request.method == "GET" and parts[0] == "get":
                return read(parts[1:])
            if request.method == "POST" and parts[0] in ("edit", "add", "delete"):
                if key != API_KEY:
                    return Reply(403, {"type": "error", "msg": "API read/write access denied"})
                if "application/json" not in request.headers.get("content-type", ""):
                    return Reply(200, {"type": "error", "msg": "Cannot find attributes in post data"})
                return write(parts, request.json())
            if parts[0] in ("get", "edit", "add", "delete"):
                return Reply(405, {"type": "error", "msg": "method not allowed"})
        return Reply(404, {"type": "error", "msg": "route not found"})

    def read(parts: list[str]) -> Reply:
        what, which = parts[0], (parts[1] if len(parts) > 1 else "")
        if what == "domain" and which == "all":
            return Reply(200, _listing([dict(d, active=state.number(d["active"]),
                                             relay_all_recipients=state.number(d["relay_all_recipients"]))
                                        for d in state.domains]))
        if what == "mailbox":
            if which == "all":
                return Reply(200, _listing([state.mailbox_view(b) for b in state.mailboxes.values()]))
            box = state.mailboxes.get(which.lower())
            return Reply(200, state.mailbox_view(box) if box else {})
        if what == "alias":
            if which == "all":
                return Reply(200, _listing([state.alias_view(a) for a in state.aliases.values()]))
            alias = state.aliases.get(int(which)) if which.isdigit() else None
            return Reply(200, state.alias_view(alias) if alias else {})
        if what == "alias-domain" and which == "all":
            # openapi.yaml "Get alias domain": alias_domain, target_domain, active, created, modified per row
            if state.broken_alias_domains:
                return Reply(500, raw=b"<html><body>500 Internal Server Error</body></html>")
            return Reply(200, _listing([dict(d, active=state.number(d["active"])) for d in state.alias_domains]))
        if what == "filters" and which == "all":
            return Reply(200, _listing([dict(f, active=state.number(f["active"])) for f in state.filters]))
        if what == "app-passwd":
            return app_passwords(parts)
        if what == "active-user-sieve" and which:
            if which in state.broken_sieve:
                return Reply(500, raw=b"<html><body>500 Internal Server Error</body></html>")
            script = state.user_sieve.get(which.lower())
            return Reply(200, [script] if script else {})
        return Reply(404, {"type": "error", "msg": "route not found"})

    def app_passwords(parts: list[str]) -> Reply:
        # GET /get/app-passwd/all/{mailbox}: a SELECT * of the mailbox's rows, the password hash included.
        if state.no_app_passwd_api or parts[1:2] != ["all"] or len(parts) < 3:
            return Reply(404, {"type": "error", "msg": "route not found"})
        rows = state.app_passwords.get(parts[2].lower(), [])
        return Reply(200, _listing([dict(r, active=state.number(r["active"])) for r in rows]))

    def write(parts: list[str], body: Any) -> Reply:
        if parts[:2] == ["delete", "app-passwd"] and isinstance(body, list):
            for rows in state.app_passwords.values():
                for row in list(rows):
                    if str(row["id"]) in {str(i) for i in body} and not state.ignore_writes:
                        rows.remove(row)
            return Reply(200, [{"type": "success", "msg": ["app_passwd_removed", ", ".join(map(str, body))]}])
        if parts[:2] == ["edit", "alias"] and isinstance(body, dict):
            attr = body.get("attr") or {}
            results = []
            for item in body.get("items") or []:
                alias = state.aliases.get(int(item)) if str(item).isdigit() else None
                if alias is None or state.refuse_writes:
                    return _write_result("alias", str(item), False, "")
                goto = attr.get("goto")
                if goto is not None and not str(goto).strip():
                    return Reply(200, [{"type": "danger", "msg": "goto_empty"}])
                if not state.ignore_writes:
                    if "active" in attr:
                        alias["active"] = int(attr["active"])
                    if goto is not None:
                        alias["goto"] = ",".join(t.strip() for t in str(goto).split(",") if t.strip())
                results.append({"type": "success", "msg": ["alias_modified", alias["address"]]})
            return Reply(200, results or {"type": "error", "msg": "Cannot edit item"})
        if parts[:2] == ["edit", "mailbox"] and isinstance(body, dict):
            attr = body.get("attr") or {}
            results = []
            for item in body.get("items") or []:
                box = state.mailboxes.get(str(item).lower())
                if box is None or state.refuse_writes:
                    return _write_result("mailbox", str(item), False, "")
                if not state.ignore_writes:
                    if "active" in attr:
                        box["active"] = int(attr["active"])
                    if "sender_acl" in attr:
                        acl = list(attr["sender_acl"])
                        box["sender_acl"] = [] if acl == ["default"] else [a for a in acl if a != "default"]
                results.append({"type": "success", "msg": ["mailbox_modified", box["username"]]})
            return Reply(200, results or {"type": "error", "msg": "Cannot edit item"})
        return Reply(404, {"type": "error", "msg": "route not found"})

    return app


def _throttled(request: Request) -> Reply:
    # mailcow documents no throttling; its nginx front answers limit_req overflows with an HTML 503.
    return Reply(503, raw=b"<html><body><h1>503 Service Temporarily Unavailable</h1></body></html>",
                 headers={"Content-Type": "text/html"})


def state_for(estate: Estate) -> MailcowState:
    """How mailcow shows the estate: forwards as aliases or sieve redirects, delegation as send-as grants.

    Extra records a real server holds but that the adapter must not report: another client's domain on
    the same server, a learning alias to spam@localhost, an internal alias, a filter without a redirect
    and a commented-out redirect. Two aliases with no mailbox that it reports as ALIAS subjects
    (``ALIASES``): one sending inside and outside (the first mailbox may send as it), one inactive.
    """
    state = MailcowState()
    owned = set(estate.domains)
    for domain in (*estate.domains, "other-client.example"):
        state.domains.append({"domain_name": domain, "description": "", "active": 1, "backupmx": 0,
                              "relay_all_recipients": 0, "relay_unknown_only": 0,
                              "created": local(NOW), "modified": None})
    sieve_lines: dict[str, list[str]] = {}
    alias_goto: dict[str, list[str]] = {}
    for box in estate.mailboxes:
        login = int(box.last_login.timestamp()) if box.last_login else 0
        local_part, _, domain = box.address.partition("@")
        state.mailboxes[box.address] = {
            "username": box.address, "name": box.display_name, "domain": domain, "local_part": local_part,
            "active": ACTIVE[box.status], "authsource": "mailcow", "quota": 3221225472, "quota_used": 1024,
            "messages": 12, "attributes": {"force_pw_update": "0", "sogo_access": "1"},
            "created": local(box.created), "modified": local(NOW),
            "last_imap_login": login, "last_smtp_login": max(0, login - 3600) if login else 0,
            "last_pop3_login": 0, "last_sso_login": 0, "sender_acl": [], "is_relayed": 0, "tags": [],
        }
        for target, mechanism in box.forwards:
            if mechanism in (ForwardMechanism.INBOX_RULE, ForwardMechanism.REDIRECT):
                sieve_lines.setdefault(box.address, []).append(target)
            else:
                alias_goto.setdefault(box.address, [box.address]).append(target)
    for box in estate.mailboxes:
        for grantee in (*box.delegates, *box.owners):
            if grantee in state.mailboxes:  # mailcow can grant send-as only to its own mailboxes
                state.mailboxes[grantee]["sender_acl"].append(box.address)
    state.mailboxes["carl@other-client.example"] = dict(
        state.mailboxes[estate.mailboxes[0].address], username="carl@other-client.example",
        domain="other-client.example", local_part="carl", sender_acl=["*"])

    def alias(address: str, goto: str, active: int = 1) -> None:
        number = 10 + len(state.aliases)
        state.aliases[number] = {"id": number, "address": address, "goto": goto, "domain": address.partition("@")[2],
                                 "active": active, "internal": "0", "sogo_visible": 1,
                                 "created": local(NOW), "modified": None}

    for owned_domain, catch_target in estate.catch_all.items():
        if catch_target is not None:
            alias(f"@{owned_domain}", catch_target)
    for address, goto in alias_goto.items():
        alias(address, ",".join(goto))
    first = estate.mailboxes[0].address
    domain = estate.domains[0]
    alias(f"hello@{domain}", first)
    alias(f"spam-report@{domain}", "spam@localhost")
    alias(f"old-forward@{domain}", "someone@elsewhere.test", active=0)
    alias(f"sales@{domain}", f"{first},sales@partner.test")
    state.mailboxes[first]["sender_acl"].append(f"sales@{domain}")
    alias("carl@other-client.example", "carl@other-client.example,carl@gmail.test")
    for address, targets in sieve_lines.items():
        rules = "".join(f'if true {{\n  redirect :copy "{t}";\n}}\n' for t in targets)
        state.user_sieve[address] = f'# Sieve filter\nrequire ["copy", "fileinto"];\n{rules}'
    state.filters.append({"id": 1, "username": first, "active": 1, "filter_type": "postfilter",
                          "script_desc": "junk", "script_data": 'require "fileinto";\n'
                          '# redirect "old@elsewhere.test";\nif header :contains "subject" "[SPAM]" '
                          '{ fileinto "Junk"; }\n'})
    assert all(d in owned or d == "other-client.example" for d in (a["domain"] for a in state.aliases.values()))
    return state


class MailcowHarness:
    """The shared suite's view of mailcow: its contract server and what the adapter must read from it."""

    provider = "mailcow"
    capabilities = frozenset(
        {Fact.MAILBOX_LIST, Fact.MAILBOX_FORWARDS, Fact.MAILBOX_DELEGATES, Fact.MAILBOX_LAST_LOGIN,
         Fact.DOMAIN_CATCH_ALL, Fact.MAILBOX_APP_PASSWORDS}
    )
    list_path = PREFIX + "/get/mailbox"
    token_path = ""  # a static API key

    def serve(self, estate: Estate, *, page_size: int) -> ContractServer:
        """mailcow does not page: ``page_size`` is ignored and every listing is one whole array."""
        state = state_for(estate)
        server = ContractServer(mailcow_app(state), throttled=_throttled)
        server.state = state  # type: ignore[attr-defined]  # tests flip its switches
        return server.start()

    def tenant_toml(self, server: ContractServer, estate: Estate, workdir: Path) -> str:
        """The tenant with its API key in a file, and the server's time zone."""
        (workdir / "mailcow.key").write_text(API_KEY + "\n", encoding="utf-8")
        domains = ", ".join(f'"{d}"' for d in estate.domains)
        return (
            f'\n[[tenants]]\nname = "{estate.tenant}"\nprovider = "mailcow"\n'
            f'credentials = "file:{workdir / "mailcow.key"}"\ndomains = [{domains}]\n'
            f'[tenants.mailcow]\nurl = "{server.url}{PREFIX}"\ntimezone = "{ZONE}"\n'
        )

    def secret_values(self, workdir: Path) -> list[str]:
        """The API keys."""
        return [API_KEY, READ_ONLY_KEY]

    def expire_tokens(self, server: ContractServer) -> None:
        """mailcow's API key does not expire."""

    def expected(self, estate: Estate) -> dict[str, Mailbox]:
        """mailcow's reading of the estate.

        No mailbox kinds (the shared mailbox is a user mailbox), no pending state (a new mailbox is
        active), no owners and no invites; a delegate or owner inside the tenant appears as a send-as
        grant (an outside delegate cannot exist in mailcow); an auto-forward is an alias and an
        inbox rule a sieve redirect.
        """
        grants: dict[str, list[str]] = {}
        addresses = {b.address for b in estate.mailboxes}
        for box in estate.mailboxes:
            grants[box.address] = sorted({g for g in (*box.delegates, *box.owners) if g in addresses})
        result = {}
        for box in estate.mailboxes:
            aliases = [Forward(t, ForwardMechanism.ALIAS) for t, m in box.forwards
                       if m not in (ForwardMechanism.INBOX_RULE, ForwardMechanism.REDIRECT)]
            redirects = [Forward(t, ForwardMechanism.REDIRECT) for t, m in box.forwards
                         if m in (ForwardMechanism.INBOX_RULE, ForwardMechanism.REDIRECT)]
            result[box.address] = Mailbox(
                tenant=estate.tenant, address=box.address, kind=MailboxKind.USER,
                status=STATUS[ACTIVE[box.status]], display_name=box.display_name,
                created=box.created.astimezone(UTC).replace(microsecond=0),
                last_login=box.last_login.replace(microsecond=0) if box.last_login else None,
                delegates=tuple(grants[box.address]), forwards=tuple(aliases + redirects),
            )
        first = estate.mailboxes[0].address
        for address, (status, forwards, delegates) in ALIASES.items():
            address = f"{address}@{estate.domains[0]}"
            result[address] = Mailbox(
                tenant=estate.tenant, address=address, kind=MailboxKind.ALIAS, status=status, created=NOW,
                delegates=(first,) if delegates else (),
                forwards=tuple(Forward(t, ForwardMechanism.ALIAS) for t in forwards),
            )
        return result

    def expected_catch_all(self, estate: Estate) -> dict[str, str | None]:
        """An active ``@domain`` alias's target, else None."""
        return dict(estate.catch_all)


ALIASES = {
    "sales": (MailboxStatus.ACTIVE, ("sales@partner.test",), True),
    "old-forward": (MailboxStatus.DISABLED, (), False),
}
"""``state_for``'s aliases with no mailbox and an outside target, by local part: status, forwards, send-as grant."""

HARNESS = MailcowHarness()


def with_state(server: ContractServer) -> MailcowState:
    """The state behind a server started by ``MailcowHarness.serve``."""
    state: MailcowState = server.state  # type: ignore[attr-defined]
    return state


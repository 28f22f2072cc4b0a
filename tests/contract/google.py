"""A Google Workspace contract server: JWT-bearer token endpoint, Directory, Gmail settings and Cloud Identity."""

from __future__ import annotations

import base64
import functools
import itertools
import json
import secrets
import time
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import google.auth.exceptions
import google.auth.jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from scanner.model import Fact, Forward, ForwardMechanism, Invite, Mailbox, MailboxKind, MailboxStatus
from tests.contract.estate import Estate
from tests.contract.server import ContractServer, Reply, Request

AUTH = "https://www.googleapis.com/auth/"
GRANTED = frozenset(
    AUTH + s
    for s in (
        "admin.directory.user.readonly", "admin.directory.domain.readonly", "admin.directory.group.readonly",
        "admin.directory.user", "gmail.settings.basic", "gmail.settings.sharing",
        "cloud-identity.userinvitations.readonly", "cloud-identity.userinvitations",
        "cloud-identity.policies.readonly", "admin.directory.orgunit.readonly", "admin.directory.user.security",
    )
)
"""The scopes the tenant's admin granted the service account through domain-wide delegation."""

SA_EMAIL = "mailwarden-scan@acme-audit.iam.gserviceaccount.test"
ADMIN = "admin@acme.example"
CUSTOMER_ID = "C01abc2de"
ROOT_ORG_UNIT = "id:03ph8a2z0root"


@dataclass(frozen=True)
class ServiceAccountKey:
    """A test service-account key generated for the run (never a committed key file)."""

    key_id: str
    private_pem: str
    public_pem: bytes

    def info(self, token_uri: str) -> dict[str, str]:
        """The key JSON as the Google Cloud console would download it."""
        return {"type": "service_account", "project_id": "acme-audit", "private_key_id": self.key_id,
                "private_key": self.private_pem, "client_email": SA_EMAIL, "client_id": "110000000000000000001",
                "token_uri": token_uri}


@functools.cache
def test_key() -> ServiceAccountKey:
    """One RSA key for the test session (generating 2048-bit keys is slow)."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode("ascii")
    public = private.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    return ServiceAccountKey(secrets.token_hex(20), pem, public)


def _rfc3339(when: datetime | None) -> str:
    return (when.strftime("%Y-%m-%dT%H:%M:%S.000Z")) if when else ""


def _error(status: int, message: str, reason: str, state: str = "") -> Reply:
    """Google's one error shape: HTTP code, message and errors[].reason."""
    body: dict[str, Any] = {"code": status, "message": message,
                            "errors": [{"message": message, "domain": "global", "reason": reason}]}
    if state:
        body["status"] = state
    return Reply(status, {"error": body})


@dataclass
class Mail:
    """One user's Gmail settings."""

    auto: dict[str, Any] = field(default_factory=lambda: {"enabled": False})
    addresses: list[dict[str, str]] = field(default_factory=list)
    filters: list[dict[str, Any]] = field(default_factory=list)
    delegates: list[dict[str, str]] = field(default_factory=list)


@dataclass
class Workspace:
    """The service's state; the contract server's app. Tests change it directly to set up edge cases."""

    key: ServiceAccountKey
    page_size: int
    domains: list[dict[str, Any]] = field(default_factory=list)
    users: dict[str, dict[str, Any]] = field(default_factory=dict)
    groups: dict[str, dict[str, Any]] = field(default_factory=dict)
    members: dict[str, list[dict[str, str]]] = field(default_factory=dict)
    mail: dict[str, Mail] = field(default_factory=dict)
    invitations: dict[str, dict[str, Any]] = field(default_factory=dict)
    org_units: list[dict[str, Any]] = field(default_factory=list)  # organizationUnits below the root "/"
    policies: list[dict[str, Any]] = field(default_factory=list)  # Cloud Identity Policy API policies
    super_admin: bool = True  # False: the Policy API answers 403 (the admin is not a super admin)
    admin: str = ADMIN
    granted: frozenset[str] = GRANTED
    token_lifetime: int = 3599
    throttle_status: int = 403  # 403 userRateLimitExceeded (Directory, Gmail) or 429 rateLimitExceeded
    never_as_epoch: bool = True  # a user who never signed in: lastLoginTime 1970-01-01 (True) or absent (False)
    encode_invitation_names: bool = False  # invitation names end in the address with "@" as %40 (uncertain)
    refuse_subjects: set[str] = field(default_factory=set)  # impersonating these answers invalid_grant
    domains_denied: bool = False  # True: domains.list answers 403 forbidden
    noop_writes: bool = False  # every write answers success but changes nothing (a re-read must show it)
    token_url: str = ""
    tokens: dict[str, tuple[str, frozenset[str], float]] = field(default_factory=dict)
    grants: list[dict[str, Any]] = field(default_factory=list)  # verified claims of every token issued
    oauth_tokens: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # user -> Directory tokens
    asps: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # user -> application-specific passwords
    _ids: itertools.count = field(default_factory=lambda: itertools.count(1))

    def __call__(self, request: Request) -> Reply:
        if request.path == "/token" and request.method == "POST":
            return self.token(request)
        grant = self.tokens.get(request.bearer or "")
        if grant is None or grant[2] < time.time():
            return _error(401, "Request had invalid authentication credentials.", "authError", "UNAUTHENTICATED")
        subject, scopes, _ = grant
        parts = [unquote(p) for p in request.path.strip("/").split("/")]
        if parts[:3] == ["admin", "directory", "v1"]:
            return self.directory(request, parts[3:], subject, scopes)
        if parts[:3] == ["gmail", "v1", "users"] and len(parts) >= 5 and parts[4] == "settings":
            user = subject if parts[3] == "me" else parts[3].lower()
            if user != subject:
                return _error(403, "Delegation denied for " + subject, "forbidden", "PERMISSION_DENIED")
            return self.gmail(request, user, parts[5:], scopes)
        if parts == ["v1", "policies"]:
            return self.list_policies(request, subject, scopes)
        if parts[:2] == ["v1", "customers"] and len(parts) >= 4 and parts[3] == "userinvitations":
            return self.cloud_identity(request, parts[2], parts[4:], subject, scopes)
        return _error(404, "Not Found", "notFound")

    def security(self, request: Request, user: str, kind: str, rest: list[str], scopes: frozenset[str]) -> Reply:
        """Directory tokens and asps: list (no paging) and delete, with the security scope only."""
        if AUTH + "admin.directory.user.security" not in scopes:
            return _error(403, "Request had insufficient authentication scopes.", "insufficientPermissions")
        if user not in self.users:
            return _error(404, "Resource Not Found: userKey", "notFound")
        table = self.oauth_tokens if kind == "tokens" else self.asps
        items = table.setdefault(user, [])
        key = "clientId" if kind == "tokens" else "codeId"
        if request.method == "GET" and not rest:
            listing = "admin#directory#tokenList" if kind == "tokens" else "admin#directory#asps"
            return Reply(200, {"kind": listing, "etag": '"e1"', **({"items": items} if items else {})})
        if request.method == "DELETE" and len(rest) == 1:
            found = [i for i in items if str(i[key]) == rest[0]]
            if not found:
                return _error(404, "Resource Not Found", "notFound")
            if not self.noop_writes:
                table[user] = [i for i in items if str(i[key]) != rest[0]]
            return Reply(204)
        return _error(404, "Not Found", "notFound")

    def throttled(self, request: Request) -> Reply:
        """Google's throttling: a reason in errors[], no Retry-After."""
        if self.throttle_status == 429:
            return _error(429, "Rate Limit Exceeded", "rateLimitExceeded", "RESOURCE_EXHAUSTED")
        return _error(403, "User Rate Limit Exceeded", "userRateLimitExceeded", "PERMISSION_DENIED")

    def token(self, request: Request) -> Reply:
        """The JWT-bearer grant (RFC 7523 §2.1): verify the signature and claims, issue a short-lived token."""
        form = request.form()
        if form.get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer":
            return Reply(400, {"error": "unsupported_grant_type", "error_description": "Invalid grant_type"})
        try:
            claims = google.auth.jwt.decode(form.get("assertion", ""), certs=self.key.public_pem,
                                            audience=self.token_url)
        except (ValueError, google.auth.exceptions.GoogleAuthError):
            return Reply(400, {"error": "invalid_grant", "error_description": "Invalid JWT Signature."})
        if claims.get("iss") != SA_EMAIL or not 0 < claims["exp"] - claims["iat"] <= 3600:
            return Reply(400, {"error": "invalid_grant", "error_description": "Invalid JWT: claims are wrong."})
        subject = str(claims.get("sub", "")).lower()
        if subject in self.refuse_subjects or (subject not in self.users and subject != self.admin):
            return Reply(400, {"error": "invalid_grant", "error_description": "Invalid email or User ID"})
        if self.users.get(subject, {}).get("suspended"):
            # A suspended user cannot be impersonated: the exchange is refused with invalid_grant (as GAM and other
            # DWD clients meet it); the description Google sends for this case is not documented (uncertain).
            return Reply(400, {"error": "invalid_grant", "error_description": "Invalid email or User ID"})
        scopes = frozenset(str(claims.get("scope", "")).split())
        if not scopes or not scopes <= self.granted:
            return Reply(401, {"error": "unauthorized_client", "error_description": (
                "Client is unauthorized to retrieve access tokens using this method, or client not authorized "
                "for any of the scopes requested.")})
        self.grants.append(claims)
        value = f"ya29.test-{next(self._ids)}-{secrets.token_urlsafe(12)}"
        self.tokens[value] = (subject, scopes, time.time() + self.token_lifetime)
        return Reply(200, {"access_token": value, "expires_in": self.token_lifetime, "token_type": "Bearer"})

    def _page(self, items: list[Any], key: str, request: Request, limit_param: str, limit: int) -> Reply:
        size = min(int(request.query.get(limit_param, limit)), self.page_size)
        token = request.query.get("pageToken")
        start = int(base64.urlsafe_b64decode(token).decode()) if token else 0
        body: dict[str, Any] = {}
        if items[start:start + size]:
            body[key] = items[start:start + size]  # Google omits an empty list
        if start + size < len(items):
            body["nextPageToken"] = base64.urlsafe_b64encode(str(start + size).encode()).decode()
        return Reply(200, body)

    def directory(self, request: Request, parts: list[str], subject: str, scopes: frozenset[str]) -> Reply:
        if subject != self.admin:
            return _error(403, "Not Authorized to access this resource/api", "forbidden")
        if parts[0] == "users" and len(parts) >= 3 and parts[2] in ("tokens", "asps"):
            return self.security(request, parts[1].lower(), parts[2], parts[3:], scopes)
        write = request.method != "GET"
        need = {"users": "admin.directory.user", "customer": "admin.directory.domain",
                "groups": "admin.directory.group"}[parts[0]]
        if parts[0] == "customer" and parts[2:3] == ["orgunits"]:
            need = "admin.directory.orgunit"
        if not ({AUTH + need} | ({AUTH + need + ".readonly"} if not write else set())) & scopes:
            return _error(403, "Request had insufficient authentication scopes.", "insufficientPermissions")
        if parts == ["users"]:
            if "customer" not in request.query and "domain" not in request.query:
                return _error(400, "Bad Request", "badRequest")
            listed = sorted(self.users.values(), key=lambda u: u["primaryEmail"])
            return self._page(listed, "users", request, "maxResults", 100)
        if parts[0] == "users" and len(parts) == 2:
            user = self.users.get(parts[1].lower())
            if user is None:
                return _error(404, "Resource Not Found: userKey", "notFound")
            if request.method == "PUT" and not self.noop_writes:
                body = request.json() or {}
                if "suspended" in body:
                    user["suspended"] = bool(body["suspended"])
                    user["suspensionReason"] = "ADMIN" if user["suspended"] else ""
            return Reply(200, user)
        if parts[0] == "customer" and parts[2:] == ["orgunits"]:
            # orgunits.list: no paging; type=all is every unit below the root, else the root's children only.
            units = self.org_units if request.query.get("type") == "all" else [
                u for u in self.org_units if u["parentOrgUnitPath"] == "/"]
            return Reply(200, {"kind": "admin#directory#orgUnits", "organizationUnits": units} if units else
                         {"kind": "admin#directory#orgUnits"})
        if parts[0] == "customer" and parts[2] == "orgunits":
            key = "/".join(parts[3:])  # orgunits.get: the path without its leading "/", or "id:..."
            for unit in [self.root_org_unit(), *self.org_units]:
                if key in (unit["orgUnitId"], unit["orgUnitPath"].lstrip("/")):
                    return Reply(200, unit)
            return _error(404, "Org unit not found", "notFound")
        if parts[0] == "customer" and parts[2:] == ["domains"]:
            # domains.list: Domains with domainName, verified, isPrimary, creationTime (epoch ms as a string) and
            # domainAliases[] (domainAliasName, parentDomainName, verified, creationTime).
            if self.domains_denied:
                return _error(403, "Not Authorized to access this resource/api", "forbidden")
            return Reply(200, {"kind": "admin#directory#domains", "domains": self.domains})
        if parts == ["groups"]:
            return self._page(sorted(self.groups.values(), key=lambda g: g["email"]), "groups", request,
                              "maxResults", 200)
        if parts[0] == "groups" and parts[2:] == ["members"]:
            if parts[1].lower() not in self.members:
                return _error(404, "Resource Not Found: groupKey", "notFound")
            return self._page(self.members[parts[1].lower()], "members", request, "maxResults", 200)
        return _error(404, "Not Found", "notFound")

    def gmail(self, request: Request, user: str, parts: list[str], scopes: frozenset[str]) -> Reply:
        mail = self.mail.setdefault(user, Mail())
        sharing = parts[0] == "delegates" and request.method != "GET" or (
            parts[0] == "autoForwarding" and request.method == "PUT")
        if (AUTH + ("gmail.settings.sharing" if sharing else "gmail.settings.basic")) not in scopes:
            return _error(403, "Request had insufficient authentication scopes.", "insufficientPermissions")
        if parts == ["autoForwarding"]:
            if request.method == "PUT" and self.noop_writes:
                return Reply(200, {"enabled": False})
            if request.method == "PUT":
                body = request.json() or {}
                if body.get("enabled"):
                    accepted = {a["forwardingEmail"] for a in mail.addresses if a["verificationStatus"] == "accepted"}
                    if body.get("emailAddress") not in accepted:
                        return _error(400, "Unverified forwarding address", "failedPrecondition")
                    mail.auto = {"enabled": True, "emailAddress": body["emailAddress"],
                                 "disposition": body.get("disposition", "leaveInInbox")}
                else:
                    mail.auto = {"enabled": False}
            return Reply(200, mail.auto)
        if parts == ["forwardingAddresses"]:
            return Reply(200, {"forwardingAddresses": mail.addresses} if mail.addresses else {})
        if parts[0] == "filters":
            if request.method == "POST":
                created = {"id": f"ANe1Bmj{next(self._ids)}", **(request.json() or {})}
                if not self.noop_writes:
                    mail.filters.append(created)
                return Reply(200, created)
            if request.method == "DELETE" and self.noop_writes:
                return Reply(204) if any(f["id"] == parts[1] for f in mail.filters) else _error(
                    404, "Filter not found", "notFound")
            if request.method == "DELETE":
                before = len(mail.filters)
                mail.filters = [f for f in mail.filters if f["id"] != parts[1]]
                return Reply(204) if len(mail.filters) < before else _error(404, "Filter not found", "notFound")
            return Reply(200, {"filter": mail.filters} if mail.filters else {})
        if parts[0] == "delegates":
            if request.method == "POST":
                email = (request.json() or {}).get("delegateEmail", "").lower()
                added = {"delegateEmail": email, "verificationStatus": "accepted"}
                if not self.noop_writes:
                    mail.delegates.append(added)
                return Reply(200, added)
            if request.method == "DELETE" and self.noop_writes:
                return Reply(204) if any(d["delegateEmail"] == parts[1].lower() for d in mail.delegates) else _error(
                    404, "Delegate not found", "notFound")
            if request.method == "DELETE":
                before = len(mail.delegates)
                mail.delegates = [d for d in mail.delegates if d["delegateEmail"] != parts[1].lower()]
                return Reply(204) if len(mail.delegates) < before else _error(404, "Delegate not found", "notFound")
            return Reply(200, {"delegates": mail.delegates} if mail.delegates else {})
        return _error(404, "Not Found", "notFound")

    @staticmethod
    def root_org_unit() -> dict[str, Any]:
        """The top org unit, which orgunits.list leaves out."""
        return {"kind": "admin#directory#orgUnit", "name": "acme", "orgUnitPath": "/", "orgUnitId": ROOT_ORG_UNIT,
                "description": ""}

    def add_org_unit(self, path: str) -> str:
        """Create the org unit at ``path`` (its parent must exist); returns its id ("id:...")."""
        parent_path = path.rpartition("/")[0] or "/"
        parent = next((u for u in [self.root_org_unit(), *self.org_units] if u["orgUnitPath"] == parent_path))
        unit_id = f"id:03ph8a2z{len(self.org_units) + 1:04d}"
        self.org_units.append({"kind": "admin#directory#orgUnit", "name": path.rpartition("/")[2],
                               "orgUnitPath": path, "orgUnitId": unit_id, "parentOrgUnitPath": parent_path,
                               "parentOrgUnitId": parent["orgUnitId"]})
        return unit_id

    def set_auto_forwarding(self, path: str, enabled: bool, *, kind: str = "ADMIN", group: str = "") -> None:
        """Add a settings/gmail.auto_forwarding policy for the org unit at ``path`` (sortOrder above earlier ones)."""
        unit = next(u for u in [self.root_org_unit(), *self.org_units] if u["orgUnitPath"] == path)
        ou = unit["orgUnitId"].removeprefix("id:")
        query = f"entity.org_units.exists(org_unit, org_unit.org_unit_id == orgUnitId('{ou}'))"
        if group:
            query += f" && entity.groups.exists(group, group.group_id == groupId('{group}'))"
        self.policies.append({
            "name": f"policies/ahv4hg7qc24kvaghb7zihwf4riid4{len(self.policies)}", "customer": f"customers/{CUSTOMER_ID}",
            "policyQuery": {"query": query, "orgUnit": f"orgUnits/{ou}", "sortOrder": len(self.policies) + 1,
                            **({"group": f"groups/{group}"} if group else {})},
            "setting": {"type": "settings/gmail.auto_forwarding", "value": {"enableAutoForwarding": enabled}},
            "type": kind})

    def list_policies(self, request: Request, subject: str, scopes: frozenset[str]) -> Reply:
        """policies.list: super admins only; the filter by application as documented; pageSize up to 100."""
        if AUTH + "cloud-identity.policies.readonly" not in scopes:
            return _error(403, "Request had insufficient authentication scopes.", "insufficientPermissions")
        if subject != self.admin or not self.super_admin:
            return _error(403, "The caller does not have permission", "forbidden", "PERMISSION_DENIED")
        wanted = request.query.get("filter", "")
        listed = [p for p in self.policies
                  if "settings/gmail" not in wanted or p["setting"]["type"].startswith("settings/gmail.")]
        return self._page(listed, "policies", request, "pageSize", 50)

    def cloud_identity(self, request: Request, customer: str, parts: list[str], subject: str,
                       scopes: frozenset[str]) -> Reply:
        write = request.method != "GET"
        need = {AUTH + "cloud-identity.userinvitations"} | (
            set() if write else {AUTH + "cloud-identity.userinvitations.readonly"})
        if customer != CUSTOMER_ID or subject != self.admin:
            return _error(403, "The caller does not have permission", "forbidden", "PERMISSION_DENIED")
        if not need & scopes:
            return _error(403, "Request had insufficient authentication scopes.", "insufficientPermissions")
        if not parts:
            wanted = request.query.get("filter", "")
            listed = [i for i in self.invitations.values() if wanted != "state=='invited'" or i["state"] == "INVITED"]
            return self._page(listed, "userInvitations", request, "pageSize", 100)
        email, _, action = parts[0].partition(":")
        invitation = self.invitations.get(email.lower())
        if invitation is None and action == "send":
            # "If the invitation does not exist, this also creates one" (userinvitations how-to guide).
            invitation = {"name": f"customers/{CUSTOMER_ID}/userinvitations/{email.lower()}",
                          "state": "NOT_YET_SENT", "mailsSentCount": 0, "updateTime": ""}
            if not self.noop_writes:
                self.invitations[email.lower()] = invitation
        if invitation is None:
            return _error(404, "Requested entity was not found.", "notFound", "NOT_FOUND")
        if action == "cancel":
            # The unmanaged account stays; its invitation is no longer sent (uncertain: the reference does not
            # name the state after a cancel, NOT_YET_SENT is how every unmanaged user first appears).
            if not self.noop_writes:
                invitation.update(state="NOT_YET_SENT", updateTime="2026-11-25T09:00:00Z")
            return Reply(200, {"name": f"operations/cancel-{email}", "done": True, "response": {}})
        if action == "send":
            if self.noop_writes:
                return Reply(200, {"name": f"operations/send-{email}", "done": True, "response": invitation})
            invitation.update(state="INVITED", mailsSentCount=invitation["mailsSentCount"] + 1,
                              updateTime="2026-11-25T09:00:00Z")
            return Reply(200, {"name": f"operations/send-{email}", "done": True, "response": invitation})
        return Reply(200, invitation)


def publish(estate: Estate, key: ServiceAccountKey, page_size: int) -> Workspace:
    """The estate in Google's shapes: users, groups for shared mailboxes, invitations for pending ones."""
    space = Workspace(key, page_size)
    space.domains = [{"domainName": d, "verified": True, "isPrimary": i == 0, "creationTime": "1612345678901",
                      "domainAliases": []} for i, d in enumerate(estate.domains)]
    space.users[ADMIN] = {"id": "1047000", "primaryEmail": ADMIN, "name": {"fullName": "Admin"},
                          "suspended": False, "archived": False, "isAdmin": True, "isMailboxSetup": False,
                          "creationTime": "2020-01-01T00:00:00.000Z", "lastLoginTime": "2026-11-24T00:00:00.000Z"}
    for number, box in enumerate(estate.mailboxes, start=1):
        if box.kind is not MailboxKind.USER:
            space.groups[box.address] = {"id": f"0{number}grp", "email": box.address, "name": box.display_name,
                                         "directMembersCount": str(len(box.owners)), "aliases": []}
            space.members[box.address] = [{"email": o, "role": "OWNER", "type": "USER", "status": "ACTIVE"}
                                          for o in box.owners]
            continue
        if box.status is MailboxStatus.PENDING:
            name = box.address.replace("@", "%40") if space.encode_invitation_names else box.address
            space.invitations[box.address] = {"name": f"customers/{CUSTOMER_ID}/userinvitations/{name}",
                                              "state": "INVITED", "mailsSentCount": 1,
                                              "updateTime": _rfc3339(box.invited)}
            continue
        user = {"id": f"10470000000000000{number:04d}", "primaryEmail": box.address,
                "name": {"fullName": box.display_name}, "suspended": box.status is MailboxStatus.SUSPENDED,
                "archived": box.status is MailboxStatus.DISABLED, "isAdmin": False, "isMailboxSetup": True,
                # An estate user is active or suspended, never a pending first sign-in (tests set that up).
                "agreedToTerms": True, "creationTime": _rfc3339(box.created),
                "orgUnitPath": "/"}
        if box.status is MailboxStatus.SUSPENDED:
            user["suspensionReason"] = "ADMIN"
        if box.last_login is not None:
            user["lastLoginTime"] = _rfc3339(box.last_login)
        elif space.never_as_epoch:
            user["lastLoginTime"] = "1970-01-01T00:00:00.000Z"
        space.users[box.address] = user
        mail = space.mail.setdefault(box.address, Mail())
        for target, mechanism in box.forwards:
            mail.addresses.append({"forwardingEmail": target, "verificationStatus": "accepted"})
            if mechanism is ForwardMechanism.AUTO_FORWARD:
                mail.auto = {"enabled": True, "emailAddress": target, "disposition": "leaveInInbox"}
            else:
                mail.filters.append({"id": f"ANe1Bmj{number}", "criteria": {"from": "boss@acme.example"},
                                     "action": {"forward": target, "removeLabelIds": ["INBOX"]}})
        mail.delegates = [{"delegateEmail": d, "verificationStatus": "accepted"} for d in box.delegates]
    return space


class GoogleHarness:
    """The Google Workspace harness for the shared adapter suite."""

    provider = "google"
    capabilities = frozenset({Fact.MAILBOX_LIST, Fact.MAILBOX_FORWARDS, Fact.MAILBOX_OWNERS,
                              Fact.MAILBOX_DELEGATES, Fact.MAILBOX_LAST_LOGIN, Fact.MAILBOX_INVITES,
                              Fact.MAILBOX_OAUTH_GRANTS, Fact.MAILBOX_APP_PASSWORDS, Fact.MAILBOX_RECOVERY})
    list_path = "/admin/directory/v1/users"
    token_path = "/token"

    def serve(self, estate: Estate, *, page_size: int) -> ContractServer:
        space = publish(estate, test_key(), page_size)
        server = ContractServer(space, throttled=space.throttled).start()
        space.token_url = f"{server.url}/token"
        return server

    @staticmethod
    def workspace(server: ContractServer) -> Workspace:
        """The state behind a server this harness started."""
        assert isinstance(server.app, Workspace)
        return server.app

    def tenant_toml(self, server: ContractServer, estate: Estate, workdir: Path, *, customer_id: str = CUSTOMER_ID
                    ) -> str:
        key_file = workdir / "google-sa.json"
        key_file.write_text(json.dumps(test_key().info(f"{server.url}/token")), encoding="utf-8")
        domains = ", ".join(f'"{d}"' for d in estate.domains)
        return (f'\n[[tenants]]\nname = "{estate.tenant}"\nprovider = "google"\ncredentials = "file:{key_file}"\n'
                f"domains = [{domains}]\n[tenants.google]\nadmin = \"{ADMIN}\"\ncustomer_id = \"{customer_id}\"\n"
                f'directory_url = "{server.url}"\ngmail_url = "{server.url}"\ncloudidentity_url = "{server.url}"\n')

    def secret_values(self, workdir: Path) -> list[str]:
        key = test_key()
        body = "".join(line for line in key.private_pem.splitlines() if "-----" not in line)
        return [key.private_pem, body[:64], body[-64:], key.key_id]

    def expire_tokens(self, server: ContractServer) -> None:
        self.workspace(server).tokens.clear()

    def expected(self, estate: Estate) -> dict[str, Mailbox]:
        found = {ADMIN: Mailbox(estate.tenant, ADMIN, display_name="Admin",
                                created=datetime.fromisoformat("2020-01-01T00:00:00+00:00"),
                                last_login=datetime.fromisoformat("2026-11-24T00:00:00+00:00"))}
        for box in estate.mailboxes:
            if box.kind is not MailboxKind.USER:
                found[box.address] = Mailbox(estate.tenant, box.address, MailboxKind.SHARED, MailboxStatus.ACTIVE,
                                             box.display_name, owners=tuple(sorted(box.owners)))
            elif box.status is MailboxStatus.PENDING:
                assert box.invited is not None
                found[box.address] = Mailbox(estate.tenant, box.address, status=MailboxStatus.PENDING,
                                             invite=Invite(box.invited.replace(microsecond=0)))
            else:
                forwards = sorted({Forward(t, ForwardMechanism.AUTO_FORWARD if m is ForwardMechanism.AUTO_FORWARD
                                           else ForwardMechanism.INBOX_RULE) for t, m in box.forwards},
                                  key=lambda f: (f.target, f.mechanism.value))
                found[box.address] = replace(
                    Mailbox(estate.tenant, box.address, MailboxKind.USER, box.status, box.display_name,
                            box.created.replace(microsecond=0),
                            box.last_login.replace(microsecond=0) if box.last_login else None),
                    forwards=tuple(forwards), delegates=tuple(sorted(box.delegates)))
        return found

    def expected_catch_all(self, estate: Estate) -> dict[str, str | None]:
        return {}  # Admin console only


HARNESS = GoogleHarness()

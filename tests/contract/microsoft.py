"""A Microsoft Graph and Entra ID contract server on loopback (over TLS, as msal requires), and its harness."""

from __future__ import annotations

import base64
import ipaddress
import json
import re
import secrets
import ssl
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from scanner.model import Fact, Forward, ForwardMechanism, Invite, Mailbox, MailboxKind, MailboxStatus
from tests.contract.estate import Estate, EstateMailbox
from tests.contract.server import ContractServer, Reply, Request

TENANT_ID = "3f1d0c52-0000-4000-8000-00000000a0a0"
CLIENT_ID = "b7e4a1d9-0000-4000-8000-00000000c1c1"
CLIENT_SECRET = "Qx8~contract.Client-Secret_7f3a9e"
INITIAL_DOMAIN = "acmecorp.onmicrosoft.example"
TOKEN_PATH = f"/{TENANT_ID}/oauth2/v2.0/token"
MAX_TOP = 999
MAX_TOP_SIGN_IN = 500


@dataclass(frozen=True)
class LoopbackCa:
    """A certificate authority made for the tests, and a loopback server certificate it signed."""

    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes

    @classmethod
    def create(cls) -> LoopbackCa:
        """A fresh CA and a certificate for 127.0.0.1 (EC P-256 keys: fast to make)."""
        now = datetime.now(UTC)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mailwarden contract test CA")])
        ca = (
            x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        return cls(
            ca.public_bytes(serialization.Encoding.PEM), cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()),
        )

    def server_context(self) -> ssl.SSLContext:
        """A server-side TLS context presenting the loopback certificate."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        with tempfile.TemporaryDirectory() as directory:
            cert, key = Path(directory, "cert.pem"), Path(directory, "key.pem")
            cert.write_bytes(self.cert_pem)
            key.write_bytes(self.key_pem)
            context.load_cert_chain(cert, key)
        return context


def _stamp(when: datetime | None) -> str | None:
    return None if when is None else when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _graph_error(status: int, code: str, message: str) -> Reply:
    return Reply(status, {"error": {"code": code, "message": message, "innerError": {
        "date": _stamp(datetime.now(UTC)), "request-id": secrets.token_hex(8), "client-request-id": secrets.token_hex(8)}}})


def _aad_error(status: int, error: str, code: int, description: str) -> Reply:
    return Reply(status, {"error": error, "error_description": f"AADSTS{code}: {description}", "error_codes": [code],
                          "timestamp": _stamp(datetime.now(UTC)), "trace_id": secrets.token_hex(8),
                          "correlation_id": secrets.token_hex(8)})


@dataclass
class GraphState:
    """The tenant behind the server: users, mailbox settings, inbox rules, domains, tokens and switches."""

    users: dict[str, dict[str, Any]] = field(default_factory=dict)  # by id, Graph user resources
    purposes: dict[str, str] = field(default_factory=dict)  # user id -> mailboxSettings.userPurpose
    rules: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # user id -> inbox rules
    domains: list[str] = field(default_factory=list)
    tokens: set[str] = field(default_factory=set)
    premium: bool = True  # False: selecting signInActivity answers 403 NonPremiumTenant
    audit_log_denied: bool = False  # True: selecting signInActivity answers 403 (no AuditLog.Read.All)
    no_mailbox: set[str] = field(default_factory=set)  # user ids answering 404 MailboxNotEnabledForRESTAPI
    no_rest: set[str] = field(default_factory=set)  # user ids answering 404 MailboxNotSupportedForRESTAPI
    unverified: list[str] = field(default_factory=list)  # domains added to the tenant but not verified
    domains_denied: bool = False  # True: GET /domains answers 403 (no Domain.Read.All)
    sign_in_refusals: int = 0  # the next this many signInActivity listings answer the non-premium 403 regardless
    non_premium_from: int | None = None  # signInActivity pages starting at this user index answer the 403
    denied_rules: set[str] = field(default_factory=set)  # user ids whose rules answer 403 ErrorAccessDenied
    redirect_single: bool = False  # beta reading: redirectTo as one recipient object, not a collection
    ignore_writes: bool = False  # writes answer success and change nothing
    page_size: int = 100
    invitations: int = 0
    mailbox_delay: float = 0.0  # seconds each per-mailbox call takes (to observe concurrency)
    inflight: dict[str, int] = field(default_factory=dict)  # user id -> per-mailbox calls in flight
    peak: dict[str, int] = field(default_factory=dict)  # user id -> most per-mailbox calls seen in flight
    permission_grants: list[dict[str, Any]] = field(default_factory=list)  # oauth2PermissionGrant resources
    service_principals: dict[str, dict[str, Any]] = field(default_factory=dict)  # by object id
    email_methods: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # user id -> emailMethods
    phone_methods: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # user id -> phoneMethods
    grants_denied: bool = False  # no Directory.Read.All: oauth2PermissionGrants answer 403
    methods_denied: bool = False  # no UserAuthenticationMethod.Read.All: authentication methods answer 403
    lock: threading.Lock = field(default_factory=threading.Lock)
    count_lock: threading.Lock = field(default_factory=threading.Lock)


class GraphServer(ContractServer):
    """The Graph v1.0 API under /v1.0 and the Entra ID token endpoint under /{tenant}, on one TLS server."""

    def __init__(self, state: GraphState, tls: ssl.SSLContext) -> None:
        super().__init__(self._route, throttled=self._throttled, tls=tls)
        self.state = state

    def _throttled(self, request: Request) -> Reply:
        if not request.path.startswith("/v1.0/"):
            reply = _aad_error(429, "temporarily_unavailable", 50196, "The server is temporarily throttling requests.")
        else:
            reply = Reply(429, {"error": {"code": "TooManyRequests", "message": "Please retry again later.",
                                          "innerError": {"code": "429", "date": _stamp(datetime.now(UTC)),
                                                         "message": "Please retry after",
                                                         "request-id": secrets.token_hex(8), "status": "429"}}})
        reply.headers["Retry-After"] = "1"
        return reply

    def _route(self, request: Request) -> Reply:
        path = request.path
        if path == f"/{TENANT_ID}/v2.0/.well-known/openid-configuration" and request.method == "GET":
            return Reply(200, {
                "token_endpoint": f"{self.url}{TOKEN_PATH}",
                "authorization_endpoint": f"{self.url}/{TENANT_ID}/oauth2/v2.0/authorize",
                "issuer": f"{self.url}/{TENANT_ID}/v2.0",
                "token_endpoint_auth_methods_supported": ["client_secret_post", "client_secret_basic"],
            })
        if path.endswith("/.well-known/openid-configuration"):
            return _aad_error(400, "invalid_tenant", 90002, "Tenant not found.")
        if path == TOKEN_PATH and request.method == "POST":
            return self._token(request)
        if not path.startswith("/v1.0/"):
            return _graph_error(404, "UnknownError", "no such route")
        if request.bearer not in self.state.tokens:
            return _graph_error(401, "InvalidAuthenticationToken", "Lifetime validation failed, the token is expired.")
        parts = [unquote(p) for p in path[len("/v1.0/"):].split("/")]
        if len(parts) < 3 or parts[0] != "users":
            with self.state.lock:
                return self._graph(request, parts)
        state, uid = self.state, parts[1]
        with state.count_lock:
            state.inflight[uid] = state.inflight.get(uid, 0) + 1
            state.peak[uid] = max(state.peak.get(uid, 0), state.inflight[uid])
        try:
            if state.mailbox_delay:
                time.sleep(state.mailbox_delay)
            with state.lock:
                return self._graph(request, parts)
        finally:
            with state.count_lock:
                state.inflight[uid] -= 1

    def _token(self, request: Request) -> Reply:
        form = request.form()
        client_id, secret = form.get("client_id", ""), form.get("client_secret", "")
        basic = request.headers.get("authorization", "")
        if basic.lower().startswith("basic "):
            client_id, _, secret = base64.b64decode(basic[6:]).decode("utf-8").partition(":")
            client_id, secret = unquote(client_id.replace("+", " ")), unquote(secret.replace("+", " "))
        if form.get("grant_type") != "client_credentials":
            return _aad_error(400, "unsupported_grant_type", 70003, "The app requested an unsupported grant type.")
        if client_id != CLIENT_ID:
            return _aad_error(400, "unauthorized_client", 700016, f"Application with identifier '{client_id}' "
                                                                  "was not found in the directory.")
        if secret != CLIENT_SECRET:
            return _aad_error(401, "invalid_client", 7000215, "Invalid client secret provided.")
        if form.get("scope") != f"{self.url}/.default":
            return _aad_error(400, "invalid_scope", 1002012, "The provided value for scope is not valid.")
        token = "eyJ0eXAiOiJKV1QifQ." + secrets.token_urlsafe(24)
        self.state.tokens.add(token)
        return Reply(200, {"token_type": "Bearer", "expires_in": 3599, "ext_expires_in": 3599, "access_token": token})

    def _graph(self, request: Request, parts: list[str]) -> Reply:
        method = request.method
        if parts == ["domains"] and method == "GET":
            # List domains (learn.microsoft.com/graph/api/domain-list): id is the name; isVerified, isInitial
            # (the *.onmicrosoft.com domain made with the tenant) and supportedServices per domain.
            if self.state.domains_denied:
                return _graph_error(403, "Authorization_RequestDenied",
                                    "Insufficient privileges to complete the operation.")
            return Reply(200, {"@odata.context": f"{self.url}/v1.0/$metadata#domains", "value": [
                {"id": d, "isVerified": d not in self.state.unverified, "isDefault": i == 0,
                 "isInitial": d == INITIAL_DOMAIN,
                 "supportedServices": ["Email", "OfficeCommunicationsOnlineAndTeams"]
                 if d not in self.state.unverified else []}
                for i, d in enumerate([*self.state.domains, *self.state.unverified])]})
        if parts == ["users"] and method == "GET":
            return self._list_users(request)
        if parts == ["invitations"] and method == "POST":
            return self._invite(request.json() or {})
        access = self._access(request, parts)
        if access is not None:
            return access
        if len(parts) < 2 or parts[0] != "users":
            return _graph_error(400, "BadRequest", f"Resource not found for the segment '{parts[0]}'.")
        user = self._find(parts[1])
        if user is None:
            return _graph_error(404, "Request_ResourceNotFound",
                                f"Resource '{parts[1]}' does not exist or one of its queried reference-property "
                                "objects are not present.")
        uid = user["id"]
        rest = parts[2:]
        if not rest:
            return self._user(request, user)
        if uid in self.state.no_rest:
            # Microsoft KB 4462988: 404 MailboxNotEnabledForRESTAPI or MailboxNotSupportedForRESTAPI,
            # "REST API is not yet supported for this mailbox."
            return _graph_error(404, "MailboxNotSupportedForRESTAPI", "REST API is not yet supported for this mailbox.")
        if uid in self.state.no_mailbox or user["userType"] == "Guest":
            return _graph_error(404, "MailboxNotEnabledForRESTAPI", "The mailbox is either inactive, soft-deleted, "
                                                                    "or is hosted on-premise.")
        if rest == ["mailboxSettings"] and method == "GET":
            return Reply(200, {"@odata.context": f"{self.url}/v1.0/$metadata#users('{uid}')/mailboxSettings",
                               "timeZone": "UTC", "userPurpose": self.state.purposes.get(uid, "user")})
        if rest[:3] == ["mailFolders", "inbox", "messageRules"]:
            if uid in self.state.denied_rules:
                return _graph_error(403, "ErrorAccessDenied", "Access is denied. Check credentials and try again.")
            return self._rules(request, uid, rest[3:])
        return _graph_error(400, "BadRequest", "Unsupported segment.")

    def _access(self, request: Request, parts: list[str]) -> Reply | None:
        """oauth2PermissionGrants (per user, tenant-wide, delete), servicePrincipals, email and phone methods."""
        state, denied = self.state, _graph_error(403, "Authorization_RequestDenied",
                                                 "Insufficient privileges to complete the operation.")
        if parts[0] == "oauth2PermissionGrants":
            if state.grants_denied:
                return denied
            if len(parts) == 1 and request.method == "GET":
                wanted = request.query.get("$filter", "")
                rows = [g for g in state.permission_grants if "AllPrincipals" not in wanted
                        or g["consentType"] == "AllPrincipals"]
                return Reply(200, {"@odata.context": f"{self.url}/v1.0/$metadata#oauth2PermissionGrants",
                                   "value": rows})
            if len(parts) == 2 and request.method == "DELETE":
                if not any(g["id"] == parts[1] for g in state.permission_grants):
                    return _graph_error(404, "Request_ResourceNotFound", f"Resource '{parts[1]}' does not exist.")
                if not state.ignore_writes:
                    state.permission_grants = [g for g in state.permission_grants if g["id"] != parts[1]]
                return Reply(204)
        if parts[0] == "servicePrincipals" and len(parts) == 2 and request.method == "GET":
            principal = state.service_principals.get(parts[1])
            return Reply(200, principal) if principal else _graph_error(
                404, "Request_ResourceNotFound", f"Resource '{parts[1]}' does not exist.")
        if parts[0] != "users" or len(parts) < 3:
            return None
        user = self._find(parts[1])
        if user is None:
            return None
        if parts[2:] == ["oauth2PermissionGrants"] and request.method == "GET":
            if state.grants_denied:
                return denied
            return Reply(200, {"value": [g for g in state.permission_grants if g.get("principalId") == user["id"]]})
        if parts[2] == "authentication" and parts[3:] in (["emailMethods"], ["phoneMethods"]):
            if state.methods_denied:
                return denied
            table = state.email_methods if parts[3] == "emailMethods" else state.phone_methods
            return Reply(200, {"value": table.get(user["id"], [])})
        return None

    def _find(self, key: str) -> dict[str, Any] | None:
        key = key.lower()
        if key in self.state.users:  # by id: a dict lookup, so per-mailbox calls stay O(1) in large estates
            return self.state.users[key]
        for user in self.state.users.values():
            if user["id"] == key or user["userPrincipalName"].lower() == key:
                return user
        return None

    def _list_users(self, request: Request) -> Reply:
        query = request.query
        select = [s for s in query.get("$select", "").split(",") if s]
        if "$filter" in query:
            match = re.fullmatch(r"mail eq '(.+)' or userPrincipalName eq '(.+)'", query["$filter"])
            if match is None:
                return _graph_error(400, "Request_UnsupportedQuery", "Unsupported query.")
            wanted = match.group(1).replace("''", "'").lower()
            found = [u for u in self.state.users.values()
                     if (u.get("mail") or "").lower() == wanted or u["userPrincipalName"].lower() == wanted]
            return Reply(200, {"value": [self._shape(u, select) for u in found]})
        sign_in = "signInActivity" in select
        if sign_in and self.state.sign_in_refusals > 0:
            self.state.sign_in_refusals -= 1
            return _graph_error(403, "Authentication_RequestFromNonPremiumTenantOrB2CTenant",
                                "Neither tenant is B2C or tenant doesn't have premium license")
        if sign_in and not self.state.premium:
            return _graph_error(403, "Authentication_RequestFromNonPremiumTenantOrB2CTenant",
                                "Neither tenant is B2C or tenant doesn't have premium license")
        if sign_in and self.state.audit_log_denied:
            return _graph_error(403, "Authorization_RequestDenied", "Insufficient privileges to complete the operation.")
        top = int(query.get("$top", "100"))
        if top < 1 or top > (MAX_TOP_SIGN_IN if sign_in else MAX_TOP):
            return _graph_error(400, "Request_UnsupportedQuery", f"Invalid page size specified: '{top}'.")
        start = 0
        if "$skiptoken" in query:
            try:
                token = json.loads(base64.urlsafe_b64decode(query["$skiptoken"] + "=="))
            except ValueError:
                return _graph_error(400, "Directory_InvalidSkipToken", "The skip token is invalid.")
            if token.get("select") != query.get("$select") or token.get("top") != top:
                return _graph_error(400, "Directory_InvalidSkipToken", "The paging parameters changed.")
            start = token["start"]
        if sign_in and self.state.non_premium_from is not None and start >= self.state.non_premium_from:
            return _graph_error(403, "Authentication_RequestFromNonPremiumTenantOrB2CTenant",
                                "Neither tenant is B2C or tenant doesn't have premium license")
        size = min(top, self.state.page_size)
        users = sorted(self.state.users.values(), key=lambda u: u["id"])
        body: dict[str, Any] = {"@odata.context": f"{self.url}/v1.0/$metadata#users({','.join(select)})",
                                "value": [self._shape(u, select) for u in users[start:start + size]]}
        if start + size < len(users):
            skip = base64.urlsafe_b64encode(json.dumps(
                {"start": start + size, "select": query.get("$select"), "top": top}).encode()).decode().rstrip("=")
            body["@odata.nextLink"] = (f"{self.url}/v1.0/users?$select={quote(query.get('$select', ''), safe=',')}"
                                       f"&$top={top}&$skiptoken={skip}")
        return Reply(200, body)

    def _shape(self, user: dict[str, Any], select: list[str]) -> dict[str, Any]:
        if not select:
            select = ["id", "userPrincipalName", "mail", "displayName", "accountEnabled"]
        shaped = {k: user.get(k) for k in select if k != "signInActivity"}
        if "signInActivity" in select and user.get("signInActivity") is not None:
            shaped["signInActivity"] = user["signInActivity"]
        return shaped

    def _user(self, request: Request, user: dict[str, Any]) -> Reply:
        if request.method == "GET":
            select = [s for s in request.query.get("$select", "").split(",") if s]
            return Reply(200, self._shape(user, select))
        if request.method == "PATCH":
            body = request.json() or {}
            if not self.state.ignore_writes and "accountEnabled" in body:
                user["accountEnabled"] = bool(body["accountEnabled"])
            return Reply(204)
        if request.method == "DELETE":
            if not self.state.ignore_writes:
                del self.state.users[user["id"]]
            return Reply(204)
        return _graph_error(405, "Request_BadRequest", "Method not allowed.")

    def _rules(self, request: Request, uid: str, rest: list[str]) -> Reply:
        rules = self.state.rules.setdefault(uid, [])
        if not rest:
            if request.method == "GET":
                return Reply(200, {"value": [self._rule_shape(r) for r in rules]})
            if request.method == "POST":
                rule = dict(request.json() or {})
                rule.update(id=base64.b64encode(secrets.token_bytes(8)).decode(), hasError=False, isReadOnly=False)
                if not self.state.ignore_writes:
                    rules.append(rule)
                return Reply(201, rule)
        match = [r for r in rules if r["id"] == rest[0]] if len(rest) == 1 else []
        if not match:
            return _graph_error(404, "ErrorItemNotFound", "The specified object was not found in the store.")
        rule = match[0]
        if request.method == "GET":
            return Reply(200, self._rule_shape(rule))
        if request.method == "PATCH":
            if not self.state.ignore_writes:
                rule.update({k: v for k, v in (request.json() or {}).items() if k != "id"})
            return Reply(200, self._rule_shape(rule))
        if request.method == "DELETE":
            if not self.state.ignore_writes:
                rules.remove(rule)
            return Reply(204)
        return _graph_error(405, "ErrorInvalidRequest", "Method not allowed.")

    def _rule_shape(self, rule: dict[str, Any]) -> dict[str, Any]:
        shaped: dict[str, Any] = json.loads(json.dumps(rule))
        redirect = shaped.get("actions", {}).get("redirectTo")
        if self.state.redirect_single and isinstance(redirect, list):
            shaped["actions"]["redirectTo"] = redirect[0] if redirect else None
        return shaped

    def _invite(self, body: dict[str, Any]) -> Reply:
        address = str(body.get("invitedUserEmailAddress") or "").lower()
        if "@" not in address or not str(body.get("inviteRedirectUrl") or "").startswith("https://"):
            return _graph_error(400, "BadRequest", "invitedUserEmailAddress and inviteRedirectUrl are required.")
        now = _stamp(datetime.now(UTC))
        existing = [u for u in self.state.users.values() if (u.get("mail") or "").lower() == address]
        if existing:
            user = existing[0]  # re-posting for a pending guest re-sends to the same user object
        else:
            uid = f"9a2d7c11-0000-4000-8000-{len(self.state.users) + 1:012d}"
            user = {"id": uid, "userPrincipalName": f"{address.replace('@', '_')}#EXT#@{INITIAL_DOMAIN}",
                    "mail": address, "displayName": address, "accountEnabled": True, "userType": "Guest",
                    "createdDateTime": now, "externalUserState": "PendingAcceptance",
                    "externalUserStateChangeDateTime": now}
            if not self.state.ignore_writes:
                self.state.users[uid] = user
        if not self.state.ignore_writes and user.get("externalUserState") == "PendingAcceptance":
            user["externalUserStateChangeDateTime"] = now
        self.state.invitations += 1
        return Reply(201, {"id": secrets.token_hex(8), "invitedUserEmailAddress": address,
                           "inviteRedeemUrl": f"{self.url}/redeem?ticket={secrets.token_hex(6)}",
                           "invitedUser": {"id": user["id"]}, "status": "PendingAcceptance"})


def _recipient(address: str) -> dict[str, Any]:
    return {"emailAddress": {"name": address.partition("@")[0], "address": address}}


def _rule(rule_id: str, name: str, sequence: int, actions: dict[str, list[str]], *, enabled: bool = True
          ) -> dict[str, Any]:
    body: dict[str, Any] = {"forwardTo": [], "redirectTo": [], "forwardAsAttachmentTo": [], "stopProcessingRules": True}
    body.update({k: [_recipient(a) for a in v] for k, v in actions.items()})
    return {"id": rule_id, "displayName": name, "sequence": sequence, "isEnabled": enabled, "hasError": False,
            "isReadOnly": False, "conditions": {"fromAddresses": []}, "actions": body}


PURPOSE = {MailboxKind.SHARED: "shared", MailboxKind.RESOURCE: "room", MailboxKind.ROLE: "others"}


def publish(estate: Estate, state: GraphState) -> None:
    """Put the estate into the server's state in Graph's shapes."""
    state.domains = [*estate.domains, INITIAL_DOMAIN]
    for index, box in enumerate(estate.mailboxes):
        uid = f"6f1c2a9e-0000-4000-8000-{index + 1:012d}"
        pending = box.status is MailboxStatus.PENDING or box.invited is not None
        user: dict[str, Any] = {
            "id": uid, "mail": box.address, "displayName": box.display_name,
            "userPrincipalName": f"{box.address.replace('@', '_')}#EXT#@{INITIAL_DOMAIN}" if pending else box.address,
            "accountEnabled": box.status is MailboxStatus.ACTIVE and box.kind is MailboxKind.USER or pending,
            "userType": "Guest" if pending else "Member", "createdDateTime": _stamp(box.created),
            "externalUserState": "PendingAcceptance" if pending else None,
            "externalUserStateChangeDateTime": _stamp(box.invited or box.created) if pending else None,
        }
        if box.last_login is not None:
            if index % 2:
                # lastSuccessful is newest-successful; a later failed interactive attempt must not count
                user["signInActivity"] = {
                    "lastSignInDateTime": _stamp(box.last_login + timedelta(hours=3)),
                    "lastNonInteractiveSignInDateTime": _stamp(box.last_login - timedelta(days=1)),
                    "lastSuccessfulSignInDateTime": _stamp(box.last_login)}
            else:
                # before Dec 2023 there is no lastSuccessful: the later of the other two
                user["signInActivity"] = {
                    "lastSignInDateTime": _stamp(box.last_login - timedelta(days=5)),
                    "lastNonInteractiveSignInDateTime": _stamp(box.last_login),
                    "lastSuccessfulSignInDateTime": None}
        elif index % 2:
            user["signInActivity"] = {"lastSignInDateTime": None, "lastNonInteractiveSignInDateTime": None,
                                      "lastSuccessfulSignInDateTime": None}
        state.users[uid] = user
        if box.kind in PURPOSE:
            state.purposes[uid] = PURPOSE[box.kind]
        rules = [_rule(f"AQAAAJ5d{index:04d}0=", "file newsletters", 1, {})]
        rules[0]["actions"] = {"moveToFolder": "AAMkAD-newsletters", "stopProcessingRules": False}
        for number, (target, mechanism) in enumerate(box.forwards, start=2):
            key = "forwardTo" if mechanism is ForwardMechanism.INBOX_RULE else "redirectTo"
            rules.append(_rule(f"AQAAAJ5d{index:04d}{number}=", f"to {target}", number, {key: [target]}))
        if box.forwards:
            rules.append(_rule(f"AQAAAJ5d{index:04d}9=", "old forward (off)", 9, {"forwardTo": ["archive@elsewhere.test"]},
                               enabled=False))
        state.rules[uid] = rules


class MicrosoftHarness:
    """The Graph contract for the shared adapter suite."""

    provider = "microsoft"
    capabilities = frozenset({Fact.MAILBOX_LIST, Fact.MAILBOX_FORWARDS, Fact.MAILBOX_LAST_LOGIN, Fact.MAILBOX_INVITES,
                              Fact.MAILBOX_OAUTH_GRANTS, Fact.MAILBOX_RECOVERY})
    list_path = "/v1.0/users"
    token_path = TOKEN_PATH

    def __init__(self) -> None:
        self._ca: LoopbackCa | None = None

    @property
    def ca(self) -> LoopbackCa:
        """The test CA, made once per test session (key generation is the slow part)."""
        if self._ca is None:
            self._ca = LoopbackCa.create()
        return self._ca

    def serve(self, estate: Estate, *, page_size: int) -> GraphServer:
        """Start a TLS server publishing the estate through Graph, with /users paged at ``page_size``."""
        state = GraphState(page_size=page_size)
        publish(estate, state)
        server = GraphServer(state, self.ca.server_context())
        server.start()
        return server

    def tenant_toml(self, server: ContractServer, estate: Estate, workdir: Path) -> str:
        """The tenant table; its first line completes the suite's [http] table with the test CA."""
        (workdir / "test-ca.pem").write_bytes(self.ca.ca_pem)
        (workdir / "ms-client-secret").write_text(CLIENT_SECRET, encoding="utf-8")
        domains = ", ".join(f'"{d}"' for d in estate.domains)
        return (
            f'ca_bundle = "{workdir / "test-ca.pem"}"\n\n'
            f'[[tenants]]\nname = "{estate.tenant}"\nprovider = "microsoft"\n'
            f'credentials = "file:{workdir / "ms-client-secret"}"\ndomains = [{domains}]\n'
            f'[tenants.microsoft]\ntenant_id = "{TENANT_ID}"\nclient_id = "{CLIENT_ID}"\n'
            f'graph_url = "{server.url}/v1.0"\nlogin_url = "{server.url}"\n'
        )

    def secret_values(self, workdir: Path) -> list[str]:
        """The client secret."""
        return [CLIENT_SECRET]

    def expire_tokens(self, server: ContractServer) -> None:
        """Forget every issued token: the next Graph call answers 401 InvalidAuthenticationToken."""
        assert isinstance(server, GraphServer)
        server.state.tokens.clear()

    def expected(self, estate: Estate) -> dict[str, Mailbox]:
        """What Graph can show of the estate: no owners or delegates; sign-in-blocked shared mailboxes are active."""
        return {box.address: expected_mailbox(estate.tenant, box) for box in estate.mailboxes}

    def expected_catch_all(self, estate: Estate) -> dict[str, str | None]:
        """Graph exposes no catch-all."""
        return {}


def expected_mailbox(tenant: str, box: EstateMailbox) -> Mailbox:
    """The mailbox the adapter should read for one estate mailbox published by ``publish``."""
    pending = box.status is MailboxStatus.PENDING or box.invited is not None
    kind = {MailboxKind.ROLE: MailboxKind.USER}.get(box.kind, box.kind)
    status = MailboxStatus.PENDING if pending else (
        MailboxStatus.ACTIVE if box.kind is not MailboxKind.USER or box.status is MailboxStatus.ACTIVE
        else MailboxStatus.SUSPENDED)
    forwards = sorted({Forward(t, ForwardMechanism.INBOX_RULE if m is ForwardMechanism.INBOX_RULE
                               else ForwardMechanism.REDIRECT) for t, m in box.forwards},
                      key=lambda f: (f.target, f.mechanism.value))
    return Mailbox(
        tenant=tenant, address=box.address, kind=MailboxKind.USER if pending else kind, status=status,
        display_name=box.display_name, created=box.created.replace(microsecond=0), last_login=box.last_login,
        forwards=tuple(forwards), invite=Invite(box.invited or box.created) if pending else None,
    )


HARNESS = MicrosoftHarness()

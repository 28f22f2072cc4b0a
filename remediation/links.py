"""Encrypted, expiring, single-use remediation links and the confirmation page's CSRF tokens.

A link's token is a Fernet token (AES-128-CBC with HMAC-SHA256, from the ``cryptography`` package): its
payload (tenant, subject, finding) is unreadable without the secret, so a forwarded email reveals nothing.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
from dataclasses import dataclass
from typing import Any

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer

from remediation.actions import Plan
from scanner.config import RemediationConfig
from scanner.errors import ConfigError, MailwardenError

LINK_SALT = "mailwarden.remediation.link"
CSRF_SALT = "mailwarden.remediation.csrf"
CSRF_MAX_AGE = 3600
"""Seconds a confirmation page's form stays usable."""
MIN_SECRET = 16


class LinkError(MailwardenError):
    """A link (or a form token) is forged, tampered with, expired or for something else."""


@dataclass(frozen=True, slots=True)
class LinkClaim:
    """What a verified link names."""

    action: str
    tenant: str
    subject: str
    finding: str
    run_id: str
    state_hash: str
    nonce: str


class Signer:
    """Issues and checks link and CSRF tokens with the configured secret."""

    def __init__(self, settings: RemediationConfig) -> None:
        if settings.secret is None:
            raise ConfigError("remediation.secret: links need a secret reference")
        secret = settings.secret.resolve()
        if len(secret) < MIN_SECRET:
            raise ConfigError(f"remediation.secret: {settings.secret} resolves to fewer than {MIN_SECRET} characters")
        self.settings = settings
        # RFC 5869: a key of its own for link tokens, derived from the secret.
        derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=LINK_SALT.encode()).derive(
            secret.encode("utf-8"))
        self._links = Fernet(base64.urlsafe_b64encode(derived))
        self._forms = URLSafeTimedSerializer(secret, salt=CSRF_SALT)

    @property
    def max_age(self) -> int:
        """A link's lifetime in seconds."""
        return self.settings.link_ttl_days * 86400

    def issue(self, plan: Plan) -> str:
        """A token naming the plan's action, tenant, subject, finding, run and issued-state hash, with a nonce."""
        payload = {"a": plan.action, "t": plan.tenant, "s": plan.subject, "f": plan.finding, "r": plan.run_id,
                   "h": plan.state_hash, "n": secrets.token_hex(8)}
        return self.seal(payload)

    def seal(self, payload: dict[str, str], at: int | None = None) -> str:
        """Encrypt a payload into a token (issued ``at`` a Unix time, now by default)."""
        data = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode("utf-8")
        return self._links.encrypt_at_time(data, int(time.time() if at is None else at)).decode("ascii")

    def payload(self, token: str) -> Any:
        """A token's payload; a LinkError for a forged, tampered or expired one."""
        try:
            issued = self._links.extract_timestamp(token)
        except (InvalidToken, ValueError, TypeError):
            raise LinkError("this link is not valid (it was changed or not issued by this service)") from None
        if time.time() - issued > self.max_age:
            raise LinkError("this link has expired: links are valid for "
                            f"{self.settings.link_ttl_days} days; use the latest report")
        try:
            return json.loads(self._links.decrypt(token))
        except (InvalidToken, ValueError):
            raise LinkError("this link is not valid") from None

    def link(self, plan: Plan) -> str:
        """``{base_url}/r/{token}``."""
        return f"{self.settings.base_url.rstrip('/')}/r/{self.issue(plan)}"

    def check(self, token: str) -> LinkClaim:
        """The claim of a valid token; a LinkError for a forged, tampered or expired one."""
        data = self.payload(token)
        keys = ("a", "t", "s", "f", "r", "h", "n")
        if not isinstance(data, dict) or not all(isinstance(data.get(k), str) for k in keys):
            raise LinkError("this link is not valid")
        return LinkClaim(*(data[k] for k in keys))

    def form_token(self, purpose: str, actor: str) -> str:
        """A signed CSRF token bound to ``purpose`` (the link token, or an undo of one job) and the operator."""
        return str(self._forms.dumps({"p": _digest(f"{purpose}\n{actor}")}))

    def check_form(self, token: str, purpose: str, actor: str) -> None:
        """Refuse a missing, forged, expired or misbound CSRF token (another page's, or another operator's)."""
        purpose = f"{purpose}\n{actor}"
        try:
            data: Any = self._forms.loads(token, max_age=CSRF_MAX_AGE)
        except SignatureExpired:
            raise LinkError("the confirmation page has expired: open the link again") from None
        except BadSignature:
            raise LinkError("the form is not from this service's confirmation page") from None
        if not isinstance(data, dict) or not secrets.compare_digest(str(data.get("p", "")), _digest(purpose)):
            raise LinkError("the form is for a different page")


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()

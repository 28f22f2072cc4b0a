"""Signed, expiring, single-use remediation links and the confirmation page's CSRF tokens."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from typing import Any

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
        self._links = URLSafeTimedSerializer(secret, salt=LINK_SALT)
        self._forms = URLSafeTimedSerializer(secret, salt=CSRF_SALT)

    @property
    def max_age(self) -> int:
        """A link's lifetime in seconds."""
        return self.settings.link_ttl_days * 86400

    def issue(self, plan: Plan) -> str:
        """A token naming the plan's action, tenant, subject, finding, run and issued-state hash, with a nonce."""
        payload = {"a": plan.action, "t": plan.tenant, "s": plan.subject, "f": plan.finding, "r": plan.run_id,
                   "h": plan.state_hash, "n": secrets.token_hex(8)}
        return str(self._links.dumps(payload))

    def link(self, plan: Plan) -> str:
        """``{base_url}/r/{token}``."""
        return f"{self.settings.base_url.rstrip('/')}/r/{self.issue(plan)}"

    def check(self, token: str) -> LinkClaim:
        """The claim of a valid token; a LinkError for a forged, tampered or expired one."""
        try:
            data: Any = self._links.loads(token, max_age=self.max_age)
        except SignatureExpired:
            raise LinkError("this link has expired: links are valid for "
                            f"{self.settings.link_ttl_days} days; use the latest report") from None
        except BadSignature:
            raise LinkError("this link is not valid (it was changed or not issued by this service)") from None
        keys = ("a", "t", "s", "f", "r", "h", "n")
        if not isinstance(data, dict) or not all(isinstance(data.get(k), str) for k in keys):
            raise LinkError("this link is not valid")
        return LinkClaim(*(data[k] for k in keys))

    def form_token(self, purpose: str) -> str:
        """A signed CSRF token bound to ``purpose`` (the link token, or an undo of one job)."""
        return str(self._forms.dumps({"p": _digest(purpose)}))

    def check_form(self, token: str, purpose: str) -> None:
        """Refuse a missing, forged, expired or misbound CSRF token."""
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

"""OAuth scopes that reach a mailbox's mail, per provider: what an app granted them can do with the messages."""

from __future__ import annotations

from collections.abc import Iterable

from scanner.model import MailAccess

GOOGLE = {
    # Gmail API scopes (developers.google.com/workspace/gmail/api/auth/scopes); IMAP/POP/SMTP by OAuth use the first.
    "https://mail.google.com/": MailAccess.FULL,
    "https://www.googleapis.com/auth/gmail.modify": MailAccess.FULL,
    "https://www.googleapis.com/auth/gmail.readonly": MailAccess.READ,
}
"""gmail.metadata (headers and labels only), gmail.send, gmail.compose and gmail.insert read no message body."""

GRAPH = {
    # Microsoft Graph and Exchange delegated permissions (learn.microsoft.com/graph/permissions-reference).
    "mail.readwrite": MailAccess.FULL,
    "mail.readwrite.shared": MailAccess.FULL,
    "imap.accessasuser.all": MailAccess.FULL,
    "pop.accessasuser.all": MailAccess.FULL,
    "ews.accessasuser.all": MailAccess.FULL,
    "eas.accessasuser.all": MailAccess.FULL,
    "full_access_as_user": MailAccess.FULL,
    "mail.read": MailAccess.READ,
    "mail.read.shared": MailAccess.READ,
}
"""Mail.ReadBasic (no body or attachments) and Mail.Send read no message body."""


def mail_access(scopes: Iterable[str], table: dict[str, MailAccess]) -> MailAccess:
    """The widest mail access any of the scopes gives, by one provider's table (case-insensitive for Graph)."""
    found = {table.get(s) or table.get(s.lower()) for s in scopes}
    if MailAccess.FULL in found:
        return MailAccess.FULL
    return MailAccess.READ if MailAccess.READ in found else MailAccess.NONE

"""The few exceptions mailwarden raises at its boundaries, and the "did you mean" hint their messages share."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class MailwardenError(Exception):
    """Base of every error mailwarden reports to a user."""


class ConfigError(MailwardenError):
    """The configuration (or a file it names) is missing or invalid."""


class AdapterError(MailwardenError):
    """A provider adapter could not read what it needed."""


class DnsError(MailwardenError):
    """DNS collection could not run at all."""


class StoreError(MailwardenError):
    """The store could not be opened, migrated or written."""


class RunFailed(MailwardenError):
    """The run itself could not be done (exit status 1), as against bad input (exit status 2): a scan that
    failed or was interrupted, a busy lease, outputs that could not be written, a broken check package."""


def nearest(name: str, known: Iterable[str]) -> str:
    """The suffix " (did you mean 'x'?)" for the known name closest to a misspelt one, or "" when none is close."""
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""

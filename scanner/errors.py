"""The few exceptions mailwarden raises at its boundaries."""


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

"""What the shared adapter test suite needs from each provider's contract server."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from scanner.model import Fact, Mailbox
from tests.contract.estate import Estate
from tests.contract.server import ContractServer


class Harness(Protocol):
    """One provider: its contract server, the tenant config pointing at it, and what the adapter should read.

    A module ``tests/contract/<provider>.py`` exposes ``HARNESS``; the shared suite
    (tests/scanner/adapters/test_provider_contract.py) finds every such module by itself.
    """

    provider: str
    capabilities: frozenset[Fact]  # facts the adapter reports COLLECTED; every other provider fact is UNSUPPORTED
    list_path: str  # the path prefix of the paged listing of mailboxes (for pagination and malformed-page tests)
    token_path: str  # the path of the token endpoint ("" when the provider uses a static API key)

    def serve(self, estate: Estate, *, page_size: int) -> ContractServer:
        """Start a contract server publishing the estate, with listings paged at ``page_size``."""
        ...

    def tenant_toml(self, server: ContractServer, estate: Estate, workdir: Path) -> str:
        """The [[tenants]] table for the estate, credentials as a reference to a file written in ``workdir``."""
        ...

    def secret_values(self, workdir: Path) -> list[str]:
        """The secret strings (key material, client secret, API key) that must never appear in output."""
        ...

    def expire_tokens(self, server: ContractServer) -> None:
        """Make every token issued so far invalid (the next API call answers 401)."""
        ...

    def expected(self, estate: Estate) -> dict[str, Mailbox]:
        """The normalized mailboxes the adapter must produce from this estate, by address."""
        ...

    def expected_catch_all(self, estate: Estate) -> dict[str, str | None]:
        """The catch-all per domain the adapter must report ({} when the provider cannot expose it)."""
        ...

"""The one HTTP client every provider adapter uses: bounded concurrency, retries, throttling, token refresh."""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import random
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

import httpx

from scanner.errors import AdapterError

log = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
"""Statuses worth retrying: throttling and transient server errors."""


class ApiError(AdapterError):
    """A provider answered with an error status that retrying will not fix."""

    def __init__(self, message: str, *, status: int, code: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class TokenSource(Protocol):
    """Gives a bearer token; ``refresh=True`` asks for a new one (the old was refused)."""

    async def token(self, *, refresh: bool = False) -> str:
        """A current access token."""
        ...


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how long to retry: capped exponential backoff with full jitter."""

    attempts: int = 6
    base: float = 0.5
    cap: float = 30.0
    max_retry_after: float = 120.0

    def backoff(self, attempt: int, rng: random.Random) -> float:
        """Seconds to wait before retry number ``attempt`` (1-based)."""
        return rng.uniform(0, min(self.cap, self.base * (2 ** (attempt - 1))))


def endpoint_of(method: str, url: str) -> str:
    """``METHOD /path`` for messages: never the query string, which may carry identifiers or tokens."""
    parts = urlsplit(url)
    return f"{method} {parts.scheme}://{parts.netloc}{parts.path}"


def retry_after(response: httpx.Response) -> float | None:
    """The Retry-After header in seconds (delta-seconds or HTTP-date), if present and sane."""
    value = response.headers.get("retry-after")
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def error_message(response: httpx.Response) -> tuple[str, str]:
    """A provider's own error code and message from a JSON error body, cut short; never the whole body."""
    try:
        body = response.json()
    except ValueError:
        return "", response.reason_phrase
    code, message = "", ""
    if isinstance(body, Mapping):
        error = body.get("error")
        if isinstance(error, Mapping):
            code = str(error.get("code") or error.get("status") or "")
            message = str(error.get("message") or "")
        elif isinstance(error, str):
            code, message = error, str(body.get("error_description") or "")
        elif "msg" in body:
            code, message = str(body.get("type") or ""), str(body.get("msg"))
    return code[:80], (message or response.reason_phrase)[:300]


class ApiClient:
    """Sends JSON requests for one tenant's adapter; every provider's quirks stay in its own module."""

    def __init__(
        self,
        label: str,
        *,
        token: TokenSource | None = None,
        headers: Mapping[str, str] | None = None,
        concurrency: int = 8,
        retry: RetryPolicy = RetryPolicy(),
        timeout: float = 30.0,
        verify: ssl.SSLContext | str | bool = True,
        transient: Callable[[httpx.Response], bool] | None = None,
        hint: Callable[[httpx.Response], tuple[bool, float | None]] | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        seed: int | None = None,
    ) -> None:
        self.label = label
        self._token = token
        self._client = httpx.AsyncClient(
            headers=dict(headers or {}), timeout=timeout, follow_redirects=False,
            # A CA bundle path becomes a context: httpx deprecates verify=<path>.
            verify=ssl.create_default_context(cafile=verify) if isinstance(verify, str) else verify,
            limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
        )
        self._limit = asyncio.Semaphore(concurrency)
        self._retry = retry
        self._transient = transient or (lambda response: False)
        self._hint = hint  # a provider's own word on a retryable answer: (retry at all?, seconds to wait)
        self._sleep = sleep
        self._rng = random.Random(seed)
        self.requests = 0
        self.retries = 0

    async def __aenter__(self) -> ApiClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()

    async def request(
        self,
        method: str,
        url: str,
        *,
        params: Mapping[str, Any] | None = None,
        json_body: Any = None,
        form: Mapping[str, str] | None = None,
        token: TokenSource | None = None,
        allow: frozenset[int] = frozenset(),
        headers: Mapping[str, str] | None = None,
    ) -> tuple[int, Any]:
        """Send one request with retries; returns (status, parsed JSON or None) for 2xx and ``allow`` statuses.

        ``form`` sends a urlencoded body instead of JSON (OAuth token endpoints). ``headers`` go on every
        attempt of this request alike (an idempotency key stays the same across its retries).
        """
        source = token or self._token
        endpoint = endpoint_of(method, url)
        refreshed = False
        attempt = 0
        while True:
            attempt += 1
            sent = dict(headers or {})
            if source is not None:
                sent["Authorization"] = f"Bearer {await source.token()}"
            try:
                async with self._limit:
                    self.requests += 1
                    response = await self._client.request(
                        method, url, params=params, json=json_body, data=form, headers=sent
                    )
            except httpx.TransportError as exc:
                if attempt >= self._retry.attempts:
                    raise AdapterError(
                        f"{self.label}: {endpoint} failed after {attempt} attempts: {type(exc).__name__}"
                    ) from None
                await self._wait(attempt, None, endpoint, type(exc).__name__)
                continue
            status = response.status_code
            if status == 401 and source is not None and not refreshed:
                # An expired or revoked token: ask for a new one once, then give up.
                refreshed = True
                await source.token(refresh=True)
                continue
            if status in RETRY_STATUSES or self._transient(response):
                again, hinted = self._hint(response) if self._hint is not None else (True, None)
                if attempt >= self._retry.attempts or not again:
                    code, message = error_message(response)
                    raise ApiError(
                        f"{self.label}: {endpoint} still answered {status} {code} after {attempt} attempts: {message}",
                        status=status, code=code,
                    )
                waited = retry_after(response)
                await self._wait(attempt, hinted if waited is None else waited, endpoint, str(status))
                continue
            if status >= 300 and status not in allow:
                code, message = error_message(response)
                raise ApiError(f"{self.label}: {endpoint} answered {status} {code}: {message}".replace("  ", " "),
                               status=status, code=code)
            return status, self._parse(response, endpoint)

    async def get(self, url: str, params: Mapping[str, Any] | None = None, *, token: TokenSource | None = None) -> Any:
        """GET a JSON document."""
        return (await self.request("GET", url, params=params, token=token))[1]

    async def pages(
        self,
        url: str,
        params: Mapping[str, Any] | None,
        next_page: Callable[[Any, str, Mapping[str, Any] | None], tuple[str, Mapping[str, Any] | None] | None],
        *,
        token: TokenSource | None = None,
    ) -> AsyncIterator[Any]:
        """Each page of a paged listing; ``next_page(body, url, params)`` gives the next request or None."""
        request: tuple[str, Mapping[str, Any] | None] | None = (url, params)
        while request is not None:
            body = await self.get(request[0], request[1], token=token)
            yield body
            request = next_page(body, *request)

    async def _wait(self, attempt: int, hinted: float | None, endpoint: str, why: str) -> None:
        delay = self._retry.backoff(attempt, self._rng) if hinted is None else min(hinted, self._retry.max_retry_after)
        self.retries += 1
        log.info("retrying", extra={"adapter": self.label, "endpoint": endpoint, "why": why, "delay": round(delay, 3)})
        await self._sleep(delay)

    def _parse(self, response: httpx.Response, endpoint: str) -> Any:
        if not response.content:
            return None
        try:
            return response.json()
        except (ValueError, json.JSONDecodeError):
            raise AdapterError(
                f"{self.label}: {endpoint} returned a malformed response (not JSON, {len(response.content)} bytes)"
            ) from None

"""A real HTTP server on loopback for provider contract tests, with switches for the faults providers have."""

from __future__ import annotations

import json
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass
class Request:
    """One request as the provider would see it."""

    method: str
    path: str
    query: dict[str, str]
    headers: Mapping[str, str]
    body: bytes = b""

    def json(self) -> Any:
        """The body parsed as JSON (None when empty)."""
        return json.loads(self.body) if self.body else None

    def form(self) -> dict[str, str]:
        """The body parsed as a urlencoded form."""
        return {k: v[-1] for k, v in parse_qs(self.body.decode("utf-8")).items()}

    @property
    def bearer(self) -> str | None:
        """The bearer token, if the request carries one."""
        value = self.headers.get("authorization", "")
        return value[7:] if value.lower().startswith("bearer ") else None


@dataclass
class Reply:
    """A response: a JSON body (or raw bytes), a status and headers."""

    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    raw: bytes | None = None


@dataclass
class Faults:
    """Switches a test flips to make the server misbehave like the real service sometimes does."""

    throttle: int = 0  # answer the next N requests with the provider's throttling reply
    errors: int = 0  # answer the next N requests with error_status
    error_status: int = 503
    malformed: dict[str, int] = field(default_factory=dict)  # path prefix -> next N answers are not JSON
    rate_limit: float = 0.0  # requests per second the service allows (0: unlimited); excess is throttled
    burst: float = 0.0
    _tokens: float = 0.0
    _stamp: float = 0.0

    def take_rate(self) -> bool:
        """True when the request fits the rate limit (a token bucket)."""
        if self.rate_limit <= 0:
            return True
        now = time.monotonic()
        capacity = max(self.burst, self.rate_limit)
        if self._stamp == 0.0:
            self._tokens, self._stamp = capacity, now
        self._tokens = min(capacity, self._tokens + (now - self._stamp) * self.rate_limit)
        self._stamp = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False


class ContractServer:
    """Serves ``app`` on a free loopback port in a background thread; faults apply before the app runs."""

    def __init__(
        self,
        app: Callable[[Request], Reply],
        *,
        throttled: Callable[[Request], Reply] = lambda request: Reply(429, {"error": "throttled"}, {"Retry-After": "1"}),
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.app = app
        self.throttled = throttled
        self.faults = Faults()
        self.log: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._tls = tls
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The server's base URL."""
        assert self._httpd is not None, "start the server first"
        scheme = "https" if self._tls else "http"
        return f"{scheme}://127.0.0.1:{self._httpd.server_address[1]}"

    def count(self, prefix: str = "") -> int:
        """How many requests reached paths starting with ``prefix``."""
        with self._lock:
            return sum(1 for _, path in self.log if path.startswith(prefix))

    def _dispatch(self, request: Request) -> Reply:
        with self._lock:
            self.log.append((request.method, request.path))
            faults = self.faults
            if faults.throttle > 0:
                faults.throttle -= 1
                return self.throttled(request)
            if not faults.take_rate():
                return self.throttled(request)
            if faults.errors > 0:
                faults.errors -= 1
                return Reply(faults.error_status, {"error": {"code": faults.error_status, "message": "backend error"}})
            for prefix, remaining in faults.malformed.items():
                if remaining > 0 and request.path.startswith(prefix):
                    faults.malformed[prefix] = remaining - 1
                    return Reply(200, raw=b'{"items": [{"address": "trunc')
        return self.app(request)

    def start(self) -> ContractServer:
        """Bind a free loopback port and serve in a daemon thread."""
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body are separate writes: Nagle + delayed ACK cost 40 ms each

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
                return

            def _handle(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                parts = urlsplit(self.path)
                request = Request(
                    self.command, parts.path, {k: v[-1] for k, v in parse_qs(parts.query).items()},
                    {k.lower(): v for k, v in self.headers.items()}, self.rfile.read(length) if length else b"",
                )
                try:
                    reply = server._dispatch(request)
                except Exception as exc:  # a bug in a fixture server must show up as a 500, not a hang
                    reply = Reply(500, {"error": {"code": 500, "message": f"contract server bug: {exc!r}"}})
                payload = reply.raw if reply.raw is not None else (
                    b"" if reply.body is None else json.dumps(reply.body).encode("utf-8"))
                self.send_response(reply.status)
                headers = {"Content-Type": "application/json; charset=UTF-8", **reply.headers}
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

        httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        httpd.daemon_threads = True
        if self._tls is not None:
            httpd.socket = self._tls.wrap_socket(httpd.socket, server_side=True)
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},  # fast stop()
                                        name="contract-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and free the port (a stopped server is a provider that is down)."""
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> ContractServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

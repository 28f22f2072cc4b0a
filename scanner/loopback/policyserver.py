"""An HTTPS server on loopback that serves MTA-STS policies, and a throwaway CA to certify it (tests, demo)."""

from __future__ import annotations

import datetime as dt
import http.server
import socket
import ssl
import tempfile
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

POLICY_PATH = "/.well-known/mta-sts.txt"


class LoopbackCA:
    """A certificate authority made up on the spot, issuing server certificates for named hosts."""

    def __init__(self, name: str = "mailwarden loopback test CA") -> None:
        self._key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = dt.datetime.now(dt.UTC)
        public = self._key.public_key()
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .sign(self._key, hashes.SHA256())
        )

    @property
    def pem(self) -> bytes:
        """The CA certificate in PEM, for a client's trust store (``[mta_sts] ca_bundle``)."""
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def write(self, path: Path) -> Path:
        """Write the CA certificate as a PEM bundle and return its path."""
        path.write_bytes(self.pem)
        return path

    def issue(self, hosts: Iterable[str], *, expired: bool = False) -> tuple[bytes, bytes]:
        """A server certificate (PEM) and its key (PEM) valid for ``hosts``; ``expired`` makes it lapsed."""
        names = [h.lower().rstrip(".") for h in hosts]
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        start, end = (now - dt.timedelta(days=3), now - dt.timedelta(days=1)) if expired else (
            now - dt.timedelta(hours=1),
            now + dt.timedelta(days=7),
        )
        ca_public = self.certificate.public_key()
        assert isinstance(ca_public, ec.EllipticCurvePublicKey)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0] if names else "none")]))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_public), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        return certificate.public_bytes(serialization.Encoding.PEM), key_pem

    def server_context(self, hosts: Iterable[str], *, expired: bool = False) -> ssl.SSLContext:
        """A TLS server context presenting a certificate for ``hosts`` issued by this CA."""
        cert_pem, key_pem = self.issue(hosts, expired=expired)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        with tempfile.TemporaryDirectory() as scratch:
            cert_file, key_file = Path(scratch, "cert.pem"), Path(scratch, "key.pem")
            cert_file.write_bytes(cert_pem)
            key_file.write_bytes(key_pem)
            context.load_cert_chain(cert_file, key_file)
        return context


@dataclass(frozen=True, slots=True)
class PolicyResponse:
    """What the server answers for one policy host: a status, a media type, a body, extra headers."""

    body: bytes | str = b""
    status: int = 200
    content_type: str = "text/plain"
    headers: Mapping[str, str] = field(default_factory=dict)
    hang: bool = False  # accept the request and never answer (a timeout for the client)

    @property
    def payload(self) -> bytes:
        """The body as bytes."""
        return self.body.encode("utf-8") if isinstance(self.body, str) else self.body


def policies_from_directory(directory: Path) -> dict[str, PolicyResponse]:
    """Policies to serve from ``<domain>.txt`` files: each is served for ``mta-sts.<domain>`` as text/plain."""
    return {f"mta-sts.{path.stem.lower()}": PolicyResponse(path.read_bytes()) for path in sorted(directory.glob("*.txt"))}


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _HttpsServer
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 (the name http.server dispatches to)
        host = (self.headers.get("Host") or "").lower()
        host = host.rpartition(":")[0] if ":" in host else host
        self.server.owner.requests.append((host, self.path))
        response = self.server.owner.policies.get(host) if self.path == POLICY_PATH else None
        if response is None:
            response = PolicyResponse(b"not found\n", status=404)
        if response.hang:
            self.server.owner.stopping.wait(30)
            return
        payload = response.payload
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(payload)))
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (the signature http.server uses)
        """Stay quiet: tests and the demo do not want access logs on stderr."""


class _HttpsServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], owner: PolicyServer, context: ssl.SSLContext) -> None:
        self.owner = owner
        self.context = context
        super().__init__(address, _Handler)

    def finish_request(self, request: socket.socket | tuple[bytes, socket.socket], client_address: object) -> None:
        """Do the TLS handshake in the request's own thread, so a stalled client holds up no one else."""
        assert isinstance(request, socket.socket)
        request.settimeout(10)
        try:
            wrapped = self.context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            return  # the client refused our certificate (as it should for a bad one) or went away
        try:
            super().finish_request(wrapped, client_address)  # type: ignore[arg-type]
        finally:
            try:
                wrapped.close()
            except OSError:
                pass

    def handle_error(self, request: object, client_address: object) -> None:
        """A client that drops the connection mid-request is not worth a traceback."""


class PolicyServer:
    """Serves ``https://<policy host>:<port>/.well-known/mta-sts.txt`` on loopback, by Host header."""

    def __init__(
        self,
        policies: Mapping[str, PolicyResponse | bytes | str],
        context: ssl.SSLContext,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.policies: dict[str, PolicyResponse] = {
            name.lower().rstrip("."): r if isinstance(r, PolicyResponse) else PolicyResponse(r)
            for name, r in policies.items()
        }
        self.requests: list[tuple[str, str]] = []
        self.server_names: list[str | None] = []  # the SNI of every TLS handshake, in order
        context.sni_callback = lambda _socket, name, _context: self.server_names.append(name)  # type: ignore[assignment]
        self.stopping = threading.Event()
        self._server = _HttpsServer((host, port), self, context)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="policy-server", daemon=True
        )

    @property
    def port(self) -> int:
        """The port the server listens on."""
        return int(self._server.server_address[1])

    def start(self) -> PolicyServer:
        """Start serving in a background thread."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and release hung requests."""
        self.stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> PolicyServer:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

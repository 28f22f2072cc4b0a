"""The loopback MTA-STS policy server and its throwaway CA, spoken to with a plain TLS client."""

from __future__ import annotations

import http.client
import socket
import ssl
from pathlib import Path

import pytest

from scanner.loopback.policyserver import LoopbackCA, PolicyResponse, PolicyServer, policies_from_directory


@pytest.fixture(scope="module")
def ca() -> LoopbackCA:
    return LoopbackCA()


def _get(server: PolicyServer, ca: LoopbackCA, host: str, path: str = "/.well-known/mta-sts.txt"):
    context = ssl.create_default_context(cadata=ca.pem.decode("ascii"))
    connection = http.client.HTTPSConnection("127.0.0.1", server.port, context=context, timeout=3)
    # Connect by address; verify the certificate and send SNI for the policy host.
    connection.sock = context.wrap_socket(
        socket.create_connection(("127.0.0.1", server.port), timeout=3), server_hostname=host
    )
    connection.request("GET", path, headers={"Host": host})
    response = connection.getresponse()
    body = response.read()
    connection.close()
    return response.status, response.getheader("Content-Type"), body


def test_policies_are_served_per_host_from_a_directory(ca: LoopbackCA, tmp_path: Path) -> None:
    (tmp_path / "a.example.txt").write_text("version: STSv1\nmode: none\nmax_age: 1\n", encoding="utf-8")
    (tmp_path / "notes.md").write_text("not a policy", encoding="utf-8")
    policies = policies_from_directory(tmp_path)
    assert list(policies) == ["mta-sts.a.example"]
    with PolicyServer(policies, ca.server_context(["mta-sts.a.example", "mta-sts.b.example"])) as server:
        assert _get(server, ca, "mta-sts.a.example") == (200, "text/plain", b"version: STSv1\nmode: none\nmax_age: 1\n")
        assert _get(server, ca, "mta-sts.b.example")[0] == 404
        assert _get(server, ca, "mta-sts.a.example", "/other")[0] == 404
        assert server.server_names == ["mta-sts.a.example", "mta-sts.b.example", "mta-sts.a.example"]


def test_certificate_names_only_the_given_hosts(ca: LoopbackCA) -> None:
    with PolicyServer({"mta-sts.a.example": PolicyResponse("x")}, ca.server_context(["mta-sts.a.example"])) as server:
        with pytest.raises(ssl.SSLCertVerificationError):
            _get(server, ca, "mta-sts.c.example")
        assert _get(server, ca, "mta-sts.a.example")[0] == 200  # a refused handshake does not stop the server

"""The emailed report through a real SMTP server on loopback (aiosmtpd): plain, STARTTLS and implicit TLS."""

from __future__ import annotations

import csv
import datetime as dt
import email
import email.policy
import io
import ipaddress
import re
import socket
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from checks.evaluate import fingerprint
from reports.mail import DeliveryError, build_message, deliver
from scanner.cli import main
from scanner.config import EmailConfig
from scanner.model import Finding, Remediation, Severity, Status
from scanner.store.database import RunRecord, Store

NOW = datetime(2026, 11, 23, 6, tzinfo=UTC)
HOSTILE = "<script>alert(1)</script>"


@dataclass
class Inbox:
    """What the SMTP server received, and the AUTH logins it saw."""

    messages: list[tuple[list[str], EmailMessage]] = field(default_factory=list)
    logins: list[tuple[str, str]] = field(default_factory=list)
    refuse_rcpt: bool = False

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
        if self.refuse_rcpt:
            return "550 5.1.1 no such mailbox here"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        parsed = email.message_from_bytes(envelope.content, policy=email.policy.default)
        self.messages.append((list(envelope.rcpt_tos), parsed))  # type: ignore[arg-type]
        return "250 Message accepted"

    def authenticate(self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
        self.logins.append((auth_data.login.decode(), auth_data.password.decode()))
        return AuthResult(success=auth_data.password == b"s3cret")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1, generated for this test run."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mailwarden test SMTP")])
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(datetime.now(UTC) - dt.timedelta(minutes=5))
        .not_valid_after(datetime.now(UTC) + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                       critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    folder = tmp_path_factory.mktemp("tls")
    (folder / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
    return folder / "cert.pem", folder / "key.pem"


def _server_context(certificate: tuple[Path, Path]) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*map(str, certificate))
    return context


@pytest.fixture
def smtp(certificate: tuple[Path, Path]) -> Iterator[Callable[..., tuple[Inbox, int]]]:
    """Start an aiosmtpd server on loopback: mode "plain", "starttls" (required, with AUTH) or "tls"."""
    started: list[Controller] = []

    def start(mode: str) -> tuple[Inbox, int]:
        inbox, port = Inbox(), _free_port()
        options: dict[str, Any] = {"hostname": "127.0.0.1", "port": port}
        if mode == "starttls":
            options.update(tls_context=_server_context(certificate), require_starttls=True,
                           authenticator=inbox.authenticate, auth_required=True)
        elif mode == "tls":
            options.update(ssl_context=_server_context(certificate))
        controller = Controller(inbox, **options)
        controller.start()
        started.append(controller)
        return inbox, port

    yield start
    for controller in started:
        controller.stop()


def _findings() -> list[Finding]:
    return [
        Finding(id=fingerprint("dmarc.missing", "acme", "acme.example"), check="dmarc.missing", status=Status.FAIL,
                severity=Severity.HIGH, tenant="acme", domain="acme.example", subject="acme.example",
                title="Domain publishes no DMARC record",
                evidence={"records_seen": [HOSTILE],
                          "publish": '_dmarc.acme.example. TXT "v=DMARC1; p=quarantine"'}),
        Finding(id=fingerprint("forwarding.external", "acme", "ann@acme.example"), check="forwarding.external",
                status=Status.FAIL, severity=Severity.HIGH, tenant="acme", domain="acme.example",
                subject="ann@acme.example", title="Mailbox forwards mail outside the tenant",
                evidence={"targets": ["=cmd@out.test"]},
                remediation=Remediation("forwarding.disable", {"subject": "ann@acme.example"})),
        Finding(id=fingerprint("forwarding.external", "globex", "hank@globex.example"), check="forwarding.external",
                status=Status.FAIL, severity=Severity.HIGH, tenant="globex", domain="globex.example",
                subject="hank@globex.example", title="Mailbox forwards mail outside the tenant",
                evidence={"targets": ["x@out.test"]},
                remediation=Remediation("forwarding.disable", {"subject": "hank@globex.example"})),
        Finding(id=fingerprint("catchall.enabled", "acme", "acme.example"), check="catchall.enabled",
                status=Status.PASS, severity=Severity.MEDIUM, tenant="acme", domain="acme.example",
                subject="acme.example", title="Domain delivers mail for unknown recipients (catch-all)"),
    ]


@pytest.fixture
def stored(tmp_path: Path) -> Path:
    """A store with one finished run of two tenants."""
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    store.start_run("r1", NOW, "c" * 64, "0.1.0")
    store.record_findings("r1", _findings(), NOW, ["acme", "globex"])
    store.finish_run("r1", NOW, "complete", {"tenants": {}})
    store.close()
    return tmp_path / "s.db"


def _email(port: int, **extra: Any) -> EmailConfig:
    return EmailConfig.model_validate({
        "host": "127.0.0.1", "port": port, "security": "none", "from": "mailwarden@msp.example",
        "lists": [{"name": "acme ops", "to": ["ops@acme.example"], "tenants": ["acme"]}],
        "retries": 1, "retry_delay": 0, "timeout": 5, "report_url": "https://reports.msp.example/latest.html",
        **extra,
    })


def _parts(message: EmailMessage) -> tuple[str, str, list[EmailMessage]]:
    text = message.get_body(preferencelist=("plain",))
    html = message.get_body(preferencelist=("html",))
    assert text is not None and html is not None
    return text.get_content(), html.get_content(), list(message.iter_attachments())


def _run() -> RunRecord:
    return RunRecord("r1", NOW, NOW, "complete", {"tenants": {}}, "c" * 64, "0.1.0")


def test_message_has_text_html_and_the_csv_for_its_tenants_only() -> None:
    message = build_message(_run(), _findings(), {"new": [_findings()[0].id]}, _email(25).lists[0], _email(25))
    assert message.get_content_type() == "multipart/mixed"
    text, html, attachments = _parts(message)
    assert "NEW SINCE THE LAST RUN (1)" in text and "dmarc.missing acme.example" in text
    assert "Fix: forwarding.disable: Turn off the forwards of ann@acme.example" in text
    assert 'Fix: publish in acme.example\'s DNS zone:\n     _dmarc.acme.example. TXT "v=DMARC1; p=quarantine"' in text
    assert text.count('_dmarc.acme.example. TXT "v=DMARC1; p=quarantine"') == 1  # each fix stated once
    assert "hank@globex.example" not in text + html  # another tenant's finding
    assert "<script" not in html.lower() and "&lt;script&gt;" not in html  # no script; evidence stays out
    assert 'style="' in html and "<table" in html
    [attachment] = attachments
    assert attachment.get_filename() == "findings.csv" and attachment.get_content_type() == "text/csv"
    rows = list(csv.DictReader(io.StringIO(attachment.get_content())))
    assert {r["tenant"] for r in rows} == {"acme"} and len(rows) == 3
    assert all(not v.startswith(("=", "+", "-", "@")) for r in rows for v in r.values())  # through safe_cell
    assert message["Subject"] == "mailwarden report 2026-11-23 for acme ops: 2 failing, 1 new"


def test_plain_delivery_is_received_with_parts_attachment_and_links(smtp: Any) -> None:
    inbox, port = smtp("plain")
    config = _email(port)
    message = build_message(_run(), _findings(), {}, config.lists[0], config)
    assert deliver(message, config, password=None, ca_bundle=None) == 1
    [(rcpts, received)] = inbox.messages
    assert rcpts == ["ops@acme.example"]
    text, html, [attachment] = _parts(received)
    links = re.findall(r'href="([^"]+)"', html)
    ann = fingerprint("forwarding.external", "acme", "ann@acme.example")
    assert f"https://reports.msp.example/latest.html#finding={ann}" in links
    assert "https://reports.msp.example/latest.html" in links
    assert all(link.startswith("https://reports.msp.example/") for link in links)
    assert f"Details: https://reports.msp.example/latest.html#finding={ann}" in text
    assert attachment.get_filename() == "findings.csv"


def test_starttls_with_auth_from_a_secret_reference(smtp: Any, stored: Path, certificate: tuple[Path, Path],
                                                    write_config: Callable[[str], Path],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    inbox, port = smtp("starttls")
    monkeypatch.setenv("MW_TEST_SMTP_PASSWORD", "s3cret")
    config = write_config(f'''
[store]
url = "sqlite:///{stored}"
[email]
host = "127.0.0.1"
port = {port}
security = "starttls"
username = "mailwarden"
password = "env:MW_TEST_SMTP_PASSWORD"
from = "mailwarden@msp.example"
ca_bundle = "{certificate[0]}"
retries = 0
[[email.lists]]
name = "acme"
to = ["ops@acme.example", "cto@acme.example"]
tenants = ["acme"]
[[email.lists]]
name = "everyone"
to = ["noc@msp.example"]
[[tenants]]
name = "acme"
domains = ["acme.example"]
[[tenants]]
name = "globex"
domains = ["globex.example"]
''')
    done = CliRunner().invoke(main, ["report", "--config", str(config), "--email"])
    assert done.exit_code == 0, done.output
    assert inbox.logins == [("mailwarden", "s3cret"), ("mailwarden", "s3cret")]
    assert [sorted(r) for r, _ in inbox.messages] == [["cto@acme.example", "ops@acme.example"], ["noc@msp.example"]]
    everyone = inbox.messages[1][1]
    assert "hank@globex.example" in _parts(everyone)[0]
    assert "s3cret" not in done.output


def test_implicit_tls(smtp: Any, certificate: tuple[Path, Path]) -> None:
    inbox, port = smtp("tls")
    config = _email(port, security="tls")
    message = build_message(_run(), _findings(), {}, config.lists[0], config)
    deliver(message, config, password=None, ca_bundle=certificate[0])
    assert len(inbox.messages) == 1


def test_an_untrusted_certificate_is_refused(smtp: Any) -> None:
    inbox, port = smtp("tls")
    config = _email(port, security="tls", retries=0)
    with pytest.raises(DeliveryError, match="TLS failed"):
        deliver(build_message(_run(), _findings(), {}, config.lists[0], config), config, password=None,
                ca_bundle=None)
    assert inbox.messages == []


def test_a_refused_connection_is_retried_then_reported(stored: Path, write_config: Callable[[str], Path]) -> None:
    port = _free_port()  # nothing listens here
    config = write_config(f'''
[store]
url = "sqlite:///{stored}"
[email]
host = "127.0.0.1"
port = {port}
security = "none"
from = "mailwarden@msp.example"
retries = 2
retry_delay = 0
[[email.lists]]
name = "acme"
to = ["ops@acme.example"]
[[tenants]]
name = "acme"
domains = ["acme.example"]
''')
    done = CliRunner().invoke(main, ["report", "--config", str(config), "--email"])
    assert done.exit_code == 4
    assert (f"NOT delivered to list acme (ops@acme.example): could not deliver to 127.0.0.1:{port} (none) "
            "after 3 attempt(s): connection refused") in done.output


def test_a_permanent_refusal_is_not_retried(smtp: Any) -> None:
    inbox, port = smtp("plain")
    inbox.refuse_rcpt = True
    config = _email(port, retries=3)
    slept: list[float] = []
    with pytest.raises(DeliveryError, match=r"after 1 attempt\(s\): every recipient refused: ops@acme.example "
                                            r"\(550 5.1.1 no such mailbox here\)"):
        deliver(build_message(_run(), _findings(), {}, config.lists[0], config), config, password=None,
                ca_bundle=None, sleep=slept.append)
    assert slept == []


def test_starttls_missing_on_the_server_fails_clearly(smtp: Any) -> None:
    _, port = smtp("plain")  # offers no STARTTLS
    config = _email(port, security="starttls", retries=0)
    with pytest.raises(DeliveryError, match="STARTTLS"):
        deliver(build_message(_run(), _findings(), {}, config.lists[0], config), config, password=None,
                ca_bundle=None)


@pytest.mark.parametrize(("extra", "problem"), [
    ({"security": "none", "username": "u", "password": "env:X"}, "never sent unencrypted"),
    ({"username": "u"}, "go together"),
    ({"password": "hunter2", "username": "u"}, "secret reference"),
    ({"security": "ssl"}, "security"),
    ({"report_url": "javascript:alert(1)"}, "report_url"),
])
def test_email_config_is_validated(extra: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValueError, match=problem) as caught:
        _email(25, **extra)
    assert "hunter2" not in str(caught.value)


def test_an_email_list_naming_an_unknown_tenant_is_refused(write_config: Callable[[str], Path]) -> None:
    from scanner.config import load_config
    from scanner.errors import ConfigError

    path = write_config("""
[email]
host = "127.0.0.1"
from = "mailwarden@msp.example"
[[email.lists]]
name = "x"
to = ["ops@acme.example"]
tenants = ["nope"]
[[tenants]]
name = "acme"
domains = ["acme.example"]
""")
    with pytest.raises(ConfigError, match=r"email.lists\[0\].tenants: no tenant named 'nope'"):
        load_config(path)


def test_the_email_names_the_top_failing_sources() -> None:
    def source(ip: str, failed: int, ptr: str | None) -> Finding:
        return Finding(id=fingerprint("dmarc.source_failing", "acme", "acme.example", ip), check="dmarc.source_failing",
                       status=Status.FAIL, severity=Severity.MEDIUM, tenant="acme", domain="acme.example",
                       subject="acme.example", item=ip, title="A source fails DMARC",
                       evidence={"messages": 100, "dmarc_fail": failed, "ptr": ptr, "sender": "unknown",
                                 "failed": ["SPF alignment", "DKIM alignment"]})

    findings = [*_findings(), *(source(f"192.0.2.{n}", n * 10, f"host{n}.example" if n % 2 else None)
                                for n in range(1, 8))]
    text, html, _ = _parts(build_message(_run(), findings, {}, _email(25).lists[0], _email(25)))
    block = text[text.index("SOURCES FAILING DMARC AT RECEIVERS"):]
    listed = [line for line in block.splitlines()[1:] if line.startswith("  - ")]
    assert len(listed) == 5 and "192.0.2.7 (host7.example)" in listed[0] and "70 of 100" in listed[0]
    assert "192.0.2.6 (no PTR)" in listed[1] and "192.0.2.2" not in block  # the five with most failed messages
    assert "Sources failing DMARC at receivers" in html and "192.0.2.7" in html
    quiet = _parts(build_message(_run(), _findings(), {}, _email(25).lists[0], _email(25)))[0]
    assert "SOURCES FAILING DMARC" not in quiet


def _weekly_findings() -> list[Finding]:
    """A week in which one DMARC record gets two proposals, one root cause has dependants and a forward drifted."""
    def finding(check: str, subject: str, status: Status = Status.FAIL, severity: Severity = Severity.HIGH,
                item: str = "", caused_by: str = "", remediation: Remediation | None = None, **evidence: Any) -> Finding:
        return Finding(id=fingerprint(check, "acme", subject, item), check=check, status=status, severity=severity,
                       tenant="acme", domain="acme.example", subject=subject, title=f"{check} title", item=item,
                       evidence=evidence, caused_by=caused_by, remediation=remediation)

    spf = finding("spf.missing", "acme.example", publish='acme.example. TXT "v=spf1 include:_spf.google.com -all"')
    return [
        finding("dmarc.policy_weak", "acme.example", severity=Severity.MEDIUM,
                publish='_dmarc.acme.example. TXT "v=DMARC1; p=quarantine; rua=mailto:d@acme.example"'),
        finding("drift.dns_weakened", "acme.example", item="dmarc",
                publish='_dmarc.acme.example. TXT "v=DMARC1; p=reject; rua=mailto:d@acme.example"'),
        spf,
        finding("spf.permissive_all", "acme.example", Status.SKIPPED, Severity.MEDIUM, caused_by=spf.id),
        finding("drift.forwarding_added", "ann@acme.example", added=["ann@personal.test"], mechanisms=["rule"],
                remediation=Remediation("forwarding.disable", {"subject": "ann@acme.example"})),
    ]


def test_the_weekly_email_lists_root_causes_with_one_fix_each() -> None:
    config = _email(25)
    message = build_message(_run(), _weekly_findings(), {}, config.lists[0], config, history=False)
    text, html, _ = _parts(message)
    # one DMARC record to publish, and why that one
    assert text.count('TXT "v=DMARC1') == 1 and 'TXT "v=DMARC1; p=reject' in text
    assert "Why this record: Publish this one record at _dmarc.acme.example. TXT: dmarc.policy_weak proposed" in text
    assert "stronger policy (p=)" in text and "Fix: see 2 above." in text
    # the dependant is named under its cause, never as a fix of its own
    assert "Also clears: spf.permissive_all (they follow from this)" in text
    assert "spf.permissive_all title" not in text and "4 root causes to fix" in text
    # the drift forward names what was added; no empty "()"
    assert "Turn off the forwards of ann@acme.example added since the previous run (ann@personal.test)" in text
    assert "()" not in text and "()" not in html
    assert "Fix: dns.publish" not in text and "Publish:" not in text  # each fix printed once
    assert "FIRST RUN: nothing to compare with yet" in text and "NEW SINCE" not in text
    assert message["Subject"] == "mailwarden report 2026-11-23 for acme ops: 4 failing"  # no "new" on a first run


def test_with_links_each_fix_carries_its_one_click_link(monkeypatch: pytest.MonkeyPatch) -> None:
    from reports.actions import link_signer
    from scanner.config import RemediationConfig

    monkeypatch.setenv("MW_TEST_LINK_SECRET", "k" * 32)
    signer = link_signer(RemediationConfig.model_validate(
        {"base_url": "https://fix.msp.example", "secret": "env:MW_TEST_LINK_SECRET"}))
    config = _email(25)
    message = build_message(_run(), _weekly_findings(), {}, config.lists[0], config, signer, history=False)
    text, html, _ = _parts(message)
    links = re.findall(r"(?:One click \(you confirm first\)|Verify once published): (https://fix\.msp\.example/r/\S+)",
                       text)
    assert len(links) == 3  # the DMARC record chosen, SPF and the forward; the superseded proposal has none
    assert "One click (you confirm first): https://fix.msp.example/r/" in text  # the forward: a job to confirm
    assert text.count("Verify once published: https://fix.msp.example/r/") == 2  # records: checked live
    assert all(html.count(link.replace("&", "&amp;")) == 1 for link in links)


def test_the_html_part_renders_in_chromium_without_overflow(tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    config = _email(25)
    message = build_message(_run(), _weekly_findings(), {}, config.lists[0], config, history=False)
    _, html, _ = _parts(message)
    page_file = tmp_path / "email.html"
    page_file.write_text(html, encoding="utf-8")
    artifacts = Path(__file__).resolve().parents[2] / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    problems: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium",
                                             args=["--headless", "--no-sandbox", "--disable-gpu"])
        for width in (1440, 390):
            page = browser.new_page(viewport={"width": width, "height": 900})
            page.on("console", lambda m: problems.append(m.text) if m.type in ("error", "warning") else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.route("**/*", lambda route: route.continue_() if route.request.url.startswith("file://")
                       else (problems.append(route.request.url), route.abort()))
            page.goto(page_file.as_uri())
            assert page.evaluate("document.documentElement.scrollWidth") <= width
            assert page.locator("h1").inner_text() == "4 root causes to fix"
            assert "Why this record" in page.inner_text("body")
            page.screenshot(path=str(artifacts / f"email-{width}.png"), full_page=True)
            page.close()
        browser.close()
    assert problems == []

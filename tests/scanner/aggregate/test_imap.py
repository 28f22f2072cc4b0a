"""Importing from the rua mailbox over IMAP, against a real Dovecot server on loopback (TLS, a CA of the test's)."""

from __future__ import annotations

import imaplib
import os
import pwd
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path

import pytest

from scanner.config import ImapConfig, SecretRef
from scanner.aggregate.importer import ImapError, import_mailbox
from scanner.aggregate.store import report_count, source_traffic
from scanner.loopback.policyserver import LoopbackCA
from scanner.store.database import Store
from tests.dmarc_fixtures import Row, report_xml

DATA = Path(__file__).resolve().parents[2] / "data" / "dmarc-aggregate"
PASSWORD = "imap-test-password"


@dataclass(frozen=True, slots=True)
class Dovecot:
    """A Dovecot IMAPS server on a free loopback port, with one user (``dmarc``) and a CA bundle to trust it."""

    port: int
    ca_bundle: Path

    def client(self) -> imaplib.IMAP4_SSL:
        """A logged-in IMAP client (the test's own, to put messages in and look at what is left)."""
        context = ssl.create_default_context(cafile=str(self.ca_bundle))
        client = imaplib.IMAP4_SSL("localhost", self.port, ssl_context=context, timeout=10)
        client.login("dmarc", PASSWORD)
        return client


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def dovecot() -> Iterator[Dovecot]:
    """Start Debian's Dovecot (installed by scripts/test.sh) with a configuration of the test's own."""
    binary = shutil.which("dovecot") or "/usr/sbin/dovecot"
    if not Path(binary).exists():
        raise RuntimeError("Dovecot is not installed: run scripts/test.sh (it installs Debian's dovecot-imapd)")
    root = Path(tempfile.mkdtemp(prefix="mailwarden-imap-"))
    root.chmod(0o755)  # Dovecot's auth process (user dovecot) reads the users file below it
    ca = LoopbackCA()
    cert, key = ca.issue(["localhost", "127.0.0.1"])
    (root / "cert.pem").write_bytes(cert)
    (root / "key.pem").write_bytes(key)
    (root / "key.pem").chmod(0o600)
    bundle = ca.write(root / "ca.pem")
    mail = root / "mail"
    mail.mkdir()
    owner = pwd.getpwnam("nobody")
    os.chown(mail, owner.pw_uid, owner.pw_gid)
    (root / "users").write_text(f"dmarc:{{PLAIN}}{PASSWORD}\n", encoding="utf-8")
    (root / "users").chmod(0o644)
    port = _free_port()
    (root / "dovecot.conf").write_text(f"""
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
protocols = imap
listen = 127.0.0.1
ssl = required
ssl_cert = <{root}/cert.pem
ssl_key = <{root}/key.pem
auth_mechanisms = plain login
first_valid_uid = 1
mail_location = maildir:{mail}/%u
passdb {{
  driver = passwd-file
  args = {root}/users
}}
userdb {{
  driver = static
  args = uid={owner.pw_uid} gid={owner.pw_gid} home={mail}/%u
}}
service imap-login {{
  inet_listener imap {{
    port = 0
  }}
  inet_listener imaps {{
    port = {port}
    ssl = yes
  }}
}}
service anvil {{
  chroot =
}}
service imap-login {{
  chroot =
}}
""", encoding="utf-8")
    server = subprocess.Popen([binary, "-F", "-c", str(root / "dovecot.conf")], stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    log = (root / "dovecot.log").read_text() if (root / "dovecot.log").exists() else ""
                    raise RuntimeError(f"Dovecot did not start: {server.stderr.read().decode() if server.stderr else ''}"
                                       f" {log}") from None
                time.sleep(0.1)
        yield Dovecot(port, bundle)
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        if os.environ.get("MW_KEEP_DOVECOT") is None:
            shutil.rmtree(root, ignore_errors=True)


def _message(report: bytes, name: str) -> bytes:
    message = EmailMessage()
    message["From"] = "noreply-dmarc-support@google.com"
    message["To"] = "dmarc@msp.example"
    message["Subject"] = f"Report domain: acme.example Submitter: google.com Report-ID: {name}"
    message.set_content("This is an aggregate report from google.com.")
    message.add_attachment(report, maintype="application", subtype="xml", filename=f"{name}.xml")
    return bytes(message)


def _config(dovecot: Dovecot, folder: str, archive: str = "", **changes: object) -> ImapConfig:
    os.environ["MW_TEST_IMAP_PASSWORD"] = PASSWORD
    values: dict[str, object] = {"host": "localhost", "port": dovecot.port, "username": "dmarc",
                                 "password": SecretRef("env:MW_TEST_IMAP_PASSWORD"), "folder": folder,
                                 "archive_folder": archive, "ca_bundle": dovecot.ca_bundle, "timeout": 10.0}
    values.update(changes)
    return ImapConfig(**values)


def _fill(dovecot: Dovecot, folder: str, messages: list[bytes]) -> None:
    client = dovecot.client()
    try:
        for name in (folder, "Archive"):
            client.create(name)
        for data in messages:
            status, _ = client.append(folder, "", imaplib.Time2Internaldate(time.time()), data)
            assert status == "OK"
    finally:
        client.logout()


def _count(dovecot: Dovecot, folder: str) -> int:
    client = dovecot.client()
    try:
        status, data = client.select(folder, readonly=True)
        assert status == "OK"
        return int(data[0])
    finally:
        client.logout()


def test_mailbox_reports_are_imported_once_and_archived(dovecot: Dovecot, store_url: str) -> None:
    folder = f"rua-{store_url.partition(':')[0]}"
    now = datetime.now(UTC).replace(microsecond=0)
    good = [_message(report_xml("google.com", f"{folder}-{n}", "acme.example", now - timedelta(days=1), now,
                                [Row("192.0.2.10", 5 + n)]), f"r{n}") for n in range(3)]
    attached = (DATA / "good" / "mox__outlook.eml").read_bytes()  # a receiver's real message, gzip attached
    broken = EmailMessage()
    broken["Subject"] = "Report domain: acme.example"
    broken.set_content("no attachment")
    _fill(dovecot, folder, [*good, attached, bytes(broken)])
    store = Store(store_url)
    try:
        result = import_mailbox(store, _config(dovecot, folder, "Archive"), Path("mailwarden.toml"))
        assert (result.read, result.stored, result.skipped) == (5, 4, 0)
        assert len(result.problems) == 1 and "no DMARC report attached" in result.problems[0][1]
        assert report_count(store) == 4
        assert {t.messages for t in source_traffic(store, domains=["acme.example"])} == {5 + 6 + 7}
        assert _count(dovecot, folder) == 1  # the unreadable message stays, so nothing is lost
        again = import_mailbox(store, _config(dovecot, folder, "Archive"), Path("mailwarden.toml"))
        assert (again.read, again.stored) == (1, 0) and report_count(store) == 4
    finally:
        store.close()


def test_wrong_password_and_untrusted_certificate_are_one_clear_error(dovecot: Dovecot, tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    os.environ["MW_TEST_IMAP_WRONG"] = "not-the-password"
    try:
        with pytest.raises(ImapError, match="refused user 'dmarc'") as refused:
            import_mailbox(store, _config(dovecot, "INBOX", password=SecretRef("env:MW_TEST_IMAP_WRONG")),
                           Path("mailwarden.toml"))
        assert "not-the-password" not in str(refused.value)
        with pytest.raises(ImapError, match="cannot reach the IMAP server"):
            import_mailbox(store, _config(dovecot, "INBOX", ca_bundle=None), Path("mailwarden.toml"))
    finally:
        store.close()

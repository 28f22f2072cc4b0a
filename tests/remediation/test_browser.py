"""Remediation in real headless Chromium: report link, confirmation, the change (in the demo's export file, and on
a mailcow contract server), audit entries, undo."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import uvicorn
from playwright.sync_api import expect, sync_playwright

from remediation.audit import entries
from remediation.web import build_app
from scanner.config import Config, load_config
from scanner.pipeline import run_scan
from scanner.service.serve import server_config
from scanner.store.database import Store
from scanner.loopback.zoneserver import ZoneServer
from tests.contract.estate import NOW, standard_estate
from tests.contract.mailcow import HARNESS as MAILCOW
from tests.contract.mailcow import MailcowState, with_state
from tests.contract.server import ContractServer
from tests.remediation.conftest import AUDIT_KEY, AUDIT_KEY_ENV, SECRET, SECRET_ENV, Estate, free_port

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]


@contextmanager
def _app(config: Config, port: int) -> Iterator[None]:
    """The remediation app on the loopback port the report's links name, run by uvicorn in a thread."""
    server = uvicorn.Server(server_config(build_app(config), "127.0.0.1", port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started
    try:
        yield
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture
def served(estate: Estate) -> Iterator[Estate]:
    """The scanned demo copy with its remediation app running."""
    with _app(estate.config, estate.port):
        yield estate


def test_click_confirm_see_the_change_and_the_audit_entries_then_undo(served: Estate) -> None:
    estate = served
    found = json.loads((estate.out / "findings.json").read_text(encoding="utf-8"))
    target = next(f for f in found if f["check"] == "forwarding.external" and f["status"] == "fail"
                  and f["subject"] == "eleanor.price@cedarlaw.example")
    forwards = estate.export("cedar-law") / "forwards.csv"
    assert "eleanor.price@personal-mail.test" in forwards.read_text(encoding="utf-8")
    assert Path(CHROMIUM).is_file(), f"{CHROMIUM} is missing: scripts/test.sh installs Debian's chromium"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            # The reverse proxy in front of the service names the operator; the test plays that proxy.
            context = browser.new_context(extra_http_headers={"X-Forwarded-User": "dana.ops@msp.example"})
            page = context.new_page()
            problems: list[str] = []
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.goto((estate.out / "report.html").as_uri() + f"#finding={target['id']}")
            link = page.locator("a.remediation-link").first
            expect(link).to_be_visible()
            link.click()
            page.wait_for_url(f"http://127.0.0.1:{estate.port}/r/**")
            expect(page.locator("#live-state")).to_contain_text("eleanor.price@personal-mail.test")
            assert "eleanor.price@personal-mail.test" in forwards.read_text(encoding="utf-8")  # GET changed nothing
            page.click("#confirm")
            expect(page.locator("#job-state")).to_have_text("done")
            expect(page.locator("tr.audit-entry")).to_have_count(2)
            expect(page.locator("tr.audit-entry td.kind")).to_have_text(["intent", "state"])
            assert "eleanor.price@personal-mail.test" not in forwards.read_text(encoding="utf-8")
            page.click("#undo")
            expect(page.locator("#job-state")).to_have_text("done")
            expect(page.locator("#summary")).to_contain_text("Undo")
            assert "eleanor.price@personal-mail.test" in forwards.read_text(encoding="utf-8")
            page.goto(f"http://127.0.0.1:{estate.port}/jobs")
            expect(page.locator("tr.job")).to_have_count(2)
            assert problems == []
        finally:
            browser.close()


@dataclass
class Hosted:
    """A mailcow tenant served by its contract server, scanned into a report, with the remediation app running."""

    server: ContractServer
    state: MailcowState
    store: Store
    out: Path
    port: int


@pytest.fixture
def hosted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Hosted]:
    monkeypatch.setenv(SECRET_ENV, SECRET)
    monkeypatch.setenv(AUDIT_KEY_ENV, AUDIT_KEY)
    estate = standard_estate(users=2)
    server = MAILCOW.serve(estate, page_size=100)
    port = free_port()
    try:
        with ZoneServer() as dns:
            path = tmp_path / "mailwarden.toml"
            path.write_text(f"""
[store]
url = "sqlite:///{tmp_path / 'store.db'}"

[dns]
nameservers = ["{dns.nameserver}"]
timeout = 0.5

[remediation]
base_url = "http://127.0.0.1:{port}"
secret = "env:{SECRET_ENV}"
audit_sink = "audit.jsonl"
audit_key = "env:{AUDIT_KEY_ENV}"

[remediation.operators]
"dana.ops@msp.example" = ["*"]
""" + MAILCOW.tenant_toml(server, estate, tmp_path), encoding="utf-8")
            config = load_config(path)
            store = Store(config.store.url)
            try:
                run_scan(config, tmp_path / "out", store=store, as_of=NOW)
                with _app(config, port):
                    yield Hosted(server, with_state(server), store, tmp_path / "out", port)
            finally:
                store.close()
    finally:
        server.stop()


def test_a_provider_tenant_is_remediated_from_the_report_and_the_server_changes_then_undone(hosted: Hosted) -> None:
    found = json.loads((hosted.out / "findings.json").read_text(encoding="utf-8"))
    target = next(f for f in found if f["check"] == "forwarding.external" and f["status"] == "fail"
                  and f["subject"] == "ana@acme.example")
    alias = next(a for a in hosted.state.aliases.values() if a["address"] == "ana@acme.example")
    assert "ana@personal.test" in alias["goto"]
    writes = hosted.server.count("/api/v1/edit")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            context = browser.new_context(extra_http_headers={"X-Forwarded-User": "dana.ops@msp.example"})
            page = context.new_page()
            problems: list[str] = []
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.goto((hosted.out / "report.html").as_uri() + f"#finding={target['id']}")
            link = page.locator("a.remediation-link").first
            expect(link).to_be_visible()
            link.click()
            page.wait_for_url(f"http://127.0.0.1:{hosted.port}/r/**")
            expect(page.locator("#live-state")).to_contain_text("ana@personal.test")  # read live from the server
            assert hosted.server.count("/api/v1/edit") == writes and "ana@personal.test" in alias["goto"]
            page.click("#confirm")
            expect(page.locator("#job-state")).to_have_text("done")
            assert "ana@personal.test" not in alias["goto"] and hosted.server.count("/api/v1/edit") > writes
            expect(page.locator("tr.audit-entry td.kind")).to_have_text(["intent", "state"])
            assert [e.kind for e in entries(hosted.store)] == ["intent", "state"]
            page.click("#undo")
            expect(page.locator("#job-state")).to_have_text("done")
            expect(page.locator("#summary")).to_contain_text("Undo")
            assert "ana@personal.test" in alias["goto"]
            assert [e.kind for e in entries(hosted.store)] == ["intent", "state"] * 2
            assert problems == []
        finally:
            browser.close()

"""Remediation in real headless Chromium: report link, confirmation, the export file changes, audit entries, undo."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from playwright.sync_api import expect, sync_playwright

from remediation.web import build_app
from tests.remediation.conftest import Estate

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture
def served(estate: Estate) -> Iterator[Estate]:
    """The remediation app on the loopback port the report's links name, run by uvicorn in a thread."""
    server = uvicorn.Server(uvicorn.Config(build_app(estate.config), host="127.0.0.1", port=estate.port,
                                           log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started
    try:
        yield estate
    finally:
        server.should_exit = True
        thread.join(timeout=10)


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

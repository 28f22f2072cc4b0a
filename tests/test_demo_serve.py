"""`mailwarden demo --serve`: the whole loop a newcomer sees, in real headless Chromium against the real command.

Read the report, click a fix, confirm, see the demo's export file change and the audit entries, undo;
the run folders still verify with `evidence verify` afterwards.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import expect, sync_playwright

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
SCRIPT = shutil.which("mailwarden") or str(Path(sys.executable).parent / "mailwarden")


@pytest.fixture(scope="module")
def serving(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, int, list[str]]]:
    """`mailwarden demo --serve --port 0` running; its output folder, the app's port and its console so far."""
    out = tmp_path_factory.mktemp("demo") / "out"
    process = subprocess.Popen([SCRIPT, "demo", "--serve", "--port", "0", "--out", str(out)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines: list[str] = []
    port = 0
    deadline = time.monotonic() + 180
    assert process.stdout is not None
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line.rstrip("\n"))
        found = re.search(r"remediation app on http://127\.0\.0\.1:(\d+)", line)
        if found:
            port = int(found.group(1))
        if line.startswith("  all jobs:"):
            break
    try:
        assert port, "\n".join(lines)
        time.sleep(0.5)  # uvicorn binds right after the console lines
        yield out, port, lines
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_the_demo_console_says_how_to_use_the_loop(serving: tuple[Path, int, list[str]]) -> None:
    out, port, lines = serving
    console = "\n".join(lines)
    assert f"open the report       {(out / 'after-change' / 'report.html').resolve().as_uri()}" in console
    assert f"mailwarden evidence verify {out}" in console
    assert "Review and apply" in console and "Confirm" in console and "Undo" in console
    assert f"http://127.0.0.1:{port}/jobs" in console


def test_click_a_fix_confirm_see_the_export_change_audit_and_undo(serving: tuple[Path, int, list[str]]) -> None:
    out, port, _ = serving
    forwards = out.resolve().parent / "out-state" / "estate" / "cedar-law" / "forwards.csv"
    assert "eleanor.price@personal-mail.test" in forwards.read_text(encoding="utf-8")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 1000})  # no identity header: the demo plays the proxy
            problems: list[str] = []
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.goto((out / "after-change" / "report.html").as_uri())
            cause = page.locator('#fix-list li.cause[data-check="forwarding.external"]', has_text="eleanor.price@cedarlaw.example")
            while not cause.is_visible():
                page.click("#fix-more")
            link = cause.locator("a.fix-link")
            assert link.get_attribute("href", timeout=1000).startswith(f"http://127.0.0.1:{port}/r/")
            link.click()
            page.wait_for_url(f"http://127.0.0.1:{port}/r/**")
            expect(page.locator("#live-state")).to_contain_text("eleanor.price@personal-mail.test")
            assert "eleanor.price@personal-mail.test" in forwards.read_text(encoding="utf-8")  # GET changed nothing
            page.click("#confirm")
            expect(page.locator("#job-state")).to_have_text("done")
            expect(page.locator("tr.audit-entry td.kind")).to_have_text(["intent", "state"])
            assert "demo.operator@msp.example" in page.inner_text("body")
            assert "eleanor.price@personal-mail.test" not in forwards.read_text(encoding="utf-8")
            page.click("#undo")
            expect(page.locator("#job-state")).to_have_text("done")
            assert "eleanor.price@personal-mail.test" in forwards.read_text(encoding="utf-8")
            assert problems == []
        finally:
            browser.close()
    # the store, the link secret and the estate copy live beside the run folders, which verify as written
    done = subprocess.run([SCRIPT, "evidence", "verify", str(out)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "after-change", "evidence", "findings.csv", "findings.json", "manifest.json", "report.html"]

"""report.html in real headless Chromium (Debian's package, driven by Playwright) from file://, offline."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


@pytest.fixture(scope="module")
def demo_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo's second scan (after its scripted change): the report has a trend and a previous run."""
    out = tmp_path_factory.mktemp("demo") / "out"
    script = shutil.which("mailwarden") or str(Path(sys.executable).parent / "mailwarden")
    done = subprocess.run([script, "demo", "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return out / "after-change" / "report.html"


def _findings(report: Path) -> list[dict[str, object]]:
    return json.loads((report.parent / "findings.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    assert Path(CHROMIUM).is_file(), f"{CHROMIUM} is missing: scripts/test.sh installs Debian's chromium"
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield launched
        launched.close()


class Watched:
    """A page with its console errors, uncaught exceptions, dialogs and any non-file request recorded."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.problems: list[str] = []
        self.requests: list[str] = []
        page.on("console", lambda m: self.problems.append(f"console {m.type}: {m.text}")
                if m.type in ("error", "warning") else None)
        page.on("pageerror", lambda e: self.problems.append(f"page error: {e}"))
        page.on("dialog", lambda d: (self.problems.append(f"dialog: {d.message}"), d.dismiss()))
        page.route("**/*", self._only_files)

    def _only_files(self, route) -> None:  # type: ignore[no-untyped-def]
        if route.request.url.startswith("file://"):
            route.continue_()
        else:
            self.requests.append(route.request.url)
            route.abort()


@pytest.fixture
def watched(browser: Browser) -> Iterator[Watched]:
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    yield Watched(page)
    context.close()


def _column(page: Page, index: int) -> list[str]:
    return page.locator(f"#findings-body tr.finding td:nth-child({index})").all_inner_texts()


def _count(page: Page) -> str:
    return page.inner_text("#findings-count")


def test_filters_search_and_sort_change_the_visible_rows(demo_report: Path, watched: Watched) -> None:
    findings = _findings(demo_report)
    # the default view: everything but passes and skipped findings (counted under their root cause)
    attention = sum(1 for f in findings if f["status"] not in ("pass", "skipped"))
    pages = -(-attention // 50)
    page = watched.page
    page.goto(demo_report.as_uri())
    assert f"Showing 1–50 of {attention} matching findings" in _count(page)
    assert len(_column(page, 1)) == 50
    page.click("#pager [data-page=last]" if page.locator("#pager [data-page=last]").count() else "#pager [data-page=next]")
    if pages == 2:
        assert len(_column(page, 1)) == attention - 50 and "page 2 of 2" in page.inner_text("#page-info")
    else:
        assert f"of {pages}" in page.inner_text("#page-info")

    page.select_option("#f-tenant", "cedar-law")
    tenants = _column(page, 4)
    cedar = sum(1 for f in findings if f["status"] not in ("pass", "skipped") and f["tenant"] == "cedar-law")
    assert tenants and set(tenants) == {"cedar-law"} and cedar < attention
    assert f"of {cedar} matching findings" in _count(page)

    page.select_option("#f-status", "excepted")
    assert _column(page, 1) == ["excepted"]  # the cedar-law catch-all exception

    page.select_option("#f-status", "attention")
    page.select_option("#f-severity", "high")
    assert {s.lower() for s in _column(page, 2)} == {"high"}

    page.click("#f-reset")
    page.fill("#f-search", "j.park")
    expect(page.locator("#findings-count")).not_to_contain_text(f"of {attention} ")
    subjects = _column(page, 6)
    assert subjects and all("j.park@northwindlogistics.example" in s for s in subjects)

    page.click("#f-reset")
    page.select_option("#f-check", "forwarding.external")
    page.select_option("#f-status", "")
    # passes too, once "all" statuses are shown: embedded as one row per check and domain, with their count
    passes = sum(1 for f in findings if f["check"] == "forwarding.external" and f["status"] == "pass")
    others = sum(1 for f in findings if f["check"] == "forwarding.external" and f["status"] != "pass")
    groups = len({(f["tenant"], f["domain"]) for f in findings
                  if f["check"] == "forwarding.external" and f["status"] == "pass"})
    assert f"of {others + groups} matching rows ({passes} passes counted per check and domain)" in _count(page)
    assert any(s.endswith("subjects pass") or s.endswith("subject passes") for s in _column(page, 6))
    page.select_option("#f-status", "fail")
    page.click("th[data-sort=subject]")
    shown = [s.splitlines()[0] for s in _column(page, 6)]
    assert shown == sorted(shown)
    page.click("th[data-sort=subject]")
    shown = [s.splitlines()[0] for s in _column(page, 6)]
    assert shown == sorted(shown, reverse=True)

    page.select_option("#f-check", "")
    page.select_option("#f-status", "new")
    first = {f["id"] for f in _findings(demo_report.parent.parent / "report.html") if f["status"] in ("fail", "excepted")}
    new = [f for f in findings if f["status"] in ("fail", "excepted") and f["id"] not in first]
    assert new and f"of {len(new)} matching" in _count(page)  # what the scripted change broke
    assert watched.problems == [] and watched.requests == []


def test_the_rows_shown_before_the_data_is_read_are_the_tables_first_page(demo_report: Path, watched: Watched) -> None:
    html = demo_report.read_text(encoding="utf-8")
    start = html.index('id="report-first">') + len('id="report-first">')
    first = json.loads(html[start:html.index("</script>", start)])
    page = watched.page
    page.goto(demo_report.as_uri())  # once loaded, the table is the script's own view of every finding
    shown = page.eval_on_selector_all("#findings-body tr.finding", "rows => rows.map(r => Number(r.dataset.index))")
    assert len(shown) == 50 and shown == first["first"]
    assert _count(page) == f"Showing 1–50 of {first['matching']} matching findings ({first['total']} in this run)."
    assert watched.problems == []


def test_a_finding_shows_what_its_action_would_change(demo_report: Path, watched: Watched) -> None:
    page = watched.page
    page.goto(demo_report.as_uri())
    page.select_option("#f-check", "forwarding.external")
    page.fill("#f-search", "j.park@northwindlogistics.example")
    expect(page.locator("#findings-body tr.finding")).to_have_count(1)
    page.click("#findings-body tr.finding")
    detail = page.inner_text("#findings-body tr.detail")
    assert "What forwarding.disable would change" in detail
    assert "Turn off the forwards of j.park@northwindlogistics.example" in detail
    # the demo's report carries the one-click link to its remediation app (mailwarden demo --serve)
    assert page.locator("#findings-body a.remediation-link").get_attribute("href").startswith("http://127.0.0.1:8642/r/")
    assert "null" not in detail and "[" not in detail  # evidence as lists and key: value, never raw JSON

    # the email's "details" links: #finding=ID opens that finding
    findings = json.loads((demo_report.parent / "findings.json").read_text(encoding="utf-8"))
    target = next(f for f in findings if f["check"] == "dmarc.missing" and f["status"] == "fail")
    page.goto(demo_report.as_uri() + f"#finding={target['id']}")
    expect(page.locator("#findings-body tr.detail")).to_contain_text('_dmarc.nwl-customs.example. TXT "v=DMARC1;')
    assert watched.problems == []


def test_the_domain_view_opens_with_records_as_seen(demo_report: Path, watched: Watched) -> None:
    page = watched.page
    page.goto(demo_report.as_uri())
    assert page.is_hidden("#domain-view")
    page.fill("#d-search", "cedar-law-clients")
    page.click("#domain-index-body a.domain-link")
    expect(page.locator("#domain-view")).to_be_visible()  # opened by the hashchange the link causes
    expect(page.locator("#domain-view-title")).to_have_text("cedar-law-clients.example")
    records = page.inner_text("#domain-records")
    assert "_dmarc.cedar-law-clients.example" in records and "v=DMARC1; p=none" in records
    # a hostile TXT record in the demo zone is shown as text and runs nothing
    assert "portal-verification=<script>alert(document.domain)</script>" in records
    problems = page.inner_text("#domain-problems")
    assert "noreply@cedar-law-clients.example" in problems

    page.goto(demo_report.as_uri() + "#domain=nwl-customs.example")
    expect(page.locator("#domain-view-title")).to_have_text("nwl-customs.example")
    fix = page.inner_text("#domain-problems")
    assert "dmarc.missing" in fix and '_dmarc.nwl-customs.example. TXT "v=DMARC1; p=quarantine' in fix
    page.click("#domain-view-filter")
    assert set(_column(page, 5)) == {"nwl-customs.example"}

    ARTIFACTS.mkdir(exist_ok=True)
    page.goto(demo_report.as_uri() + "#domain=cedar-law-clients.example")
    page.screenshot(path=str(ARTIFACTS / "report-domain.png"), full_page=False)
    page.goto(demo_report.as_uri())
    page.screenshot(path=str(ARTIFACTS / "report.png"), full_page=True)
    assert (ARTIFACTS / "report.png").stat().st_size > 10_000
    assert watched.problems == [] and watched.requests == []


def test_hostile_text_is_shown_not_run(tmp_path: Path, watched: Watched) -> None:
    from tests.reports.test_html import HOSTILE, _hostile_store

    report = _hostile_store(tmp_path)
    page = watched.page
    page.goto(report.as_uri())
    page.click("#findings-body tr.finding >> nth=1")
    body = page.inner_text("#findings-section")
    assert HOSTILE in body  # reason, evidence and display name, as text
    page.goto(report.as_uri() + "#domain=acme.example")
    expect(page.locator("#domain-view")).to_be_visible()
    assert HOSTILE in page.inner_text("#domain-records")
    assert page.evaluate("document.scripts.length") == 3  # the first page's rows, the script, the data
    assert watched.problems == []


def _overflow(page: Page) -> int:
    """How far the page is wider than its viewport (0 when nothing overflows)."""
    return int(page.evaluate("document.documentElement.scrollWidth - window.innerWidth"))


@pytest.mark.parametrize("width", [1440, 390])
def test_the_fix_first_list_leads_and_nothing_overflows(demo_report: Path, browser: Browser, width: int) -> None:
    context = browser.new_context(viewport={"width": width, "height": 900})
    watched = Watched(context.new_page())
    page = watched.page
    page.goto(demo_report.as_uri())
    # the first heading of the page's body is the fix-first list, and it starts on the first screen
    assert page.evaluate("document.querySelector('main h2').id") == "fix-first-title"
    assert page.locator("#fix-list li.cause").first.bounding_box()["y"] < 900
    assert page.locator("#fix-list li.cause").first.is_visible()
    top = page.inner_text("#fix-list li.cause >> nth=0")
    assert "high" in top.lower() and ("Publish" in top or "Review and apply" in top or "Turn off" in top or "Do this: " in top)
    if width == 1440:  # the posture of every tenant sits beside it on the first screen
        for card in page.locator("#posture .score-card").all():
            box = card.bounding_box()
            assert box is not None and box["y"] < 900 and box["x"] > 900
    assert _overflow(page) == 0
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"report-{width}.png"), full_page=False)
    page.screenshot(path=str(ARTIFACTS / f"report-{width}-full.png"), full_page=True)
    # open what a person opens: a finding's evidence, the domain view; still nothing wider than the screen
    page.click("#fix-list li.cause >> nth=0 >> a.more-link")
    expect(page.locator("#findings-body tr.detail")).to_have_count(1)
    assert _overflow(page) == 0
    page.goto(demo_report.as_uri() + "#domain=cedar-law-clients.example")
    expect(page.locator("#domain-view")).to_be_visible()
    assert _overflow(page) == 0
    page.screenshot(path=str(ARTIFACTS / f"report-domain-{width}.png"), full_page=False)
    assert watched.problems == [] and watched.requests == []
    context.close()


def test_every_control_of_the_first_screen_works(demo_report: Path, watched: Watched) -> None:
    page = watched.page
    page.goto(demo_report.as_uri())
    causes = page.locator("#fix-list li.cause")
    total = causes.count()
    assert total > 20 and page.locator("#fix-list li.cause:visible").count() == 10
    page.click("#fix-more")
    assert page.locator("#fix-list li.cause:visible").count() == 20
    assert page.inner_text("#fix-shown") == f"showing 20 of {total}"
    for anchor in page.locator("header nav a").all():  # every section the navigation names exists
        target = anchor.get_attribute("href")
        assert target and page.locator(target).count() == 1
    page.click("header nav a[href='#coverage']")
    assert page.evaluate("location.hash") == "#coverage"
    page.click("details.how summary")
    assert "Score = points of passing checks" in page.inner_text("details.how")
    # a score can be recomputed from the page: earned over possible
    card = page.locator("#posture .score-card").first
    score = int(card.locator(".score-value").inner_text())
    earned, possible = (int(n) for n in re.findall(r"(\d+) of (\d+) points", card.inner_text())[0])
    assert score == round(100 * earned / possible)
    # the trend labels tell two runs of one day apart
    labels = page.locator("#trend-table td[data-label=run]").all_inner_texts()
    assert labels[0].startswith("run 2 · ") and labels[1].startswith("run 1 · ") and labels[0] != labels[1]
    assert watched.problems == [] and watched.requests == []


@pytest.fixture
def caused_report(tmp_path: Path) -> Path:
    """A report whose DMARC cause has two findings that only restate it (skipped, caused_by set)."""
    from tests.reports.test_rootcause import RUN, _missing_with_dependants
    from reports.html import render_html

    return render_html(RUN, _missing_with_dependants(), {}, tmp_path / "report.html")


@pytest.mark.parametrize("width", [1440, 390])
def test_dependants_sit_under_their_cause(caused_report: Path, browser: Browser, width: int) -> None:
    context = browser.new_context(viewport={"width": width, "height": 900})
    watched = Watched(context.new_page())
    page = watched.page
    page.goto(caused_report.as_uri())
    first = page.locator("#fix-list li.cause").first
    assert "dmarc.missing" in first.inner_text() and "settles 3 findings" in first.inner_text()
    first.locator("details.dependants summary").click()
    assert first.locator("details.dependants li").all_inner_texts() == [
        "dmarc.policy_weak dmarc.policy_weak title", "dmarc.no_rua dmarc.no_rua title"]
    first.locator("a.more-link").click()
    detail = page.locator("#findings-body tr.detail")
    expect(detail).to_contain_text("2 findings follow from this one")
    # the skipped ones are not in "needs attention"; shown with status "skipped", they point to their cause
    page.click("#f-reset")
    page.select_option("#f-status", "skipped")
    assert _column(page, 1) == ["skipped", "skipped"]
    assert set(_column(page, 8)) == {"clears with its cause"}
    page.click("#findings-body tr.finding >> nth=0")
    page.click("#findings-body tr.detail a")
    expect(page.locator("#findings-body tr.finding")).to_have_count(1)
    assert _column(page, 3)[0].startswith("dmarc.missing")
    assert _overflow(page) == 0
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"report-dependants-{width}.png"), full_page=True)
    assert watched.problems == [] and watched.requests == []
    context.close()

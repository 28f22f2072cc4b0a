"""The remediation web app: links, confirmation, CSRF, identity, single use, concurrency, undo, no secrets shown."""

from __future__ import annotations

import asyncio
import html
import json
import os
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from remediation.audit import entries, verify
from remediation.jobs import Jobs
from remediation.links import Signer
from scanner.config import SecretRef
from remediation.web import build_app
from tests.remediation.conftest import AUDIT_KEY, SECRET, Estate

PROXY = ("127.0.0.1", 40000)
OPERATOR = {"X-Forwarded-User": "dana.ops@msp.example"}

KEY = AUDIT_KEY.encode()


def links(estate: Estate) -> dict[str, str]:
    """Every remediation link in the generated report, by finding id."""
    text = (estate.out / "report.html").read_text(encoding="utf-8")
    start = text.index('id="report-data">') + len('id="report-data">')
    data = json.loads(text[start:text.index("</script>", start)])
    return {row[0]: row[11] for row in data["findings"] if row[11]}


def finding(estate: Estate, check: str, subject: str | None = None) -> dict[str, object]:
    found = json.loads((estate.out / "findings.json").read_text(encoding="utf-8"))
    return next(f for f in found if f["check"] == check and f["status"] == "fail"
                and (subject is None or f["subject"] == subject))


def path_of(link: str) -> str:
    return "/r/" + link.rpartition("/r/")[2]


@pytest.fixture
def client(estate: Estate) -> Iterator[TestClient]:
    with TestClient(build_app(estate.config), client=PROXY, follow_redirects=False) as test:
        yield test


def csrf_of(page: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', page)
    assert match, "the page has no form"
    return html.unescape(match.group(1))


def forwards(estate: Estate) -> str:
    return (estate.export("cedar-law") / "forwards.csv").read_text(encoding="utf-8")


def test_every_remediable_failing_finding_carries_a_link_to_the_base_url(estate: Estate) -> None:
    found = links(estate)
    failing = json.loads((estate.out / "findings.json").read_text(encoding="utf-8"))
    remediable = {f["id"] for f in failing if f["status"] == "fail" and f["remediation"]}
    assert remediable and remediable <= set(found)
    assert all(link.startswith(f"http://127.0.0.1:{estate.port}/r/") for link in found.values())
    dns = finding(estate, "dmarc.missing", "nwl-customs.example")
    assert dns["id"] in found  # a DNS finding gets its publish job's link


def test_get_of_every_link_changes_nothing(estate: Estate, client: TestClient) -> None:
    before = estate.files_state()
    audit_before = len(entries(estate.store))
    found = list(links(estate).values())
    for link in found:
        response = client.get(path_of(link), headers=OPERATOR)
        assert response.status_code == 200, response.text
        assert client.get(path_of(link)).status_code == 403  # anonymous: nothing shown
    assert client.head(path_of(found[0]), headers=OPERATOR).status_code == 200
    assert estate.files_state() == before
    assert len(entries(estate.store)) == audit_before == 0
    assert Jobs(estate.store, estate.config).history() == []


def test_confirm_page_shows_finding_live_state_and_plan(estate: Estate, client: TestClient) -> None:
    target = finding(estate, "forwarding.external", "eleanor.price@cedarlaw.example")
    page = client.get(path_of(links(estate)[str(target["id"])]), headers=OPERATOR)
    assert "eleanor.price@personal-mail.test" in page.text
    assert 'id="live-state"' in page.text and 'id="confirm"' in page.text
    assert page.headers["referrer-policy"] == "no-referrer" and page.headers["cache-control"] == "no-store"


def test_confirm_then_undo_through_the_files_adapter(estate: Estate, client: TestClient) -> None:
    target = finding(estate, "forwarding.external", "eleanor.price@cedarlaw.example")
    path = path_of(links(estate)[str(target["id"])])
    assert "eleanor.price@personal-mail.test" in forwards(estate)
    page = client.get(path, headers=OPERATOR)
    done = client.post(path, data={"csrf": csrf_of(page.text), "reason": "left the firm"}, headers=OPERATOR)
    assert done.status_code == 303
    assert "eleanor.price@personal-mail.test" not in forwards(estate)
    job_page = client.get(done.headers["location"], headers=OPERATOR)
    assert 'id="job-state">done<' in job_page.text and "dana.ops@msp.example" in job_page.text
    assert job_page.text.count('class="audit-entry"') == 2
    # replayed: the same link again changes nothing and says so
    again = client.post(path, data={"csrf": csrf_of(page.text)}, headers=OPERATOR)
    assert again.status_code == 409
    assert client.get(path, headers=OPERATOR).status_code == 410
    undone = client.post(done.headers["location"] + "/undo", data={"csrf": csrf_of(job_page.text)}, headers=OPERATOR)
    assert undone.status_code == 303
    assert "eleanor.price@personal-mail.test" in forwards(estate)
    assert verify(estate.store, KEY, estate.root / "demo" / "audit.jsonl") == []
    intents = [e.data for e in entries(estate.store) if e.kind == "intent"]
    assert intents[0]["who"] == "dana.ops@msp.example" and intents[0]["why"] == "left the firm"
    assert intents[0]["finding"] == target["id"] and intents[0]["run"] == estate.run_id
    changes = estate.store.changes(subject="eleanor.price@cedarlaw.example")
    assert [c.source for c in changes if c.source == "job"] == ["job", "job"]


def test_post_without_or_with_a_wrong_csrf_token_is_refused(estate: Estate, client: TestClient) -> None:
    target = finding(estate, "forwarding.external", "eleanor.price@cedarlaw.example")
    path = path_of(links(estate)[str(target["id"])])
    other = path_of(links(estate)[str(finding(estate, "catchall.enabled")["id"])])
    before = estate.files_state()
    assert client.post(path, data={}, headers=OPERATOR).status_code == 403
    assert client.post(path, data={"csrf": "forged"}, headers=OPERATOR).status_code == 403
    foreign = csrf_of(client.get(other, headers=OPERATOR).text)  # a real token, bound to another link
    assert client.post(path, data={"csrf": foreign}, headers=OPERATOR).status_code == 403
    assert estate.files_state() == before


def test_anonymous_or_untrusted_post_is_refused(estate: Estate) -> None:
    target = finding(estate, "forwarding.external", "eleanor.price@cedarlaw.example")
    path = path_of(links(estate)[str(target["id"])])
    before = estate.files_state()
    with TestClient(build_app(estate.config), client=PROXY, follow_redirects=False) as trusted:
        csrf = csrf_of(trusted.get(path, headers=OPERATOR).text)
        assert trusted.post(path, data={"csrf": csrf}).status_code == 403  # no identity header
        anonymous = trusted.get(path)
        assert anonymous.status_code == 403 and "not signed in" in anonymous.text
        assert "eleanor" not in anonymous.text and 'id="confirm"' not in anonymous.text
    with TestClient(build_app(estate.config), client=("192.0.2.7", 40000), follow_redirects=False) as outside:
        assert outside.post(path, data={"csrf": csrf}, headers=OPERATOR).status_code == 403  # header not trusted
    assert estate.files_state() == before


def test_forged_tampered_and_expired_tokens_are_refused(estate: Estate, client: TestClient) -> None:
    target = finding(estate, "forwarding.external", "eleanor.price@cedarlaw.example")
    token = path_of(links(estate)[str(target["id"])]).removeprefix("/r/")
    signer = Signer(estate.config.remediation)
    other = estate.config.remediation.model_copy(update={"secret": SecretRef("env:MW_OTHER_SECRET")})
    os.environ["MW_OTHER_SECRET"] = "not-the-secret-at-all-000"
    try:
        forged = Signer(other).seal(signer.payload(token))
    finally:
        del os.environ["MW_OTHER_SECRET"]
    tampered = token[:-8] + ("AAAAAAAA" if not token.endswith("AAAAAAAA") else "BBBBBBBB")
    for bad in (forged, tampered, "garbage"):
        assert client.get(f"/r/{bad}", headers=OPERATOR).status_code == 400
    expired = signer.seal(signer.payload(token), at=int(time.time()) - 8 * 86400)  # issued 8 days ago; links last 7
    page = client.get(f"/r/{expired}", headers=OPERATOR)
    assert page.status_code == 400 and "expired" in page.text


def test_a_token_for_one_tenant_cannot_act_on_another(estate: Estate, client: TestClient) -> None:
    target = finding(estate, "forwarding.external", "eleanor.price@cedarlaw.example")
    token = path_of(links(estate)[str(target["id"])]).removeprefix("/r/")
    signer = Signer(estate.config.remediation)
    claim = signer.payload(token)
    other = signer.seal({**claim, "t": "harbor-dental"})  # validly sealed, wrong tenant
    page = client.get(f"/r/{other}", headers=OPERATOR)
    assert page.status_code == 400 and "does not match" in page.text
    csrf = signer.form_token(other, OPERATOR["X-Forwarded-User"])
    assert client.post(f"/r/{other}", data={"csrf": csrf}, headers=OPERATOR).status_code == 403


def test_state_changed_since_the_link_offers_nothing(estate: Estate, client: TestClient) -> None:
    target = finding(estate, "catchall.enabled", None)
    path = path_of(links(estate)[str(target["id"])])
    export = estate.export(str(target["tenant"])) / "domains.csv"
    export.write_text(export.read_text(encoding="utf-8").replace(str(target["evidence"]["catch_all"]),  # type: ignore[index]
                                                                 "someone.else@" + str(target["subject"])))
    page = client.get(path, headers=OPERATOR)
    assert 'id="blocked"' in page.text and "no longer matches" in page.text and 'id="confirm"' not in page.text


def test_two_posts_at_once_execute_once(stored_estate: Estate) -> None:
    """On SQLite and on PostgreSQL."""
    estate = stored_estate
    target = finding(estate, "forwarding.external", "eleanor.price@cedarlaw.example")
    path = path_of(links(estate)[str(target["id"])])
    app = build_app(estate.config)
    with TestClient(app, client=PROXY, follow_redirects=False) as first:
        csrf = csrf_of(first.get(path, headers=OPERATOR).text)
    results: list[int] = []
    barrier = threading.Barrier(2)

    def post() -> None:
        with TestClient(build_app(estate.config), client=PROXY, follow_redirects=False) as test:
            barrier.wait()
            results.append(test.post(path, data={"csrf": csrf}, headers=OPERATOR).status_code)

    threads = [threading.Thread(target=post) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [303, 409]
    history = Jobs(estate.store, estate.config).history()
    assert len(history) == 1 and history[0].state == "done"
    assert [e.kind for e in entries(estate.store)] == ["intent", "state"]


def test_no_secret_in_any_page_or_log(estate: Estate, client: TestClient, captured_logs: pytest.LogCaptureFixture) -> None:
    pages = []
    every = links(estate)
    checks = {f["id"]: f["check"] for f in json.loads((estate.out / "findings.json").read_text(encoding="utf-8"))}
    # The first links (DNS publish jobs stay pending until the record is live) and one a provider job completes.
    chosen = list(every.values())[:8] + [next(link for fid, link in every.items() if checks[fid] == "forwarding.external")]
    for link in chosen:
        page = client.get(path_of(link), headers=OPERATOR)
        pages.append(page.text)
        if 'id="confirm"' in page.text:
            done = client.post(path_of(link), data={"csrf": csrf_of(page.text)}, headers=OPERATOR)
            if done.status_code == 303:
                pages.append(client.get(done.headers["location"], headers=OPERATOR).text)
    pages.append(client.get("/jobs", headers=OPERATOR).text)
    text = "\n".join(pages) + "\n".join(r.getMessage() for r in captured_logs.records)
    text += (estate.root / "demo" / "audit.jsonl").read_text(encoding="utf-8")
    assert SECRET not in text
    assert "done" in pages[-1]


def test_dns_publish_job_is_done_only_when_the_record_is_live(estate: Estate, client: TestClient) -> None:
    from scanner.loopback.zoneserver import load_zone_file

    target = finding(estate, "dmarc.missing", "nwl-customs.example")
    path = path_of(links(estate)[str(target["id"])])
    page = client.get(path, headers=OPERATOR)
    assert 'id="records"' in page.text and "_dmarc.nwl-customs.example." in page.text
    first = client.post(path, data={"csrf": csrf_of(page.text)}, headers=OPERATOR)
    job_url = first.headers["location"]
    assert 'id="job-state">pending<' in client.get(job_url, headers=OPERATOR).text
    record = str(target["evidence"]["publish"])  # type: ignore[index]
    zone = estate.root / "demo" / "zones" / "nwl-customs.example.zone"
    zone.write_text(zone.read_text(encoding="utf-8") + "\n" + record + "\n", encoding="utf-8")
    estate.dns.add_zone(load_zone_file(zone, "nwl-customs.example"))
    job_id = job_url.rpartition("/")[2]
    job = asyncio.run(Jobs(estate.store, estate.config).execute(job_id))
    assert job.state == "done", job.error

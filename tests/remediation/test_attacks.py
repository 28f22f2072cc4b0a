"""Each attack of issue 16 run against the real service (uvicorn on loopback, `mailwarden serve` where the process
and its environment matter, headless Chromium where a browser does), on SQLite and PostgreSQL where the store is
involved, and shown refused."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import fcntl
import html
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
import uvicorn

from remediation.actions import plan_for
from remediation.audit import GENESIS, entries, entry_hash, entry_mac, verify
from remediation.jobs import Jobs, plans_for_check
from remediation.links import Signer
from scanner.config import Config
from scanner.service.serve import build_serve_app, server_config
from scanner.store.database import audit, jobs, meta_table
from tests.remediation.conftest import AUDIT_KEY, AUDIT_KEY_ENV, SECRET, SECRET_ENV, Estate, OPERATOR_ID

KEY = AUDIT_KEY.encode()
DANA = {"X-Forwarded-User": OPERATOR_ID}
HARBOR = {"X-Forwarded-User": "harbor.ops@msp.example"}
SECURITY = ("cache-control", "referrer-policy", "x-frame-options", "x-content-type-options", "content-security-policy")


def links(estate: Estate) -> dict[str, str]:
    """Every remediation link in the generated report, by finding id."""
    text = (estate.out / "report.html").read_text(encoding="utf-8")
    start = text.index('id="report-data">') + len('id="report-data">')
    data = json.loads(text[start:text.index("</script>", start)])
    return {row[0]: row[11] for row in data["findings"] if row[11]}


def failing(estate: Estate, check: str, subject: str | None = None, tenant: str | None = None) -> dict[str, Any]:
    found = json.loads((estate.out / "findings.json").read_text(encoding="utf-8"))
    return next(f for f in found if f["check"] == check and f["status"] == "fail"
                and (subject is None or f["subject"] == subject) and (tenant is None or f["tenant"] == tenant))


def path_of(link: str) -> str:
    return "/r/" + link.rpartition("/r/")[2]


def csrf_of(page: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', page)
    assert match, "the page has no form"
    return html.unescape(match.group(1))


def forwards(estate: Estate, tenant: str = "cedar-law") -> str:
    return (estate.export(tenant) / "forwards.csv").read_text(encoding="utf-8")


def _quiet(config: Config, **remediation: Any) -> Config:
    """The config with no scheduled scan or report (the tests drive everything) and remediation overrides."""
    return config.model_copy(update={
        "schedule": dataclasses.replace(config.schedule, scan="", report=""),
        "remediation": config.remediation.model_copy(update=remediation),
    })


@contextmanager
def served(estate: Estate, config: Config | None = None) -> Iterator[str]:
    """`mailwarden serve`'s app (healthz, the mounted remediation app, the scheduler) under uvicorn on the
    loopback port the report's links name, in a thread; yields its base URL."""
    config = config or _quiet(estate.config)
    stop = threading.Event()
    app = build_serve_app(config, estate.root / "demo" / "mailwarden.toml", stop)
    server = uvicorn.Server(server_config(app, "127.0.0.1", estate.port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started
    try:
        yield f"http://127.0.0.1:{estate.port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)


def client(base: str, source: str = "127.0.0.1") -> httpx.Client:
    """An HTTP client connecting from a chosen loopback address (the proxy, or someone else)."""
    return httpx.Client(base_url=base, transport=httpx.HTTPTransport(local_address=source), timeout=10,
                        follow_redirects=False)


@pytest.fixture
def estate(stored_estate: Estate) -> Estate:
    """Attacks that touch the store run on SQLite and on PostgreSQL."""
    return stored_estate


# 1. identity: only the TCP peer decides who is a proxy; one strict, UTF-8 identity header


def _serve_toml(estate: Estate, remediation: str) -> Path:
    text = (estate.root / "demo" / "mailwarden.toml").read_text(encoding="utf-8")
    text = text.replace('url = "sqlite:///mailwarden-demo.db"', f'url = "{estate.config.store.url}"')
    text = text.replace("nameservers = []", f'nameservers = ["{estate.config.dns.nameservers[0]}"]')
    text = text.replace("[remediation]\n", "[remediation]\n" + remediation, 1)
    text += f'\n[schedule]\nscan = ""\nreport = ""\n\n[serve]\nport = {estate.port}\nlog_format = "json"\n'
    path = estate.root / "demo" / "serve.toml"
    path.write_text(text, encoding="utf-8")
    return path


@contextmanager
def serve_process(estate: Estate, remediation: str, env: dict[str, str]) -> Iterator[tuple[str, Path]]:
    """`mailwarden serve` as its own process with the given environment; yields its base URL and log file."""
    config = _serve_toml(estate, remediation)
    log = estate.root / "serve.log"
    environment = {**os.environ, SECRET_ENV: SECRET, AUDIT_KEY_ENV: AUDIT_KEY, **env}
    with log.open("wb") as sink:
        process = subprocess.Popen([sys.executable, "-c", "from scanner.cli import main; main()", "serve",
                                    "--config", str(config)], stdout=sink, stderr=subprocess.STDOUT,
                                   cwd=config.parent, env=environment)
    base = f"http://127.0.0.1:{estate.port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert process.poll() is None and time.monotonic() < deadline, log.read_text(encoding="utf-8")
            time.sleep(0.1)
        yield base, log
    finally:
        process.terminate()
        process.wait(timeout=20)


def _raw(port: int, head: bytes, source: str = "127.0.0.2") -> bytes:
    """Send one request exactly as written (duplicate or folded headers, raw bytes) and read the reply."""
    with socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0)) as sock:
        sock.sendall(head)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    return reply


def test_identity_comes_from_the_socket_peer_and_one_strict_utf8_header_and_every_response_is_headed(
        sqlite_estate: Estate) -> None:
    estate = sqlite_estate
    target = failing(estate, "forwarding.external", "eleanor.price@cedarlaw.example")
    path = path_of(links(estate)[target["id"]])
    before = estate.files_state()
    # The proxy is 127.0.0.2; uvicorn is told (as container images do) to believe X-Forwarded-For from anyone.
    remediation = 'trusted_proxies = ["127.0.0.2"]\n'
    with serve_process(estate, remediation, {"FORWARDED_ALLOW_IPS": "*"}) as (base, log):
        spoofed = {**DANA, "X-Forwarded-For": "127.0.0.2"}
        with client(base, "127.0.0.1") as outsider:
            page = outsider.get(path, headers=spoofed)
            assert page.status_code == 403 and "eleanor" not in page.text  # anonymous: shown nothing
            assert outsider.get("/jobs", headers=spoofed).status_code == 403
            with client(base, "127.0.0.2") as proxy:  # a token fetched through the proxy, replayed from outside
                csrf = csrf_of(proxy.get(path, headers=DANA).text)
            assert outsider.post(path, data={"csrf": csrf}, headers=spoofed).status_code == 403
        # A real proxy (nginx, Caddy) appends the client's address to X-Forwarded-For: the operator still counts.
        with client(base, "127.0.0.2") as proxy:
            page = proxy.get(path, headers={**DANA, "X-Forwarded-For": "198.51.100.23"})
            assert page.status_code == 200 and 'id="confirm"' in page.text and OPERATOR_ID in page.text
        port = estate.port

        def request(*headers: bytes) -> bytes:
            return _raw(port, b"GET /jobs HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + b"".join(headers) + b"\r\n")

        assert request(b"X-Forwarded-User: dana.ops@msp.example\r\n").startswith(b"HTTP/1.1 200")
        refused = [
            request(b"X-Forwarded-User: dana.ops@msp.example\r\n", b"X-Forwarded-User: ceo@msp.example\r\n"),
            request(b"X-Forwarded-User: ceo@msp.example, dana.ops@msp.example\r\n"),
            request(b"X-Forwarded-User: ceo@msp.example\r\n  dana.ops@msp.example\r\n"),  # an obsolete folded line
            request("X-Forwarded-User: jos\u00e9@msp.example\r\n".encode("latin-1")),  # Latin-1, not UTF-8
            request(b"X-Forwarded-User: dana ops\r\n"),
        ]
        assert all(r.startswith(b"HTTP/1.1 400") for r in refused), [r[:40] for r in refused]
        utf8 = request("X-Forwarded-User: jos\u00e9@msp.example\r\n".encode("utf-8"))
        assert utf8.startswith(b"HTTP/1.1 200") and "jos\u00e9@msp.example" in utf8.decode("utf-8")
        time.sleep(0.2)
        events = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines() if line.startswith("{")]
        assert sum(e.get("event") == "remediation.identity_refused" for e in events) >= 4
        # every response carries the security headers, the framework's own 404 and 405 and /healthz included
        with client(base, "127.0.0.2") as web:
            for response in (web.get("/healthz"), web.get("/no-such-page"), web.put("/jobs"),
                             web.get("/jobs"), web.get("/r/garbage", headers=DANA),
                             web.get("/jobs", headers={"X-Forwarded-User": "a, b"})):
                assert response.status_code in (200, 400, 403, 404, 405)
                assert all(h in response.headers for h in SECURITY), (response.request.url, response.headers)
            assert web.get("/no-such-page").status_code == 404 and web.put("/jobs").status_code == 405
    assert estate.files_state() == before


@pytest.fixture
def sqlite_estate(estate_sqlite: Estate) -> Estate:
    return estate_sqlite


@pytest.fixture
def estate_sqlite(scanned: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Estate]:
    from tests.remediation.conftest import _estate

    with _estate(scanned, tmp_path, monkeypatch) as fresh:
        yield fresh


def test_link_tokens_reveal_nothing_without_the_secret(sqlite_estate: Estate) -> None:
    estate = sqlite_estate
    found = {f["id"]: f for f in json.loads((estate.out / "findings.json").read_text(encoding="utf-8"))}
    for fingerprint, link in links(estate).items():
        token = link.rpartition("/r/")[2]
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        f = found[fingerprint]
        for secret_part in (f["tenant"], f["subject"], fingerprint, f["run_id"]):
            assert secret_part.encode() not in raw and secret_part not in token


def test_a_cross_site_form_is_refused_in_the_browser(sqlite_estate: Estate) -> None:
    from playwright.sync_api import sync_playwright

    from tests.remediation.test_browser import ARGS, CHROMIUM

    estate = sqlite_estate
    target = failing(estate, "forwarding.external", "eleanor.price@cedarlaw.example")
    link = links(estate)[target["id"]]
    before = forwards(estate)
    with served(estate) as base:
        with client(base) as proxy:  # the victim's own token, as if it leaked: only the origin is wrong
            csrf = csrf_of(proxy.get(path_of(link), headers=DANA).text)
        attacker = estate.root / "attacker"
        attacker.mkdir()
        (attacker / "index.html").write_text(
            f'<form id="f" method="post" action="{html.escape(link)}"><input name="csrf" value="{html.escape(csrf)}">'
            '</form><script>document.getElementById("f").submit()</script>', encoding="utf-8")
        other = subprocess.Popen([sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "0"],
                                 cwd=attacker, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            assert other.stdout is not None
            port = re.search(r"port (\d+)", other.stdout.readline())
            assert port
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
                try:
                    page = browser.new_context(extra_http_headers=DANA).new_page()
                    page.goto(f"http://127.0.0.1:{port.group(1)}/index.html")
                    page.wait_for_url(f"{base}/r/**")
                    assert "another site" in page.locator("#message").inner_text()
                finally:
                    browser.close()
        finally:
            other.terminate()
            other.wait(timeout=10)
        with client(base) as forger:
            for headers in ({"Origin": "https://evil.example"}, {"Sec-Fetch-Site": "cross-site"},
                            {"Origin": "null"}):
                assert forger.post(path_of(link), data={"csrf": csrf}, headers={**DANA, **headers}).status_code == 403
    assert forwards(estate) == before


# 2. tenant scope on every route; 6. CSRF bound to the identity


def test_an_operator_acts_only_on_the_tenants_the_config_gives_them(estate: Estate) -> None:
    cedar = failing(estate, "forwarding.external", "eleanor.price@cedarlaw.example")
    path = path_of(links(estate)[cedar["id"]])
    signer = Signer(estate.config.remediation)
    with served(estate) as base, client(base) as web:
        page = web.get(path, headers=HARBOR)
        assert page.status_code == 400 and "outside your scope" in page.text and "eleanor" not in page.text
        stolen = signer.form_token(path.removeprefix("/r/"), "harbor.ops@msp.example")  # even with a valid token
        assert web.post(path, data={"csrf": stolen}, headers=HARBOR).status_code == 403
        assert "eleanor.price@personal-mail.test" in forwards(estate)
        # CSRF is bound to the identity: dana's token does not work for another operator, even one with the scope
        dana_csrf = csrf_of(web.get(path, headers=DANA).text)
        assert web.post(path, data={"csrf": dana_csrf}, headers={"X-Forwarded-User": "ops"}).status_code == 403
        done = web.post(path, data={"csrf": dana_csrf}, headers=DANA)
        assert done.status_code == 303
        job = done.headers["location"]
        job_page = web.get(job, headers=DANA)
        assert 'id="job-state">done<' in job_page.text
        undo_csrf = csrf_of(job_page.text)
        for anonymous in (web.get("/jobs"), web.get(job)):
            assert anonymous.status_code == 403 and "eleanor" not in anonymous.text
        assert "eleanor" not in web.get("/jobs", headers=HARBOR).text
        assert web.get(job, headers=HARBOR).status_code == 404
        assert web.post(job + "/undo", data={"csrf": undo_csrf}, headers=HARBOR).status_code == 404
        assert "eleanor.price@personal-mail.test" not in forwards(estate)  # no undo happened
        assert "eleanor" in web.get("/jobs", headers=DANA).text


# 3. undo only while the subject is as the job left it, from the verified audit entry, within the job's targets


def test_undo_never_overwrites_a_later_change(estate: Estate) -> None:
    ghost = failing(estate, "account.ghost", tenant="cedar-law")
    path = path_of(links(estate)[ghost["id"]])
    mailboxes = estate.export("cedar-law") / "mailboxes.csv"
    with served(estate) as base, client(base) as web:
        done = web.post(path, data={"csrf": csrf_of(web.get(path, headers=DANA).text)}, headers=DANA)
        job = done.headers["location"]
        page = web.get(job, headers=DANA)
        assert 'id="undo"' in page.text
        undo_csrf = csrf_of(page.text)
        # someone else then disables the suspended account
        rows = mailboxes.read_text(encoding="utf-8").splitlines()
        edited = [re.sub(r",suspended,", ",disabled,", r) if r.startswith(ghost["subject"] + ",") else r for r in rows]
        assert edited != rows
        mailboxes.write_text("\n".join(edited) + "\n", encoding="utf-8")
        page = web.get(job, headers=DANA)
        assert 'id="undo"' not in page.text and "disabled" in page.text and "suspended" in page.text
        refused = web.post(job + "/undo", data={"csrf": undo_csrf}, headers=DANA)
        assert refused.status_code in (303, 409)
    assert f"{ghost['subject']}," in mailboxes.read_text(encoding="utf-8")
    assert next(r for r in mailboxes.read_text(encoding="utf-8").splitlines()
                if r.startswith(ghost["subject"] + ",")).count(",disabled,") == 1
    assert all(j.state != "done" for j in Jobs(estate.store, estate.config).history() if j.undo_of)


def test_undo_restores_from_the_audit_entry_not_an_edited_row(estate: Estate) -> None:
    target = failing(estate, "forwarding.external", "eleanor.price@cedarlaw.example")
    path = path_of(links(estate)[target["id"]])
    with served(estate) as base, client(base) as web:
        done = web.post(path, data={"csrf": csrf_of(web.get(path, headers=DANA).text)}, headers=DANA)
        job_id = done.headers["location"].rpartition("/")[2]
        undo_csrf = csrf_of(web.get(f"/jobs/{job_id}", headers=DANA).text)
        with estate.store.engine.begin() as conn:  # a database edit: one more forward, to an outside address
            row = conn.execute(sa.select(jobs.c.before).where(jobs.c.id == job_id)).scalar_one()
            extra = {"mailbox": target["subject"], "target": "exfil@attacker.test", "mechanism": "forward"}
            forged = {"state": {"forwards": [*row["state"]["forwards"], "exfil@attacker.test"]},
                      "detail": {**row.get("detail", {}), "rows": [*row.get("detail", {}).get("rows", []), extra]}}
            conn.execute(sa.update(jobs).where(jobs.c.id == job_id).values(before=forged))
        assert any("differs" in p for p in verify(estate.store, KEY))
        refused = web.post(f"/jobs/{job_id}/undo", data={"csrf": undo_csrf}, headers=DANA)
        assert refused.status_code == 409 and "audit entries" in refused.text
    assert "attacker.test" not in forwards(estate)


def test_an_undo_never_adds_what_the_job_did_not_remove(estate: Estate) -> None:
    from remediation.jobs import beyond_targets

    plan = next(p for p in plans_for_check(estate.store, estate.run_id, "forwarding.external")
                if p.subject == "eleanor.price@cedarlaw.example")
    assert beyond_targets(plan.action, plan.params, {"forwards": [*plan.params["targets"], "x@attacker.test"]},
                          {"forwards": []}) == ["x@attacker.test"]
    assert beyond_targets(plan.action, plan.params, {"forwards": list(plan.params["targets"])}, {"forwards": []}) == []


# 4. once per change, whatever link started it; 7. never stuck while a job waits on a lock


def test_two_links_for_one_change_start_one_job_and_healthz_answers_meanwhile(estate: Estate) -> None:
    target = failing(estate, "forwarding.external", "eleanor.price@cedarlaw.example")
    finding = next(f for f in estate.store.findings_for_run(estate.run_id) if f.id == target["id"])
    plan = plan_for(finding)
    assert plan is not None
    signer = Signer(estate.config.remediation)
    report_link, email_link = links(estate)[target["id"]], signer.link(plan)  # two different links, one change
    assert report_link != email_link
    export = estate.export("cedar-law")
    with served(estate) as base:
        tokens = {}
        with client(base) as web:
            for link in (report_link, email_link):
                tokens[link] = csrf_of(web.get(path_of(link), headers=DANA).text)
        results: dict[str, int] = {}

        def post(link: str) -> None:
            with client(base) as web:
                results[link] = web.post(path_of(link), data={"csrf": tokens[link]}, headers=DANA).status_code

        fd = os.open(export, os.O_RDONLY)
        fcntl.flock(fd, fcntl.LOCK_EX)  # another process holds the export directory's lock
        try:
            first = threading.Thread(target=post, args=(report_link,))
            first.start()
            deadline = time.monotonic() + 10
            while not Jobs(estate.store, estate.config).history() and time.monotonic() < deadline:
                time.sleep(0.05)
            second = threading.Thread(target=post, args=(email_link,))
            second.start()
            second.join(timeout=20)
            clock = time.monotonic()
            health = httpx.get(base + "/healthz", timeout=5)
            assert health.status_code == 200 and time.monotonic() - clock < 1.0
            assert results[email_link] == 409
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
        first.join(timeout=20)
        assert results[report_link] == 303
    history = Jobs(estate.store, estate.config).history()
    assert len(history) == 1 and history[0].state == "done"
    assert [e.kind for e in entries(estate.store)] == ["intent", "state"]
    # the store enforces it for any caller, the command line's bulk runs included
    with estate.store.engine.begin() as conn:
        conn.execute(sa.update(jobs).values(state="running"))
        conn.execute(sa.text("INSERT INTO job_claims (tenant, action, subject, target, job_id) "
                             "VALUES ('cedar-law', 'forwarding.disable', :s, :t, :j)"),
                     {"s": plan.subject, "t": plan.params["targets"][0], "j": history[0].id})
    from remediation.jobs import ChangeBusy

    with pytest.raises(ChangeBusy):
        Jobs(estate.store, estate.config).create(plan, "cli:ops", "bulk")


# 5. the keyed audit log


def test_the_audit_chain_cannot_be_rebuilt_without_the_key(estate: Estate) -> None:
    runner = Jobs(estate.store, estate.config, estate.root / "demo" / "audit.jsonl")
    for check in ("catchall.enabled", "account.ghost", "invite.expired"):
        asyncio.run(runner.execute(runner.create(plans_for_check(estate.store, estate.run_id, check)[0], "ops",
                                                 "fix").id))
    assert verify(estate.store, KEY) == []
    engine = estate.store.engine
    with engine.connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(sa.select(audit).order_by(audit.c.seq))]
        meta = [dict(r._mapping) for r in conn.execute(sa.select(meta_table))]
        job_rows = [dict(r._mapping) for r in conn.execute(sa.select(jobs))]

    def restore() -> None:
        with engine.begin() as conn:
            conn.execute(sa.delete(audit))
            conn.execute(sa.insert(audit), rows)
            conn.execute(sa.delete(meta_table))
            conn.execute(sa.insert(meta_table), meta)
            conn.execute(sa.delete(jobs))
            conn.execute(sa.insert(jobs), job_rows)
        assert verify(estate.store, KEY) == []

    def rebuild(digest: Any) -> None:
        """Edit entry 2, recompute every later hash and the head, as someone without the audit key can."""
        with engine.begin() as conn:
            prev = GENESIS
            for row in rows:
                body = row["body"].replace('"done"', '"failed"') if row["seq"] == 2 else row["body"]
                value = digest(row["seq"], row["kind"], row["job_id"], body, prev)
                conn.execute(sa.update(audit).where(audit.c.seq == row["seq"]).values(body=body, prev_hash=prev,
                                                                                       hash=value))
                prev = value
            conn.execute(sa.update(meta_table).where(meta_table.c.key == "audit_head")
                         .values(value=f"{rows[-1]['seq']}:{prev}"))

    rebuild(entry_hash)  # the old plain SHA-256 chain
    assert any("changed" in p for p in verify(estate.store, KEY))
    restore()
    rebuild(lambda *f: entry_mac(SECRET.encode(), *f))  # keyed, but with the link secret
    assert verify(estate.store, KEY)
    restore()
    with engine.begin() as conn:  # every entry and the head removed
        conn.execute(sa.delete(audit))
        conn.execute(sa.delete(meta_table).where(meta_table.c.key == "audit_head"))
    problems = verify(estate.store, KEY)
    assert any("head is missing" in p for p in problems) and any("no intent entry" in p for p in problems)
    restore()
    with engine.begin() as conn:  # every entry removed, the head kept
        conn.execute(sa.delete(audit))
    assert any("every entry was removed" in p for p in verify(estate.store, KEY))
    restore()
    for column, value in (("actor", "ceo@msp.example"), ("state", "failed")):
        with engine.begin() as conn:
            conn.execute(sa.update(jobs).where(jobs.c.id == job_rows[0]["id"]).values(**{column: value}))
        assert any(f"job {job_rows[0]['id']}" in p for p in verify(estate.store, KEY)), column
        restore()
    rebuild(entry_hash)  # recomputed as the legacy chain, its starting point moved past the end
    with engine.begin() as conn:
        conn.execute(sa.update(meta_table).where(meta_table.c.key == "audit_keyed_from").values(value="99"))
    assert any("audit_legacy_entries" in p for p in verify(estate.store, KEY))  # the config accepts no legacy
    with engine.begin() as conn:  # and the record of which key wrote it removed too
        conn.execute(sa.delete(meta_table).where(meta_table.c.key == "audit_key_id"))
    assert any("audit_legacy_entries" in p for p in verify(estate.store, KEY, legacy=2))
    restore()
    script = [sys.executable, "-c", "from scanner.cli import main; main()"]
    config = _serve_toml(estate, "")
    env = {**os.environ, SECRET_ENV: SECRET, AUDIT_KEY_ENV: AUDIT_KEY}
    rebuild(entry_hash)
    checked = subprocess.run([*script, "audit", "verify", "--config", str(config)], capture_output=True, text=True,
                             env=env, cwd=config.parent, timeout=60)
    assert checked.returncode == 1 and "changed" in checked.stderr


def test_a_chain_written_before_the_key_is_verified_as_legacy_then_keyed(tmp_path: Path) -> None:
    from datetime import UTC, datetime

    from remediation.audit import append, legacy_count
    from scanner.store.database import Store

    url = f"sqlite:///{tmp_path / 'old.db'}"
    store = Store(url)

    def intent(job: str, who: str) -> str:
        what = {"action": "invite.revoke", "tenant": "t", "subject": "s", "params": {}}
        return json.dumps({"at": "2026-11-01T00:00:00+00:00", "who": who, "what": what, "undo_of": None},
                          sort_keys=True, separators=(",", ":"))

    with store.engine.begin() as conn:  # make it a version 4 store whose log was written with plain SHA-256
        conn.execute(sa.text("DROP TABLE job_claims"))
        conn.execute(sa.delete(meta_table).where(meta_table.c.key == "audit_keyed_from"))
        conn.execute(sa.update(meta_table).where(meta_table.c.key == "schema_version").values(value="4"))
        prev = GENESIS
        for seq in (1, 2):
            digest = entry_hash(seq, "intent", f"job{seq}", intent(f"job{seq}", "old"), prev)
            conn.execute(sa.insert(audit).values(seq=seq, at=datetime.now(UTC), kind="intent", job_id=f"job{seq}",
                                                 body=intent(f"job{seq}", "old"), prev_hash=prev, hash=digest))
            conn.execute(sa.insert(jobs).values(
                id=f"job{seq}", action="invite.revoke", tenant="t", domain="d", subject="s", params={}, issued={},
                finding="f", check_id="c", run_id="r", state="pending", actor="old", reason="",
                created=datetime.now(UTC)))
            prev = digest
        conn.execute(sa.insert(meta_table).values(key="audit_head", value=f"2:{prev}"))
    store.close()
    store = Store(url)  # migration 5 marks where the keyed chain begins
    try:
        assert legacy_count(store) == 2
        assert any("audit_legacy_entries = 2" in p for p in verify(store, KEY))  # not believed from the database
        assert verify(store, KEY, legacy=2) == []
        with store.engine.begin() as conn:
            append(conn, KEY, "state", "job1", {"outcome": "x", "state": "pending", "before": None, "after": None,
                                                "error": None}, datetime.now(UTC))
        assert verify(store, KEY, legacy=2) == []
        with store.engine.begin() as conn:  # rewrite the legacy part and recompute it: the keyed entry no longer follows
            first = entry_hash(1, "intent", "job1", intent("job1", "someone"), GENESIS)
            conn.execute(sa.update(audit).where(audit.c.seq == 1).values(body=intent("job1", "someone"), hash=first))
            conn.execute(sa.update(audit).where(audit.c.seq == 2).values(
                prev_hash=first, hash=entry_hash(2, "intent", "job2", intent("job2", "old"), first)))
            conn.execute(sa.update(jobs).where(jobs.c.id == "job1").values(actor="someone"))
        assert any("follow" in p for p in verify(store, KEY, legacy=2))
    finally:
        store.close()


# 7. a failing audit sink and a crash never leave a job stuck


def test_a_failing_sink_fails_the_job_and_the_link_says_so(estate: Estate) -> None:
    target = failing(estate, "forwarding.external", "eleanor.price@cedarlaw.example")
    path = path_of(links(estate)[target["id"]])
    (estate.root / "demo" / "broken-sink").mkdir()
    config = _quiet(estate.config, audit_sink=Path("broken-sink"))  # a directory: every append to it fails
    with served(estate, config) as base, client(base) as web:
        done = web.post(path, data={"csrf": csrf_of(web.get(path, headers=DANA).text)}, headers=DANA)
        assert done.status_code == 303
        job = web.get(done.headers["location"], headers=DANA)
        assert 'id="job-state">failed<' in job.text and "could not be written" in job.text
        again = web.get(path, headers=DANA)
        assert again.status_code == 410 and 'id="job-link"' in again.text
    assert "eleanor.price@personal-mail.test" in forwards(estate)  # nothing was changed without its audit copy
    assert [j.state for j in Jobs(estate.store, estate.config).history()] == ["failed"]


def test_jobs_left_by_a_dead_process_are_recovered_at_start(estate: Estate) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    runner = Jobs(estate.store, estate.config)
    forward = [p for p in plans_for_check(estate.store, estate.run_id, "forwarding.external")
               if p.tenant == "cedar-law"]
    never_ran = runner.create(forward[0], "ops", "fix", link="nonce-never-ran")
    interrupted = runner.create(forward[1], "ops", "fix")
    mailbox = forward[1].subject
    text = forwards(estate)
    kept = [line for line in text.splitlines() if not (line.lower().startswith(mailbox + ",")
                                                      and any(t in line.lower() for t in forward[1].params["targets"]))]
    (estate.export("cedar-law") / "forwards.csv").write_text("\n".join(kept) + "\n", encoding="utf-8")  # it wrote
    with estate.store.engine.begin() as conn:
        conn.execute(sa.update(jobs).values(owner=f"{socket.gethostname()}:{dead.pid}"))
        conn.execute(sa.update(jobs).where(jobs.c.id == interrupted.id).values(state="running"))
    with served(estate) as base, client(base) as web:
        first = web.get(f"/jobs/{never_ran.id}", headers=DANA).text
        second = web.get(f"/jobs/{interrupted.id}", headers=DANA).text
    assert 'id="job-state">failed<' in first and "stopped before running it" in first
    assert 'id="job-state">done<' in second and "recovered at start" in second
    assert verify(estate.store, KEY) == []
    kinds = [(e.job_id, e.kind) for e in entries(estate.store)]
    assert (never_ran.id, "state") in kinds and (interrupted.id, "state") in kinds


# 8. per-tenant emails carry only their tenants' links


def test_a_tenant_list_email_carries_only_its_tenants_links(sqlite_estate: Estate) -> None:
    from reports.mail import message_context
    from scanner.config import EmailConfig

    estate = sqlite_estate
    run = next(r for r in estate.store.runs() if r.id == estate.run_id)
    found = estate.store.findings_for_run(estate.run_id)
    signer = Signer(estate.config.remediation)
    email = EmailConfig.model_validate({"host": "127.0.0.1", "port": 25, "from": "mw@msp.example", "top": 100,
                                        "lists": [{"name": "cedar", "to": ["it@cedarlaw.example"],
                                                   "tenants": ["cedar-law"]}]})
    context = message_context(run, found, {}, email.lists[0], email, signer)
    sent = [link for _, fix in context["top"] for link in fix["links"]]
    assert sent and {signer.check(link.rpartition("/r/")[2]).tenant for link in sent} == {"cedar-law"}
    everyone = {signer.check(link.rpartition("/r/")[2]).tenant for link in links(estate).values()}
    assert len(everyone) == 3  # the all-tenants report keeps every tenant's links

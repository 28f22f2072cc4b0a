"""The ``mailwarden`` command line."""

from __future__ import annotations

import json
import logging
import re
import shutil
import signal
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from scanner.bundle import BUNDLED
from scanner.errors import ConfigError, MailwardenError, RunFailed, StoreError
from scanner.model import Scope, Severity, Status

if TYPE_CHECKING:
    from scanner.config import Config, RemediationConfig
    from scanner.pipeline import ScanResult
    from scanner.store.database import RunRecord, Store

# Each command imports what it uses in its body: `mailwarden --help`, `checks` and `status` then load only their
# own modules, not the store, the reports, collection and the web app that the other commands need.

DEMO = BUNDLED / "demo"
DEMO_AS_OF = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)
"""The day the demo's export files describe: the demo judges them as of then, so they do not age."""
EXIT_CONFIG = 2
EXIT_FAILED_RUN = 1
EXIT_FINDINGS = 3
EXIT_DELIVERY = 4

SEVERITIES = click.Choice([s.value for s in Severity])


@contextmanager
def _user_errors() -> Iterator[None]:
    """Turn mailwarden's own errors into one line on stderr and the documented exit status."""
    try:
        yield
    except MailwardenError as exc:
        click.echo(f"mailwarden: {exc}", err=True)
        sys.exit(EXIT_FAILED_RUN if isinstance(exc, RunFailed) else EXIT_CONFIG)


def _reader(config: Config) -> Store:
    """The store for a read-only command: never created, so a wrong path is one line (exit 2), not an empty store."""
    from scanner.store.database import Store

    return Store(config.store.url, create=False)


@contextmanager
def _terminated_as_interrupt() -> Iterator[None]:
    """SIGTERM stops a scan the way Ctrl-C does: the run is recorded ``interrupted`` and the outputs stay whole."""
    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread (a test runner): leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _config(path: Path | None) -> Config:
    from scanner.config import load_config

    return load_config(path if path is not None else Path("mailwarden.toml"))


@click.group()
@click.option("-v", "--verbose", is_flag=True, help="Log collection problems and progress to stderr.")
@click.version_option(package_name="mailwarden")
def main(verbose: bool) -> None:
    """mailwarden: audit email domains and mailboxes across providers, and find drift."""
    level = logging.INFO if verbose else logging.ERROR
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    # psycopg sets its logger to WARNING unless it is set: its warning on a failed write (a pipeline aborted)
    # restates the store error the command reports in one line.
    logging.getLogger("psycopg").setLevel(level)


def _scan(config: Config, out_dir: Path, fail_on: str | None, as_of: datetime | None = None,
          tenants: tuple[str, ...] = (), fail_on_error: bool = False,
          next_steps: list[tuple[str, str]] | None = None) -> ScanResult:
    from rich.console import Console

    from scanner.collect import missing_inputs
    from scanner.pipeline import run_scan
    from scanner.store.database import Store

    console = Console(stderr=True)
    for line in missing_inputs(config, tenants or None):
        click.echo(f"mailwarden: {line}", err=True)
    store = Store(config.store.url)
    try:
        with _terminated_as_interrupt(), console.status("collecting…") as status:
            done: list[str] = []

            def progress(tenant: str) -> None:
                done.append(tenant)
                status.update(f"collected {len(done)}/{len(tenants or config.tenants)} tenants ({tenant})")

            result = run_scan(config, out_dir, store=store, as_of=as_of, progress=progress, tenants=tenants or None)
    finally:
        store.close()
    _summarize(result, out_dir, next_steps if next_steps is not None else _next_steps(config, out_dir))
    if result.run.state == "failed":
        sys.exit(EXIT_FAILED_RUN)
    if fail_on is not None:
        threshold = Severity(fail_on).rank
        if any(n and Severity(severity).rank >= threshold for severity, n in result.failing.items()):
            sys.exit(EXIT_FINDINGS)
    if fail_on_error and result.counts.get(Status.ERROR.value):
        click.echo("mailwarden: some checks could not decide (status error): see the report", err=True)
        sys.exit(EXIT_FINDINGS)
    return result


FIX_FIRST_LINES = 10
"""How many root causes the console lists after a run."""


def _summarize(result: ScanResult, out_dir: Path, next_steps: list[tuple[str, str]] | None = None) -> None:
    """After a run: each tenant's collection, the root causes to fix first, collection problems, and what next.

    One line per root cause (a check's findings on one subject together, with what follows from it),
    and collection problems summarised without -v, so the console alone says what to look at.
    """
    from reports.rootcause import among
    from scanner.pipeline import Notables, StoredFindings

    counts = result.counts
    tenants = result.run.scope.get("tenants", {})
    click.echo(f"run {result.run.id}: {result.run.state}, {len(tenants)} tenants")
    for name, scope in sorted(tenants.items()):
        problems = f", {len(scope['problems'])} collection problem(s)" if scope["problems"] else ""
        click.echo(f"  {name}: {scope['state']}, {scope['domains']} domains, {scope['mailboxes']} mailboxes{problems}")
    _dns_summary(result.run.scope.get("dns") or {})
    click.echo("findings: " + ", ".join(f"{counts.get(s.value, 0)} {s.value}" for s in Status))
    # Compact figures of the root causes and of the undecided checks' reasons, gathered while report.html read
    # the findings that are not passes, or else in one read of them now (``result.notable`` streams from the
    # store); the causes listed are read again by id.
    read = result.read if result.read is not None else Notables.of(result.notable)
    index, undecided = read.causes, read.undecided
    notable = result.notable
    causes = index.causes(notable.named if isinstance(notable, StoredFindings) else among(notable),
                          limit=FIX_FIRST_LINES)
    if causes:
        click.echo(f"fix first ({len(index)} root causes, by severity and reach; the report says how to fix each):")
    for cause in causes:
        first = cause.first
        extra = []
        if len(cause.findings) > 1:
            extra.append(f"{len(cause.findings)} items: " + ", ".join(f.item for f in cause.findings[:4])
                         + (" …" if len(cause.findings) > 4 else ""))
        if cause.dependants:
            extra.append(f"+{len(cause.dependants)} that follow from it")
        suffix = f"  ({'; '.join(extra)})" if extra else ""
        click.echo(f"  {cause.severity.value:8} {first.check:30} {first.subject}  [{first.tenant}]{suffix}")
    if len(index) > FIX_FIRST_LINES:
        click.echo(f"  … and {len(index) - FIX_FIRST_LINES} more in the report")
    _collection_problems(result, undecided)
    click.echo(f"report: {(out_dir / 'report.html').resolve()}")
    actionable = index.first_actionable()
    if next_steps and actionable:
        next_steps = [(what, command.replace("CHECK_ID", actionable)) for what, command in next_steps]
    if next_steps:
        click.echo("next:")
        width = max(len(what) for what, _ in next_steps)
        for what, command in next_steps:
            click.echo(f"  {what:{width}}  {command}")


def _collection_problems(result: ScanResult, undecided: Mapping[tuple[str, str], set[str]]) -> None:
    """Collection problems (adapters, DNS) and undecided checks (``undecided``: the checks with an error by tenant
    and reason), grouped by reason, without -v."""
    lines: list[str] = []
    for name, scope in sorted(result.run.scope.get("tenants", {}).items()):
        for problem in scope.get("problems", []):
            lines.append(f"  {name}: {problem}")
        failed = [g for g in scope.get("gaps", []) if g.get("state") == "failed"]
        for gap in failed[:5]:
            where = f" ({gap['subject']})" if gap.get("subject") else ""
            lines.append(f"  {name}: {gap.get('fact', '')} not collected{where}: {gap.get('reason', '')}")
        if len(failed) > 5:
            lines.append(f"  {name}: … and {len(failed) - 5} more facts not collected (report: Coverage)")
    for (tenant, reason), checks in sorted(undecided.items(), key=lambda kv: (kv[0][0], -len(kv[1]), kv[0][1]))[:8]:
        lines.append(f"  {tenant}: {len(checks)} check(s) could not decide ({', '.join(sorted(checks)[:3])}"
                     f"{' …' if len(checks) > 3 else ''}): {reason}")
    if len(undecided) > 8:
        lines.append(f"  … and {len(undecided) - 8} more reasons (report: Coverage)")
    if lines:
        click.echo(f"collection problems and undecided checks ({len(lines)}; never counted as a pass):")
        for line in lines:
            click.echo(line)


def _next_steps(config: Config, out_dir: Path) -> list[tuple[str, str]]:
    """The commands an operator runs after a scan, with this config named when it is not the default."""
    named = "" if config.source == Path("mailwarden.toml") else f" --config {config.source}"
    steps = [("open the report", (out_dir / "report.html").resolve().as_uri()),
             ("what changed", f"mailwarden changes{named} --since 7d"),
             ("fix a check", f"mailwarden remediate{named} --check CHECK_ID   (a dry run until --yes)")]
    if config.email is not None:
        steps.append(("email it", f"mailwarden report{named} --email"))
    return steps


def _dns_summary(dns: dict[str, object]) -> None:
    """The run's DNS in one line, and a line per nameserver that failed and why (shown without -v)."""
    if not dns:
        return
    click.echo(f"DNS: {dns.get('questions', 0)} questions, {dns.get('answered', 0)} answered, "
               f"{dns.get('unanswered', 0)} unanswered")
    for server, reasons in (dns.get("nameservers") or {}).items():  # type: ignore[union-attr]
        click.echo(f"  nameserver {server} failed: " + ", ".join(f"{why} ×{n}" for why, n in reasons.items()))


@main.command()
@click.option("--config", "config_path", type=click.Path(path_type=Path), help="Config file (default: ./mailwarden.toml).")
@click.option("--out", "out_dir", type=click.Path(path_type=Path, file_okay=False), default=Path("mailwarden-out"),
              show_default=True, help="Directory for findings.json, findings.csv, report.html, manifest.json.")
@click.option("--fail-on", type=SEVERITIES, help="Exit 3 when a failing finding has this severity or higher.")
@click.option("--fail-on-error", is_flag=True, help="Exit 3 when any check could not decide (a finding is error).")
@click.option("--tenant", "tenants", multiple=True,
              help="Scan only this tenant (one unit of work; repeatable); the others' state carries forward.")
def scan(config_path: Path | None, out_dir: Path, fail_on: str | None, tenants: tuple[str, ...],
         fail_on_error: bool) -> None:
    """Collect, check and report once."""
    with _user_errors():
        _scan(_config(config_path), out_dir, fail_on, tenants=tenants, fail_on_error=fail_on_error)


DEMO_PORT = 8642
"""The loopback port the demo's report links name, where ``demo --serve`` runs the remediation app."""
DEMO_OPERATOR = "demo.operator@msp.example"
"""Who the demo's remediation app says is signed in, as the reverse proxy in front of it would."""


def _demo_state(out_dir: Path) -> Path:
    """Where the demo keeps what changes (its store, the link secret, the CA, a working copy of the estate).

    Beside the output folder, not in it: each run folder then verifies with ``evidence verify`` as written.
    """
    resolved = out_dir.resolve()
    return resolved.parent / f"{resolved.name}-state"


def _as_operator(app: Any, header: str, operator: str) -> Any:
    """The ASGI app behind a stand-in for the reverse proxy: every request names ``operator`` in ``header``.

    The remediation app trusts that header only from its trusted proxies (127.0.0.1 by default), and the
    demo listens on 127.0.0.1 only, as a proxy on the same host would.
    """
    name = header.lower().encode("latin-1")

    async def proxied(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            headers = [(k, v) for k, v in scope["headers"] if k.lower() != name]
            scope = {**scope, "headers": [*headers, (name, operator.encode("utf-8"))]}
        await app(scope, receive, send)

    return proxied


@main.command()
@click.option("--out", "out_dir", type=click.Path(path_type=Path, file_okay=False), default=Path("mailwarden-demo"),
              show_default=True, help="Directory for the outputs (the demo's store and estate copy go beside it, in OUT-state).")
@click.option("--serve", "keep_serving", is_flag=True,
              help="Then keep the remediation app on 127.0.0.1 (a demo operator signed in) until Ctrl-C, "
                   "so the report's fix links work.")
@click.option("--port", type=click.IntRange(0, 65535), default=DEMO_PORT, show_default=True,
              help="Loopback port of the demo's remediation app, which the report's links name (0: any free port).")
def demo(out_dir: Path, keep_serving: bool, port: int) -> None:
    """Scan the bundled demo estate twice, with a scripted change between, served by a DNS server on loopback.

    The first run's outputs go to OUT, the second's to OUT/after-change, and the change log between
    them is printed (config/demo/drift/README.md says what changes). The reports carry one-click fix
    links; with --serve they work: click one, confirm, and the demo's export file changes.
    """
    import secrets

    from checks.controls import load_catalogue
    from checks.registry import load_checks
    from reports.changelog import write_changes_json, write_changes_table
    from reports.evidence import Period, write_evidence
    from reports.manifest import write_manifest
    from scanner.config import load_config
    from scanner.loopback.policyserver import LoopbackCA, PolicyServer, policies_from_directory
    from scanner.loopback.zoneserver import ZoneServer, load_zone_file
    from scanner.pipeline import senders_of
    from scanner.store.database import Store

    with _user_errors(), ZoneServer() as server:
        server.load_directory(DEMO / "zones")
        out_dir.mkdir(parents=True, exist_ok=True)
        for stale in ("mailwarden-demo.db", "demo-ca.pem"):  # where earlier versions kept the demo's state
            (out_dir / stale).unlink(missing_ok=True)
        state = _demo_state(out_dir)
        state.mkdir(parents=True, exist_ok=True)
        database = state / "mailwarden-demo.db"
        for stale in (database, Path(f"{database}-wal"), Path(f"{database}-shm")):  # with a killed demo's log
            stale.unlink(missing_ok=True)  # each demo starts from an empty store, so the change log is the script's
        (state / "audit.jsonl").unlink(missing_ok=True)
        estate = state / "estate"
        shutil.rmtree(estate, ignore_errors=True)
        # A working copy of the estate: the fixes clicked in the demo change its export files, never the bundled ones.
        shutil.copytree(DEMO, estate, ignore=shutil.ignore_patterns("drift"))
        secret = state / "link-secret"
        secret.write_text(secrets.token_urlsafe(32), encoding="utf-8")
        secret.chmod(0o600)
        audit = state / "audit-key"  # the audit chain's own key, apart from the link secret and the store
        audit.write_text(secrets.token_urlsafe(32), encoding="utf-8")
        audit.chmod(0o600)
        if port == 0:
            import socket

            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                port = int(probe.getsockname()[1])
        plain = load_config(estate / "mailwarden.toml")
        # The demo's MTA-STS policy hosts resolve to loopback; serve their policies over real HTTPS,
        # with a certificate from a throwaway CA that only this run trusts.
        ca = LoopbackCA()
        hosts = [f"mta-sts.{d}" for t in plain.tenants for d in (*t.domains, *t.parked_domains)]
        with PolicyServer(policies_from_directory(DEMO / "mta-sts"), ca.server_context(hosts)) as https:
            overrides: dict[str, dict[str, object]] = {
                "dns": {"nameservers": [server.nameserver]},
                "store": {"url": f"sqlite:///{database}"},
                "mta_sts": {"port": https.port, "ca_bundle": str(ca.write(state / "demo-ca.pem"))},
                "remediation": {"base_url": f"http://127.0.0.1:{port}", "secret": f"file:{secret}",
                                "audit_sink": str(state / "audit.jsonl"), "audit_key": f"file:{audit}",
                                "operators": {DEMO_OPERATOR: ["*"]}},
            }
            click.echo(f"demo DNS server on {server.nameserver} (UDP and TCP), serving config/demo/zones")
            click.echo(f"demo MTA-STS policy server on https://127.0.0.1:{https.port}, serving config/demo/mta-sts")
            click.echo(f"demo state (store, estate copy, link secret) in {state}")
            first = load_config(estate / "mailwarden.toml", overrides=overrides)
            _demo_import(first)
            _scan(first, out_dir, None, as_of=DEMO_AS_OF, next_steps=[])
            shutil.copytree(DEMO / "drift", estate, dirs_exist_ok=True, ignore=shutil.ignore_patterns("README.md"))
            for zone in sorted((DEMO / "drift" / "zones").glob("*.zone")):
                server.add_zone(load_zone_file(zone, zone.name[: -len(".zone")]))
            click.echo("\nscripted change applied (config/demo/drift): scanning again")
            after = out_dir / "after-change"
            config = load_config(estate / "mailwarden.toml", overrides=overrides)
            result = _scan(config, after, None, as_of=DEMO_AS_OF, next_steps=[])
            store = Store(config.store.url)
            try:
                found = store.changes(run_id=result.run.id)
            finally:
                store.close()
            changes_file = after / "changes.json"
            with changes_file.open("w", encoding="utf-8") as handle:
                write_changes_json(found, handle)
            # the change log belongs to the run folder: its manifest lists it, so the folder verifies as written
            write_manifest(result.run, [f for f in result.files if f.name != "manifest.json"] + [changes_file],
                           after / "manifest.json")
            click.echo(f"\nchange log of run {result.run.id} ({len(found)} changes; also in {changes_file}):")
            write_changes_table(found, sys.stdout)
            pack = out_dir / "evidence"
            store = Store(config.store.url)
            try:
                write_evidence(store, pack, Period.of(None, None), config_digest=config.digest,
                               senders=senders_of(config),
                               catalogue=load_catalogue(known_checks=[c.meta.id for c in load_checks()]))
            finally:
                store.close()
            click.echo(f"\nevidence pack of both runs (controls.csv, evidence.xlsx): {pack}")
            report = (after / "report.html").resolve().as_uri()
            click.echo("\nnext:")
            click.echo(f"  open the report       {report}")
            click.echo(f"  check the run folder  mailwarden evidence verify {out_dir}")
            if not keep_serving:
                click.echo("  try a fix             mailwarden demo --serve   (then click \"Review and apply\" in the report)")
                return
            _serve_demo(config, port, estate, after)


def _serve_demo(config: Config, port: int, estate: Path, after: Path) -> None:
    """Run the remediation app for the demo on 127.0.0.1 until Ctrl-C, with a demo operator signed in."""
    import uvicorn

    from remediation.web import build_app
    from scanner.service.serve import server_config

    app = _as_operator(build_app(config), config.remediation.identity_header, DEMO_OPERATOR)
    click.echo(f"\nremediation app on http://127.0.0.1:{port} (signed in as {DEMO_OPERATOR}, as a reverse proxy "
               "would say); Ctrl-C stops it")
    click.echo("  1. open the report above; in \"Fix first\", click \"Review and apply\" on a forward or a catch-all")
    click.echo("  2. the page shows the live state and what will change; press Confirm")
    click.echo(f"  3. see the export file change under {estate}, the job's audit entries, and Undo")
    click.echo(f"  all jobs: http://127.0.0.1:{port}/jobs")
    server = uvicorn.Server(server_config(app, "127.0.0.1", port, log_level="warning"))
    server.run()
    if not server.started:
        raise MailwardenError(f"the demo's remediation app could not start on 127.0.0.1:{port} (is it in use? "
                              "try --port 0)")


def _demo_import(config: Config) -> None:
    """Import the demo's DMARC aggregate reports (its folder only: the demo has no mailbox to read)."""
    from scanner.aggregate.importer import run_import
    from scanner.store.database import Store

    store = Store(config.store.url)
    try:
        result = run_import(store, config, mailbox=False)
    finally:
        store.close()
    click.echo(f"imported {result.stored} DMARC aggregate reports from config/demo/dmarc-reports "
               f"(`mailwarden dmarc sources` lists what they name)")


_DURATION = re.compile(r"^\s*(\d+)\s*([mhdw])\s*$")
_UNITS = {"m": timedelta(minutes=1), "h": timedelta(hours=1), "d": timedelta(days=1), "w": timedelta(weeks=1)}


def parse_duration(text: str) -> timedelta:
    """A duration such as 30m, 24h, 7d or 2w."""
    match = _DURATION.match(text)
    if match is None:
        raise ConfigError(f"{text!r} is not a duration such as 30m, 24h, 7d or 2w")
    return int(match.group(1)) * _UNITS[match.group(2)]


def parse_since(text: str, now: datetime) -> datetime:
    """--since: a duration back from now (24h, 7d) or an ISO 8601 date or date-time (UTC unless it says)."""
    if _DURATION.match(text):
        return now - parse_duration(text)
    try:
        if len(text.strip()) == 10:
            return datetime.combine(date.fromisoformat(text.strip()), datetime.min.time(), UTC)
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(f"--since {text!r}: expected 24h, 7d, 2w, a date (2026-11-01) or a date-time") from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


CONFIG_OPTION = click.option("--config", "config_path", type=click.Path(path_type=Path),
                             help="Config file (default: ./mailwarden.toml).")
DATES = click.DateTime(formats=["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M:%S%z"])


@main.command()
@CONFIG_OPTION
@click.option("--since", help="Only changes since then: 24h, 7d, 2w, or a date such as 2026-11-01.")
@click.option("--tenant", help="Only this tenant.")
@click.option("--domain", help="Only this domain: its DNS, its settings and its mailboxes.")
@click.option("--mailbox", help="Only this mailbox: its settings, forwards and invite.")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv"]), default="table", show_default=True)
def changes(config_path: Path | None, since: str | None, tenant: str | None, domain: str | None,
            mailbox: str | None, fmt: str) -> None:
    """Print the change log: each object's field before and after, with the run (or job) and time."""
    from reports.changelog import write_changes_csv, write_changes_json, write_changes_table
    from scanner.config import normalize_domain

    with _user_errors():
        config = _config(config_path)
        start = parse_since(since, datetime.now(UTC)) if since else None
        try:
            name = normalize_domain(domain) if domain else None
        except ValueError as exc:
            raise ConfigError(f"--domain: {exc}") from None
        store = _reader(config)
        try:
            found = store.changes(
                since=start, tenant=tenant, domain=name,
                subject=mailbox.strip().lower() if mailbox else None,
            )
        finally:
            store.close()
    {"json": write_changes_json, "csv": write_changes_csv, "table": write_changes_table}[fmt](found, sys.stdout)


@main.group("dmarc")
def dmarc_group() -> None:
    """DMARC aggregate reports: import them, and list the sources that send as each domain."""


@dmarc_group.command("import")
@CONFIG_OPTION
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
def dmarc_import(config_path: Path | None, paths: tuple[Path, ...]) -> None:
    """Import aggregate reports from PATHS (files or folders), else from [dmarc_reports] paths and its mailbox.

    A report already stored (same reporting org and report id) is skipped. A file that cannot be read
    is named on stderr with the reason; every other file is still imported. Exit 1 when any was not read.
    """
    from scanner.aggregate.importer import printable, run_import
    from scanner.store.database import Store

    with _user_errors():
        config = _config(config_path)
        if not paths and config.dmarc_reports is None:
            raise ConfigError(f"{config.source}: dmarc_reports: no [dmarc_reports] table, and no PATH given")
        store = Store(config.store.url)
        try:
            result = run_import(store, config, list(paths))
        finally:
            store.close()
    for name, reason in result.problems:
        click.echo(f"mailwarden: {printable(name)}: {printable(reason)}", err=True)
    click.echo(f"read {result.read} files or messages: {result.stored} reports stored ({result.records} records), "
               f"{result.skipped} already stored, {len(result.problems)} not read")
    if result.problems:
        sys.exit(EXIT_FAILED_RUN)


@dmarc_group.command("sources")
@CONFIG_OPTION
@click.option("--since", type=DATES, help="Only reports whose period ends on or after this day (or UTC moment).")
@click.option("--until", type=DATES, help="Only reports whose period begins on or before this day (inclusive).")
@click.option("--tenant", help="Only this tenant's domains (and their subdomains).")
@click.option("--domain", help="Only mail sent as this domain (the reports' header_from).")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv"]), default="table", show_default=True)
def dmarc_sources(config_path: Path | None, since: datetime | None, until: datetime | None, tenant: str | None,
                  domain: str | None, fmt: str) -> None:
    """One row per (domain, source IP): messages, DMARC pass and fail, aligned SPF and DKIM, first and last seen."""
    from reports.dmarc_sources import source_rows, write_sources
    from reports.evidence import Period
    from scanner.aggregate.store import source_traffic
    from scanner.config import normalize_domain
    from scanner.pipeline import senders_of

    with _user_errors():
        config = _config(config_path)
        period = Period.of(_day_or_moment(since), _day_or_moment(until))
        owned: tuple[str, ...] = ()
        if tenant is not None:
            chosen = [t for t in config.tenant_models() if t.name == tenant]
            if not chosen:
                raise ConfigError(f"{config.source}: tenants: no tenant named {tenant!r}")
            owned = (*chosen[0].domains, *chosen[0].parked_domains)
        try:
            wanted = normalize_domain(domain) if domain else None
        except ValueError as exc:
            raise ConfigError(f"--domain: {exc}") from None
        store = _reader(config)
        try:
            traffic = source_traffic(store, since=period.since, until=period.until,
                                     domains=[wanted] if wanted else None)
        finally:
            store.close()
    if tenant is not None:
        traffic = [t for t in traffic if any(t.domain == d or t.domain.endswith("." + d) for d in owned)]
    write_sources(source_rows(traffic, senders_of(config)), fmt, sys.stdout)


@main.group()
def baseline() -> None:
    """Baselines: a domain's declared MX, SPF, DMARC, DKIM and MTA-STS."""


@baseline.command("capture")
@CONFIG_OPTION
@click.option("--domain", required=True, help="The domain whose recorded state becomes the baseline.")
@click.option("--out", "out_path", type=click.Path(path_type=Path, dir_okay=False),
              help="File to write (default: <domain>.baseline.toml; '-' for standard output).")
def baseline_capture(config_path: Path | None, domain: str, out_path: Path | None) -> None:
    """Write the domain's state as the latest run recorded it as a baseline file."""
    from scanner.store.baseline import capture, render_baseline
    from scanner.config import normalize_domain
    from scanner.store.database import Store

    with _user_errors():
        config = _config(config_path)
        try:
            name = normalize_domain(domain)
        except ValueError as exc:
            raise ConfigError(f"--domain: {exc}") from None
        owners = [t.name for t in config.tenant_models() if name in t.domains or name in t.parked_domains]
        if not owners:
            raise ConfigError(f"--domain {name}: no tenant in {config.source} manages it")
        store = Store(config.store.url)
        try:
            found = store.domain_state(f"{owners[0]}/{name}")
        finally:
            store.close()
        if found is None:
            raise StoreError(f"the store holds no run that saw {name}: run 'mailwarden scan' first")
        state, run = found
        text = render_baseline(name, capture(state), run_id=run.id, taken=run.started)
        if out_path is not None and str(out_path) == "-":
            click.echo(text, nl=False)
            return
        target = out_path or Path(f"{name}.baseline.toml")
        target.write_text(text, encoding="utf-8")
    click.echo(f"wrote {target}: add it to tenant {owners[0]!r}'s baselines list to check {name} against it")


@main.command()
@CONFIG_OPTION
@click.option("--keep", required=True, help="How much history to keep, such as 400d.")
def prune(config_path: Path | None, keep: str) -> None:
    """Remove runs older than --keep, keeping what the kept runs' history still needs."""
    from scanner.store.database import Store

    with _user_errors():
        config = _config(config_path)
        cutoff = datetime.now(UTC) - parse_duration(keep)
        store = Store(config.store.url)
        try:
            done = store.prune(cutoff)
        finally:
            store.close()
    click.echo(f"pruned runs started before {cutoff:%Y-%m-%d %H:%M}Z: {done.runs} runs, {done.versions} object "
               f"versions, {done.objects} object bodies, {done.findings} resolved findings")


@main.command("checks")
def list_checks() -> None:
    """Print the check catalogue from the loaded metadata."""
    from checks.controls import load_catalogue, references
    from checks.registry import load_checks

    with _user_errors():
        loaded = load_checks()
        catalogue = load_catalogue(known_checks=[c.meta.id for c in loaded])
    for check in loaded:
        meta = check.meta
        click.echo(f"{meta.id}  [{meta.severity.value}, {meta.scope.value}]  {meta.title}")
        click.echo(f"    why: {meta.rationale}")
        if meta.requires:
            click.echo(f"    reads: {', '.join(f.value for f in meta.requires)}")
        cited = references(meta, catalogue)
        if cited:
            click.echo(f"    references: {'; '.join(cited)}")
        if meta.remediation is None and meta.scope is Scope.DOMAIN and all(f.value.startswith("dns.")
                                                                            for f in meta.requires):
            # mailwarden never writes DNS: a DNS finding's job shows the record to publish and checks it is live.
            click.echo("    remediation: dns.publish (the record named in the finding, verified once live)")
        else:
            click.echo(f"    remediation: {meta.remediation or '-'}")


@main.command("controls")
@click.option("--framework", "framework_id", help="Only this framework (an id from the catalogue, such as scuba-exo).")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv"]), default="table", show_default=True)
def list_controls(framework_id: str | None, fmt: str) -> None:
    """Print the control catalogue: each framework's controls, the checks that evidence them, and how fully."""
    from checks.controls import load_catalogue
    from checks.registry import load_checks
    from reports.controls import CATALOGUE_COLUMNS, catalogue_rows
    from reports.csv_out import write_rows

    with _user_errors():
        catalogue = load_catalogue(known_checks=[c.meta.id for c in load_checks()])
        chosen = [catalogue.framework(framework_id)] if framework_id else list(catalogue.frameworks)
    rows = catalogue_rows(catalogue, chosen)
    if fmt == "json":
        click.echo(json.dumps(rows, indent=1, ensure_ascii=False))
    elif fmt == "csv":
        write_rows(sys.stdout, CATALOGUE_COLUMNS, rows)
    else:
        for framework in chosen:
            full = sum(1 for c in framework.controls if c.coverage == "full")
            click.echo(f"{framework.id}: {framework.name}, {framework.version} "
                       f"({len(framework.controls)} controls, {full} fully covered)")
            for control in framework.controls:
                click.echo(f"  {control.id}  [{control.coverage}]  {control.title}")
                click.echo(f"      checks: {', '.join(control.checks)}")
                if control.note:
                    click.echo(f"      leaves out: {control.note}")


def _latest_run(store: Store, run_id: str | None) -> RunRecord:
    if run_id is not None:
        return store.run(run_id)
    finished = [r for r in store.runs() if r.state in ("complete", "partial")]
    if not finished:
        raise StoreError("the store holds no finished run yet: run `mailwarden scan` first")
    return finished[-1]


def _day_or_moment(value: datetime | None) -> date | datetime | None:
    """A bare date (midnight, no zone) stays a whole day; anything else is a moment (UTC when no zone)."""
    if value is None or value.tzinfo is not None or value.time() != time.min:
        return value
    return value.date()


def render_formats(store: Store, run_id: str, out_dir: Path, formats: tuple[str, ...],
                   remediation: RemediationConfig | None = None, *, config: Config | None = None) -> list[Path]:
    """Re-render a stored run in the chosen formats, with a manifest hashing what was written (atomically:
    the previous files stay until every new one is written)."""
    from scanner.pipeline import render_outputs

    return list(render_outputs(store, run_id, out_dir, remediation, config, formats).files)




@main.group("evidence", invoke_without_command=True)
@click.option("--config", "config_path", type=click.Path(path_type=Path), help="Config file (default: ./mailwarden.toml).")
@click.option("--since", type=DATES, help="First day (or UTC moment) of the period: runs started then or later.")
@click.option("--until", type=DATES, help="Last day (inclusive, or a UTC moment) of the period.")
@click.option("--tenant", help="Only this tenant's findings, changes, inventory and exceptions.")
@click.option("--framework", "framework_id",
              help="Only this framework's controls and the findings behind them (an id from `mailwarden controls`).")
@click.option("--out", "out_dir", type=click.Path(path_type=Path, file_okay=False), help="Directory for the pack.")
@click.pass_context
def evidence(ctx: click.Context, config_path: Path | None, since: datetime | None, until: datetime | None,
             tenant: str | None, framework_id: str | None, out_dir: Path | None) -> None:
    """Write the evidence pack (CSV files and a hashed manifest) for a period; `evidence verify DIR` checks one."""
    from checks.controls import load_catalogue
    from checks.registry import load_checks
    from reports.evidence import EvidenceError, Period, foreign_entries, write_evidence
    from scanner.pipeline import senders_of

    if ctx.invoked_subcommand is not None:
        return
    if out_dir is None:
        raise click.UsageError("--out DIR is required to write an evidence pack")
    with _user_errors():
        config = _config(config_path)
        if tenant is not None and tenant not in {t.name for t in config.tenants}:
            raise ConfigError(f"{config.source}: tenants: no tenant named {tenant!r}")
        catalogue = load_catalogue(known_checks=[c.meta.id for c in load_checks()])
        if framework_id is not None:
            catalogue.framework(framework_id)  # an unknown id is one line naming the known ones
        strangers = foreign_entries(out_dir)
        if strangers:
            shown = ", ".join(strangers[:5]) + (f" and {len(strangers) - 5} more" if len(strangers) > 5 else "")
            raise ConfigError(f"--out {out_dir}: the folder holds files that are not an evidence pack ({shown}); "
                              "write the pack to an empty folder (or over an earlier pack)")
        store = _reader(config)
        try:
            period = Period.of(_day_or_moment(since), _day_or_moment(until))
            try:
                files = write_evidence(store, out_dir, period, tenant=tenant, config_digest=config.digest,
                                       senders=senders_of(config), catalogue=catalogue, framework=framework_id)
            except EvidenceError as exc:
                click.echo(f"mailwarden: {exc}", err=True)
                sys.exit(EXIT_FAILED_RUN)
        finally:
            store.close()
    click.echo(f"evidence pack in {out_dir.resolve()}: " + ", ".join(f.name for f in files))


@evidence.command("verify")
@click.argument("directory", type=click.Path(path_type=Path, file_okay=False, exists=True))
def evidence_verify(directory: Path) -> None:
    """Check every file of an evidence pack against its manifest's SHA-256; exit 1 naming any bad file."""
    from reports.evidence import verify_evidence

    problems = verify_evidence(directory)
    for problem in problems:
        click.echo(f"mailwarden: {problem}", err=True)
    if problems:
        sys.exit(EXIT_FAILED_RUN)
    click.echo(f"{directory}: every file matches manifest.json")


@main.command()
@click.option("--config", "config_path", type=click.Path(path_type=Path), help="Config file (default: ./mailwarden.toml).")
@click.option("--run", "run_id", help="A stored run id (default: the latest finished run).")
@click.option("--format", "formats", type=click.Choice(["html", "json", "csv"]), multiple=True,
              help="Re-render the run as report.html, findings.json and/or findings.csv (repeatable).")
@click.option("--out", "out_dir", type=click.Path(path_type=Path, file_okay=False), default=Path("mailwarden-out"),
              show_default=True, help="Directory for the re-rendered files.")
@click.option("--email", "send", is_flag=True, help="Send the report by email to each list in [email].")
def report(config_path: Path | None, run_id: str | None, formats: tuple[str, ...], out_dir: Path, send: bool) -> None:
    """Re-render a stored run (--format) and/or email it (--email); rendered from the store, never live data."""
    from reports.mail import send_reports

    failed = False
    with _user_errors():
        config = _config(config_path)
        store = _reader(config)
        try:
            run = _latest_run(store, run_id)
            if formats or not send:
                files = render_formats(store, run.id, out_dir, formats or ("html",), config.remediation, config=config)
                click.echo(f"run {run.id}: " + ", ".join(str(f) for f in files))
            if send:
                if config.email is None:
                    raise ConfigError(f"{config.source}: email: --email needs an [email] table")
                for outcome in send_reports(store, run.id, config):
                    click.echo(outcome.line, err=not outcome.delivered)
                    failed = failed or not outcome.delivered
        finally:
            store.close()
    if failed:
        sys.exit(EXIT_DELIVERY)


@main.command()
@CONFIG_OPTION
@click.option("--host", help="Address the web app listens on (default: [serve] host, 127.0.0.1).")
@click.option("--port", type=click.IntRange(0, 65535), help="Port the web app listens on (default: [serve] port, 8080).")
@click.option("--log-format", type=click.Choice(["text", "json"]), help="Log lines as text or JSON (default: [serve] log_format).")
def serve(config_path: Path | None, host: str | None, port: int | None, log_format: str | None) -> None:
    """Run the scheduled scans and reports ([schedule]) and the web app (/healthz, remediation) until SIGTERM."""
    from checks.registry import load_checks
    from scanner.pipeline import check_exception_ids
    from scanner.service.serve import serve as run_server

    with _user_errors():
        path = config_path if config_path is not None else Path("mailwarden.toml")
        check_exception_ids(_config(path), load_checks())  # refused at start, not at the first scheduled scan
        run_server(path, host=host, port=port, log_format=log_format)


@main.command()
@CONFIG_OPTION
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
def status(config_path: Path | None, fmt: str) -> None:
    """Print each scheduled job's last run, its state and the next run time (as /healthz does), from the store.

    Reads only the config's [store] and [schedule] tables (the other tables are checked by the commands that
    use them) and opens the store read-only."""
    from scanner.sections import load_sections
    from scanner.service.status import read_status, status_lines

    with _user_errors():
        found = read_status(load_sections(config_path if config_path is not None else Path("mailwarden.toml")))
    if fmt == "json":
        click.echo(json.dumps(found, indent=2))
    else:
        for line in status_lines(found):
            click.echo(line)


def _operator() -> str:
    """Who runs a command-line job: the local account (the web app takes it from the trusted proxy)."""
    import getpass

    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli:unknown"


@main.command()
@CONFIG_OPTION
@click.option("--check", "check_id", required=True, help="The check whose failing findings to fix, such as forwarding.external.")
@click.option("--tenant", help="Only this tenant's findings.")
@click.option("--run", "run_id", help="A stored run id (default: the latest finished run).")
@click.option("--canary", default=1, show_default=True, type=click.IntRange(min=1),
              help="How many subjects to fix and re-verify before the rest.")
@click.option("--yes", "apply", is_flag=True, help="Make the changes (without it: print the plan, change nothing).")
@click.option("--reason", default="bulk remediation from the command line", show_default=True,
              help="Why: recorded in each job's intent entry.")
def remediate(config_path: Path | None, check_id: str, tenant: str | None, run_id: str | None, canary: int,
              apply: bool, reason: str) -> None:
    """Fix every failing finding of a check: a dry run by default; --yes applies to a canary first, then the rest."""
    import asyncio

    from checks.registry import load_checks, unknown_check_ids
    from scanner.store.database import Store
    from remediation.actions import describe
    from remediation.jobs import DONE, ALREADY_DONE, BulkStep, Jobs, bulk, plans_for_check

    failed = False
    with _user_errors():
        config = _config(config_path)
        for name, hint in unknown_check_ids((check_id,), load_checks()):
            raise ConfigError(f"--check {name!r}: no such check{hint}; `mailwarden checks` lists them")
        store = Store(config.store.url)
        try:
            run = _latest_run(store, run_id)
            plans = plans_for_check(store, run.id, check_id, tenant)
            runner = Jobs(store, config, config.resolve_path(config.remediation.audit_sink)
                          if config.remediation.audit_sink else None)
            click.echo(f"run {run.id}: {len(plans)} failing finding(s) of {check_id} with a job"
                       + ("" if apply else " (dry run: nothing is changed; --yes applies)"))

            def report(step: BulkStep) -> None:
                nonlocal failed
                line = f"  {step.plan.tenant}  {describe(step.plan.action, step.plan.subject, step.plan.params)}"
                if step.job is None:
                    click.echo(f"{line}  [{step.note}]")
                    return
                state = step.job.state
                failed = failed or state not in (DONE, ALREADY_DONE) or step.note.startswith("canary re-")
                detail = f": {step.job.error}" if step.job.error else ""
                click.echo(f"{line}  [{step.note}: {state}{detail}] job {step.job.id}")

            asyncio.run(bulk(runner, plans, canary=canary, apply=apply, actor=_operator(), reason=reason,
                             report=report))
        finally:
            store.close()
    if failed:
        click.echo("stopped at the first failure; fix it and re-run (what is done is skipped)", err=True)
        sys.exit(EXIT_FAILED_RUN)


@main.command()
@CONFIG_OPTION
@click.argument("job_id")
@click.option("--reason", default="undo from the command line", show_default=True)
def undo(config_path: Path | None, job_id: str, reason: str) -> None:
    """Reverse a done job from its recorded before-state (itself a logged job)."""
    import asyncio

    from scanner.store.database import Store
    from remediation.jobs import DONE, ALREADY_DONE, Jobs

    with _user_errors():
        config = _config(config_path)
        store = Store(config.store.url)
        try:
            runner = Jobs(store, config, config.resolve_path(config.remediation.audit_sink)
                          if config.remediation.audit_sink else None)
            job = asyncio.run(runner.undo(job_id, _operator(), reason))
        finally:
            store.close()
    click.echo(f"job {job.id} ({job.summary}): {job.state}" + (f": {job.error}" if job.error else ""))
    if job.state not in (DONE, ALREADY_DONE):
        sys.exit(EXIT_FAILED_RUN)


@main.command("jobs")
@CONFIG_OPTION
@click.option("--tenant", help="Only this tenant's jobs.")
def list_jobs(config_path: Path | None, tenant: str | None) -> None:
    """Print the remediation jobs, newest first."""
    from remediation.jobs import Jobs

    with _user_errors():
        config = _config(config_path)
        store = _reader(config)
        try:
            found = Jobs(store, config).history(tenant=tenant)
        finally:
            store.close()
    if not found:
        click.echo("no remediation jobs" + (f" for tenant {tenant}" if tenant else "") + " yet")
    for job in found:
        click.echo(f"{job.created:%Y-%m-%d %H:%M:%S}Z  {job.id}  {job.state:12} {job.actor:24} {job.tenant}  "
                   f"{job.summary}" + (f"  ({job.error})" if job.error else ""))


@main.group("audit")
def audit_group() -> None:
    """The remediation audit log."""


@audit_group.command("verify")
@CONFIG_OPTION
@click.option("--sink", type=click.Path(path_type=Path, dir_okay=False),
              help="Also compare with this JSON-lines copy (default: [remediation] audit_sink, if set).")
def audit_verify(config_path: Path | None, sink: Path | None) -> None:
    """Check the audit log's keyed chain, each job row against its entries (and the copy); exit 1 naming each problem."""
    from remediation.audit import audit_key, entries, legacy_count, verify

    with _user_errors():
        config = _config(config_path)
        if sink is None and config.remediation.audit_sink is not None:
            sink = config.resolve_path(config.remediation.audit_sink)
        store = _reader(config)  # a missing store is said first: there is nothing to verify
        try:
            key = audit_key(config.remediation)
            problems = verify(store, key, sink, config.remediation.audit_legacy_entries)
            count = len(entries(store))
            legacy = legacy_count(store)
        finally:
            store.close()
    for problem in problems:
        click.echo(f"mailwarden: audit log: {problem}", err=True)
    if problems:
        sys.exit(EXIT_FAILED_RUN)
    click.echo(f"audit log: {count} entries, the hash chain is intact and every job agrees with it"
               + (f"; {sink} agrees" if sink else ""))
    if legacy:
        click.echo(f"note: the first {legacy} entries predate the audit key: they were verified as the legacy "
                   "unkeyed SHA-256 chain, which someone with write access to the database could have recomputed")


@audit_group.command("show")
@CONFIG_OPTION
@click.option("--job", "job_id", help="Only this job's entries.")
def audit_show(config_path: Path | None, job_id: str | None) -> None:
    """Print the audit log as JSON lines."""
    from remediation.audit import entries

    with _user_errors():
        config = _config(config_path)
        store = _reader(config)
        try:
            found = entries(store, job_id)
        finally:
            store.close()
    for entry in found:
        click.echo(entry.line())

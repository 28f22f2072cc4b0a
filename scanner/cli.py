"""The ``mailwarden`` command line."""

from __future__ import annotations

import json
import logging
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import click

from checks.registry import RegistryError
from scanner.errors import ConfigError, MailwardenError, StoreError
from scanner.model import Severity, Status

if TYPE_CHECKING:
    from scanner.config import Config, RemediationConfig
    from scanner.pipeline import ScanResult
    from scanner.store import RunRecord, Store

# Start-up: each command imports what it uses when it runs, so `mailwarden --help`, `checks` and `status`
# do not pay for SQLAlchemy, pydantic, dnspython, jinja2, httpx and the web stack they never touch.

BUNDLED = Path(__file__).resolve().parent.parent / "config"
"""The bundled config directory (scanner.config.BUNDLED, without importing the config machinery)."""
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
    except (MailwardenError, RegistryError) as exc:
        from scanner.lease import ScanBusy
        from scanner.pipeline import ScanInterrupted

        click.echo(f"mailwarden: {exc}", err=True)
        sys.exit(EXIT_FAILED_RUN if isinstance(exc, (RegistryError, ScanBusy, ScanInterrupted)) else EXIT_CONFIG)


def _config(path: Path | None) -> Config:
    from scanner.config import load_config

    return load_config(path if path is not None else Path("mailwarden.toml"))


@click.group()
@click.option("-v", "--verbose", is_flag=True, help="Log collection problems and progress to stderr.")
@click.version_option(package_name="mailwarden")
def main(verbose: bool) -> None:
    """mailwarden: audit email domains and mailboxes across providers, and find drift."""
    logging.basicConfig(level=logging.INFO if verbose else logging.ERROR, format="%(levelname)s %(name)s: %(message)s")


def _scan(config: Config, out_dir: Path, fail_on: str | None, as_of: datetime | None = None,
          tenants: tuple[str, ...] = ()) -> None:
    from rich.console import Console

    from scanner.pipeline import run_scan
    from scanner.store import Store

    console = Console(stderr=True)
    store = Store(config.store.url)
    try:
        with console.status("collecting…") as status:
            done: list[str] = []

            def progress(tenant: str) -> None:
                done.append(tenant)
                status.update(f"collected {len(done)}/{len(tenants or config.tenants)} tenants ({tenant})")

            result = run_scan(config, out_dir, store=store, as_of=as_of, progress=progress, tenants=tenants or None)
    finally:
        store.close()
    _summarize(result, out_dir)
    if result.run.state == "failed":
        sys.exit(EXIT_FAILED_RUN)
    if fail_on is not None:
        threshold = Severity(fail_on).rank
        if any(n and Severity(severity).rank >= threshold for severity, n in result.failing.items()):
            sys.exit(EXIT_FINDINGS)


def _summarize(result: ScanResult, out_dir: Path) -> None:
    counts = result.counts
    tenants = result.run.scope.get("tenants", {})
    click.echo(f"run {result.run.id}: {result.run.state}, {len(tenants)} tenants")
    for name, scope in sorted(tenants.items()):
        problems = f", {len(scope['problems'])} problem(s)" if scope["problems"] else ""
        click.echo(f"  {name}: {scope['state']}, {scope['domains']} domains, {scope['mailboxes']} mailboxes{problems}")
    click.echo("findings: " + ", ".join(f"{counts.get(s.value, 0)} {s.value}" for s in Status))
    for finding in result.worst:
        click.echo(f"  {finding.severity.value:8} {finding.check:30} {finding.subject}")
    failing = sum(result.failing.values())
    if failing > len(result.worst):
        click.echo(f"  … and {failing - len(result.worst)} more")
    click.echo(f"report: {(out_dir / 'report.html').resolve()}")


@main.command()
@click.option("--config", "config_path", type=click.Path(path_type=Path), help="Config file (default: ./mailwarden.toml).")
@click.option("--out", "out_dir", type=click.Path(path_type=Path, file_okay=False), default=Path("mailwarden-out"),
              show_default=True, help="Directory for findings.json, findings.csv, report.html, manifest.json.")
@click.option("--fail-on", type=SEVERITIES, help="Exit 3 when a failing finding has this severity or higher.")
@click.option("--tenant", "tenants", multiple=True,
              help="Scan only this tenant (one unit of work; repeatable); the others' state carries forward.")
def scan(config_path: Path | None, out_dir: Path, fail_on: str | None, tenants: tuple[str, ...]) -> None:
    """Collect, check and report once."""
    with _user_errors():
        _scan(_config(config_path), out_dir, fail_on, tenants=tenants)


@main.command()
@click.option("--out", "out_dir", type=click.Path(path_type=Path, file_okay=False), default=Path("mailwarden-demo"),
              show_default=True, help="Directory for the outputs and the demo's own store.")
def demo(out_dir: Path) -> None:
    """Scan the bundled demo estate twice, with a scripted change between, served by a DNS server on loopback.

    The first run's outputs go to OUT, the second's to OUT/after-change, and the change log between
    them is printed (config/demo/drift/README.md says what changes).
    """
    from reports.changelog import write_changes_json, write_changes_table
    from scanner.config import load_config
    from scanner.policyserver import LoopbackCA, PolicyServer, policies_from_directory
    from scanner.store import Store
    from scanner.zoneserver import ZoneServer, load_zone_file

    with _user_errors(), ZoneServer() as server:
        server.load_directory(DEMO / "zones")
        out_dir.mkdir(parents=True, exist_ok=True)
        database = out_dir / "mailwarden-demo.db"
        database.unlink(missing_ok=True)  # each demo starts from an empty store, so the change log is the script's
        plain = load_config(DEMO / "mailwarden.toml")
        # The demo's MTA-STS policy hosts resolve to loopback; serve their policies over real HTTPS,
        # with a certificate from a throwaway CA that only this run trusts.
        ca = LoopbackCA()
        hosts = [f"mta-sts.{d}" for t in plain.tenants for d in (*t.domains, *t.parked_domains)]
        with PolicyServer(policies_from_directory(DEMO / "mta-sts"), ca.server_context(hosts)) as https:
            overrides: dict[str, dict[str, object]] = {
                "dns": {"nameservers": [server.nameserver]},
                "store": {"url": f"sqlite:///{database.resolve()}"},
                "mta_sts": {"port": https.port, "ca_bundle": str(ca.write(out_dir / "demo-ca.pem").resolve())},
            }
            click.echo(f"demo DNS server on {server.nameserver} (UDP and TCP), serving config/demo/zones")
            click.echo(f"demo MTA-STS policy server on https://127.0.0.1:{https.port}, serving config/demo/mta-sts")
            _scan(load_config(DEMO / "mailwarden.toml", overrides=overrides), out_dir, None, as_of=DEMO_AS_OF)
            with tempfile.TemporaryDirectory(prefix="mailwarden-demo-") as temp:
                changed = Path(temp) / "demo"
                shutil.copytree(DEMO, changed, ignore=shutil.ignore_patterns("drift"))
                shutil.copytree(DEMO / "drift", changed, dirs_exist_ok=True, ignore=shutil.ignore_patterns("README.md"))
                for zone in sorted((DEMO / "drift" / "zones").glob("*.zone")):
                    server.add_zone(load_zone_file(zone, zone.name[: -len(".zone")]))
                click.echo("\nscripted change applied (config/demo/drift): scanning again")
                after = out_dir / "after-change"
                _scan(load_config(changed / "mailwarden.toml", overrides=overrides), after, None, as_of=DEMO_AS_OF)
        store = Store(f"sqlite:///{database.resolve()}")
        try:
            last = store.runs()[-1]
            found = store.changes(run_id=last.id)
        finally:
            store.close()
        with (after / "changes.json").open("w", encoding="utf-8") as handle:
            write_changes_json(found, handle)
        click.echo(f"\nchange log of run {last.id} ({len(found)} changes; also in {after / 'changes.json'}):")
        write_changes_table(found, sys.stdout)


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
    from scanner.store import Store

    with _user_errors():
        config = _config(config_path)
        start = parse_since(since, datetime.now(UTC)) if since else None
        store = Store(config.store.url)
        try:
            found = store.changes(
                since=start, tenant=tenant, domain=normalize_domain(domain) if domain else None,
                subject=mailbox.strip().lower() if mailbox else None,
            )
        finally:
            store.close()
    {"json": write_changes_json, "csv": write_changes_csv, "table": write_changes_table}[fmt](found, sys.stdout)


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
    from scanner.baseline import capture, render_baseline
    from scanner.config import normalize_domain
    from scanner.store import Store

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
    from scanner.store import Store

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
    from checks.registry import load_checks

    with _user_errors():
        loaded = load_checks()
    for check in loaded:
        meta = check.meta
        click.echo(f"{meta.id}  [{meta.severity.value}, {meta.scope.value}]  {meta.title}")
        click.echo(f"    why: {meta.rationale}")
        if meta.requires:
            click.echo(f"    reads: {', '.join(f.value for f in meta.requires)}")
        if meta.references:
            click.echo(f"    references: {'; '.join(meta.references)}")
        click.echo(f"    remediation: {meta.remediation or '-'}")


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
                   remediation: RemediationConfig | None = None) -> list[Path]:
    """Re-render a stored run in the chosen formats, with a manifest hashing what was written."""
    from scanner.pipeline import render_outputs

    return list(render_outputs(store, run_id, out_dir, remediation, formats).files)


DATES = click.DateTime(formats=["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M:%S%z"])


@main.group("evidence", invoke_without_command=True)
@click.option("--config", "config_path", type=click.Path(path_type=Path), help="Config file (default: ./mailwarden.toml).")
@click.option("--since", type=DATES, help="First day (or UTC moment) of the period: runs started then or later.")
@click.option("--until", type=DATES, help="Last day (inclusive, or a UTC moment) of the period.")
@click.option("--tenant", help="Only this tenant's findings, changes, inventory and exceptions.")
@click.option("--out", "out_dir", type=click.Path(path_type=Path, file_okay=False), help="Directory for the pack.")
@click.pass_context
def evidence(ctx: click.Context, config_path: Path | None, since: datetime | None, until: datetime | None,
             tenant: str | None, out_dir: Path | None) -> None:
    """Write the evidence pack (CSV files and a hashed manifest) for a period; `evidence verify DIR` checks one."""
    from reports.evidence import EvidenceError, Period, write_evidence
    from scanner.store import Store

    if ctx.invoked_subcommand is not None:
        return
    if out_dir is None:
        raise click.UsageError("--out DIR is required to write an evidence pack")
    with _user_errors():
        config = _config(config_path)
        if tenant is not None and tenant not in {t.name for t in config.tenants}:
            raise ConfigError(f"{config.source}: tenants: no tenant named {tenant!r}")
        store = Store(config.store.url)
        try:
            period = Period.of(_day_or_moment(since), _day_or_moment(until))
            try:
                files = write_evidence(store, out_dir, period, tenant=tenant, config_digest=config.digest)
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
    from scanner.store import Store

    failed = False
    with _user_errors():
        config = _config(config_path)
        store = Store(config.store.url)
        try:
            run = _latest_run(store, run_id)
            if formats or not send:
                files = render_formats(store, run.id, out_dir, formats or ("html",), config.remediation)
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
    from scanner.serve import serve as run_server

    with _user_errors():
        run_server(config_path if config_path is not None else Path("mailwarden.toml"), host=host, port=port,
                   log_format=log_format)


@main.command()
@CONFIG_OPTION
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
def status(config_path: Path | None, fmt: str) -> None:
    """Print each scheduled job's last run, its state and the next run time (as /healthz does), from the store."""
    from scanner.serve import job_status, status_lines
    from scanner.store import Store

    with _user_errors():
        config = _config(config_path)
        store = Store(config.store.url)
        try:
            found = job_status(config, store)
        finally:
            store.close()
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

    from scanner.store import Store
    from remediation.actions import describe
    from remediation.jobs import DONE, ALREADY_DONE, BulkStep, Jobs, bulk, plans_for_check

    failed = False
    with _user_errors():
        config = _config(config_path)
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

    from scanner.store import Store
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
    from scanner.store import Store
    from remediation.jobs import Jobs

    with _user_errors():
        config = _config(config_path)
        store = Store(config.store.url)
        try:
            found = Jobs(store, config).history(tenant=tenant)
        finally:
            store.close()
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
    """Check the audit log's hash chain (and its copy); exit 1 naming a changed, removed or reordered entry."""
    from scanner.store import Store
    from remediation.audit import entries, verify

    with _user_errors():
        config = _config(config_path)
        if sink is None and config.remediation.audit_sink is not None:
            sink = config.resolve_path(config.remediation.audit_sink)
        store = Store(config.store.url)
        try:
            problems = verify(store, sink)
            count = len(entries(store))
        finally:
            store.close()
    for problem in problems:
        click.echo(f"mailwarden: audit log: {problem}", err=True)
    if problems:
        sys.exit(EXIT_FAILED_RUN)
    click.echo(f"audit log: {count} entries, the hash chain is intact" + (f" and {sink} agrees" if sink else ""))


@audit_group.command("show")
@CONFIG_OPTION
@click.option("--job", "job_id", help="Only this job's entries.")
def audit_show(config_path: Path | None, job_id: str | None) -> None:
    """Print the audit log as JSON lines."""
    from scanner.store import Store
    from remediation.audit import entries

    with _user_errors():
        config = _config(config_path)
        store = Store(config.store.url)
        try:
            found = entries(store, job_id)
        finally:
            store.close()
    for entry in found:
        click.echo(entry.line())

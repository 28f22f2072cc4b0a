"""The ``mailwarden`` command line."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import click
from rich.console import Console

from checks.registry import RegistryError, load_checks
from scanner.config import BUNDLED, Config, load_config
from scanner.errors import MailwardenError
from scanner.model import Severity, Status
from scanner.pipeline import ScanResult, run_scan
from scanner.store import Store
from scanner.policyserver import LoopbackCA, PolicyServer, policies_from_directory
from scanner.zoneserver import ZoneServer

DEMO = BUNDLED / "demo"
DEMO_AS_OF = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)
"""The day the demo's export files describe: the demo judges them as of then, so they do not age."""
EXIT_CONFIG = 2
EXIT_FAILED_RUN = 1
EXIT_FINDINGS = 3

SEVERITIES = click.Choice([s.value for s in Severity])


@contextmanager
def _user_errors() -> Iterator[None]:
    """Turn mailwarden's own errors into one line on stderr and the documented exit status."""
    try:
        yield
    except (MailwardenError, RegistryError) as exc:
        click.echo(f"mailwarden: {exc}", err=True)
        sys.exit(EXIT_CONFIG if not isinstance(exc, RegistryError) else EXIT_FAILED_RUN)


def _config(path: Path | None) -> Config:
    return load_config(path if path is not None else Path("mailwarden.toml"))


@click.group()
@click.option("-v", "--verbose", is_flag=True, help="Log collection problems and progress to stderr.")
@click.version_option(package_name="mailwarden")
def main(verbose: bool) -> None:
    """mailwarden: audit email domains and mailboxes across providers, and find drift."""
    logging.basicConfig(level=logging.INFO if verbose else logging.ERROR, format="%(levelname)s %(name)s: %(message)s")


def _scan(config: Config, out_dir: Path, fail_on: str | None, as_of: datetime | None = None) -> None:
    console = Console(stderr=True)
    store = Store(config.store.url)
    try:
        with console.status("collecting…") as status:
            done: list[str] = []

            def progress(tenant: str) -> None:
                done.append(tenant)
                status.update(f"collected {len(done)}/{len(config.tenants)} tenants ({tenant})")

            result = run_scan(config, out_dir, store=store, as_of=as_of, progress=progress)
    finally:
        store.close()
    _summarize(result, out_dir)
    if result.run.state == "failed":
        sys.exit(EXIT_FAILED_RUN)
    if fail_on is not None:
        threshold = Severity(fail_on).rank
        if any(f.status is Status.FAIL and f.severity.rank >= threshold for f in result.findings):
            sys.exit(EXIT_FINDINGS)


def _summarize(result: ScanResult, out_dir: Path) -> None:
    counts: dict[str, int] = {}
    for finding in result.findings:
        counts[finding.status.value] = counts.get(finding.status.value, 0) + 1
    tenants = result.run.scope.get("tenants", {})
    click.echo(f"run {result.run.id}: {result.run.state}, {len(tenants)} tenants")
    for name, scope in sorted(tenants.items()):
        problems = f", {len(scope['problems'])} problem(s)" if scope["problems"] else ""
        click.echo(f"  {name}: {scope['state']}, {scope['domains']} domains, {scope['mailboxes']} mailboxes{problems}")
    click.echo("findings: " + ", ".join(f"{counts.get(s.value, 0)} {s.value}" for s in Status))
    failing = sorted(
        (f for f in result.findings if f.status is Status.FAIL), key=lambda f: (-f.severity.rank, f.check, f.subject)
    )
    for finding in failing[:10]:
        click.echo(f"  {finding.severity.value:8} {finding.check:24} {finding.subject}")
    if len(failing) > 10:
        click.echo(f"  … and {len(failing) - 10} more")
    click.echo(f"report: {(out_dir / 'report.html').resolve()}")


@main.command()
@click.option("--config", "config_path", type=click.Path(path_type=Path), help="Config file (default: ./mailwarden.toml).")
@click.option("--out", "out_dir", type=click.Path(path_type=Path, file_okay=False), default=Path("mailwarden-out"),
              show_default=True, help="Directory for findings.json, findings.csv, report.html, manifest.json.")
@click.option("--fail-on", type=SEVERITIES, help="Exit 3 when a failing finding has this severity or higher.")
def scan(config_path: Path | None, out_dir: Path, fail_on: str | None) -> None:
    """Collect, check and report once."""
    with _user_errors():
        _scan(_config(config_path), out_dir, fail_on)


@main.command()
@click.option("--out", "out_dir", type=click.Path(path_type=Path, file_okay=False), default=Path("mailwarden-demo"),
              show_default=True, help="Directory for the outputs and the demo's own store.")
def demo(out_dir: Path) -> None:
    """Scan the bundled demo estate, served by an in-process DNS server on loopback."""
    with _user_errors(), ZoneServer() as server:
        server.load_directory(DEMO / "zones")
        out_dir.mkdir(parents=True, exist_ok=True)
        plain = load_config(DEMO / "mailwarden.toml")
        # The demo's MTA-STS policy hosts resolve to loopback; serve their policies over real HTTPS,
        # with a certificate from a throwaway CA that only this run trusts.
        ca = LoopbackCA()
        hosts = [f"mta-sts.{d}" for t in plain.tenants for d in (*t.domains, *t.parked_domains)]
        with PolicyServer(policies_from_directory(DEMO / "mta-sts"), ca.server_context(hosts)) as https:
            config = load_config(
                DEMO / "mailwarden.toml",
                overrides={
                    "dns": {"nameservers": [server.nameserver]},
                    "store": {"url": f"sqlite:///{(out_dir / 'mailwarden-demo.db').resolve()}"},
                    "mta_sts": {"port": https.port, "ca_bundle": str(ca.write(out_dir / "demo-ca.pem").resolve())},
                },
            )
            click.echo(f"demo DNS server on {server.nameserver} (UDP and TCP), serving config/demo/zones")
            click.echo(f"demo MTA-STS policy server on https://127.0.0.1:{https.port}, serving config/demo/mta-sts")
            _scan(config, out_dir, None, as_of=DEMO_AS_OF)


@main.command("checks")
def list_checks() -> None:
    """Print the check catalogue from the loaded metadata."""
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

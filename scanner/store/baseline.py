"""Baseline files: read a tenant's declared DNS expectations, and capture a domain's recorded state as one."""

from __future__ import annotations

import json
import tomllib
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from scanner.config import Config, normalize_domain
from scanner.dns.records import (
    DMARC_POLICIES,
    MTA_STS_MODES,
    dkim_key,
    dmarc_policy,
    dmarc_record,
    dmarc_rua,
    mx_hosts,
    spf_record,
    spf_terms,
)
from scanner.errors import ConfigError, nearest
from scanner.model import Baseline, DomainState

LISTS = ("mx", "spf_terms", "dmarc_rua", "dkim_selectors")
WORDS = {"dmarc_policy": DMARC_POLICIES, "mta_sts_mode": MTA_STS_MODES}
KEYS = (*LISTS, *WORDS)
"""The keys a baseline table may hold; every one is optional."""


def _expectations(table: object, where: str) -> dict[str, Any]:
    if not isinstance(table, Mapping):
        raise ConfigError(f"{where}: must be a table")
    out: dict[str, Any] = {}
    for key, value in table.items():
        if key in LISTS:
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"{where}.{key}: must be a list of strings")
            out[key] = tuple(" ".join(v.lower().split()).rstrip(".") if key == "mx" else v.strip().lower()
                             for v in value)
        elif key in WORDS:
            if not isinstance(value, str) or value.lower() not in WORDS[key]:
                raise ConfigError(f"{where}.{key}: must be one of {', '.join(WORDS[key])}")
            out[key] = value.lower()
        else:
            raise ConfigError(f"{where}.{key}: unknown key{nearest(key, KEYS)} (known: {', '.join(KEYS)})")
    return out


def read_baseline_file(path: Path, domains: tuple[str, ...]) -> dict[str, Baseline]:
    """The baselines a file declares for ``domains``: its [tenant] table, overridden per [domains."name"]."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: baseline file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the baseline file ({exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    unknown = set(data) - {"tenant", "domains", "captured"}
    if unknown:
        first = sorted(unknown)[0]
        raise ConfigError(f"{path}: {first}: unknown key{nearest(first, ('tenant', 'domains', 'captured'))} "
                          "(known: tenant, domains, captured)")
    common = _expectations(data.get("tenant", {}), f"{path}: tenant")
    per_domain = data.get("domains", {})
    if not isinstance(per_domain, Mapping):
        raise ConfigError(f"{path}: domains: must be a table of domain tables")
    named: dict[str, dict[str, Any]] = {}
    for name, table in per_domain.items():
        try:
            domain = normalize_domain(name)
        except ValueError as exc:
            raise ConfigError(f"{path}: domains.{name}: {exc}") from None
        if domain not in domains:
            raise ConfigError(f"{path}: domains.{name}: not a domain of the tenant that names this file")
        named[domain] = _expectations(table, f"{path}: domains.{name}")
    result: dict[str, Baseline] = {}
    for domain in domains:
        merged = {**common, **named.get(domain, {})}
        if merged:
            result[domain] = Baseline(**merged, source=str(path))
    return result


def load_baselines(config: Config) -> dict[str, Baseline]:
    """Every domain's baseline from the tenants' baseline files; a later file overrides an earlier one per key."""
    out: dict[str, Baseline] = {}
    for settings, tenant in zip(config.tenants, config.tenant_models(), strict=True):
        for path in settings.baselines:
            for domain, baseline in read_baseline_file(config.resolve_path(path), tenant.domains).items():
                earlier = out.get(domain)
                if earlier is not None:
                    fields = {k: getattr(baseline, k) if getattr(baseline, k) is not None else getattr(earlier, k)
                              for k in KEYS}
                    baseline = Baseline(**fields, source=f"{earlier.source}, {baseline.source}")
                out[domain] = baseline
    return out


def capture(state: DomainState) -> Baseline:
    """A domain's recorded DNS as a baseline: its MX, SPF terms, DMARC policy and rua, DKIM selectors with
    a key, and MTA-STS mode (each only when the record was there)."""
    answers = state.answers
    mx = answers.get("mx")
    txt = answers.get("txt")
    dmarc = dmarc_record(answers.get("dmarc"))
    spf = spf_record(txt)
    selectors = tuple(sorted(
        name.partition(":")[2] for name, answer in answers.items()
        if name.startswith("dkim:") and (dkim_key(answer) or ("revoked", 0))[1] > 0
    ))
    return Baseline(
        mx=mx_hosts(mx) if mx is not None and not mx.failed else None,
        spf_terms=spf_terms(spf) if spf is not None else None,
        dmarc_policy=dmarc_policy(dmarc),
        dmarc_rua=dmarc_rua(dmarc) if dmarc is not None else None,
        dkim_selectors=selectors or None,
        mta_sts_mode=state.mta_sts_mode if state.mta_sts_mode in MTA_STS_MODES else None,
    )


def render_baseline(domain: str, baseline: Baseline, *, run_id: str, taken: datetime) -> str:
    """A baseline file (TOML) declaring ``baseline`` for ``domain``."""
    lines = [
        f"# mailwarden baseline for {domain}, captured from run {run_id} ({taken.isoformat()}).",
        "# Name this file in the tenant's `baselines` list; delete a key to stop checking it.",
        f"captured = {json.dumps(taken.isoformat())}",
        "",
        f"[domains.{json.dumps(domain)}]",
    ]
    for key in KEYS:
        value = getattr(baseline, key)
        if value is None:
            continue
        # A JSON string is a valid TOML basic string (both escape with \\ and \\uXXXX).
        if key in LISTS:
            text = "[" + ", ".join(json.dumps(v, ensure_ascii=True) for v in value) + "]"
        else:
            text = json.dumps(value)
        lines.append(f"{key} = {text}")
    return "\n".join(lines) + "\n"

"""Aggregate report files written for a test (RFC 9990 schema), with the sources and counts it names."""

from __future__ import annotations

import gzip
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from xml.sax.saxutils import escape


@dataclass(frozen=True, slots=True)
class Row:
    """One record: a source IP's messages as one domain, and how DMARC judged them."""

    source_ip: str
    count: int
    dkim: str = "pass"
    spf: str = "pass"
    header_from: str = ""


def report_xml(org: str, report_id: str, domain: str, begin: datetime, end: datetime, rows: Sequence[Row]) -> bytes:
    """A well-formed RFC 9990 aggregate report."""
    records = "".join(
        f"<record><row><source_ip>{r.source_ip}</source_ip><count>{r.count}</count><policy_evaluated>"
        f"<disposition>{'none' if 'pass' in (r.dkim, r.spf) else 'reject'}</disposition><dkim>{r.dkim}</dkim>"
        f"<spf>{r.spf}</spf></policy_evaluated></row><identifiers><header_from>{escape(r.header_from or domain)}"
        f"</header_from></identifiers><auth_results><dkim><domain>{escape(domain)}</domain><selector>s1</selector>"
        f"<result>{r.dkim}</result></dkim><spf><domain>{escape(domain)}</domain><result>{r.spf}</result></spf>"
        f"</auth_results></record>"
        for r in rows
    )
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<feedback xmlns="urn:ietf:params:xml:ns:dmarc-2.0">'
        f"<version>1.0</version><report_metadata><org_name>{escape(org)}</org_name>"
        f"<email>noreply-dmarc@{escape(org)}</email><report_id>{escape(report_id)}</report_id>"
        f"<date_range><begin>{int(begin.timestamp())}</begin><end>{int(end.timestamp())}</end></date_range>"
        f"</report_metadata><policy_published><domain>{escape(domain)}</domain><p>reject</p><sp>reject</sp>"
        f"<np>reject</np></policy_published>{records}</feedback>\n"
    ).encode()


def write_report(folder: Path, org: str, report_id: str, domain: str, begin: datetime, end: datetime,
                 rows: Sequence[Row], *, compress: bool = False) -> Path:
    """Write one report file (gzip-compressed when asked) named as receivers name them."""
    folder.mkdir(parents=True, exist_ok=True)
    name = f"{org}!{domain}!{int(begin.timestamp())}!{int(end.timestamp())}!{report_id}.xml"
    data = report_xml(org, report_id, domain, begin, end, rows)
    path = folder / (name + ".gz" if compress else name)
    path.write_bytes(gzip.compress(data) if compress else data)
    return path

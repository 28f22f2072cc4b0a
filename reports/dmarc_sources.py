"""The sending sources DMARC aggregate reports name: one row per (domain, source IP), as table, JSON or CSV."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import date, timedelta
from typing import Any, TextIO

from markupsafe import Markup

from checks.registry import Sender, sender_of
from reports.csv_out import write_rows
from scanner.model import SourceTraffic

SOURCE_COLUMNS = (
    "domain", "source_ip", "ptr", "ptr_confirmed", "sender", "messages", "dmarc_pass", "dmarc_fail", "spf_aligned", "dkim_aligned",
    "first_seen", "last_seen", "reports",
)
"""The columns of `mailwarden dmarc sources` and of the evidence pack's dmarc_sources.csv, in order."""


def source_row(source: SourceTraffic, senders: Mapping[str, Sender]) -> dict[str, Any]:
    """One source as a flat row; ``sender`` is the catalogue sender its IP or PTR name maps to, else unknown."""
    return {
        "domain": source.domain, "source_ip": source.source_ip, "ptr": source.ptr,
        "ptr_confirmed": source.ptr_confirmed,
        "sender": sender_of(source.source_ip, source.trusted_ptr, senders) or "unknown", "messages": source.messages,
        "dmarc_pass": source.dmarc_pass, "dmarc_fail": source.dmarc_fail, "spf_aligned": source.spf_aligned,
        "dkim_aligned": source.dkim_aligned, "first_seen": source.first_seen.isoformat(),
        "last_seen": source.last_seen.isoformat(), "reports": source.reports,
    }


def source_rows(traffic: Iterable[SourceTraffic], senders: Mapping[str, Sender]) -> list[dict[str, Any]]:
    """Every source as a row, in the order given (by domain, most messages first)."""
    return [source_row(s, senders) for s in traffic]


def write_sources(rows: Sequence[Mapping[str, Any]], fmt: str, out: TextIO) -> None:
    """Write the rows as an aligned table, a JSON list (the only thing written) or CSV."""
    if fmt == "json":
        out.write(json.dumps(list(rows), indent=1, ensure_ascii=False) + "\n")
        return
    if fmt == "csv":
        write_rows(out, SOURCE_COLUMNS, rows)
        return
    if not rows:
        out.write("no DMARC aggregate report names a source for this selection\n")
        return
    shown = ("domain", "source_ip", "ptr", "sender", "messages", "dmarc_pass", "dmarc_fail", "spf_aligned",
             "dkim_aligned", "last_seen")
    cells = [[_printable(str(row[c])[:19] if c == "last_seen" else str(row[c])) for c in shown] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(shown)]
    out.write("  ".join(c.ljust(w) for c, w in zip(shown, widths)).rstrip() + "\n")
    for row in cells:
        out.write("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() + "\n")


def _printable(text: str) -> str:
    # A reporter writes header_from and the DNS answers PTR names: neither may move a terminal's cursor.
    return "".join(c if c.isprintable() else "?" for c in text)


def pass_rate(source: Mapping[str, Any]) -> float:
    """The share of a source's messages that passed DMARC."""
    return source["dmarc_pass"] / source["messages"] if source["messages"] else 0.0


SHOWN_SOURCES = 10
"""Sources listed per domain in the report (most messages first); the rest are counted."""
CHART_HEIGHT = 28


def pass_fail_chart(days: Mapping[date, tuple[int, int]], since: date, until: date) -> Markup:
    """A small inline SVG: one stacked bar per day of the window, passed (green) under failed (red).

    Only numbers and dates go into it, so it needs no escaping beyond what the format strings produce.
    """
    span = [since + timedelta(days=n) for n in range((until - since).days + 1)]
    peak = max((sum(days.get(d, (0, 0))) for d in span), default=0) or 1
    bars = []
    for index, day in enumerate(span):
        ok, failed = days.get(day, (0, 0))
        x = index * 7
        ok_h = round(CHART_HEIGHT * ok / peak, 1)
        fail_h = round(CHART_HEIGHT * failed / peak, 1)
        label = f"{day.isoformat()}: {ok} passed, {failed} failed"
        bars.append(f'<g><title>{label}</title><rect x="{x}" y="{CHART_HEIGHT - ok_h}" width="5" height="{ok_h}" '
                    f'class="bar-pass"/><rect x="{x}" y="{CHART_HEIGHT - ok_h - fail_h}" width="5" '
                    f'height="{fail_h}" class="bar-fail"/></g>')
    width = max(7 * len(span), 7)
    return Markup(  # noqa: S704 - numbers and ISO dates only
        f'<svg class="pass-fail" width="{width}" height="{CHART_HEIGHT}" viewBox="0 0 {width} {CHART_HEIGHT}" '
        f'role="img" aria-label="DMARC pass and fail per day">{"".join(bars)}</svg>'
    )


def senders_seen(
    traffic: Iterable[SourceTraffic], days: Mapping[str, Mapping[date, tuple[int, int]]],
    senders: Mapping[str, Sender], since: date, until: date,
) -> list[dict[str, Any]]:
    """Per domain with reported traffic: its top sources as rows, how many more, totals and the daily chart."""
    by_domain: dict[str, list[dict[str, Any]]] = {}
    for source in traffic:
        by_domain.setdefault(source.domain, []).append(source_row(source, senders))
    view = []
    for domain in sorted(by_domain):
        rows = sorted(by_domain[domain], key=lambda r: (-r["messages"], r["source_ip"]))
        messages = sum(r["messages"] for r in rows)
        passed = sum(r["dmarc_pass"] for r in rows)
        for row in rows:
            row["pass_rate"] = f"{100 * pass_rate(row):.0f}%"
        view.append({
            "domain": domain, "sources": rows[:SHOWN_SOURCES], "more": len(rows) - SHOWN_SOURCES,
            "messages": messages, "pass_rate": f"{100 * passed / messages:.1f}%" if messages else "-",
            "chart": pass_fail_chart(days.get(domain, {}), since, until),
        })
    return view

"""The change log as JSON, CSV (every cell through the sanitizer) or a plain-text table."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from typing import Any, TextIO

from reports.csv_out import safe_cell
from scanner.store.database import ChangeRecord

COLUMNS = (
    "at", "source", "run_id", "job_id", "tenant", "domain", "subject", "object_type", "object_key", "field",
    "action", "before", "after",
)
"""Change-log columns, in order, for JSON objects and CSV rows alike."""


def change_record(change: ChangeRecord) -> dict[str, Any]:
    """One change as a flat JSON object."""
    return {
        "at": change.at.isoformat(), "source": change.source, "run_id": change.run_id, "job_id": change.job_id,
        "tenant": change.tenant, "domain": change.domain, "subject": change.subject,
        "object_type": change.object_type, "object_key": change.object_key, "field": change.field,
        "action": change.action, "before": change.before, "after": change.after,
    }


def write_changes_json(changes: Sequence[ChangeRecord], out: TextIO) -> None:
    """Write the changes as a JSON list."""
    json.dump([change_record(c) for c in changes], out, indent=2, ensure_ascii=False)
    out.write("\n")


def write_changes_csv(changes: Sequence[ChangeRecord], out: TextIO) -> None:
    """Write one CSV row per change; before and after are JSON in their cells."""
    writer = csv.writer(out)
    writer.writerow(COLUMNS)
    for change in changes:
        record = change_record(change)
        for column in ("before", "after"):
            record[column] = json.dumps(record[column], ensure_ascii=False, sort_keys=True)
        writer.writerow([safe_cell(record[c]) for c in COLUMNS])


def _short(value: Any, width: int = 110) -> str:
    text = "-" if value is None else json.dumps(value, ensure_ascii=False, sort_keys=True)
    return text if len(text) <= width else text[: width - 1] + "…"


def write_changes_table(changes: Sequence[ChangeRecord], out: TextIO) -> None:
    """Write a plain-text table: when, which run or job, what object and field, before → after."""
    if not changes:
        out.write("no changes\n")
        return
    for change in changes:
        who = f"job {change.job_id}" if change.source == "job" else f"run {change.run_id}"
        what = f"{change.object_type} {change.object_key}" + (f" {change.field}" if change.field else "")
        # Control characters from hostile data are shown escaped, never sent to the terminal raw.
        line = f"{change.at:%Y-%m-%d %H:%M}Z  {who}  {change.tenant or '-'}  {change.action:7}  {what}"
        out.write("".join(c if c.isprintable() else repr(c)[1:-1] for c in line) + "\n")
        out.write(f"    before: {_short(change.before)}\n    after:  {_short(change.after)}\n")

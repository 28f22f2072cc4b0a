"""findings.csv, with every cell made safe to open in a spreadsheet."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path

from reports.records import COLUMNS, finding_record
from scanner.model import Finding

# OWASP "CSV injection": a cell starting with one of these may be run as a formula.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "\n", "\uff1d", "\uff0b", "\uff0d", "\uff20")


def safe_cell(value: object) -> str:
    """A CSV cell as text, prefixed with an apostrophe when a spreadsheet would run it as a formula."""
    if value is None:
        return ""
    if isinstance(value, dict | list):
        text = json.dumps(value, sort_keys=True, ensure_ascii=False)
    else:
        text = str(value)
    return "'" + text if text.startswith(_FORMULA_START) else text


def write_findings_csv(findings: Sequence[Finding], path: Path) -> Path:
    """Write one row per finding, UTF-8, with the documented columns."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        for finding in findings:
            record = finding_record(finding)
            writer.writerow([safe_cell(record[column]) for column in COLUMNS])
    return path

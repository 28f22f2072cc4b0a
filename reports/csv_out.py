"""findings.csv, with every cell made safe to open in a spreadsheet."""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TextIO

from reports.records import COLUMNS, finding_record
from scanner.model import Finding

# OWASP "CSV injection": a cell starting with one of these may be run as a formula.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "\n", "\uff1d", "\uff0b", "\uff0d", "\uff20")
_CELL_FORMULA_START = re.compile("\0[" + re.escape("".join(_FORMULA_START)) + "]")
"""A formula start at the beginning of a cell of a row joined by NUL characters, each cell preceded by one."""
_JSON_CELL = json.JSONEncoder(sort_keys=True, ensure_ascii=False)
"""``json.dumps(value, sort_keys=True, ensure_ascii=False)``, without building an encoder per cell."""


def safe_cell(value: object) -> str:
    """A CSV cell as text, prefixed with an apostrophe when a spreadsheet would run it as a formula."""
    if value is None:
        return ""
    if isinstance(value, dict | list):
        text = _JSON_CELL.encode(value)
    else:
        text = str(value)
    return "'" + text if text.startswith(_FORMULA_START) else text


def csv_field(cell: str) -> str:
    """A cell as a field of a CSV line, as the csv module's default (excel) dialect writes it: quoted, with its
    quotes doubled, when it holds a comma, a quote or a line break."""
    if "," in cell or '"' in cell or "\r" in cell or "\n" in cell:
        return '"' + cell.replace('"', '""') + '"'
    return cell


def csv_fields(texts: Sequence[str]) -> Sequence[str]:
    """Texts as fields of a CSV line, each through ``safe_cell`` and ``csv_field``: the texts themselves when none
    needs either (one look at the whole row, the common case)."""
    row = "\0" + "\0".join(texts)
    if (_CELL_FORMULA_START.search(row) is None
            and "," not in row and '"' not in row and "\r" not in row and "\n" not in row):
        return texts
    return [csv_field(safe_cell(text)) for text in texts]


def write_rows(handle: TextIO, columns: Sequence[str], rows: Iterable[Mapping[str, object]]) -> int:
    """Write a header row and one row per mapping, every cell through ``safe_cell``; returns the row count."""
    writer = csv.writer(handle)
    writer.writerow(columns)
    count = 0
    for row in rows:
        writer.writerow([safe_cell(row.get(column)) for column in columns])
        count += 1
    return count


def write_csv(path: Path, columns: Sequence[str], rows: Iterable[Mapping[str, object]]) -> int:
    """Write a UTF-8 CSV file with the given columns; returns the row count."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        return write_rows(handle, columns, rows)


def findings_csv_text(findings: Sequence[Finding]) -> str:
    """findings.csv as text (for an email attachment)."""
    buffer = io.StringIO(newline="")
    write_rows(buffer, COLUMNS, (finding_record(f) for f in findings))
    return buffer.getvalue()


def write_findings_csv(findings: Sequence[Finding], path: Path) -> Path:
    """Write one row per finding, UTF-8, with the documented columns."""
    write_csv(path, COLUMNS, (finding_record(f) for f in findings))
    return path

"""findings.json and findings.csv written together from one stream of findings, row by row."""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import orjson

from reports.csv_out import _FORMULA_START, safe_cell
from reports.records import COLUMNS


def write_findings_files(records: Iterable[Mapping[str, Any]], json_path: Path | None, csv_path: Path | None) -> int:
    """Write findings.json and/or findings.csv from finding records (``finding_record``, ``row_record``) with the
    same bytes as ``write_findings_json`` and ``write_findings_csv``, in one pass holding one record at a time;
    returns how many were written.

    findings.json has one finding per line, encoded by orjson (no space after separators)."""
    count = 0
    with (json_path.open("w", encoding="utf-8") if json_path else _Nowhere()) as as_json, \
            (csv_path.open("w", newline="", encoding="utf-8") if csv_path else _Nowhere()) as as_csv:
        rows = csv.writer(as_csv)
        rows.writerow(COLUMNS)
        as_json.write("[")
        for record in records:
            as_json.write(",\n" if count else "\n")
            as_json.write(orjson.dumps(record).decode("utf-8"))
            rows.writerow(_cells(record))
            count += 1
        as_json.write("\n]\n")
    return count


def _cells(record: Mapping[str, Any]) -> list[str]:
    """``safe_cell`` of each column, with the common case (text that cannot start a formula) first."""
    cells = []
    for column in COLUMNS:
        value = record[column]
        if type(value) is str and not value.startswith(_FORMULA_START):
            cells.append(value)
        else:
            cells.append(safe_cell(value))
    return cells


class _Nowhere:
    """A file that is not wanted: writes go nowhere."""

    def __enter__(self) -> _Nowhere:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def write(self, text: str) -> int:
        return len(text)

"""The change log's renderings: CSV cells neutralized, control characters never raw on a terminal."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime

from reports.changelog import COLUMNS, write_changes_csv, write_changes_json, write_changes_table
from scanner.store.database import ChangeRecord

HOSTILE = ChangeRecord(
    datetime(2026, 11, 25, 9, tzinfo=UTC), "scan", "r1", None, "acme", "acme.example", "=cmd|' /C calc'!A0@acme.example",
    "mailbox", "=cmd|' /C calc'!A0@acme.example", "display_name", "changed", "Ann", "=HYPERLINK(\"http://evil.test\")\x1b[2J",
)


def test_csv_neutralizes_formula_cells() -> None:
    out = io.StringIO()
    write_changes_csv([HOSTILE], out)
    rows = list(csv.reader(io.StringIO(out.getvalue())))
    assert rows[0] == list(COLUMNS)
    record = dict(zip(rows[0], rows[1]))
    assert record["subject"].startswith("'=") and record["object_key"].startswith("'=")
    assert json.loads(record["after"]).startswith("=HYPERLINK")  # JSON-quoted, so not a formula


def test_json_and_table() -> None:
    out = io.StringIO()
    write_changes_json([HOSTILE], out)
    assert json.loads(out.getvalue())[0]["after"] == HOSTILE.after
    table = io.StringIO()
    write_changes_table([HOSTILE], table)
    assert "\x1b" not in table.getvalue() and "run r1" in table.getvalue()

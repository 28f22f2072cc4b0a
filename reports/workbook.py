"""evidence.xlsx: the evidence pack's CSV files as one workbook a reviewer opens, with a summary sheet first.

Each sheet holds its CSV's cells unchanged (they are already neutralised against formula injection by
``safe_cell``, and every cell is written as text, never as a formula or a number). pandas reads the CSVs a
chunk at a time and builds the summary's cross-tables; openpyxl writes in write-only mode, so memory stays
flat however many findings the pack holds. What a spreadsheet cannot hold is said, not hidden: a table
longer than a sheet continues on the next ("findings (2)"), a cell over Excel's 32,767 characters is cut
with a note naming the CSV that holds it whole, and control characters Excel refuses are written as
``\\xNN``.
"""

from __future__ import annotations

import re
import shutil
import zipfile
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
from openpyxl import Workbook, load_workbook
from openpyxl.cell import WriteOnlyCell
from openpyxl.styles import Font
from openpyxl.utils import get_column_letter
from openpyxl.worksheet._write_only import WriteOnlyWorksheet

WORKBOOK = "evidence.xlsx"
SHEET_ROWS = 1_000_000
"""Data rows per sheet: Excel holds 1,048,576 rows, the header included."""
CELL_LIMIT = 32_767
"""Excel's limit on the characters of one cell."""
WIDTH_SAMPLE = 2_000
"""Rows read to choose column widths."""
MAX_WIDTH = 60
CHUNK = 20_000
# XML 1.0 (and so the xlsx format) cannot carry these; openpyxl refuses them.
_ILLEGAL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f]")


def sheet_value(text: str, source: str) -> str:
    """A CSV cell as the workbook holds it: unchanged, unless Excel cannot hold it (see the module's note)."""
    text = _ILLEGAL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)
    if len(text) > CELL_LIMIT:
        note = f" … [cut: {len(text)} characters; {source} holds the whole value]"
        text = text[: CELL_LIMIT - len(note)] + note
    return text


def _read(path: Path, **options: Any) -> Any:
    # Every cell as the text the CSV holds: no numbers, dates or NaN guessed from it.
    return pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False, encoding="utf-8", **options)


def _widths(path: Path, columns: Sequence[str]) -> list[float]:
    sample = _read(path, nrows=WIDTH_SAMPLE)
    widths = []
    for column in columns:
        lengths = sample[column].str.len() if column in sample and len(sample) else pd.Series(dtype=float)
        typical = float(lengths.quantile(0.9)) if len(lengths) else 0.0
        widths.append(min(MAX_WIDTH, max(len(column) + 2, typical + 2)))
    return widths


def _new_sheet(book: Workbook, title: str, columns: Sequence[str], widths: Sequence[float]) -> WriteOnlyWorksheet:
    sheet = book.create_sheet(title)
    sheet.freeze_panes = "A2"
    for index, width in enumerate(widths, start=1):
        sheet.column_dimensions[get_column_letter(index)].width = width
    bold = Font(bold=True)
    header = []
    for name in columns:
        cell = WriteOnlyCell(sheet, value=name)
        cell.font = bold
        header.append(cell)
    sheet.append(header)
    return sheet


def _write_table(book: Workbook, path: Path) -> list[str]:
    """Copy one CSV into one sheet (or more, when longer than a sheet); returns the sheet titles."""
    columns = list(_read(path, nrows=0).columns)
    widths = _widths(path, columns)
    base = path.stem[:28]
    titles = [base]
    sheet = _new_sheet(book, base, columns, widths)
    in_sheet = 0
    for chunk in _read(path, chunksize=CHUNK):
        for values in chunk.itertuples(index=False, name=None):
            if in_sheet == SHEET_ROWS:
                sheet.auto_filter.ref = f"A1:{get_column_letter(len(columns))}{in_sheet + 1}"
                titles.append(f"{base} ({len(titles) + 1})")
                sheet, in_sheet = _new_sheet(book, titles[-1], columns, widths), 0
            sheet.append([sheet_value(v, path.name) for v in values])
            in_sheet += 1
    sheet.auto_filter.ref = f"A1:{get_column_letter(max(1, len(columns)))}{in_sheet + 1}"
    return titles


def _summary_tables(files: Mapping[str, Path]) -> list[tuple[str, Any]]:
    tables: list[tuple[str, Any]] = []
    controls = files.get("controls.csv")
    if controls is not None:
        frame = _read(controls, usecols=["framework", "status"])
        if len(frame):
            tables.append(("Controls by framework and status (one row per control, tenant and run)",
                           pd.crosstab(frame["framework"], frame["status"])))
    findings = files.get("findings.csv")
    if findings is not None:
        counts: Any = None
        for chunk in _read(findings, usecols=["check", "status"], chunksize=100_000):
            part = pd.crosstab(chunk["check"], chunk["status"])
            counts = part if counts is None else counts.add(part, fill_value=0)
        if counts is not None and len(counts):
            tables.append(("Findings by check and status", counts.astype(int)))
    return tables


def _write_summary(book: Workbook, summary: Mapping[str, object], files: Sequence[Path],
                   rows: Mapping[str, int], sheets: Mapping[str, list[str]]) -> None:
    sheet = book.create_sheet("summary", 0)
    sheet.column_dimensions["A"].width = 48
    for letter in "BCDEFG":
        sheet.column_dimensions[letter].width = 16
    bold = Font(bold=True)

    def heading(text: str) -> list[WriteOnlyCell]:
        cell = WriteOnlyCell(sheet, value=text)
        cell.font = bold
        return [cell]

    sheet.append(heading("mailwarden evidence pack"))
    for key, value in summary.items():
        sheet.append([key, str(value)])
    sheet.append([])
    sheet.append(heading("Files (each also in this workbook)"))
    sheet.append(["file", "rows", "sheets"])
    for path in files:
        sheet.append([path.name, rows.get(path.name, 0), ", ".join(sheets.get(path.name, ()))])
    for title, table in _summary_tables({p.name: p for p in files}):
        sheet.append([])
        sheet.append(heading(title))
        sheet.append([table.index.name or "", *[str(c) for c in table.columns]])
        for label, values in table.iterrows():
            sheet.append([str(label), *[int(v) for v in values]])


def write_workbook(path: Path, summary: Mapping[str, object], files: Sequence[Path],
                   rows: Mapping[str, int], as_of: datetime) -> Path:
    """Write evidence.xlsx from the pack's CSV files: a summary sheet, then one sheet (or more) per file.

    The same pack gives the same bytes: the document's dates are ``as_of`` (the pack's last run), and the
    zip entries carry that time too, not the moment of writing.
    """
    book = Workbook(write_only=True)
    moment = as_of.astimezone(UTC).replace(tzinfo=None, microsecond=0)
    book.properties.created = book.properties.modified = moment
    sheets = {source.name: _write_table(book, source) for source in files}
    _write_summary(book, summary, files, rows, sheets)
    written = path.with_name(path.name + ".part")
    book.save(written)
    _pin_times(written, path, moment)
    written.unlink()
    return path


def _pin_times(source: Path, target: Path, moment: datetime) -> None:
    """Copy a zip file with every entry's time set to ``moment`` (zip times start in 1980)."""
    stamp = max(moment, datetime(1980, 1, 1)).timetuple()[:6]
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as new:
        for entry in old.infolist():
            pinned = zipfile.ZipInfo(entry.filename, date_time=stamp)
            pinned.compress_type = zipfile.ZIP_DEFLATED
            pinned.external_attr = entry.external_attr
            if entry.filename == "docProps/core.xml":  # openpyxl stamps "modified" with the time of saving
                text = old.read(entry).decode("utf-8")
                text = re.sub(r"(<dcterms:modified[^>]*>)[^<]*(</dcterms:modified>)",
                              lambda m: m.group(1) + moment.strftime("%Y-%m-%dT%H:%M:%SZ") + m.group(2), text)
                new.writestr(pinned, text.encode("utf-8"))
                continue
            with old.open(entry) as data, new.open(pinned, "w") as out:
                shutil.copyfileobj(data, out, 1 << 20)


def sheet_titles(path: Path) -> list[str]:
    """The titles of a workbook's sheets, in order."""
    book = load_workbook(path, read_only=True)
    try:
        return list(book.sheetnames)
    finally:
        book.close()


def read_sheets(path: Path) -> dict[str, list[list[str]]]:
    """Every sheet of a workbook as rows of text (for tests and for ``evidence verify``)."""
    book = load_workbook(path, read_only=True)
    try:
        return {
            ws.title: [["" if v is None else str(v) for v in row] for row in ws.iter_rows(values_only=True)]
            for ws in book.worksheets
        }
    finally:
        book.close()

"""findings.json and findings.csv written together from a run's stored rows, row by row."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from operator import itemgetter
from pathlib import Path
from typing import Any

import orjson

from reports.csv_out import csv_field, csv_fields, safe_cell
from reports.records import COLUMNS

STORED = ("fingerprint", "check_id", "status", "severity", "tenant", "domain", "subject", "item", "title", "reason",
          "evidence", "remediation", "first_seen", "last_seen", "run_id", "caused_by")
"""The stored column (``Store.iter_rows``) of each of ``COLUMNS``, in their order."""

WRITE_BUFFER = 1 << 20
"""Bytes buffered per file between writes: hundreds of megabytes in a few hundred system calls, not tens of
thousands."""

REMEMBERED = 1024
"""How many distinct values (JSON bodies, times) a writer keeps encoded before it forgets them all: many passes
share one evidence body, and nearby rows share it most (memory stays flat)."""


def write_findings_files(
    rows: Iterable[Any], json_path: Path | None, csv_path: Path | None, *, continued: bool = False
) -> int:
    """Write findings.json and/or findings.csv from a run's stored rows (``Store.iter_rows``: evidence and
    remediation as JSON text) with the same bytes as ``write_findings_json`` and ``write_findings_csv`` of the
    same findings, in one pass holding one row at a time; returns how many were written.

    findings.json has one finding per line, encoded by orjson (no space after separators). findings.csv's lines
    are those of the csv module's default dialect, joined here: its writer costs more than the rest of a row.

    ``continued``: the rows are the last of files whose first rows were written apart (``join_findings_files``):
    no opening bracket or header, and the first row follows one before it."""
    evidence = _Encoded()
    remediation = _Encoded(lambda body: {"action": body["action"], "params": body["params"]})
    times = _Times()
    pick: Callable[[Any], tuple[Any, ...]] | None = None
    count = 0
    with (json_path.open("wb", buffering=WRITE_BUFFER) if json_path else _Nowhere()) as as_json, \
            (csv_path.open("w", buffering=WRITE_BUFFER, newline="", encoding="utf-8") if csv_path else _Nowhere()) \
            as as_csv:
        if not continued:
            as_csv.write(",".join(csv_fields(COLUMNS)) + "\r\n")
            as_json.write(b"[")
        for row in rows:
            if pick is None:
                pick = itemgetter(*(row._fields.index(name) for name in STORED))
            (fingerprint, check, status, severity, tenant, domain, subject, item, title, reason, evidence_text,
             remediation_text, first_seen, last_seen, run_id, caused_by) = pick(row)
            caused_by = caused_by or ""
            evidence_json, evidence_field = evidence[evidence_text]
            remediation_json, remediation_field = remediation[remediation_text] if remediation_text else (None, "")
            first_iso, first_field = times[first_seen]
            last_iso, last_field = times[last_seen]
            as_json.write(b",\n" if count or continued else b"\n")
            as_json.write(orjson.dumps({
                "id": fingerprint, "check": check, "status": status, "severity": severity, "tenant": tenant,
                "domain": domain, "subject": subject, "item": item, "title": title, "reason": reason,
                "evidence": evidence_json, "remediation": remediation_json, "first_seen": first_iso,
                "last_seen": last_iso, "run_id": run_id, "caused_by": caused_by,
            }))
            texts = csv_fields((fingerprint, check, status, severity, tenant, domain, subject, item, title, reason,
                                run_id, caused_by))
            as_csv.write(",".join((*texts[:10], evidence_field, remediation_field, first_field, last_field,
                                   *texts[10:])) + "\r\n")
            count += 1
        as_json.write(JSON_END)
    return count


JSON_END = b"\n]\n"
"""How findings.json ends, after its last row."""


def join_findings_files(heads: Iterable[Path], tails: Iterable[Path]) -> None:
    """Append each file of the last rows (written ``continued``) to the file of the first rows, in place of the
    end of findings.json; the files of the last rows are removed."""
    for head, tail in zip(heads, tails, strict=True):
        with head.open("r+b") as joined, tail.open("rb") as rest:
            if head.suffix == ".json":
                joined.seek(-len(JSON_END), os.SEEK_END)
                joined.truncate()
            else:
                joined.seek(0, os.SEEK_END)
            shutil.copyfileobj(rest, joined, WRITE_BUFFER)
        tail.unlink()


class _Encoded(dict[str, tuple[orjson.Fragment, str]]):
    """Stored JSON text (orjson's canonical encoding) to its findings.json value (the shape ``record`` gives it,
    encoded by orjson) and its findings.csv field, for the last ``REMEMBERED`` distinct texts.

    Without ``record``, the value is the stored one: text that ``_spaced`` can write as ``safe_cell`` would (the
    common case) is used as it is, neither decoded nor encoded again."""

    def __init__(self, record: Callable[[Any], Any] | None = None) -> None:
        super().__init__()
        self.record = record

    def __missing__(self, text: str) -> tuple[orjson.Fragment, str]:
        spaced = _spaced(text) if self.record is None and text[:1] in "{[" else None
        if spaced is not None:
            found = (orjson.Fragment(text), csv_field(spaced))
        else:
            value = orjson.loads(text) if self.record is None else self.record(orjson.loads(text))
            encoded = orjson.dumps(value).decode("utf-8")
            # The stored text itself when it is already what orjson gives (as stored today): nothing to keep twice.
            found = (orjson.Fragment(text if encoded == text else encoded), csv_field(safe_cell(value)))
        if len(self) >= REMEMBERED:
            self.clear()
        self[text] = found
        return found


def _spaced(text: str) -> str | None:
    """Stored JSON text of an object or a list as ``safe_cell`` writes its value: ``json``'s separators (", " and
    ": ") put in, the rest as it is; None when the text holds an escape, a float or whitespace, which ``json`` may
    write otherwise (``1e-7`` is ``1e-07`` there). A few string operations where decoding and encoding again cost
    several times more.

    The text is the store's canonical JSON (``canonical_bytes``: keys sorted, as ``safe_cell`` sorts them; no
    whitespace, which sets apart the spaced JSON of stores written before it). Without a backslash, every quote
    opens or closes a string: the pieces between quotes alternate outside and inside a string, and only those
    outside hold separators."""
    if "\\" in text:
        return None
    pieces = text.split('"')
    outside = "\0".join(pieces[::2])
    if _NOT_VERBATIM.search(outside):
        return None
    pieces[::2] = outside.replace(",", ", ").replace(":", ": ").split("\0")
    return '"'.join(pieces)


_NOT_VERBATIM = re.compile(r"\d[.eE]|\s")
"""Outside the strings of JSON text: a float (a digit before a decimal point or an exponent), or whitespace."""


class _Times(dict[datetime | None, tuple[str | None, str]]):
    """A stored time to ISO 8601 in UTC (SQLite gives it back without its zone; everything stored is UTC) and to
    its findings.csv field, for the last ``REMEMBERED`` distinct times (a run's rows share a few)."""

    def __missing__(self, value: datetime | None) -> tuple[str | None, str]:
        iso = None if value is None else (
            value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)).isoformat()
        found = (iso, "" if iso is None else csv_field(safe_cell(iso)))
        if len(self) >= REMEMBERED:
            self.clear()
        self[value] = found
        return found


class _Nowhere:
    """A file that is not wanted: writes go nowhere."""

    def __enter__(self) -> _Nowhere:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def write(self, data: object) -> int:
        return 0

"""findings.json: the machine interface."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import orjson

from reports.records import finding_record
from scanner.model import Finding


def write_findings_json(findings: Iterable[Finding], path: Path) -> Path:
    """Write every finding as a JSON list."""
    with path.open("w", encoding="utf-8") as handle:
        # One finding per line: readable, diffable, and encoded by orjson (several times faster than json at
        # 300,000 findings; the same data, without the space after separators).
        handle.write("[")
        for index, finding in enumerate(findings):
            handle.write(",\n" if index else "\n")
            handle.write(orjson.dumps(finding_record(finding)).decode("utf-8"))
        handle.write("\n]\n")
    return path

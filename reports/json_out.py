"""findings.json: the machine interface."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from reports.records import finding_record
from scanner.model import Finding


def write_findings_json(findings: Sequence[Finding], path: Path) -> Path:
    """Write every finding as a JSON list."""
    with path.open("w", encoding="utf-8") as handle:
        # One finding per line: readable, diffable, and written by the C encoder (json.dump with
        # ``indent`` falls back to the pure-Python one, several times slower at 100,000 findings).
        handle.write("[")
        for index, finding in enumerate(findings):
            handle.write(",\n" if index else "\n")
            handle.write(json.dumps(finding_record(finding), ensure_ascii=False))
        handle.write("\n]\n")
    return path

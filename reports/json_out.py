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
        json.dump([finding_record(f) for f in findings], handle, indent=1, ensure_ascii=False)
        handle.write("\n")
    return path

"""manifest.json: what a run was, and the SHA-256 of every file it wrote."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

from scanner.store.database import RunRecord


def sha256_file(path: Path) -> str:
    """SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 16), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(run: RunRecord, files: Sequence[Path], path: Path) -> Path:
    """Write the run's metadata and each file's size and SHA-256."""
    manifest = {
        "run_id": run.id,
        "started": run.started.isoformat(),
        "finished": run.finished.isoformat() if run.finished else None,
        "state": run.state,
        "scope": run.scope,
        "config_sha256": run.config_digest,
        "tool_version": run.tool_version,
        "files": {f.name: {"sha256": sha256_file(f), "bytes": f.stat().st_size} for f in files},
    }
    path.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return path

"""manifest.json: what a run was, and the SHA-256 of every file it wrote."""

from __future__ import annotations

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Sequence
from pathlib import Path

from scanner.store.database import RunRecord


def sha256_file(path: Path) -> str:
    """SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _described(path: Path) -> dict[str, object]:
    return {"sha256": sha256_file(path), "bytes": path.stat().st_size}


def write_manifest(run: RunRecord, files: Sequence[Path], path: Path) -> Path:
    """Write the run's metadata and each file's size and SHA-256."""
    # One thread per file: hashlib lets go of the GIL while it hashes, so findings.json and findings.csv (hundreds
    # of megabytes at 100,000 mailboxes) are hashed on two cores at once.
    with ThreadPoolExecutor(max(len(files), 1)) as pool:
        described = dict(zip([f.name for f in files], pool.map(_described, files), strict=True))
    manifest = {
        "run_id": run.id,
        "started": run.started.isoformat(),
        "finished": run.finished.isoformat() if run.finished else None,
        "state": run.state,
        "scope": run.scope,
        "config_sha256": run.config_digest,
        "tool_version": run.tool_version,
        "files": described,
    }
    path.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return path

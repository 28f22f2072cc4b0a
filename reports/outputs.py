"""Writing a run's output files atomically: into a temporary folder beside them, then renamed, the manifest last."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from reports.manifest import write_manifest
from scanner.errors import RunFailed
from scanner.store.database import RunRecord

PARTIAL = ".mailwarden-writing-"
"""The prefix of the temporary folder an output set is written into before it replaces the previous one."""


class OutputError(RunFailed):
    """An output file could not be written (a full disk, a read-only folder); the previous outputs are intact."""


def _owner_gone(folder: Path) -> bool:
    match = re.match(re.escape(PARTIAL) + r"(\d+)-", folder.name)
    if match is None:
        return False
    try:
        os.kill(int(match.group(1)), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def publish(
    run: RunRecord, out_dir: Path, render: Callable[[Path], Sequence[Path]], halt: Callable[[], None] = lambda: None,
) -> list[Path]:
    """Render a run's files into a temporary folder in ``out_dir``, add the manifest, then rename each into
    ``out_dir``, the manifest last; returns the published paths.

    Until the renames, ``out_dir`` holds the previous outputs untouched: a full disk, a read-only folder or a
    killed process leaves them as they were (and a folder left by a killed process is removed next time).
    A write that fails raises OutputError naming the path and what to do.
    """
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        for stale in out_dir.glob(PARTIAL + "*"):
            if stale.is_dir() and _owner_gone(stale):
                shutil.rmtree(stale, ignore_errors=True)
        temp = Path(tempfile.mkdtemp(prefix=f"{PARTIAL}{os.getpid()}-", dir=out_dir))
    except OSError as exc:
        raise OutputError(_problem(exc, out_dir, out_dir)) from None
    try:
        try:
            written = list(render(temp))
            written.append(write_manifest(run, written, temp / "manifest.json"))
        except OSError as exc:
            named = Path(exc.filename) if exc.filename else None
            where = out_dir / named.name if named is not None and named.parent == temp else (named or out_dir)
            raise OutputError(_problem(exc, where, out_dir)) from None
        halt()
        published = []
        try:
            for path in written:  # the manifest is the last one
                target = out_dir / path.name
                os.replace(path, target)
                published.append(target)
        except OSError as exc:
            raise OutputError(_problem(exc, out_dir / path.name, out_dir)) from None
        return published
    finally:
        shutil.rmtree(temp, ignore_errors=True)


def _problem(exc: OSError, path: Path, out_dir: Path) -> str:
    what = exc.strerror or str(exc)
    return (f"cannot write {path}: {what}; free space there or choose another --out "
            f"(the previous outputs in {out_dir} are unchanged)")

"""Writes tests/data/store-v8.sqlite.gz: a store as mailwarden wrote it at schema version 8 (before compact passes).

Run with the code of the commit before compact passes on the path (``git archive d6f7e49 | tar -x -C DIR``, then
``cd DIR && PYTHONPATH=DIR python tests/data/make_store_v8.py OUT``): the demo scanned twice (runs, findings of
every status including skipped ones, snapshots and their change log, DMARC aggregate reports), then one
remediation job created and finished by hand (a job row, its keyed intent and state audit entries, and its
change-log row). tests/scanner/store/test_upgrade.py opens a copy with today's code and reads the same history.
"""

from __future__ import annotations

import gzip
import shutil
import sys
from datetime import UTC, datetime
from pathlib import Path

from click.testing import CliRunner

from remediation.audit import append
from remediation.jobs import Jobs, plans_for_check
from scanner.store.changes import FieldChange
from scanner.cli import DEMO_OPERATOR, _demo_state, main
from scanner.config import load_config
from scanner.store.database import Store, jobs

out = Path(sys.argv[1])
result = CliRunner().invoke(main, ["demo", "--out", str(out)])
assert result.exit_code == 0, result.output
state = _demo_state(out)
database = state / "mailwarden-demo.db"
store = Store(f"sqlite:///{database}")
run = store.runs()[-1]
plan = plans_for_check(store, run.id, "forwarding.external")[0]
clock = datetime(2026, 11, 20, 9, 30, tzinfo=UTC)
config = load_config(state / "estate" / "mailwarden.toml", overrides={"remediation": {
    "secret": f"file:{state / 'link-secret'}", "audit_key": f"file:{state / 'audit-key'}",
    "operators": {DEMO_OPERATOR: ["*"]}}})
manager = Jobs(store, config, clock=lambda: clock)
job = manager.create(plan, DEMO_OPERATOR, "fixture: ticket 1")
with store.engine.begin() as conn:
    conn.execute(jobs.update().where(jobs.c.id == job.id).values(
        state="done", finished=clock, before={"forwards": ["x@outside.test"]}, after={"forwards": []}))
    append(conn, manager.key, "state", job.id, {"state": "done", "before": {"forwards": ["x@outside.test"]},
                                                "after": {"forwards": []}}, clock)
store.record_job_change(job.id, clock, FieldChange("mailbox", f"{plan.tenant}/{plan.subject}", plan.tenant,
                                                   plan.domain, plan.subject, "forwards", "changed",
                                                   ["x@outside.test"], []))
store.close()
target = Path(__file__).resolve().parent / "store-v8.sqlite.gz"
with database.open("rb") as source, gzip.GzipFile(target, "wb", mtime=0) as packed:
    shutil.copyfileobj(source, packed)
(target.parent / "store-v8.audit-key").write_bytes((state / "audit-key").read_bytes())
print(target, target.stat().st_size)

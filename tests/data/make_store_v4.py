"""Writes tests/data/store-v4.sqlite: a store as mailwarden 0.x wrote it at schema version 4 (before issue 17).

Run with the code of the commit before issue 17 on the path (``git archive 5c39994 | tar -x -C DIR``,
then ``PYTHONPATH=DIR python tests/data/make_store_v4.py DIR/out``): the demo scanned twice (runs, findings
of every status, snapshots and their change log), then one remediation job created and finished by hand
(a job row, its intent and state audit entries, and its change-log row). tests/scanner/store/test_upgrade.py
opens a copy with today's code and reads the same history.
"""

from __future__ import annotations

import shutil
import sys
from datetime import UTC, datetime
from pathlib import Path

from click.testing import CliRunner

from remediation.audit import append
from remediation.jobs import Jobs, plans_for_check
from scanner.store.changes import FieldChange
from scanner.cli import DEMO, main
from scanner.config import load_config
from scanner.store.database import Store, jobs

out = Path(sys.argv[1])
result = CliRunner().invoke(main, ["demo", "--out", str(out)])
assert result.exit_code == 0, result.output
database = out / "mailwarden-demo.db"
store = Store(f"sqlite:///{database}")
run = store.runs()[-1]
plan = plans_for_check(store, run.id, "forwarding.external")[0]
clock = datetime(2026, 11, 20, 9, 30, tzinfo=UTC)
job = Jobs(store, load_config(DEMO / "mailwarden.toml"), clock=lambda: clock).create(plan, "it-lead@example.test", "fixture: ticket 1")
with store.engine.begin() as conn:
    conn.execute(jobs.update().where(jobs.c.id == job.id).values(
        state="done", finished=clock, before={"forwards": ["x@outside.test"]}, after={"forwards": []}))
    append(conn, "state", job.id, {"state": "done", "before": {"forwards": ["x@outside.test"]},
                                   "after": {"forwards": []}}, clock)
store.record_job_change(job.id, clock, FieldChange("mailbox", f"{plan.tenant}/{plan.subject}", plan.tenant,
                                                   plan.domain, plan.subject, "forwards", "changed",
                                                   ["x@outside.test"], []))
store.close()
target = Path(__file__).resolve().parent / "store-v4.sqlite"
shutil.copyfile(database, target)
print(target, target.stat().st_size)

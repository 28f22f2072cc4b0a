"""Remediation jobs: created with an intent entry, claimed once, executed through the adapter, recorded, undone."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from remediation.actions import (
    DNS_PUBLISH,
    IRREVERSIBLE,
    Plan,
    describe,
    dns_state,
    normalized,
    plan_for,
    reached,
    remedies_for,
)
from remediation.audit import Entry, append, write_sink
from scanner.adapters.base import Refused
from scanner.changes import FieldChange
from scanner.config import Config
from scanner.errors import AdapterError, MailwardenError
from scanner.model import Status
from scanner.store import Store, canonical, jobs

log = logging.getLogger(__name__)

PENDING, RUNNING, DONE, ALREADY_DONE, FAILED, REFUSED = "pending", "running", "done", "already_done", "failed", "refused"
FINISHED = (DONE, ALREADY_DONE, FAILED, REFUSED)


class JobError(MailwardenError):
    """A job cannot be created, run or undone; the message says why."""


class LinkUsed(JobError):
    """The link already started a job: links are single use."""


@dataclass(frozen=True, slots=True)
class Job:
    """One remediation job as stored."""

    id: str
    action: str
    tenant: str
    domain: str
    subject: str
    params: Mapping[str, Any]
    issued: Mapping[str, Any]
    finding: str
    check: str
    run_id: str
    undo_of: str | None
    state: str
    actor: str
    reason: str
    created: datetime
    finished: datetime | None = None
    before: Mapping[str, Any] | None = None
    after: Mapping[str, Any] | None = None
    error: str | None = None
    link: str | None = None

    @property
    def summary(self) -> str:
        """The job's change in one sentence."""
        text = describe(self.action, self.subject, self.params)
        return f"Undo: {text}" if self.undo_of else text


@dataclass
class Jobs:
    """Creates, runs and undoes jobs over one store, with the config's adapters and audit sink."""

    store: Store
    config: Config
    sink: Path | None = None
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))

    # records

    def get(self, job_id: str) -> Job:
        """One job; an unknown id is a JobError."""
        with self.store.engine.connect() as conn:
            row = conn.execute(sa.select(jobs).where(jobs.c.id == job_id)).one_or_none()
        if row is None:
            raise JobError(f"no job {job_id!r}")
        return _job(row)

    def history(self, *, tenant: str | None = None, finding: str | None = None, limit: int = 200) -> list[Job]:
        """Jobs, newest first."""
        query = sa.select(jobs).order_by(jobs.c.created.desc(), jobs.c.id).limit(limit)
        if tenant is not None:
            query = query.where(jobs.c.tenant == tenant)
        if finding is not None:
            query = query.where(jobs.c.finding == finding)
        with self.store.engine.connect() as conn:
            return [_job(r) for r in conn.execute(query)]

    def create(self, plan: Plan, actor: str, reason: str, *, link: str | None = None,
               undo_of: str | None = None) -> Job:
        """Record a pending job and its intent entry (who, what, why, from which finding and run) together."""
        if not actor:
            raise JobError("a job needs the operator's identity")
        now = self.clock()
        job_id = uuid.uuid4().hex
        row = {"id": job_id, "action": plan.action, "tenant": plan.tenant, "domain": plan.domain,
               "subject": plan.subject, "params": dict(plan.params), "issued": dict(plan.issued),
               "finding": plan.finding, "check_id": plan.check, "run_id": plan.run_id, "undo_of": undo_of,
               "link": link, "state": PENDING, "actor": actor, "reason": reason, "created": now}
        intent = {"who": actor, "what": {"action": plan.action, "tenant": plan.tenant, "subject": plan.subject,
                                         "params": dict(plan.params)},
                  "why": reason, "finding": plan.finding, "check": plan.check, "run": plan.run_id,
                  "via": "link" if link else "direct", "undo_of": undo_of, "issued": dict(plan.issued)}
        try:
            with self.store.engine.begin() as conn:
                conn.execute(sa.insert(jobs).values(**row))
                entry = append(conn, "intent", job_id, intent, now)
        except sa.exc.IntegrityError:
            if link is not None:
                raise LinkUsed("this link was already used: each link starts one job") from None
            raise
        write_sink(self.sink, [entry])
        return self.get(job_id)

    def _claim(self, job_id: str) -> bool:
        """Move a pending job to running; only one caller can (a conditional UPDATE, not a process lock)."""
        with self.store.engine.begin() as conn:
            claimed = conn.execute(
                sa.update(jobs).where(jobs.c.id == job_id, jobs.c.state == PENDING).values(state=RUNNING)
            ).rowcount
        return claimed == 1

    def _finish(self, job: Job, state: str, before: Mapping[str, Any] | None, after: Mapping[str, Any] | None,
                error: str | None, outcome: str) -> Job:
        """Record a job's end and its state entry in one transaction, then its change-log rows."""
        now = self.clock()
        body = {"outcome": outcome, "state": state, "before": before, "after": after, "error": error}
        with self.store.engine.begin() as conn:
            conn.execute(sa.update(jobs).where(jobs.c.id == job.id, jobs.c.state == RUNNING).values(
                state=state, finished=now if state in FINISHED else None, before=before, after=after, error=error))
            entry: Entry = append(conn, "state", job.id, body, now)
        write_sink(self.sink, [entry])
        if state == DONE and before is not None and after is not None:
            for key in sorted(set(before.get("state", {})) | set(after.get("state", {}))):
                old, new = before.get("state", {}).get(key), after.get("state", {}).get(key)
                if canonical(old) != canonical(new):
                    kind = "domain" if job.action in ("catchall.disable", DNS_PUBLISH) else "mailbox"
                    self.store.record_job_change(job.id, now, FieldChange(
                        kind, f"{job.tenant}/{job.subject}", job.tenant, job.domain, job.subject, key,
                        "changed", old, new))
        log.info("job %s %s: %s", job.id, job.action, state, extra={"job": job.id, "tenant": job.tenant})
        return self.get(job.id)

    # execution

    async def execute(self, job_id: str) -> Job:
        """Run a pending job once: re-read; already in the target state: record that, write nothing;
        else write, re-read, and record done only when the re-read shows the target state."""
        job = self.get(job_id)
        if not self._claim(job_id):
            return self.get(job_id)  # someone else ran (or is running) it
        if job.undo_of is not None:
            return await self._undo(job)
        if job.action == DNS_PUBLISH:
            return await self._verify_dns(job)
        try:
            remedies = remedies_for(self.config, job.tenant)
            before = await remedies.remedy_read(job.action, job.subject, job.params)
            if reached(job.action, before["state"], job.params):
                return self._finish(job, ALREADY_DONE, before, before, None, "already in the target state")
            after = await remedies.remedy_apply(job.action, job.subject, job.params, before)
        except Refused as exc:
            return self._finish(job, REFUSED, None, None, str(exc), "refused")
        except (AdapterError, MailwardenError) as exc:
            return self._finish(job, FAILED, None, None, str(exc), "the provider refused or failed")
        if not reached(job.action, after["state"], job.params):
            message = (f"the provider accepted the change but the re-read shows {canonical(after['state'])}, "
                       "not the target state")
            return self._finish(job, FAILED, before, after, message, "not in the target state after the write")
        merged = {"state": before["state"], "detail": after.get("detail") or before.get("detail") or {}}
        return self._finish(job, DONE, merged, {"state": after["state"]}, None, "changed")

    async def _verify_dns(self, job: Job) -> Job:
        try:
            state = await dns_state(self.config, job.params.get("records", ()))
        except AdapterError as exc:
            return self._finish(job, PENDING, None, None, str(exc), "verification failed; try again")
        if reached(DNS_PUBLISH, state, job.params):
            return self._finish(job, DONE, None, {"state": state}, None, "the record is live in DNS")
        why = ("not live yet: " + "; ".join(state["missing"])) if state["missing"] else (
            "cannot be verified automatically (prose or a placeholder): check it by hand")
        return self._finish(job, PENDING, None, {"state": state}, why, "not live yet")

    async def _undo(self, job: Job) -> Job:
        original = self.get(str(job.undo_of))
        target = normalized(original.action, (original.before or {}).get("state", {}))
        try:
            remedies = remedies_for(self.config, job.tenant)
            now = await remedies.remedy_read(job.action, job.subject, job.params)
            if normalized(job.action, now["state"]) == target:
                return self._finish(job, ALREADY_DONE, now, now, None, "already in the recorded before-state")
            after = await remedies.remedy_restore(job.action, job.subject, job.params, original.before or {})
        except Refused as exc:
            return self._finish(job, REFUSED, None, None, str(exc), "refused")
        except (AdapterError, MailwardenError) as exc:
            return self._finish(job, FAILED, None, None, str(exc), "the provider refused or failed")
        if normalized(job.action, after["state"]) != target:
            message = f"the re-read shows {canonical(after['state'])}, not the recorded before-state {canonical(target)}"
            return self._finish(job, FAILED, now, after, message, "not restored after the write")
        return self._finish(job, DONE, {"state": now["state"]}, {"state": after["state"]}, None, "restored")

    def plan_undo(self, job_id: str) -> Plan:
        """The plan that reverses a done job, or a JobError saying why it cannot be undone."""
        original = self.get(job_id)
        if original.undo_of is not None:
            raise JobError("an undo is not undone: run the action again instead")
        if original.state != DONE:
            raise JobError(f"job {job_id} is {original.state}: only a done job changed anything to undo")
        if original.action in IRREVERSIBLE:
            raise JobError(f"{original.action} cannot be undone: {IRREVERSIBLE[original.action]}")
        for other in self.history(finding=original.finding):
            if other.undo_of == job_id and other.state in (PENDING, RUNNING, DONE, ALREADY_DONE):
                raise JobError(f"job {job_id} is already undone (job {other.id})")
        before = (original.before or {}).get("state", {})
        return Plan(original.action, original.tenant, original.domain, original.subject, original.params,
                    dict(before), original.finding, original.check, original.run_id)

    async def undo(self, job_id: str, actor: str, reason: str) -> Job:
        """Reverse a done job from its recorded before-state, as a logged job of its own."""
        job = self.create(self.plan_undo(job_id), actor, reason, undo_of=job_id)
        return await self.execute(job.id)

    def settled(self, finding: str, action: str) -> bool:
        """True when a job already brought this finding's subject to the target state (and was not undone)."""
        found = self.history(finding=finding, limit=1000)
        undone = {j.undo_of for j in found if j.undo_of and j.state in (DONE, ALREADY_DONE)}
        return any(j.action == action and j.undo_of is None and j.state in (DONE, ALREADY_DONE) and j.id not in undone
                   for j in found)


def _job(row: Any) -> Job:
    def utc(value: datetime | None) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value

    return Job(row.id, row.action, row.tenant, row.domain, row.subject, row.params or {}, row.issued or {},
               row.finding, row.check_id, row.run_id, row.undo_of, row.state, row.actor, row.reason,
               utc(row.created) or datetime.now(UTC), utc(row.finished), row.before, row.after, row.error, row.link)


@dataclass(frozen=True, slots=True)
class BulkStep:
    """One subject of a bulk run: its plan, and the job (None in a dry run or when skipped)."""

    plan: Plan
    job: Job | None = None
    note: str = ""


async def bulk(
    runner: Jobs, plans: Sequence[Plan], *, canary: int, apply: bool, actor: str, reason: str,
    report: Callable[[BulkStep], None] = lambda step: None,
) -> list[BulkStep]:
    """Apply plans to ``canary`` subjects, re-verify them, then the rest; stop at the first failure.

    Without ``apply`` nothing is written (the plan is reported). Subjects a job already settled are skipped,
    so a re-run is a no-op for what is done.
    """
    steps: list[BulkStep] = []
    todo = []
    for plan in plans:
        if runner.settled(plan.finding, plan.action):
            step = BulkStep(plan, None, "already done by an earlier job")
            steps.append(step)
            report(step)
        else:
            todo.append(plan)
    if not apply:
        for plan in todo:
            step = BulkStep(plan, None, "would run")
            steps.append(step)
            report(step)
        return steps
    first, rest = todo[:canary], todo[canary:]
    for group, label in ((first, "canary"), (rest, "rest")):
        for plan in group:
            job = await runner.execute(runner.create(plan, actor, reason).id)
            step = BulkStep(plan, job, label)
            steps.append(step)
            report(step)
            if job.state not in (DONE, ALREADY_DONE):
                return steps
        if label == "canary":
            for step in list(steps):
                if step.job is None or step.note != "canary":
                    continue
                remedies = remedies_for(runner.config, step.plan.tenant)
                seen = await remedies.remedy_read(step.plan.action, step.plan.subject, step.plan.params)
                if not reached(step.plan.action, seen["state"], step.plan.params):
                    failed = BulkStep(step.plan, step.job, "canary re-verification failed: " + canonical(seen["state"]))
                    steps.append(failed)
                    report(failed)
                    return steps
    return steps


def plans_for_check(store: Store, run_id: str, check: str, tenant: str | None = None) -> list[Plan]:
    """The plans for every failing finding of a check in a run (optionally one tenant's)."""
    found = [f for f in store.findings_for_run(run_id)
             if f.check == check and f.status is Status.FAIL and (tenant is None or f.tenant == tenant)]
    return [p for p in (plan_for(f) for f in found) if p is not None]

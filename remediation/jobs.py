"""Remediation jobs: created with an intent entry, claimed once, executed through the adapter, recorded, undone."""

from __future__ import annotations

import hashlib
import logging
import os
import socket
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
from remediation.audit import Entry, append, audit_key, job_record, verify_chain, write_sink
from scanner.adapters.base import Refused
from scanner.store.changes import FieldChange
from scanner.config import Config
from scanner.errors import AdapterError, MailwardenError
from scanner.model import Status
from scanner.store.lease import process_exists
from scanner.store.database import Store, canonical, job_claims, jobs

log = logging.getLogger(__name__)

PENDING, RUNNING, DONE, ALREADY_DONE, FAILED, REFUSED = "pending", "running", "done", "already_done", "failed", "refused"
FINISHED = (DONE, ALREADY_DONE, FAILED, REFUSED)


class JobError(MailwardenError):
    """A job cannot be created, run or undone; the message says why."""


class LinkUsed(JobError):
    """The link already started a job: links are single use."""


class ChangeBusy(JobError):
    """Another pending or running job is making the same change (tenant, action, subject, target)."""

    def __init__(self, message: str, job_id: str) -> None:
        super().__init__(message)
        self.job_id = job_id


def claim_targets(action: str, params: Mapping[str, Any]) -> list[str]:
    """The targets a job changes, each claimed once: forwards' addresses, the delegate, DNS records, or "" for the
    subject itself."""
    if action == "forwarding.disable":
        return sorted({str(t).lower() for t in params.get("targets", ())}) or [""]
    if action == "delegate.remove":
        return [str(params.get("delegate", "")).lower()]
    if action == DNS_PUBLISH:  # each record is a change of its own (a digest: records can be long)
        return sorted({hashlib.sha256(str(r).encode("utf-8")).hexdigest() for r in params.get("records", ())}) or [""]
    return [""]


def this_process() -> str:
    """``host:pid`` of this process, recorded as a job's owner so a restart can tell whose jobs were orphaned."""
    return f"{socket.gethostname()}:{os.getpid()}"


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
    _key: bytes | None = field(default=None, init=False, repr=False)

    @property
    def key(self) -> bytes:
        """The audit key (read from its secret reference once)."""
        if self._key is None:
            self._key = audit_key(self.config.remediation)
        return self._key

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
        key = self.key
        now = self.clock()
        job_id = uuid.uuid4().hex
        row = {"id": job_id, "action": plan.action, "tenant": plan.tenant, "domain": plan.domain,
               "subject": plan.subject, "params": dict(plan.params), "issued": dict(plan.issued),
               "finding": plan.finding, "check_id": plan.check, "run_id": plan.run_id, "undo_of": undo_of,
               "link": link, "state": PENDING, "actor": actor, "reason": reason, "created": now,
               "owner": this_process()}
        claims = [{"tenant": plan.tenant, "action": plan.action, "subject": plan.subject.lower(), "target": target,
                   "job_id": job_id} for target in claim_targets(plan.action, plan.params)]
        intent = {"who": actor, "what": {"action": plan.action, "tenant": plan.tenant, "subject": plan.subject,
                                         "params": dict(plan.params)},
                  "why": reason, "finding": plan.finding, "check": plan.check, "run": plan.run_id,
                  "via": "link" if link else "direct", "undo_of": undo_of, "issued": dict(plan.issued)}
        try:
            with self.store.engine.begin() as conn:
                conn.execute(sa.insert(jobs).values(**row))
                conn.execute(sa.insert(job_claims), claims)
                entry = append(conn, key, "intent", job_id, intent, now)
        except sa.exc.IntegrityError:
            self._refuse_duplicate(link, claims)
            raise
        problem = write_sink(self.sink, [entry])
        if problem:
            # No change without its audit copy: the job ends failed before anything is written.
            if self._claim(job_id):
                return self._finish(self.get(job_id), FAILED, None, None, problem + "; nothing was changed",
                                    "the audit copy failed")
        return self.get(job_id)

    def _refuse_duplicate(self, link: str | None, claims: list[dict[str, str]]) -> None:
        """Raise why a job could not be recorded: its link was used, or another job is making the change."""
        with self.store.engine.connect() as conn:
            if link is not None and conn.execute(sa.select(jobs.c.id).where(jobs.c.link == link)).first():
                raise LinkUsed("this link was already used: each link starts one job") from None
            for claim in claims:
                holder = conn.execute(sa.select(job_claims.c.job_id).where(
                    job_claims.c.tenant == claim["tenant"], job_claims.c.action == claim["action"],
                    job_claims.c.subject == claim["subject"], job_claims.c.target == claim["target"])).scalar()
                if holder is not None:
                    raise ChangeBusy(f"job {holder} is already making this change; nothing was started twice",
                                     str(holder)) from None

    def _claim(self, job_id: str) -> bool:
        """Move a pending job to running; only one caller can (a conditional UPDATE, not a process lock)."""
        with self.store.engine.begin() as conn:
            claimed = conn.execute(
                sa.update(jobs).where(jobs.c.id == job_id, jobs.c.state == PENDING).values(state=RUNNING,
                                                                                           owner=this_process())
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
            if state in FINISHED:
                conn.execute(sa.delete(job_claims).where(job_claims.c.job_id == job.id))
            entry: Entry = append(conn, self.key, "state", job.id, body, now)
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
        try:
            intent, record = self.recorded(original.id)
        except JobError as exc:
            return self._finish(job, REFUSED, None, None, str(exc), "refused: the record does not verify")
        what = intent.get("what") or {}
        before = record.get("before") or {}
        target = normalized(original.action, before.get("state") or {})
        left = normalized(original.action, (record.get("after") or {}).get("state") or {})
        try:
            remedies = remedies_for(self.config, job.tenant)
            now = await remedies.remedy_read(job.action, job.subject, job.params)
            live = normalized(job.action, now["state"])
            if live == target:
                return self._finish(job, ALREADY_DONE, now, now, None, "already in the recorded before-state")
            if live != left:
                message = (f"the subject changed since job {original.id}: it is now {canonical(live)}, the job left "
                           f"it {canonical(left)}; an undo would overwrite that later change, so nothing was written")
                return self._finish(job, REFUSED, now, None, message, "refused: changed since the job")
            outside = beyond_targets(original.action, what.get("params") or {}, before.get("state") or {}, live)
            if outside:
                message = f"the recorded before-state names {', '.join(outside)}, which the job never changed"
                return self._finish(job, REFUSED, now, None, message, "refused: outside the job's targets")
            after = await remedies.remedy_restore(job.action, job.subject, what.get("params") or job.params, before)
        except Refused as exc:
            return self._finish(job, REFUSED, None, None, str(exc), "refused")
        except (AdapterError, MailwardenError) as exc:
            return self._finish(job, FAILED, None, None, str(exc), "the provider refused or failed")
        if normalized(job.action, after["state"]) != target:
            message = f"the re-read shows {canonical(after['state'])}, not the recorded before-state {canonical(target)}"
            return self._finish(job, FAILED, now, after, message, "not restored after the write")
        return self._finish(job, DONE, {"state": now["state"]}, {"state": after["state"]}, None, "restored")

    def recorded(self, job_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """A done job's intent and state entries from the verified audit chain; a JobError when the chain does not
        verify or the job's row differs from its entries (the row is never what an undo restores from)."""
        problems, found = verify_chain(self.store, self.key, self.config.remediation.audit_legacy_entries)
        if problems:
            raise JobError(f"the audit log does not verify ({problems[0]}), so nothing is undone; "
                           "run `mailwarden audit verify`")
        intent, state = job_record(found, job_id)
        if intent is None or state is None or state.get("state") != DONE:
            raise JobError(f"job {job_id} has no done state entry in the audit log, so nothing is undone")
        row = self.get(job_id)
        what = intent.get("what") or {}
        if canonical(state.get("before")) != canonical(row.before) or canonical(state.get("after")) != canonical(row.after) \
                or (what.get("action"), what.get("tenant"), what.get("subject")) != (row.action, row.tenant, row.subject) \
                or canonical(what.get("params") or {}) != canonical(dict(row.params)):
            raise JobError(f"job {job_id}'s record differs from its audit entries, so nothing is undone; "
                           "run `mailwarden audit verify`")
        return intent, state

    async def undo_difference(self, job_id: str) -> str:
        """"" while the subject is still in the state the job left it in; otherwise what differs, in words."""
        original = self.get(job_id)
        _, record = self.recorded(job_id)
        left = normalized(original.action, (record.get("after") or {}).get("state") or {})
        remedies = remedies_for(self.config, original.tenant)
        now = await remedies.remedy_read(original.action, original.subject, original.params)
        live = normalized(original.action, now["state"])
        if live == left:
            return ""
        changed = sorted(k for k in set(live) | set(left) if canonical(live.get(k)) != canonical(left.get(k)))
        return "; ".join(f"{k}: the job left {canonical(left.get(k))}, it is now {canonical(live.get(k))}"
                         for k in changed)

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
        intent, record = self.recorded(job_id)
        if not record.get("before"):
            raise JobError(f"job {job_id}'s before-state was not recorded (it was recovered after an interruption), "
                           "so there is nothing to restore from")
        what = intent.get("what") or {}
        return Plan(str(what.get("action")), str(what.get("tenant")), original.domain, str(what.get("subject")),
                    dict(what.get("params") or {}), dict(record["before"].get("state") or {}),
                    str(intent.get("finding", "")), str(intent.get("check", "")), str(intent.get("run", "")))

    async def recover(self) -> list[Job]:
        """Finish or fail each job a stopped process of this host left pending or running: re-read the live
        state, record the outcome with its audit entry. Jobs of a live process, or of another host, are left."""
        with self.store.engine.connect() as conn:
            rows = conn.execute(sa.select(jobs.c.id, jobs.c.owner).where(jobs.c.state.in_((PENDING, RUNNING)))).all()
        here = socket.gethostname()
        recovered = []
        for row in rows:
            host, _, pid = (row.owner or "").rpartition(":")
            if row.owner and (host != here or not pid.isdigit() or int(pid) == os.getpid()
                              or process_exists(int(pid))):
                continue
            recovered.append(await self._recover(self.get(row.id)))
            log.warning("job %s recovered at start: %s", row.id, recovered[-1].state,
                        extra={"event": "job.recovered", "job": row.id, "state": recovered[-1].state})
        return recovered

    async def _recover(self, job: Job) -> Job:
        was = job.state
        if was == PENDING and not self._claim(job.id):
            return self.get(job.id)
        if job.action == DNS_PUBLISH:
            return await self._verify_dns(job)  # a publish job waits for DNS: re-verify it
        note = "recovered at start: "
        target: Mapping[str, Any] | None = None
        if job.undo_of is not None:
            original = self.get(job.undo_of)
            target = normalized(original.action, (original.before or {}).get("state") or {})
        try:
            remedies = remedies_for(self.config, job.tenant)
            now = await remedies.remedy_read(job.action, job.subject, job.params)
        except (AdapterError, MailwardenError) as exc:
            return self._finish(job, FAILED, None, None, f"{note}interrupted, and the live state could not be read: "
                                f"{exc}; check the subject by hand", "recovered: unreadable")
        done = (normalized(job.action, now["state"]) == target) if target is not None else reached(
            job.action, now["state"], job.params)
        if was == PENDING:
            if done:
                return self._finish(job, ALREADY_DONE, now, now, None, note + "already in the target state")
            return self._finish(job, FAILED, None, {"state": now["state"]},
                                f"{note}the process that accepted this job stopped before running it; nothing was "
                                "written. Use the latest report's link to try again", "recovered: never ran")
        if done:
            return self._finish(job, DONE, None, {"state": now["state"]}, None,
                                note + "interrupted after its write; the re-read shows the target state "
                                "(the before-state was not recorded, so it cannot be undone)")
        return self._finish(job, FAILED, None, {"state": now["state"]},
                            f"{note}interrupted while running; the re-read shows {canonical(now['state'])}, not the "
                            "target state; check the subject by hand", "recovered: interrupted")

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


def beyond_targets(action: str, params: Mapping[str, Any], before: Mapping[str, Any],
                   live: Mapping[str, Any]) -> list[str]:
    """What restoring ``before`` would add that the job never removed (outside its subject's targets)."""
    key = {"forwarding.disable": "forwards", "delegate.remove": "delegates"}.get(action)
    if key is None:
        return []
    allowed = set(claim_targets(action, params))
    restored = {str(v).lower() for v in before.get(key) or ()} - {str(v).lower() for v in live.get(key) or ()}
    return sorted(restored - allowed)


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

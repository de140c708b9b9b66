"""Job persistence: protobuf messages in, protobuf messages out. Call inside a db_session.

Pony entities never leave this module; callers see pb.Job / pb.JobResult / pb.JobRecord.
Times are stored as naive UTC datetimes.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pony import orm

from proto.codec import FINAL_STATUSES, JOB_STATUS_NAMES, UTC, from_timestamp, pb, status_name, to_timestamp

RESTART_REASON = "node restarted"


def _naive(moment: datetime | None) -> datetime | None:
    return None if moment is None else moment.astimezone(UTC).replace(tzinfo=None)


def _aware(moment: datetime | None) -> datetime | None:
    return None if moment is None else moment.replace(tzinfo=UTC)


def _set_ts(field: Any, moment: datetime | None) -> None:
    stamp = to_timestamp(_aware(moment))
    if stamp is not None:
        field.CopyFrom(stamp)


def insert_job(db: orm.Database, job: pb.Job) -> None:
    """Add a job. Raises pony's TransactionIntegrityError on commit if its id is taken."""
    db.Job(
        job_id=job.job_id,
        command=job.command,
        env=dict(job.env),
        timeout_seconds=job.timeout_seconds,
        status=status_name(job.status),
        target_node=job.target_node_id,
        created_by_node=job.created_by_node,
        created_at=_naive(from_timestamp(job.created_at)),
        retries=job.retries,
        attempt=job.attempt or 1,
        delivered=True,
    )


def _to_job(row: Any) -> pb.Job:
    job = pb.Job(
        job_id=row.job_id,
        target_node_id=row.target_node,
        command=row.command,
        env=row.env or {},
        timeout_seconds=row.timeout_seconds,
        status=pb.JobStatus.Value(row.status),
        created_by_node=row.created_by_node,
        retries=row.retries,
        attempt=row.attempt,
    )
    _set_ts(job.created_at, row.created_at)
    return job


def _to_record(row: Any, *, with_output: bool) -> pb.JobRecord:
    record = pb.JobRecord(job=_to_job(row), notes=row.notes)
    result = record.result
    result.job_id = row.job_id
    result.executor_node_id = row.executor_node
    result.status = pb.JobStatus.Value(row.status)
    result.error = row.error
    result.attempt = row.attempt
    if row.exit_code is not None:
        result.exit_code = row.exit_code
        result.has_exit_code = True
    _set_ts(result.started_at, row.started_at)
    _set_ts(result.finished_at, row.finished_at)
    result.stdout_truncated = row.stdout_truncated
    result.stderr_truncated = row.stderr_truncated
    if with_output:
        result.stdout = row.stdout or b""
        result.stderr = row.stderr or b""
    return record


def get_job(db: orm.Database, job_id: str) -> pb.JobRecord | None:
    """The job with its output, or None."""
    row = db.Job.get(job_id=job_id)
    return None if row is None else _to_record(row, with_output=True)


def list_jobs(db: orm.Database, limit: int, status: int | None = None) -> list[pb.JobRecord]:
    """Newest first, without output."""
    query = db.Job.select()
    if status is not None:
        name = status_name(status)
        query = query.filter(lambda j: j.status == name)
    rows = query.order_by(orm.desc(db.Job.created_at), orm.desc(db.Job.job_id)).limit(limit)
    return [_to_record(row, with_output=False) for row in rows]


def count_by_status(db: orm.Database) -> dict[str, int]:
    """{status name: count}, every status present (zeros included)."""
    counts = dict.fromkeys(JOB_STATUS_NAMES, 0)
    for name, count in orm.select((j.status, orm.count(j)) for j in db.Job):
        counts[name] = count
    return counts


def mark_running(
    db: orm.Database, job_id: str, executor_node: str, started_at: datetime, attempt: int = 0
) -> bool:
    """PENDING → RUNNING; False (and nothing changed) if the job is unknown, already final, or
    `attempt` (when given) is older than the job's current attempt."""
    row = db.Job.get(job_id=job_id)
    if row is None or pb.JobStatus.Value(row.status) in FINAL_STATUSES or (attempt and attempt < row.attempt):
        return False
    row.status = status_name(pb.JOB_RUNNING)
    row.executor_node = executor_node
    row.started_at = _naive(started_at)
    return True


def _describe(result: pb.JobResult) -> str:
    code = f" exit {result.exit_code}" if result.has_exit_code else ""
    executor = result.executor_node_id or "unknown"
    return f"{status_name(result.status)}{code} from {executor} (attempt {result.attempt})"


def _note(row: Any, text: str) -> None:
    row.notes = (row.notes + "\n" if row.notes else "") + text[:500]


def finish_job(db: orm.Database, result: pb.JobResult, own_node: str = "") -> bool:
    """Record a final result. Returns True if it settled the job.

    The first final status wins: a later result for a settled job only fills in output, exit code
    and times that the first one lacked (a cancel is settled at once; its process's output follows)
    and is noted. A result of an older attempt (the job was routed again since) changes nothing but
    the notes. On the executor of a job created elsewhere (`own_node` given), the result is marked
    undelivered until the origin acknowledges it.
    """
    row = db.Job.get(job_id=result.job_id)
    if row is None:
        return False
    if result.attempt and result.attempt < row.attempt:
        _note(row, f"late result ignored: {_describe(result)}")
        return False
    settled = pb.JobStatus.Value(row.status) in FINAL_STATUSES
    if not settled:
        row.status = status_name(result.status)
        row.error = result.error
    elif result.status != pb.JobStatus.Value(row.status) and result.executor_node_id:
        _note(row, f"late result kept, status unchanged: {_describe(result)}")
    if own_node and row.created_by_node and row.created_by_node != own_node:
        row.delivered = False
    if result.executor_node_id:
        row.executor_node = result.executor_node_id
    if result.has_exit_code:
        row.exit_code = result.exit_code
    if result.stdout or result.stdout_truncated:
        row.stdout = result.stdout
        row.stdout_truncated = result.stdout_truncated
    if result.stderr or result.stderr_truncated:
        row.stderr = result.stderr
        row.stderr_truncated = result.stderr_truncated
    started, finished = from_timestamp(result.started_at), from_timestamp(result.finished_at)
    if started is not None and (row.started_at is None or not settled):
        row.started_at = _naive(started)
    if finished is not None and (row.finished_at is None or not settled):
        row.finished_at = _naive(finished)
    return not settled


def recover_after_restart(db: orm.Database, node_id: str, now: datetime) -> list[pb.Job]:
    """After a crash: fail the jobs this node was running, and the jobs other nodes had handed to it
    (their origins route them again or take the failure); return its own pending jobs, oldest first."""
    running = status_name(pb.JOB_RUNNING)
    pending = status_name(pb.JOB_PENDING)
    failed = status_name(pb.JOB_FAILED)
    lost = list(db.Job.select(lambda j: j.status == running and j.executor_node == node_id))
    handed_to_us = db.Job.select(lambda j: j.status == pending and j.target_node == node_id)
    lost += [row for row in handed_to_us if row.created_by_node and row.created_by_node != node_id]
    for row in lost:
        row.status = failed
        row.error = RESTART_REASON
        row.finished_at = _naive(now)
        if row.created_by_node and row.created_by_node != node_id:
            row.delivered = False
    rows = db.Job.select(lambda j: j.status == pending and j.target_node == node_id)
    return [_to_job(row) for row in rows.order_by(db.Job.created_at)]


def unsettled_at(db: orm.Database, target: str, origin: str) -> list[pb.Job]:
    """Jobs `origin` created that wait on node `target` (PENDING or RUNNING there), oldest first."""
    final = [status_name(s) for s in FINAL_STATUSES]
    rows = db.Job.select(
        lambda j: j.target_node == target and j.created_by_node == origin and j.status not in final
    )
    return [_to_job(row) for row in rows.order_by(db.Job.created_at)]


def retarget(db: orm.Database, job_id: str, target: str, attempt: int) -> bool:
    """Send a job that is not final to `target` as attempt `attempt` (PENDING again)."""
    row = db.Job.get(job_id=job_id)
    if row is None or pb.JobStatus.Value(row.status) in FINAL_STATUSES:
        return False
    row.set(
        target_node=target,
        attempt=attempt,
        status=status_name(pb.JOB_PENDING),
        executor_node="",
        started_at=None,
    )
    return True


def undelivered(db: orm.Database) -> list[str]:
    """Ids of results this node owes to other nodes (final, not yet acknowledged), oldest first."""
    rows = db.Job.select(lambda j: not j.delivered).order_by(db.Job.finished_at)
    return [row.job_id for row in rows]


def mark_delivered(db: orm.Database, job_id: str) -> None:
    row = db.Job.get(job_id=job_id)
    if row is not None:
        row.delivered = True

"""Job persistence: protobuf messages in, protobuf messages out. Call inside a db_session.

Pony entities never leave this module; callers see pb.Job / pb.JobResult / pb.JobRecord.
Times are stored as naive UTC datetimes. The three statements every job goes through (read one
job, mark it running, record its result) use Pony's raw SQL (`db.select` / `db.execute`) on the
tables its entities define: one statement each instead of an entity load, lazy loads and an
optimistic-check UPDATE, which made them several times slower (benchmarks/jobs.py).
"""

from __future__ import annotations

import json
from datetime import datetime
from types import SimpleNamespace
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
    """Add a job. Raises pony's TransactionIntegrityError if its id is taken."""
    db.execute(
        "INSERT INTO jobs (job_id, command, env, timeout_seconds, status, target_node, created_by_node, "
        "executor_node, created_at, stdout_truncated, stderr_truncated, error, retries, attempt, delivered, "
        "notes, process_token, pinned) VALUES ($job_id, $command, $env, $timeout, $status, $target, "
        "$origin, '', $created, 0, 0, '', $retries, $attempt, 1, '', '', $pinned)",
        {
            "job_id": job.job_id,
            "command": job.command,
            "env": json.dumps(dict(job.env)),
            "timeout": job.timeout_seconds,
            "status": status_name(job.status),
            "target": job.target_node_id,
            "origin": job.created_by_node,
            "created": _sql_time(from_timestamp(job.created_at)),
            "retries": job.retries,
            "attempt": job.attempt or 1,
            "pinned": job.pinned,
        },
    )


def job_status(db: orm.Database, job_id: str) -> int | None:
    """The job's pb.JobStatus, or None."""
    rows = db.select("SELECT status FROM jobs WHERE job_id = $job_id", {"job_id": job_id})
    return pb.JobStatus.Value(rows[0]) if rows else None


def has_job(db: orm.Database, job_id: str) -> bool:
    return bool(db.select("SELECT 1 FROM jobs WHERE job_id = $job_id", {"job_id": job_id}))


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
        pinned=bool(row.pinned),
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


_COLUMNS = (
    "job_id, command, env, timeout_seconds, status, target_node, created_by_node, executor_node, "
    "created_at, started_at, finished_at, exit_code, stdout, stderr, stdout_truncated, stderr_truncated, "
    "error, retries, attempt, notes, pinned"
)
_FINAL_NAMES = tuple(status_name(s) for s in sorted(FINAL_STATUSES))


def _sql_time(moment: datetime | None) -> str | None:
    """A datetime as Pony stores it in SQLite (naive UTC, microseconds always written)."""
    naive = _naive(moment)
    return None if naive is None else naive.strftime("%Y-%m-%d %H:%M:%S.%f")


def _py_time(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


def _raw(values: tuple[Any, ...]) -> SimpleNamespace:
    """A row of _COLUMNS with the types Pony's entity would give."""
    row = SimpleNamespace(**dict(zip([c.strip() for c in _COLUMNS.split(",")], values, strict=True)))
    row.env = json.loads(row.env) if row.env else {}
    for name in ("created_at", "started_at", "finished_at"):
        setattr(row, name, _py_time(getattr(row, name)))
    row.stdout_truncated, row.stderr_truncated = bool(row.stdout_truncated), bool(row.stderr_truncated)
    return row


def get_job(db: orm.Database, job_id: str) -> pb.JobRecord | None:
    """The job with its output, or None."""
    sql = f"SELECT {_COLUMNS} FROM jobs WHERE job_id = $job_id"  # noqa: S608 - constant columns
    rows = db.select(sql, {"job_id": job_id})
    return _to_record(_raw(tuple(rows[0])), with_output=True) if rows else None


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
    db: orm.Database,
    job_id: str,
    executor_node: str,
    started_at: datetime,
    attempt: int = 0,
    pgid: int = 0,
    token: str = "",
) -> bool:
    """PENDING → RUNNING; False (and nothing changed) if the job is unknown, already final, or
    `attempt` (when given) is older than the job's current attempt. `pgid` and `token` identify
    the job's process group when it runs here, so a restart after a crash can kill it."""
    cursor = db.execute(
        "UPDATE jobs SET status = $running, executor_node = $executor, started_at = $started, "
        "pgid = $pgid, process_token = $token "
        "WHERE job_id = $job_id AND status NOT IN ($f1, $f2, $f3, $f4) "
        "AND ($attempt = 0 OR attempt <= $attempt)",
        {
            "running": status_name(pb.JOB_RUNNING),
            "executor": executor_node,
            "started": _sql_time(started_at),
            "job_id": job_id,
            "attempt": attempt,
            "pgid": pgid or None,
            "token": token,
            **dict(zip(("f1", "f2", "f3", "f4"), _FINAL_NAMES, strict=True)),
        },
    )
    return cursor.rowcount == 1


def _describe(result: pb.JobResult) -> str:
    code = f" exit {result.exit_code}" if result.has_exit_code else ""
    executor = result.executor_node_id or "unknown"
    return f"{status_name(result.status)}{code} from {executor} (attempt {result.attempt})"


def finish_job(db: orm.Database, result: pb.JobResult, own_node: str = "") -> bool:
    """Record a final result. Returns True if it settled the job.

    The first final status wins: a later result for a settled job only fills in output, exit code
    and times that the first one lacked (a cancel is settled at once; its process's output follows)
    and is noted. A result of an older attempt (the job was routed again since) changes nothing but
    the notes. On the executor of a job created elsewhere (`own_node` given), the result is marked
    undelivered until the origin acknowledges it.
    """
    rows = db.select(
        "SELECT status, attempt, created_by_node, started_at, finished_at, notes "
        "FROM jobs WHERE job_id = $id",
        {"id": result.job_id},
    )
    if not rows:
        return False
    status, attempt, origin, started_at, finished_at, notes = rows[0]
    changes: dict[str, Any] = {}

    def note(text: str) -> None:
        changes["notes"] = ((notes + "\n") if notes else "") + text[:500]

    if result.attempt and result.attempt < attempt:
        note(f"late result ignored: {_describe(result)}")
        _update(db, result.job_id, changes)
        return False
    settled = pb.JobStatus.Value(status) in FINAL_STATUSES
    if not settled:
        changes.update(status=status_name(result.status), error=result.error)
    elif result.status != pb.JobStatus.Value(status) and result.executor_node_id:
        note(f"late result kept, status unchanged: {_describe(result)}")
    if own_node and origin and origin != own_node:
        changes["delivered"] = False
    if result.executor_node_id:
        changes["executor_node"] = result.executor_node_id
    if result.has_exit_code:
        changes["exit_code"] = result.exit_code
    if result.stdout or result.stdout_truncated:
        changes.update(stdout=result.stdout, stdout_truncated=result.stdout_truncated)
    if result.stderr or result.stderr_truncated:
        changes.update(stderr=result.stderr, stderr_truncated=result.stderr_truncated)
    started, finished = from_timestamp(result.started_at), from_timestamp(result.finished_at)
    if started is not None and (started_at is None or not settled):
        changes["started_at"] = _sql_time(started)
    if finished is not None and (finished_at is None or not settled):
        changes["finished_at"] = _sql_time(finished)
    _update(db, result.job_id, changes)
    return not settled


def _update(db: orm.Database, job_id: str, changes: dict[str, Any]) -> None:
    if changes:
        assignments = ", ".join(f"{column} = ${column}" for column in changes)  # names are ours
        sql = f"UPDATE jobs SET {assignments} WHERE job_id = $job_id"  # noqa: S608 - our column names
        db.execute(sql, {**changes, "job_id": job_id})


def recover_after_restart(
    db: orm.Database, node_id: str, now: datetime
) -> tuple[list[pb.Job], list[tuple[int, str]]]:
    """After a crash: fail the jobs this node was running, and the jobs other nodes had handed to it
    (their origins route them again or take the failure). Returns its own pending jobs, oldest
    first, and the (pgid, token) of the process groups the failed jobs had."""
    running = status_name(pb.JOB_RUNNING)
    pending = status_name(pb.JOB_PENDING)
    failed = status_name(pb.JOB_FAILED)
    lost = list(db.Job.select(lambda j: j.status == running and j.executor_node == node_id))
    handed_to_us = db.Job.select(lambda j: j.status == pending and j.target_node == node_id)
    lost += [row for row in handed_to_us if row.created_by_node and row.created_by_node != node_id]
    groups = [(row.pgid, row.process_token) for row in lost if row.pgid]
    for row in lost:
        row.status = failed
        row.error = RESTART_REASON
        row.finished_at = _naive(now)
        if row.created_by_node and row.created_by_node != node_id:
            row.delivered = False
    rows = db.Job.select(lambda j: j.status == pending and j.target_node == node_id)
    return [_to_job(row) for row in rows.order_by(db.Job.created_at)], groups


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

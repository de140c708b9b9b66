"""The one place that converts between protobuf messages, datetimes and the API's JSON."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

try:
    from proto import mesh_pb2 as pb
except ImportError as exc:  # pragma: no cover - exercised by hand on a clone without `make setup`
    raise ImportError(
        "proto/mesh_pb2.py is missing: run `make setup` (it generates the protobuf code)"
    ) from exc

UTC = timezone.utc
JobStatus = pb.JobStatus
NodeStatus = pb.NodeStatus

FINAL_STATUSES = frozenset({pb.JOB_COMPLETED, pb.JOB_FAILED, pb.JOB_TIMEOUT, pb.JOB_CANCELLED})
JOB_STATUS_NAMES = tuple(v.name for v in pb.JobStatus.DESCRIPTOR.values if v.number != 0)
MASK = "***"


def status_name(status: int) -> str:
    """`JOB_COMPLETED` for pb.JOB_COMPLETED."""
    return pb.JobStatus.Name(status)


def node_status_name(status: int) -> str:
    """`IDLE` for pb.IDLE."""
    return pb.NodeStatus.Name(status)


def utcnow() -> datetime:
    """Now as an aware UTC datetime."""
    return datetime.now(UTC)


def to_timestamp(moment: datetime | None) -> Timestamp | None:
    """An aware datetime as a protobuf Timestamp (None stays None)."""
    if moment is None:
        return None
    stamp = Timestamp()
    stamp.FromDatetime(moment.astimezone(UTC))
    return stamp


def from_timestamp(stamp: Timestamp) -> datetime | None:
    """A protobuf Timestamp as an aware UTC datetime; the unset (zero) Timestamp is None."""
    if stamp.seconds == 0 and stamp.nanos == 0:
        return None
    return stamp.ToDatetime(tzinfo=UTC)


def rfc3339(moment: datetime | None) -> str | None:
    """`2026-12-03T15:26:52.123456Z`, or None."""
    if moment is None:
        return None
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _ts_field(stamp: Timestamp) -> str | None:
    return rfc3339(from_timestamp(stamp))


def submitted_json(job: pb.Job) -> dict[str, Any]:
    """The 202 body of POST /jobs."""
    return {
        "job_id": job.job_id,
        "target_node": job.target_node_id,
        "command": job.command,
        "status": status_name(job.status),
        "created_at": _ts_field(job.created_at),
    }


def _duration(result: pb.JobResult) -> float | None:
    started, finished = from_timestamp(result.started_at), from_timestamp(result.finished_at)
    if started is None or finished is None:
        return None
    return round((finished - started).total_seconds(), 6)


def summary_json(record: pb.JobRecord) -> dict[str, Any]:
    """One item of GET /jobs."""
    job, result = record.job, record.result
    return {
        "job_id": job.job_id,
        "command": job.command,
        "status": status_name(job.status),
        "target_node": job.target_node_id,
        "created_by_node": job.created_by_node,
        "exit_code": result.exit_code if result.has_exit_code else None,
        "created_at": _ts_field(job.created_at),
        "started_at": _ts_field(result.started_at),
        "finished_at": _ts_field(result.finished_at),
        "duration_seconds": _duration(result),
    }


def detail_json(record: pb.JobRecord) -> dict[str, Any]:
    """GET /jobs/<id>: the summary plus the full result. Env values are masked; output is shown
    as UTF-8 with replacement characters (the stored bytes are untouched)."""
    job, result = record.job, record.result
    body = summary_json(record)
    body.update(
        {
            "env": dict.fromkeys(sorted(job.env), MASK),
            "timeout_seconds": job.timeout_seconds,
            "executor_node": result.executor_node_id or None,
            "stdout": result.stdout.decode("utf-8", errors="replace"),
            "stderr": result.stderr.decode("utf-8", errors="replace"),
            "stdout_truncated": result.stdout_truncated,
            "stderr_truncated": result.stderr_truncated,
            "error": result.error or None,
            "attempt": job.attempt,
            "retries": job.retries,
            "notes": record.notes or None,
        }
    )
    return body

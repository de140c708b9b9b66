"""Pure unit tests of store/jobs.py against a real SQLite file: what goes in comes out, in order."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from pony import orm

from proto.codec import UTC, pb, to_timestamp
from store import jobs
from store.models import open_database

NODE = "node-aaaaaa"
T0 = datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)


@pytest.fixture
def db(tmp_path: Path) -> Iterator[orm.Database]:
    database = open_database(tmp_path / "mesh.db")
    yield database
    database.disconnect()


def new_job(command: str = "true", created_at: datetime = T0, **fields: object) -> pb.Job:
    job = pb.Job(
        job_id=str(uuid.uuid4()),
        command=command,
        timeout_seconds=30,
        status=pb.JOB_PENDING,
        target_node_id=NODE,
        created_by_node=NODE,
        attempt=1,
        **fields,
    )
    job.created_at.CopyFrom(to_timestamp(created_at))
    return job


def result(job_id: str, status: int, **fields: object) -> pb.JobResult:
    return pb.JobResult(job_id=job_id, status=status, executor_node_id=NODE, **fields)


def insert(db: orm.Database, *new_jobs: pb.Job) -> None:
    with orm.db_session:
        for job in new_jobs:
            jobs.insert_job(db, job)


def test_a_job_reads_back_as_it_was_written(db: orm.Database) -> None:
    job = new_job("echo hi", env={"DEBUG": "1"})
    insert(db, job)

    with orm.db_session:
        record = jobs.get_job(db, job.job_id)

    assert record is not None
    assert record.job == job
    assert record.result.has_exit_code is False


def test_output_that_is_not_utf8_and_holds_nul_bytes_is_stored_unchanged(db: orm.Database) -> None:
    job = new_job()
    insert(db, job)
    stdout, stderr = b"\xff\x00abc\x00\x80", b"\x00\xfe"
    with orm.db_session:
        jobs.finish_job(db, result(job.job_id, pb.JOB_COMPLETED, stdout=stdout, stderr=stderr, exit_code=0,
                                   has_exit_code=True))  # fmt: skip

    with orm.db_session:
        record = jobs.get_job(db, job.job_id)

    assert record is not None
    assert record.result.stdout == stdout
    assert record.result.stderr == stderr
    assert record.result.exit_code == 0
    assert record.job.status == pb.JOB_COMPLETED


def test_an_unknown_job_is_none(db: orm.Database) -> None:
    with orm.db_session:
        assert jobs.get_job(db, str(uuid.uuid4())) is None


def test_jobs_are_listed_newest_first_up_to_the_limit(db: orm.Database) -> None:
    made = [new_job(f"echo {i}", T0 + timedelta(seconds=i)) for i in range(5)]
    insert(db, *reversed(made))

    with orm.db_session:
        listed = jobs.list_jobs(db, limit=3)

    assert [r.job.command for r in listed] == ["echo 4", "echo 3", "echo 2"]
    assert all(r.result.stdout == b"" for r in listed)


def test_jobs_can_be_listed_by_status(db: orm.Database) -> None:
    done, failed = new_job("a", T0), new_job("b", T0 + timedelta(seconds=1))
    insert(db, done, failed, new_job("c", T0 + timedelta(seconds=2)))
    with orm.db_session:
        jobs.finish_job(db, result(done.job_id, pb.JOB_COMPLETED))
        jobs.finish_job(db, result(failed.job_id, pb.JOB_FAILED, error="exited with code 1"))

    with orm.db_session:
        listed = jobs.list_jobs(db, limit=50, status=pb.JOB_FAILED)
        counts = jobs.count_by_status(db)

    assert [r.job.job_id for r in listed] == [failed.job_id]
    assert counts["JOB_COMPLETED"] == counts["JOB_FAILED"] == counts["JOB_PENDING"] == 1
    assert counts["JOB_TIMEOUT"] == 0


def test_the_first_final_status_wins_and_later_results_only_add_output(db: orm.Database) -> None:
    job = new_job()
    insert(db, job)

    with orm.db_session:
        first = jobs.finish_job(db, result(job.job_id, pb.JOB_CANCELLED, error="cancelled by user"))
        second = jobs.finish_job(
            db, result(job.job_id, pb.JOB_COMPLETED, stdout=b"late output", exit_code=0, has_exit_code=True)
        )
    with orm.db_session:
        record = jobs.get_job(db, job.job_id)

    assert (first, second) == (True, False)
    assert record is not None
    assert record.job.status == pb.JOB_CANCELLED
    assert record.result.error == "cancelled by user"
    assert record.result.stdout == b"late output"


def test_a_finished_job_is_not_marked_running_again(db: orm.Database) -> None:
    job = new_job()
    insert(db, job)
    with orm.db_session:
        jobs.finish_job(db, result(job.job_id, pb.JOB_CANCELLED))

    with orm.db_session:
        changed = jobs.mark_running(db, job.job_id, NODE, T0)
        record = jobs.get_job(db, job.job_id)

    assert changed is False
    assert record is not None
    assert record.job.status == pb.JOB_CANCELLED


def test_a_restart_fails_running_jobs_and_returns_pending_ones_oldest_first(db: orm.Database) -> None:
    running = new_job("sleep 300", T0)
    later = new_job("echo later", T0 + timedelta(seconds=2))
    earlier = new_job("echo early", T0 + timedelta(seconds=1))
    done = new_job("echo done", T0)
    insert(db, running, later, earlier, done)
    with orm.db_session:
        jobs.mark_running(db, running.job_id, NODE, T0)
        jobs.finish_job(db, result(done.job_id, pb.JOB_COMPLETED))

    with orm.db_session:
        pending, _groups = jobs.recover_after_restart(db, NODE, T0 + timedelta(minutes=5))
    with orm.db_session:
        crashed = jobs.get_job(db, running.job_id)
        finished = jobs.get_job(db, done.job_id)

    assert [job.command for job in pending] == ["echo early", "echo later"]
    assert crashed is not None
    assert crashed.job.status == pb.JOB_FAILED
    assert crashed.result.error == "node restarted"
    assert finished is not None
    assert finished.job.status == pb.JOB_COMPLETED


def test_the_database_is_in_wal_mode_and_keeps_the_seed_table(db: orm.Database, tmp_path: Path) -> None:
    insert(db, new_job("echo hi"))

    with sqlite3.connect(tmp_path / "mesh.db") as connection:
        mode = connection.execute("PRAGMA journal_mode").fetchone()[0]
        rows = connection.execute("SELECT command FROM jobs ORDER BY created_at DESC LIMIT 5").fetchall()
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    connection.close()

    assert mode == "wal"
    assert rows == [("echo hi",)]
    assert {"jobs", "peers"} <= tables

"""Pony entities for one node's SQLite file. Only the StoreActor's thread opens a db_session."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from pony import orm

SCHEMA_VERSION = 1


def open_database(path: Path) -> orm.Database:
    """Bind a fresh Database to the SQLite file at `path` (WAL mode), creating tables as needed.

    A new Database per call, so several nodes can live in one process (tests).
    """
    db = orm.Database()

    class Job(db.Entity):  # type: ignore[name-defined]
        # The table keeps the seed's name so `SELECT * FROM jobs ORDER BY created_at DESC` works.
        _table_ = "jobs"
        job_id = orm.PrimaryKey(str)
        command = orm.Required(str)
        env = orm.Optional(orm.Json)
        timeout_seconds = orm.Required(int)
        status = orm.Required(str, index=True)
        target_node = orm.Optional(str, default="")
        created_by_node = orm.Optional(str, default="")
        executor_node = orm.Optional(str, default="")
        created_at = orm.Required(datetime, precision=6, index=True)
        started_at = orm.Optional(datetime, precision=6)
        finished_at = orm.Optional(datetime, precision=6)
        exit_code = orm.Optional(int, nullable=True)
        stdout = orm.Optional(bytes, lazy=True)
        stderr = orm.Optional(bytes, lazy=True)
        stdout_truncated = orm.Required(bool, default=False)
        stderr_truncated = orm.Required(bool, default=False)
        error = orm.Optional(str, default="")
        retries = orm.Required(int, default=0)
        pinned = orm.Required(bool, default=False)
        attempt = orm.Required(int, default=1)
        # On the executor of a job created elsewhere: False until the origin has acknowledged the result.
        delivered = orm.Required(bool, default=True, index=True)
        notes = orm.Optional(str, default="")  # late results and other facts worth showing
        pgid = orm.Optional(int, nullable=True)  # process group of the job while it runs here
        process_token = orm.Optional(str, default="")  # identifies that group's leader (boot + start)

    class Peer(db.Entity):  # type: ignore[name-defined]
        _table_ = "peers"
        node_id = orm.PrimaryKey(str)
        address = orm.Optional(str, default="")
        api_port = orm.Optional(int, nullable=True)
        status = orm.Required(str)
        version = orm.Optional(str, default="")
        incarnation = orm.Required(int, size=64, default=0)
        metadata = orm.Optional(orm.Json)
        first_seen = orm.Required(datetime, precision=6)
        last_seen = orm.Required(datetime, precision=6)

    @db.on_connect(provider="sqlite")
    def _pragmas(_db: orm.Database, connection: object) -> None:
        # Per connection and outside any transaction: WAL cannot be switched on inside one.
        cursor = connection.cursor()  # type: ignore[attr-defined]
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=5000")

    db.bind(provider="sqlite", filename=str(path), create_db=True)
    db.generate_mapping(create_tables=True)
    return db

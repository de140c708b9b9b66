"""StoreActor: the only owner of the node's Pony database; every read and write runs on its thread."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pony import orm

from actors.base import MeshActor, handles
from actors.messages import (
    AcceptHandoff,
    CountJobs,
    GetJob,
    GetJobStatus,
    InsertJob,
    JobFinished,
    JobStarted,
    ListJobs,
    ListUndelivered,
    LoadPeers,
    MarkDelivered,
    RecoverJobs,
    RetargetJob,
    SavePeers,
    UnsettledAt,
)
from actors.settled import SettledWatch
from proto.codec import utcnow
from store import jobs, peers
from store.models import open_database


class StoreActor(MeshActor):
    """Wraps store/ in db_sessions. The database is opened in __init__ so a bad path fails at start."""

    def __init__(self, db_path: Path, node_id: str, settled: SettledWatch | None = None) -> None:
        super().__init__(node_id=node_id)
        self.node_id = node_id
        self.settled = settled or SettledWatch()
        self.db = open_database(db_path)

    def on_stop(self) -> None:
        self.db.disconnect()

    @handles(InsertJob)
    def _insert(self, message: InsertJob) -> None:
        with orm.db_session:
            jobs.insert_job(self.db, message.job)

    @handles(GetJob)
    def _get(self, message: GetJob) -> Any:
        with orm.db_session:
            return jobs.get_job(self.db, message.job_id)

    @handles(GetJobStatus)
    def _status(self, message: GetJobStatus) -> int | None:
        with orm.db_session:
            return jobs.job_status(self.db, message.job_id)

    @handles(ListJobs)
    def _list(self, message: ListJobs) -> Any:
        with orm.db_session:
            return jobs.list_jobs(self.db, message.limit, message.status)

    @handles(CountJobs)
    def _count(self, _message: CountJobs) -> dict[str, int]:
        with orm.db_session:
            return jobs.count_by_status(self.db)

    @handles(RecoverJobs)
    def _recover(self, message: RecoverJobs) -> Any:
        with orm.db_session:
            return jobs.recover_after_restart(self.db, message.node_id, utcnow())

    @handles(JobStarted)
    def _started(self, message: JobStarted) -> None:
        with orm.db_session:
            m = message
            jobs.mark_running(self.db, m.job_id, m.executor_node, m.started_at, m.attempt, m.pgid, m.token)

    @handles(JobFinished)
    def _finished(self, message: JobFinished) -> None:
        with orm.db_session:
            settled = jobs.finish_job(self.db, message.result, own_node=self.node_id)
        if settled:
            self.settled.fire(message.result.job_id)

    @handles(AcceptHandoff)
    def _accept_handoff(self, message: AcceptHandoff) -> bool:
        with orm.db_session:
            if jobs.has_job(self.db, message.job.job_id):
                return False
            jobs.insert_job(self.db, message.job)
        return True

    @handles(UnsettledAt)
    def _unsettled_at(self, message: UnsettledAt) -> Any:
        with orm.db_session:
            return jobs.unsettled_at(self.db, message.target, message.origin)

    @handles(RetargetJob)
    def _retarget(self, message: RetargetJob) -> bool:
        with orm.db_session:
            return jobs.retarget(self.db, message.job_id, message.target, message.attempt)

    @handles(ListUndelivered)
    def _undelivered(self, _message: ListUndelivered) -> list[str]:
        with orm.db_session:
            return jobs.undelivered(self.db)

    @handles(MarkDelivered)
    def _delivered(self, message: MarkDelivered) -> None:
        with orm.db_session:
            jobs.mark_delivered(self.db, message.job_id)

    @handles(SavePeers)
    def _save_peers(self, message: SavePeers) -> None:
        with orm.db_session:
            peers.save_peers(self.db, message.peers)

    @handles(LoadPeers)
    def _load_peers(self, _message: LoadPeers) -> Any:
        with orm.db_session:
            return peers.load_peers(self.db)

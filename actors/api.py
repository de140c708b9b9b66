"""ApiActor: owns the WSGI server (cheroot, threaded) that serves the Bottle app.

The socket is bound in __init__ (a busy port fails at start); `serve()` runs in a helper thread.
Requests are handled on cheroot's worker threads, which reach the node only through ActorBackend:
asks with a timeout, turned into 503 when an actor does not answer.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pykka
from cheroot import wsgi

from actors.base import MeshActor
from actors.config import NodeConfig
from actors.messages import (
    CancelJob,
    CountJobs,
    GetDiscoveryStats,
    GetDispatchState,
    GetJob,
    GetJobStatus,
    GetLoad,
    GetPeerCounts,
    ListJobs,
    ListPeers,
    SetDraining,
    SubmitJob,
)
from actors.peers import peer_json
from actors.security import security_status
from actors.settled import SettledWatch
from proto.codec import FINAL_STATUSES, node_status_name, pb
from proto.seal import KeyHolder
from web.app import Unavailable, make_app


class ActorBackend:
    """The web layer's view of the node. Thread-safe: every call is an ask with a timeout."""

    def __init__(
        self,
        node_id: str,
        config: NodeConfig,
        store: pykka.ActorRef[Any],
        executor: pykka.ActorRef[Any],
        dispatcher: pykka.ActorRef[Any],
        registry: pykka.ActorRef[Any],
        discovery: pykka.ActorRef[Any],
        settled: SettledWatch | None = None,
        mesh: Any = None,
        keys: KeyHolder | None = None,
    ) -> None:
        self.node_id = node_id
        self.config = config
        self.store = store
        self.executor = executor
        self.dispatcher = dispatcher
        self.registry = registry
        self.discovery = discovery
        self.settled = settled or SettledWatch()
        self.mesh = mesh
        self.keys = keys or KeyHolder(None)
        self.started = time.monotonic()

    def _ask(self, ref: pykka.ActorRef[Any], message: Any) -> Any:
        try:
            return ref.ask(message, timeout=self.config.timing.ask_timeout)
        except pykka.Timeout:
            raise Unavailable(f"{type(message).__name__} timed out; the node is overloaded") from None
        except pykka.ActorDeadError:
            raise Unavailable("the node is shutting down") from None

    def submit(self, job: pb.Job, pinned: str | None = None) -> pb.Job:
        return self._ask(self.dispatcher, SubmitJob(job, pinned))

    def set_draining(self, draining: bool) -> str:
        return self._ask(self.dispatcher, SetDraining(draining))

    def get_job(self, job_id: str, wait: float = 0.0) -> pb.JobRecord | None:
        """The job; with `wait`, first wait up to that long for it to reach a final status."""
        if wait <= 0:
            return self._ask(self.store, GetJob(job_id))
        event = self.settled.waiter(job_id)  # registered before reading: a settle is never missed
        try:
            status = self._ask(self.store, GetJobStatus(job_id))
            if status is not None and status not in FINAL_STATUSES:
                event.wait(wait)
            return self._ask(self.store, GetJob(job_id))
        finally:
            self.settled.forget(job_id, event)

    def list_jobs(self, limit: int, status: int | None) -> list[pb.JobRecord]:
        return self._ask(self.store, ListJobs(limit, status))

    def cancel(self, job_id: str) -> Any:
        return self._ask(self.dispatcher, CancelJob(job_id))

    def status(self) -> dict[str, Any]:
        load = self._ask(self.executor, GetLoad())
        dispatch = self._ask(self.dispatcher, GetDispatchState())
        status = pb.DRAINING if dispatch["draining"] else (pb.BUSY if load.full else pb.IDLE)
        return {
            "node_id": self.node_id,
            "status": node_status_name(status),
            "version": self.config.version,
            "uptime_seconds": round(time.monotonic() - self.started, 3),
            "running": load.running,
            "queued": load.queued,
            "capacity": load.capacity,
            "jobs": self._ask(self.store, CountJobs()),
            "peers": self._ask(self.registry, GetPeerCounts()),
            "discovery": self._ask(self.discovery, GetDiscoveryStats()),
            "mesh": {**(self.mesh.snapshot() if self.mesh else {}), **dispatch},
            "security": security_status(self.config, self.keys.keyring.size if self.keys.keyring else 0),
        }

    def peers(self, include_all: bool) -> list[dict[str, Any]]:
        now = time.monotonic()
        return [peer_json(peer, now) for peer in self._ask(self.registry, ListPeers(include_all))]


class ApiActor(MeshActor):
    def __init__(self, config: NodeConfig, backend: ActorBackend) -> None:
        super().__init__(node_id=backend.node_id)
        self.server = wsgi.Server(
            (config.api_host, config.api_port),
            make_app(backend, config.api_token),
            numthreads=config.api_threads,
            server_name="worker-mesh",
            timeout=10,
            shutdown_timeout=1,
            request_queue_size=64,
        )
        self.server.expiration_interval = 0.05  # how fast serve() notices stop(): 0.5 s by default
        self.server.error_log = self._server_error  # a JSON line, not cheroot's plain text on stderr
        if config.tls_cert is not None:
            from cheroot.ssl.builtin import BuiltinSSLAdapter

            self.server.ssl_adapter = BuiltinSSLAdapter(str(config.tls_cert), str(config.tls_key))
        self.server.prepare()  # binds now: a busy port raises here, in the starting thread
        self.thread = threading.Thread(target=self.server.serve, name="api-server", daemon=True)

    def _server_error(self, msg: str = "", level: int = 20, traceback: bool = False) -> None:
        """cheroot's error hook (its threads): a client that speaks garbage or plain HTTP to TLS."""
        self.log.debug("http_connection_error", message=msg, level_number=level, traceback=traceback)

    @property
    def port(self) -> int:
        """The bound port (useful with --api-port 0)."""
        return self.server.bind_addr[1]

    def on_start(self) -> None:
        self.thread.start()

    def on_stop(self) -> None:
        self._close()

    def on_failure(self, exception_type: Any, exception_value: Any, traceback: Any) -> None:
        super().on_failure(exception_type, exception_value, traceback)
        self._close()

    def _close(self) -> None:
        self.server.stop()
        if self.thread.is_alive():
            self.thread.join(timeout=5)

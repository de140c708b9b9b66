"""Node: the one place that builds the actors, wires them, starts them in dependency order and
stops them in reverse. run_node.py and the tests start nodes only through it.

Start order: Store → PeerRegistry → Discovery → ResultCourier → JobExecutor → Dispatcher, then the
mesh port's listener and the Api (the servers last: nothing is served before everything it asks is
up); only then does discovery announce the node. Stopping first broadcasts a leave notice (peers
drop the node at once) and closes the mesh port, then stops the actors in reverse, so the executor
can still record the jobs it kills while the store is running.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import threading
from typing import Any

import pykka

from actors.api import ActorBackend, ApiActor
from actors.config import NodeConfig
from actors.courier import ResultCourierActor
from actors.discovery import DiscoveryActor
from actors.dispatcher import DispatcherActor
from actors.executor import JobExecutorActor
from actors.inbox import MeshInbox
from actors.logs import get_logger
from actors.mesh_transport import MeshListener
from actors.messages import AddPeerListener, AnnounceLeave, RecoverJobs, RunJob, StartAnnouncing
from actors.peers import PeerRegistryActor, api_url
from actors.policy import CommandPolicy
from actors.process import kill_leftover_group
from actors.security import security_warnings
from actors.settled import SettledWatch
from actors.store import StoreActor
from actors.transport import UdpTransport
from proto.seal import KeyFileError, KeyHolder, Keyring, read_key_file
from proto.wire import Channel
from store.datadir import DataDir


class StartError(Exception):
    """The node cannot start; the message is one line for the user."""


def _bind_error(what: str, exc: OSError) -> StartError:
    return StartError(f"cannot bind the {what}: {exc.strerror or exc}")


class Node:
    """One worker-mesh node. `start()` returns once the API is serving; `stop()` is idempotent."""

    def __init__(self, config: NodeConfig, transport: Any = None) -> None:
        """`transport`: the discovery transport (default: a UDP socket on the discovery port)."""
        self.config = config
        self._transport = transport
        self.data_dir = DataDir(config.data_dir)
        self.node_id = ""
        self.incarnation = 0
        self.api_port = 0
        self._refs: list[pykka.ActorRef[Any]] = []  # in start order
        self._discovery: pykka.ActorRef[Any] | None = None
        self._mesh: MeshListener | None = None
        self.mesh_port = 0
        self.settled = SettledWatch()
        self.keys = KeyHolder(Keyring(list(config.keys)) if config.keys else None)
        self.policy = CommandPolicy(config.allow_commands)
        self.channel: Channel | None = None
        self._stopped = threading.Event()
        self._stop_lock = threading.Lock()
        self.log = get_logger()

    def start(self) -> Node:
        """Open the data dir, start every actor, recover unfinished jobs. Raises on any failure,
        after stopping whatever had started."""
        self.data_dir.open()
        try:
            if self.config.run_as:  # jobs run as that user and must be able to write their cwd
                entry = pwd.getpwnam(self.config.run_as)
                os.chown(self.data_dir.work_dir, entry.pw_uid, entry.pw_gid)
            self.node_id = self.data_dir.node_id(self.config.node_id)
            self.incarnation = self.data_dir.next_incarnation()
            self.log = get_logger(node_id=self.node_id)
            self._start_actors()
        except BaseException:
            self.stop()
            raise
        self.log.info(
            "node_started",
            api_url=api_url(self.config.api_host, self.api_port, tls=self.config.tls_cert is not None),
            mesh_address=f"{self.config.mesh_host}:{self.mesh_port}",
            data_dir=str(self.config.data_dir),
            db_path=str(self.data_dir.db_path),
            max_jobs=self.config.max_jobs,
            incarnation=self.incarnation,
            version=self.config.version,
        )
        self._log_security()
        return self

    def _log_security(self) -> None:
        cfg = self.config
        for warning in security_warnings(cfg):
            self.log.warning("insecure_configuration", message=warning)
        if not cfg.keys:
            self.log.info("mesh_unsealed", message="the mesh is unsealed (no key): loopback only")
        else:
            self.log.info("mesh_sealed", keys=len(cfg.keys))

    def _start_actors(self) -> None:
        cfg, node_id, incarnation = self.config, self.node_id, self.incarnation
        timing = cfg.timing
        try:
            transport = self._transport or UdpTransport(cfg.discovery_bind, cfg.discovery_port)
        except OSError as exc:
            raise _bind_error(f"discovery port udp/{cfg.discovery_port}", exc) from None
        channel = self.channel = Channel(node_id, incarnation, self.keys)
        try:
            self._mesh = MeshListener(cfg.mesh_host, cfg.mesh_port, channel, timing.mesh_read_timeout)
        except OSError as exc:
            transport.close()
            raise _bind_error(f"mesh port {cfg.mesh_host}:{cfg.mesh_port}", exc) from None

        store = self._keep(StoreActor.start(self.data_dir.db_path, node_id, self.settled))
        pending, leftovers = store.ask(RecoverJobs(node_id), timeout=30)  # before the courier starts
        killed = sum(kill_leftover_group(pgid, token) for pgid, token in leftovers)
        if killed:
            self.log.info("leftover_jobs_killed", groups=killed)
        registry = self._keep(
            PeerRegistryActor.start(node_id, timing.peer_timeout, store, timing.ask_timeout)
        )
        discovery = self._keep(DiscoveryActor.start(cfg, node_id, incarnation, registry, transport, channel))
        self._discovery = discovery
        courier = self._keep(ResultCourierActor.start(node_id, incarnation, store, registry, timing, channel))
        executor = self._keep(
            JobExecutorActor.start(
                cfg, node_id, store, self.data_dir.work_dir, listeners=[discovery], courier=courier
            )
        )
        dispatcher = self._keep(
            DispatcherActor.start(
                node_id, incarnation, store, executor, registry, discovery, timing, None, channel, self.policy
            )
        )
        for listener in (discovery, dispatcher, courier):
            registry.tell(AddPeerListener(listener))
        for job in pending:  # before anything is served: older jobs first, and none can be cancelled twice
            executor.tell(RunJob(job))
        if pending:
            self.log.info("jobs_recovered", pending=len(pending))
        self._mesh.start(MeshInbox(node_id, incarnation, dispatcher, timing.ask_timeout, channel).handle)
        backend = ActorBackend(
            node_id,
            cfg,
            store,
            executor,
            dispatcher,
            registry,
            discovery,
            self.settled,
            self._mesh,
            self.keys,
        )
        try:
            api = self._keep(ApiActor.start(cfg, backend))
        except OSError as exc:
            raise _bind_error(f"API port {cfg.api_host}:{cfg.api_port}", exc) from None
        self.api_port = api.proxy().port.get(timeout=timing.ask_timeout)
        self.mesh_port = self._mesh.port

        discovery.tell(StartAnnouncing(api_port=self.api_port, mesh_port=self.mesh_port))

    def _keep(self, ref: pykka.ActorRef[Any]) -> pykka.ActorRef[Any]:
        self._refs.append(ref)
        return ref

    def stop(self) -> None:
        """Stop the actors in reverse start order and release the data dir. Blocks until done."""
        with self._stop_lock:
            if self._stopped.is_set():
                return
            if self._discovery is not None:
                with contextlib.suppress(pykka.ActorDeadError, pykka.Timeout):
                    self._discovery.ask(AnnounceLeave(), timeout=self.config.timing.ask_timeout)
            if self._mesh is not None:
                self._mesh.close()
            for ref in reversed(self._refs):
                with contextlib.suppress(pykka.ActorDeadError, pykka.Timeout):
                    ref.stop(block=True, timeout=15)
            self._refs.clear()
            self.data_dir.close()
            self._stopped.set()
        if self.node_id:
            self.log.info("node_stopped")

    def reload_keys(self) -> None:
        """Re-read --key-file (on SIGHUP): a rotation step without a restart. Keeps the old keys
        and logs why if the file is unusable."""
        if self.config.key_file is None:
            self.log.warning("keys_not_reloaded", reason="keys came from MESH_KEY, not --key-file")
            return
        try:
            keys = read_key_file(self.config.key_file)
        except KeyFileError as exc:
            self.log.error("keys_not_reloaded", reason=str(exc))
            return
        if self.keys.keyring is None:
            self.log.error("keys_not_reloaded", reason="this node started unsealed; restart it to seal")
            return
        self.keys.keyring = Keyring(keys)
        self.log.info("keys_reloaded", keys=len(keys))

    @property
    def stopped(self) -> bool:
        return self._stopped.is_set()

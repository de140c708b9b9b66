"""Fixtures for every tier: no leaked actors or threads, in-process nodes, real node processes."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pykka
import pytest

from actors.config import NodeConfig, Timing
from tests.helpers import free_udp_port, wait_for
from tests.nodeproc import DEFAULT, NodeProcess

if TYPE_CHECKING:
    from actors.node import Node

FAST_TIMING = Timing(
    heartbeat_interval=0.2,
    peer_timeout=1.0,
    kill_grace=0.5,
    ask_timeout=5.0,
    shutdown_grace=0.5,
)
THREAD_GRACE = 5.0  # how long threads get to end after their actors stopped


@pytest.fixture(autouse=True)
def no_leaked_actors_or_threads() -> Iterator[None]:
    """Stop every pykka actor after the test, then fail it if a thread it started is still alive."""
    before = set(threading.enumerate())
    yield
    pykka.ActorRegistry.stop_all(block=True, timeout=15)

    def leaked() -> list[str]:
        return sorted(t.name for t in threading.enumerate() if t not in before and t.is_alive())

    try:
        wait_for(lambda: not leaked(), THREAD_GRACE, what="the test's threads to end")
    except AssertionError:
        pytest.fail(f"threads leaked by the test: {leaked()}")


@pytest.fixture
def node_factory(tmp_path: Path) -> Iterator[Callable[..., Node]]:
    """Start in-process nodes on free ports with fast timing; every node is stopped at teardown."""
    # Late imports: the pure tiers must not need the whole node to import.
    from actors.node import Node
    from actors.transport import MemoryNetwork

    nodes: list[Node] = []

    def make(name: str = "node", **overrides: Any) -> Node:
        settings: dict[str, Any] = {
            "data_dir": tmp_path / name,
            "api_port": 0,
            "max_jobs": 2,
            "timing": FAST_TIMING,
        }
        settings.update(overrides)
        # Discovery over an in-memory network: in-process nodes open no UDP socket at all.
        node = Node(NodeConfig(**settings), transport=MemoryNetwork().transport())
        nodes.append(node)
        return node.start()

    yield make
    for node in reversed(nodes):
        node.stop()


@pytest.fixture
def node_process(tmp_path: Path) -> Iterator[Callable[..., NodeProcess]]:
    """Start real `run_node.py` processes (`--api-port 0`, data dir under tmp_path unless given);
    each one is killed at teardown."""
    started: list[NodeProcess] = []

    def start(*args: str, data_dir: Path | None = None, cwd: Path | None = None) -> NodeProcess:
        """`data_dir=None` gives the node its own fresh directory unless `--data-dir` is in args;
        pass `data_dir=DEFAULT` to let run_node.py pick its default under `cwd`."""
        argv = list(args)
        if "--api-port" not in argv and "-api-port" not in argv:
            argv += ["--api-port", "0"]
        if "--discovery-port" not in argv:  # its own UDP port: these nodes must not find each other
            argv += ["--discovery-port", str(free_udp_port())]
        if data_dir is None and "--data-dir" not in argv:
            data_dir = tmp_path / f"data-{len(started)}"
        if data_dir is not None and data_dir != DEFAULT:
            argv += ["--data-dir", str(data_dir)]
        node = NodeProcess(argv, cwd=cwd or tmp_path, log_dir=tmp_path / "logs")
        started.append(node)
        return node.start()

    yield start
    for node in started:
        node.kill()

"""Node configuration: one frozen value with production defaults, plus the parsers for its fields."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

VERSION = "0.1.0"

MAX_TIMEOUT_SECONDS = 86_400  # one day: the documented upper bound of a job's timeout_seconds
DEFAULT_TIMEOUT_SECONDS = 300
MAX_BODY_BYTES = 1024 * 1024  # POST bodies above this get 413
DEFAULT_LIST_LIMIT = 50
MAX_LIST_LIMIT = 1000

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


class ConfigError(ValueError):
    """A setting that cannot be used; the message is one line meant for the user."""


def parse_duration(text: str, name: str) -> float:
    """Parse `5s`, `500ms`, `2m`, `1h` or plain seconds (`1.5`) into seconds; > 0."""
    match = _DURATION.match(str(text))
    if not match:
        raise ConfigError(f"{name}: {text!r} is not a duration (examples: 5s, 500ms, 2m, 1.5)")
    seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if seconds <= 0:
        raise ConfigError(f"{name}: {text!r} must be longer than zero")
    return seconds


def parse_port(text: str | int, name: str, *, allow_zero: bool = False) -> int:
    """Parse a TCP/UDP port number; 0 (any free port) only where `allow_zero`."""
    try:
        port = int(str(text).strip())
    except ValueError:
        raise ConfigError(f"{name}: {text!r} is not a port number") from None
    low = 0 if allow_zero else 1
    if not low <= port <= 65535:
        raise ConfigError(f"{name}: {port} is out of range ({low}-65535)")
    return port


@dataclass(frozen=True)
class Timing:
    """Every interval the node uses, in seconds; tests shrink them."""

    heartbeat_interval: float = 5.0
    peer_timeout: float = 30.0
    kill_grace: float = 5.0  # SIGTERM → SIGKILL for a job's process group
    ask_timeout: float = 5.0  # how long the web layer waits on an actor before answering 503
    shutdown_grace: float = 2.0  # SIGTERM → SIGKILL for running jobs when the node stops
    mesh_timeout: float = 2.0  # connect + reply deadline of one request on a peer's mesh port
    mesh_read_timeout: float = 10.0  # how long a mesh connection may stay silent


@dataclass(frozen=True)
class NodeConfig:
    """Everything a node needs to start; built by run_node.py or by tests."""

    data_dir: Path
    node_id: str | None = None  # None: read or create `<data_dir>/node_id`
    api_host: str = "127.0.0.1"
    api_port: int = 3000
    max_jobs: int = field(default_factory=lambda: os.cpu_count() or 1)
    output_cap: int = 1024 * 1024  # bytes kept per stream per job
    api_threads: int = 16
    discovery_port: int = 8080
    discovery_bind: str = "0.0.0.0"  # to hear broadcasts; what is sent goes only to `broadcast`
    broadcast: tuple[str, ...] = ("127.255.255.255",)
    labels: tuple[tuple[str, str], ...] = ()
    mesh_host: str = "127.0.0.1"
    mesh_port: int = 0  # 0: any free port, announced in heartbeats
    # Security (see proto/seal.py and the README): keys never appear in reprs or logs.
    keys: tuple[bytes, ...] = field(default=(), repr=False)  # first seals, all open; () = unsealed
    key_file: Path | None = None  # re-read on SIGHUP
    insecure: bool = False  # allow LAN use without a key / a public API without a token
    api_token: str | None = field(default=None, repr=False)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    run_as: str | None = None  # user jobs run as (the node must be root)
    allow_commands: tuple[str, ...] = ()  # regexes; a command must fully match one (empty: all)
    timing: Timing = field(default_factory=Timing)
    version: str = VERSION

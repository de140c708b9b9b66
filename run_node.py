#!/usr/bin/env python3
"""Start one worker-mesh node: parse options, start the Node, stop it on SIGINT/SIGTERM.

Exit codes: 0 after a clean stop, 2 for a bad option or a node that cannot start (one line on
stderr says why), 128+N when a second signal N forces an immediate exit.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path
from typing import NoReturn

sys.path.insert(0, str(Path(__file__).resolve().parent))

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """One clear line and exit 2 (argparse would print the whole usage first)."""
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="run_node.py",
        usage="%(prog)s [options]\n       %(prog)s keygen",
        description="Start one worker-mesh node: a REST API that takes shell jobs, runs them and keeps "
        "their history in SQLite.",
        epilog="Environment: LOG_LEVEL, DISCOVERY_PORT, HEARTBEAT_INTERVAL, PEER_TIMEOUT (a flag wins over "
        "its variable), MESH_KEY (mesh keys, when there is no --key-file), MESH_API_TOKEN (when there is "
        "no --api-token-file). Durations: 5s, 500ms, 2m, 1h or plain seconds. Signals: SIGINT/SIGTERM stop "
        "cleanly (a second one exits at once), SIGHUP re-reads --key-file. "
        "Other command: `run_node.py keygen` prints a new mesh key. "
        "Example: python run_node.py --api-port 3002",
    )
    parser.add_argument(
        "--api-port",
        "-api-port",
        default="3000",
        help="TCP port of the REST API (default 3000; 0 = any free port, logged in node_started)",
    )
    parser.add_argument("--api-host", default="127.0.0.1", help="address the API binds (default 127.0.0.1)")
    parser.add_argument(
        "--node-id",
        help="this node's id (default: read from DATA_DIR/node_id, or a new node-xxxxxx saved there)",
    )
    parser.add_argument(
        "--data-dir",
        help="where the node keeps node_id, mesh.db (SQLite) and work/ (jobs' working directory); "
        "default ./data/node-<api port>, or ./data/<node id> with --node-id",
    )
    parser.add_argument(
        "--max-jobs",
        type=_positive_int,
        default=os.cpu_count() or 1,
        help="jobs run at once; the rest wait as JOB_PENDING (default: CPU count, here %(default)s)",
    )
    parser.add_argument(
        "--mesh-host",
        default="127.0.0.1",
        help="address the mesh port (TCP: job hand-off and results) binds (default 127.0.0.1)",
    )
    parser.add_argument(
        "--mesh-port",
        default="0",
        help="TCP port for job hand-off and results between nodes (default 0: any free port, "
        "announced in heartbeats)",
    )
    parser.add_argument(
        "--discovery-port",
        default=os.environ.get("DISCOVERY_PORT", "8080"),
        help="UDP port for heartbeats, shared by every node on a host (default 8080; DISCOVERY_PORT)",
    )
    parser.add_argument(
        "--heartbeat-interval",
        default=os.environ.get("HEARTBEAT_INTERVAL", "5s"),
        help="time between heartbeats (default 5s; HEARTBEAT_INTERVAL)",
    )
    parser.add_argument(
        "--peer-timeout",
        default=os.environ.get("PEER_TIMEOUT", "30s"),
        help="a peer silent this long is FAILED; at least two intervals (default 30s; PEER_TIMEOUT)",
    )
    parser.add_argument(
        "--broadcast",
        action="append",
        metavar="ADDR",
        help="broadcast address for heartbeats, repeatable (default 127.255.255.255: this host only). "
        "A LAN address such as 10.1.2.255 sends heartbeats to every host on that network.",
    )
    parser.add_argument(
        "--label",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a label announced in this node's heartbeat metadata, repeatable",
    )
    security = parser.add_argument_group("security (see README: Security)")
    security.add_argument(
        "--lan",
        action="store_true",
        help="join a LAN mesh: heartbeats to every local network's broadcast address, mesh port on "
        "0.0.0.0; needs a mesh key (or --insecure)",
    )
    security.add_argument(
        "--key-file",
        metavar="PATH",
        help="mesh key file, base64 keys one per line: the first seals, all open (MESH_KEY holds the same "
        "inline, comma-separated); re-read on SIGHUP. Make one with: run_node.py keygen",
    )
    security.add_argument(
        "--insecure",
        action="store_true",
        help="allow a LAN mesh without a key, or an API beyond loopback without a token (logged loudly)",
    )
    security.add_argument(
        "--api-token-file",
        metavar="PATH",
        help="every API route but /health then needs Authorization: Bearer <token> (also MESH_API_TOKEN)",
    )
    security.add_argument("--tls-cert", metavar="PATH", help="serve the API over HTTPS with this certificate")
    security.add_argument("--tls-key", metavar="PATH", help="the private key of --tls-cert")
    security.add_argument(
        "--run-as", metavar="USER", help="run jobs as this user (the node must run as root)"
    )
    security.add_argument(
        "--allow-commands",
        action="append",
        default=[],
        metavar="REGEX",
        help="run only commands that fully match one of these patterns (repeatable); others get 403",
    )
    parser.add_argument(
        "--log-format",
        choices=("json", "console"),
        default="json",
        help="json lines (default) or console for humans",
    )
    parser.add_argument(
        "--log-level",
        default=os.environ.get("LOG_LEVEL", "info"),
        help="debug, info (default), warning, error, critical; also LOG_LEVEL",
    )
    return parser


def parse_config(argv: list[str]):
    """Options → NodeConfig; raises SystemExit(2) with one line on stderr for a bad value."""
    import ipaddress

    from actors import security
    from actors.config import ConfigError, NodeConfig, Timing, parse_duration, parse_port
    from actors.logs import LEVELS
    from proto.wire import NODE_ID

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        api_port = parse_port(args.api_port, "--api-port", allow_zero=True)
        mesh_port = parse_port(args.mesh_port, "--mesh-port", allow_zero=True)
        discovery_port = parse_port(args.discovery_port, "--discovery-port / DISCOVERY_PORT")
        interval = parse_duration(args.heartbeat_interval, "--heartbeat-interval / HEARTBEAT_INTERVAL")
        peer_timeout = parse_duration(args.peer_timeout, "--peer-timeout / PEER_TIMEOUT")
        if peer_timeout < 2 * interval:
            raise ConfigError(
                f"--peer-timeout / PEER_TIMEOUT ({peer_timeout:g}s) must be at least two heartbeat "
                f"intervals ({2 * interval:g}s)"
            )
        broadcast = tuple(args.broadcast or ("127.255.255.255",))
        for address in broadcast:
            try:
                ipaddress.IPv4Address(address)
            except ValueError:
                raise ConfigError(f"--broadcast: {address!r} is not an IPv4 address") from None
        keys = security.load_keys(args.key_file, os.environ.get("MESH_KEY"))
        token = security.load_token(args.api_token_file, os.environ.get("MESH_API_TOKEN"))
        mesh_host = args.mesh_host
        if args.lan:
            broadcast = tuple(args.broadcast or security.lan_broadcasts())
            mesh_host = "0.0.0.0" if args.mesh_host == "127.0.0.1" else args.mesh_host
        warnings = security.check_exposure(
            broadcast, mesh_host, args.api_host, bool(keys), token is not None, args.insecure
        )
        tls_cert, tls_key = security.check_tls(args.tls_cert, args.tls_key)
        run_as = security.check_run_as(args.run_as)
        allow = security.check_patterns(args.allow_commands)
        labels = []
        for label in args.label:
            key, sep, value = label.partition("=")
            if not sep or not key.strip():
                raise ConfigError(f"--label: {label!r} is not KEY=VALUE")
            labels.append((key.strip(), value))
    except ConfigError as exc:
        parser.error(str(exc))
    if args.node_id is not None and not NODE_ID.fullmatch(args.node_id):
        # Checked before anything is created: the id also names the default data directory.
        parser.error(f"--node-id {args.node_id!r}: use letters, digits, '.', '_' or '-' (at most 63)")
    if args.log_level.lower() not in LEVELS:
        parser.error(f"--log-level: {args.log_level!r} is not one of {', '.join(LEVELS)}")
    if args.data_dir:
        data_dir = Path(args.data_dir)
    elif args.node_id:
        data_dir = Path("data") / args.node_id
    else:
        data_dir = Path("data") / f"node-{api_port}"
    config = NodeConfig(
        data_dir=data_dir.resolve(),
        node_id=args.node_id,
        api_host=args.api_host,
        api_port=api_port,
        max_jobs=args.max_jobs,
        discovery_port=discovery_port,
        mesh_host=mesh_host,
        mesh_port=mesh_port,
        broadcast=broadcast,
        labels=tuple(labels),
        timing=Timing(heartbeat_interval=interval, peer_timeout=peer_timeout),
        keys=keys,
        key_file=Path(args.key_file).resolve() if args.key_file else None,
        insecure=args.insecure,
        api_token=token,
        tls_cert=tls_cert,
        tls_key=tls_key,
        run_as=run_as,
        allow_commands=allow,
    )
    args.warnings = warnings
    return config, args


def keygen(args: list[str]) -> int:
    """`run_node.py keygen`: print a new random 32-byte mesh key, base64."""
    if args in (["-h"], ["--help"]):
        print("usage: run_node.py keygen\n\nPrints a new random 32-byte mesh key, base64, for --key-file.")
        return 0
    if args:
        print(f"run_node.py: error: keygen takes no arguments, got {' '.join(args)}", file=sys.stderr)
        return EXIT_USAGE
    from proto.seal import generate_key

    print(generate_key())
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["keygen"]:
        return keygen(argv[1:])
    config, args = parse_config(argv)
    from actors import logs
    from actors.node import Node, StartError
    from store.datadir import DataDirError

    logs.configure(level=args.log_level.lower(), fmt=args.log_format)
    stop, reload = threading.Event(), threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        if stop.is_set():  # second signal: leave now, but leave no job behind
            from actors.process import kill_all_groups

            kill_all_groups()
            os._exit(128 + signum)
        stop.set()

    def on_hangup(_signum: int, _frame: object) -> None:
        reload.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_hangup)

    node = Node(config)
    try:
        node.start()
    except DataDirError as exc:
        print(f"run_node.py: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except StartError as exc:
        print(f"run_node.py: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as exc:  # noqa: BLE001 - one line for the user, not a traceback
        print(f"run_node.py: error: the node could not start: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        while not stop.wait(0.2):
            if reload.is_set():
                reload.clear()
                node.reload_keys()
    finally:
        node.log.info("node_stopping")
        node.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

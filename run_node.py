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
        description="Start one worker-mesh node: a REST API that takes shell jobs, runs them and keeps "
        "their history in SQLite.",
        epilog="Environment: LOG_LEVEL (like --log-level). Example: python run_node.py --api-port 3002",
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
        "--log-format",
        choices=("json", "console"),
        default="json",
        help="json lines (default) or console for humans",
    )
    parser.add_argument(
        "--log-level",
        default=os.environ.get("LOG_LEVEL", "info"),
        help="debug, info (default), warning, error; also LOG_LEVEL",
    )
    return parser


def parse_config(argv: list[str]):
    """Options → NodeConfig; raises SystemExit(2) with one line on stderr for a bad value."""
    from actors.config import ConfigError, NodeConfig, parse_port
    from actors.logs import LEVELS

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        api_port = parse_port(args.api_port, "--api-port", allow_zero=True)
    except ConfigError as exc:
        parser.error(str(exc))
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
    )
    return config, args


def main(argv: list[str] | None = None) -> int:
    config, args = parse_config(sys.argv[1:] if argv is None else argv)
    from actors import logs
    from actors.node import Node
    from store.datadir import DataDirError

    logs.configure(level=args.log_level.lower(), fmt=args.log_format)
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        if stop.is_set():
            os._exit(128 + signum)  # second signal: leave now
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    node = Node(config)
    try:
        node.start()
    except DataDirError as exc:
        print(f"run_node.py: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        where = f"{config.api_host}:{config.api_port}"
        print(f"run_node.py: error: cannot serve the API on {where}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as exc:  # noqa: BLE001 - one line for the user, not a traceback
        print(f"run_node.py: error: the node could not start: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        while not stop.wait(1.0):
            pass
    finally:
        node.log.info("node_stopping")
        node.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

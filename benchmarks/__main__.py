"""Run every benchmark and write BENCHMARKS.md at the repository root (machine and date included)."""

from __future__ import annotations

import os
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path

from benchmarks import discovery, jobs

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = (discovery, jobs)


def machine() -> str:
    uname = platform.uname()
    return (
        f"- Machine: `{uname.system} {uname.release} {uname.machine}` ({uname.node}), "
        f"{os.cpu_count()} CPUs\n"
        f"- Python {platform.python_version()} ({sys.executable})\n"
        f"- Date: {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}\n"
    )


def main() -> int:
    sections = [module.run() for module in BENCHMARKS]
    text = "\n".join(["# Benchmarks", "", "Written by `make bench`.", "", machine(), *sections])
    (ROOT / "BENCHMARKS.md").write_text(text)
    print(f"wrote {ROOT / 'BENCHMARKS.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

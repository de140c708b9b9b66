"""CommandPolicy: which commands a node agrees to run (--allow-commands). Pure and immutable.

Checked where a job is posted (403) and again by the executor of a handed-over job: a node never
trusts another node's check.
"""

from __future__ import annotations

import re
from collections.abc import Iterable


class CommandPolicy:
    def __init__(self, patterns: Iterable[str] = ()) -> None:
        """Raises re.error for a pattern that does not compile."""
        self.patterns = tuple(re.compile(p) for p in patterns)

    @property
    def restricted(self) -> bool:
        return bool(self.patterns)

    def allows(self, command: str) -> bool:
        """True when no pattern is set, or the whole command matches one of them."""
        return not self.patterns or any(p.fullmatch(command) for p in self.patterns)

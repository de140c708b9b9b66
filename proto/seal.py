"""Sealed messages: AES-GCM with a shared mesh key, and a replay window per sender. No sockets.

A sealed datagram or frame body is

    b"WM" | version 1 | flags 1 (sealed) | key id (4 bytes) | nonce (12 bytes) | AES-GCM(Envelope)

with a fresh random nonce per message and the first 8 bytes (prefix and key id) authenticated as
associated data. The key id is the first 4 bytes of SHA-256 of the key, so a receiver tries only
the key that sealed the message; it never identifies the key to anyone without it.

A keyring holds one or more 32-byte keys: the first seals, all of them open, so a key can be
rotated through a running mesh (add it everywhere, make it first everywhere, drop the old one).

Replays (the rule, also in the README): every message of a node carries its incarnation (grows on
every start) and a sequence number (grows with every message it sends). A receiver accepts a
message only if its incarnation is newer than any it has seen from that sender, or the same
incarnation and a sequence number it has not seen within the last REPLAY_WINDOW. Anything else is
dropped as `replayed`. So a captured heartbeat, hand-off or cancel sent again is never acted on.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import itertools
import os
import threading
from collections import OrderedDict
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEY_BYTES = 32
KEY_ID_BYTES = 4
NONCE_BYTES = 12
REPLAY_WINDOW = 4096
MAX_SENDERS = 4096


class KeyFileError(ValueError):
    """A key or key file that cannot be used; the message is one line for the user (no key in it)."""


def generate_key() -> str:
    """A new random key, base64, as `run_node.py keygen` prints it."""
    return base64.b64encode(os.urandom(KEY_BYTES)).decode()


def parse_keys(text: str, source: str) -> list[bytes]:
    """Keys from text: one base64 key per line (or comma-separated); blank lines and # comments
    ignored. Raises KeyFileError naming the line, never the key."""
    keys = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        for entry in filter(None, (part.strip() for part in line.split(","))):
            where = f"{source}: entry {len(keys) + 1} (line {number})"
            try:
                key = base64.b64decode(entry, validate=True)
            except (binascii.Error, ValueError):
                raise KeyFileError(f"{where} is not base64 (make a key with: run_node.py keygen)") from None
            if len(key) != KEY_BYTES:
                raise KeyFileError(f"{where} is {len(key)} bytes, a key must be {KEY_BYTES}")
            keys.append(key)
    if not keys:
        raise KeyFileError(f"{source}: no key in it (make one with: run_node.py keygen)")
    return keys


def read_key_file(path: Path) -> list[bytes]:
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyFileError(f"key file {path}: {getattr(exc, 'strerror', None) or exc}") from None
    return parse_keys(text, f"key file {path}")


class Keyring:
    """Immutable: the first key seals, every key opens."""

    def __init__(self, keys: list[bytes]) -> None:
        if not keys:
            raise KeyFileError("a keyring needs at least one key")
        self._ciphers = {hashlib.sha256(k).digest()[:KEY_ID_BYTES]: AESGCM(k) for k in keys}
        self._sealing_id = hashlib.sha256(keys[0]).digest()[:KEY_ID_BYTES]
        self.size = len(keys)

    def seal(self, prefix: bytes, payload: bytes) -> bytes:
        header = prefix + self._sealing_id
        nonce = os.urandom(NONCE_BYTES)
        return header + nonce + self._ciphers[self._sealing_id].encrypt(nonce, payload, header)

    def open(self, sealed: bytes, prefix_len: int) -> bytes:
        """The payload; raises ValueError('bad_key') or ValueError('tampered')."""
        header_end = prefix_len + KEY_ID_BYTES
        if len(sealed) < header_end + NONCE_BYTES + 16:
            raise ValueError("tampered")
        cipher = self._ciphers.get(sealed[prefix_len:header_end])
        if cipher is None:
            raise ValueError("bad_key")
        nonce = sealed[header_end : header_end + NONCE_BYTES]
        try:
            return cipher.decrypt(nonce, sealed[header_end + NONCE_BYTES :], sealed[:header_end])
        except InvalidTag:
            raise ValueError("tampered") from None


class ReplayGuard:
    """Per-sender (incarnation, sequence) window. Thread-safe; bounded in senders and memory."""

    def __init__(self, window: int = REPLAY_WINDOW, max_senders: int = MAX_SENDERS) -> None:
        self.window = window
        self.max_senders = max_senders
        self._lock = threading.Lock()
        # sender → (incarnation, highest sequence, bitmask of seen sequences below it)
        self._senders: OrderedDict[str, tuple[int, int, int]] = OrderedDict()

    def accept(self, sender: str, incarnation: int, sequence: int) -> bool:
        """True (and remembered) for a message not seen before; False for a replay."""
        with self._lock:
            known = self._senders.get(sender)
            if known is None or incarnation > known[0]:
                state = (incarnation, sequence, 1)
            else:
                inc, top, seen = known
                if incarnation < inc:
                    return False
                if sequence > top:
                    shift = sequence - top
                    seen = ((seen << shift) | 1) & ((1 << self.window) - 1) if shift < self.window else 1
                    state = (inc, sequence, seen)
                else:
                    back = top - sequence
                    if back >= self.window or seen >> back & 1:
                        return False
                    state = (inc, top, seen | 1 << back)
            self._senders[sender] = state
            self._senders.move_to_end(sender)
            while len(self._senders) > self.max_senders:
                self._senders.popitem(last=False)
            return True


class KeyHolder:
    """The node's current keyring (None: unsealed); replaced atomically on a key reload."""

    def __init__(self, keyring: Keyring | None) -> None:
        self.keyring = keyring

    @property
    def sealed(self) -> bool:
        return self.keyring is not None


class Sequencer:
    """One sequence for every message a node sends, from any thread."""

    def __init__(self) -> None:
        self._counter = itertools.count(1)

    def next(self) -> int:
        return next(self._counter)  # itertools.count is atomic under the GIL

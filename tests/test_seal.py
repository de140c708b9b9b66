"""Sealed messages without sockets: the keyring (AES-GCM, key ids, rotation), the replay window and
the parsing of keys (proto/seal.py), and how a Channel drops what it cannot open (proto/wire.py)."""

from __future__ import annotations

import base64
import hashlib
import os
import re
from pathlib import Path

import pytest

from proto.codec import pb
from proto.seal import KeyFileError, KeyHolder, Keyring, ReplayGuard, generate_key, parse_keys, read_key_file
from proto.wire import SEALED_PREFIX, Channel, Dropped

PREFIX_LEN = len(SEALED_PREFIX)
HEADER_LEN = PREFIX_LEN + 4  # prefix and key id: authenticated, not encrypted
NONCE_LEN = 12


def new_key() -> bytes:
    return os.urandom(32)


def flip_bit(data: bytes, index: int, bit: int = 0) -> bytes:
    return data[:index] + bytes([data[index] ^ (1 << bit)]) + data[index + 1 :]


def heartbeat_envelope(channel: Channel) -> pb.Envelope:
    env = channel.envelope()
    env.heartbeat.node_id = channel.node_id
    env.heartbeat.api_port = 3000
    env.heartbeat.mesh_port = 4000
    return env


def sealed_channel(name: str, *keys: bytes, incarnation: int = 1) -> Channel:
    return Channel(name, incarnation, KeyHolder(Keyring(list(keys))))


# -- the keyring ----------------------------------------------------------------------------------


def test_a_sealed_message_opens_with_the_same_key_and_hides_its_payload() -> None:
    ring = Keyring([new_key()])
    payload = b"the command is: echo secret-payload"
    sealed = ring.seal(SEALED_PREFIX, payload)
    assert payload not in sealed
    assert b"secret-payload" not in sealed
    assert ring.open(sealed, PREFIX_LEN) == payload


def test_every_seal_uses_a_fresh_nonce_so_the_same_payload_never_looks_the_same() -> None:
    ring = Keyring([new_key()])
    first, second = ring.seal(SEALED_PREFIX, b"same"), ring.seal(SEALED_PREFIX, b"same")
    assert first != second
    assert first[HEADER_LEN : HEADER_LEN + NONCE_LEN] != second[HEADER_LEN : HEADER_LEN + NONCE_LEN]


def test_the_key_id_after_the_prefix_is_the_first_four_bytes_of_the_keys_sha256() -> None:
    key = new_key()
    sealed = Keyring([key, new_key()]).seal(SEALED_PREFIX, b"x")
    assert sealed[:PREFIX_LEN] == SEALED_PREFIX
    assert sealed[PREFIX_LEN:HEADER_LEN] == hashlib.sha256(key).digest()[:4]
    assert key not in sealed


def test_a_message_sealed_with_another_key_is_refused_as_bad_key() -> None:
    sealed = Keyring([new_key()]).seal(SEALED_PREFIX, b"hello")
    with pytest.raises(ValueError, match=r"^bad_key$"):
        Keyring([new_key()]).open(sealed, PREFIX_LEN)


@pytest.mark.parametrize(
    "where",
    [
        pytest.param(0, id="prefix"),
        pytest.param(3, id="flags"),
        pytest.param(HEADER_LEN, id="nonce"),
        pytest.param(HEADER_LEN + NONCE_LEN, id="ciphertext"),
        pytest.param(-1, id="tag"),
    ],
)
def test_any_flipped_bit_outside_the_key_id_makes_the_message_tampered(where: int) -> None:
    ring = Keyring([new_key()])
    sealed = ring.seal(SEALED_PREFIX, b"a heartbeat of some length")
    with pytest.raises(ValueError, match=r"^tampered$"):
        ring.open(flip_bit(sealed, where % len(sealed)), PREFIX_LEN)


def test_a_truncated_message_is_tampered() -> None:
    ring = Keyring([new_key()])
    sealed = ring.seal(SEALED_PREFIX, b"payload")
    with pytest.raises(ValueError, match=r"^tampered$"):
        ring.open(sealed[: HEADER_LEN + NONCE_LEN + 15], PREFIX_LEN)
    with pytest.raises(ValueError, match=r"^tampered$"):
        ring.open(sealed[:-1], PREFIX_LEN)


def test_the_first_key_seals_and_every_key_opens_so_a_key_can_be_rotated() -> None:
    old, new = new_key(), new_key()
    only_old, both_old_first, both_new_first, only_new = (
        Keyring([old]),
        Keyring([old, new]),
        Keyring([new, old]),
        Keyring([new]),
    )
    # step 1: the new key is added everywhere, still sealing with the old one
    assert both_old_first.open(only_old.seal(SEALED_PREFIX, b"1"), PREFIX_LEN) == b"1"
    assert only_old.open(both_old_first.seal(SEALED_PREFIX, b"2"), PREFIX_LEN) == b"2"
    # step 2: one node after the other seals with the new key; everyone still opens both
    assert both_old_first.open(both_new_first.seal(SEALED_PREFIX, b"3"), PREFIX_LEN) == b"3"
    assert both_new_first.open(both_old_first.seal(SEALED_PREFIX, b"4"), PREFIX_LEN) == b"4"
    # step 3: the old key is dropped; what it sealed no longer opens
    assert only_new.open(both_new_first.seal(SEALED_PREFIX, b"5"), PREFIX_LEN) == b"5"
    with pytest.raises(ValueError, match=r"^bad_key$"):
        only_new.open(only_old.seal(SEALED_PREFIX, b"6"), PREFIX_LEN)


def test_a_keyring_without_keys_cannot_be_made() -> None:
    with pytest.raises(KeyFileError):
        Keyring([])


# -- a channel: what a node does with what it receives ------------------------------------------


def test_a_channel_with_the_mesh_key_opens_what_another_node_sealed() -> None:
    key = new_key()
    sender, receiver = sealed_channel("node-a", key), sealed_channel("node-b", key)
    env = receiver.open(sender.datagram(heartbeat_envelope(sender)))
    assert env.sender_id == "node-a"
    assert env.heartbeat.api_port == 3000


def test_a_datagram_with_one_flipped_bit_after_the_header_is_dropped_as_tampered() -> None:
    key = new_key()
    sender, receiver = sealed_channel("node-a", key), sealed_channel("node-b", key)
    data = sender.datagram(heartbeat_envelope(sender))
    for index in (HEADER_LEN, HEADER_LEN + NONCE_LEN + 3, len(data) - 1):
        with pytest.raises(Dropped) as caught:
            receiver.open(flip_bit(data, index, bit=index % 8))
        assert caught.value.reason == "tampered"


def test_a_datagram_sealed_with_another_key_is_dropped_as_bad_key() -> None:
    sender, receiver = sealed_channel("node-a", new_key()), sealed_channel("node-b", new_key())
    with pytest.raises(Dropped) as caught:
        receiver.open(sender.datagram(heartbeat_envelope(sender)))
    assert caught.value.reason == "bad_key"


def test_an_unsealed_datagram_is_dropped_by_a_sealed_node_as_unsealed() -> None:
    plain = Channel("node-a", 1)
    receiver = sealed_channel("node-b", new_key())
    with pytest.raises(Dropped) as caught:
        receiver.open(plain.datagram(heartbeat_envelope(plain)))
    assert caught.value.reason == "unsealed"


def test_a_sealed_datagram_is_dropped_by_an_unsealed_node_as_sealed() -> None:
    sender = sealed_channel("node-a", new_key())
    with pytest.raises(Dropped) as caught:
        Channel("node-b", 1).open(sender.datagram(heartbeat_envelope(sender)))
    assert caught.value.reason == "sealed"


def test_the_same_sealed_datagram_received_twice_is_dropped_the_second_time_as_replayed() -> None:
    key = new_key()
    sender, receiver = sealed_channel("node-a", key), sealed_channel("node-b", key)
    data = sender.datagram(heartbeat_envelope(sender))
    receiver.open(data)
    with pytest.raises(Dropped) as caught:
        receiver.open(data)
    assert caught.value.reason == "replayed"
    receiver.open(sender.datagram(heartbeat_envelope(sender)))  # the sender's next one is fine


def test_a_captured_frame_from_before_a_restart_is_dropped_as_replayed() -> None:
    key = new_key()
    receiver = sealed_channel("node-b", key)
    before = sealed_channel("node-a", key, incarnation=5)
    captured = before.frame(heartbeat_envelope(before))[4:]  # the body after the length
    for _ in range(3):  # the old incarnation spoke a few times
        receiver.open(before.frame(heartbeat_envelope(before))[4:], limit=1 << 20)
    after = sealed_channel("node-a", key, incarnation=6)
    receiver.open(after.frame(heartbeat_envelope(after))[4:], limit=1 << 20)
    with pytest.raises(Dropped) as caught:
        receiver.open(captured, limit=1 << 20)
    assert caught.value.reason == "replayed"


# -- the replay window ---------------------------------------------------------------------------


def test_the_replay_window_accepts_each_sequence_once() -> None:
    guard = ReplayGuard()
    assert guard.accept("node-a", 1, 1)
    assert guard.accept("node-a", 1, 2)
    assert not guard.accept("node-a", 1, 2)
    assert not guard.accept("node-a", 1, 1)


def test_the_replay_window_accepts_late_messages_it_has_not_seen_yet() -> None:
    guard = ReplayGuard(window=64)
    assert guard.accept("node-a", 1, 10)
    assert guard.accept("node-a", 1, 7)
    assert guard.accept("node-a", 1, 9)
    assert not guard.accept("node-a", 1, 7)
    assert not guard.accept("node-a", 1, 9)


def test_the_replay_window_keeps_senders_apart() -> None:
    guard = ReplayGuard()
    assert guard.accept("node-a", 1, 1)
    assert guard.accept("node-b", 1, 1)
    assert not guard.accept("node-b", 1, 1)


def test_an_older_incarnation_is_rejected_once_a_newer_one_was_seen() -> None:
    guard = ReplayGuard()
    assert guard.accept("node-a", 7, 500)
    assert not guard.accept("node-a", 6, 1)
    assert not guard.accept("node-a", 6, 10_000)


def test_a_newer_incarnation_is_accepted_even_with_a_lower_sequence() -> None:
    guard = ReplayGuard()
    assert guard.accept("node-a", 7, 500)
    assert guard.accept("node-a", 8, 1)
    assert guard.accept("node-a", 8, 2)
    assert not guard.accept("node-a", 7, 501)  # the previous life is over


def test_sequences_older_than_the_window_are_rejected_even_if_never_seen() -> None:
    guard = ReplayGuard(window=8)
    assert guard.accept("node-a", 1, 100)
    assert not guard.accept("node-a", 1, 92)  # 8 behind: outside the window
    assert not guard.accept("node-a", 1, 1)
    assert guard.accept("node-a", 1, 93)  # 7 behind, never seen: inside the window


def test_a_big_jump_forward_forgets_the_old_window_without_letting_its_sequences_back_in() -> None:
    guard = ReplayGuard(window=16)
    for sequence in range(1, 10):
        assert guard.accept("node-a", 1, sequence)
    assert guard.accept("node-a", 1, 1_000_000)
    for sequence in range(1, 10):
        assert not guard.accept("node-a", 1, sequence)
    assert not guard.accept("node-a", 1, 1_000_000)


def test_the_replay_windows_memory_is_bounded_by_max_senders_and_the_window() -> None:
    guard = ReplayGuard(window=32, max_senders=10)
    for n in range(1_000):
        assert guard.accept(f"node-{n}", 1, n * 1_000)
    assert len(guard._senders) == 10
    assert set(guard._senders) == {f"node-{n}" for n in range(990, 1_000)}  # the most recent stay
    assert all(mask < 1 << guard.window for _inc, _top, mask in guard._senders.values())


def test_a_sender_that_keeps_talking_is_not_the_one_evicted() -> None:
    guard = ReplayGuard(max_senders=2)
    assert guard.accept("node-a", 1, 1)
    assert guard.accept("node-b", 1, 1)
    assert guard.accept("node-a", 1, 2)  # node-a is now the most recent
    assert guard.accept("node-c", 1, 1)  # evicts node-b
    assert not guard.accept("node-a", 1, 2)  # node-a is still remembered


# -- keys from text and files --------------------------------------------------------------------


def test_generated_keys_are_32_random_bytes_in_base64() -> None:
    first, second = generate_key(), generate_key()
    assert len(base64.b64decode(first, validate=True)) == 32
    assert first != second
    assert parse_keys(first, "test") == [base64.b64decode(first)]


def test_several_keys_one_per_line_or_comma_separated_with_comments_and_blank_lines() -> None:
    keys = [new_key() for _ in range(3)]
    text = "# the mesh keys\n\n{}\n  {}  \n# old one, drop after rotation\n{}\n".format(
        *(base64.b64encode(k).decode() for k in keys)
    )
    assert parse_keys(text, "test") == keys
    assert parse_keys(",".join(base64.b64encode(k).decode() for k in keys), "MESH_KEY") == keys


def test_a_key_that_is_not_base64_is_an_error_naming_the_entry_but_not_the_key() -> None:
    good = base64.b64encode(new_key()).decode()
    bad = good[:20] + "!!" + good[22:]
    with pytest.raises(KeyFileError) as caught:
        parse_keys(f"{good}\n{bad}\n", "key file k")
    message = str(caught.value)
    assert "entry 2" in message
    assert "not base64" in message
    assert "keygen" in message
    assert bad not in message
    assert good not in message
    assert bad[:8] not in message


@pytest.mark.parametrize("size", [16, 31, 33, 64])
def test_a_key_of_the_wrong_length_is_an_error_that_says_how_long_a_key_must_be(size: int) -> None:
    text = base64.b64encode(os.urandom(size)).decode()
    with pytest.raises(KeyFileError) as caught:
        parse_keys(text, "key file k")
    message = str(caught.value)
    assert f"{size} bytes" in message
    assert "32" in message
    assert text not in message
    assert text[:8] not in message


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n", " , ,"])
def test_text_without_a_key_is_an_error_that_says_how_to_make_one(text: str) -> None:
    with pytest.raises(KeyFileError, match=r"no key.*keygen"):
        parse_keys(text, "key file k")


def test_a_missing_or_unreadable_key_file_is_a_key_file_error_naming_the_file(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match=re.escape("missing.key")):
        read_key_file(tmp_path / "missing.key")
    (tmp_path / "a-directory").mkdir()
    with pytest.raises(KeyFileError, match="a-directory"):
        read_key_file(tmp_path / "a-directory")
    binary = tmp_path / "binary.key"
    binary.write_bytes(b"\xff\xfe" + os.urandom(30))
    with pytest.raises(KeyFileError, match=re.escape("binary.key")):
        read_key_file(binary)


def test_a_key_file_with_a_malformed_line_names_the_file_but_never_shows_a_key(tmp_path: Path) -> None:
    good = base64.b64encode(new_key()).decode()
    path = tmp_path / "mesh.key"
    path.write_text(f"{good}\nnot a key at all\n")
    with pytest.raises(KeyFileError) as caught:
        read_key_file(path)
    assert str(path) in str(caught.value)
    assert "entry 2" in str(caught.value)
    assert good not in str(caught.value)
    assert "not a key at all" not in str(caught.value)

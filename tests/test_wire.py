"""The datagram format: round trips, and every kind of garbage dropped with its reason."""

from __future__ import annotations

import os

import pytest

from proto import wire
from proto.codec import pb


def heartbeat_envelope(sender: str = "node-b", **info: object) -> pb.Envelope:
    env = wire.envelope(sender, 7, 1)
    env.heartbeat.node_id = sender
    env.heartbeat.status = pb.IDLE
    env.heartbeat.api_port = 3002
    env.heartbeat.mesh_port = 40001
    env.heartbeat.capacity = 4
    for key, value in info.items():
        setattr(env.heartbeat, key, value)
    return env


def test_a_heartbeat_survives_the_round_trip_with_the_source_host() -> None:
    data = wire.encode(heartbeat_envelope(running=1, queued=2))
    hb = wire.heartbeat_from(wire.decode(data), "10.0.0.9")
    assert (hb.node_id, hb.incarnation, hb.host, hb.address) == ("node-b", 7, "10.0.0.9", "10.0.0.9:40001")
    assert (hb.running, hb.queued, hb.capacity, hb.api_port) == (1, 2, 4, 3002)


def test_every_datagram_starts_with_the_magic_and_version() -> None:
    assert wire.encode(heartbeat_envelope())[:4] == b"WM\x01\x00"


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty"),
        (os.urandom(64).replace(b"W", b"X"), "bad_magic"),
        (b"GET / HTTP/1.1\r\n\r\n", "bad_magic"),
        (b"WM", "bad_magic"),
        (b"WM\x02\x00" + b"\x0a\x01x", "unknown_version"),
        (b"WM\x01\x07" + b"\x0a\x01x", "unknown_flags"),
        (b"WM\x01\x00" + b"\x0a\x20abc", "malformed"),  # a length that runs past the end
        (b"WM\x01\x00" + b"\xff\xff\xff", "malformed"),
        (b"WM\x01\x00" + b"x" * 9000, "too_large"),
    ],
)
def test_garbage_is_dropped_with_its_reason(data: bytes, reason: str) -> None:
    with pytest.raises(wire.Dropped) as caught:
        wire.decode(data)
    assert caught.value.reason == reason


def test_an_envelope_without_a_sender_is_dropped() -> None:
    data = wire.PREFIX + heartbeat_envelope(sender="").SerializeToString()
    with pytest.raises(wire.Dropped, match="no_sender"):
        wire.decode(data)


def test_a_sender_id_that_is_not_a_node_id_is_dropped() -> None:
    env = heartbeat_envelope()
    env.sender_id = "bad id\n"
    with pytest.raises(wire.Dropped, match="bad_sender"):
        wire.decode(wire.PREFIX + env.SerializeToString())


def test_an_envelope_without_a_body_is_dropped() -> None:
    env = wire.envelope("node-b", 1, 1)
    with pytest.raises(wire.Dropped, match="no_body"):
        wire.decode(wire.encode(env))


def test_a_heartbeat_with_an_impossible_port_or_status_is_dropped() -> None:
    for env in (heartbeat_envelope(api_port=70000), heartbeat_envelope(status=pb.FAILED)):
        with pytest.raises(wire.Dropped, match="bad_heartbeat"):
            wire.heartbeat_from(wire.decode(wire.encode(env)), "127.0.0.1")


def test_a_heartbeat_that_claims_another_nodes_id_is_dropped() -> None:
    env = heartbeat_envelope()
    env.heartbeat.node_id = "node-someone-else"
    with pytest.raises(wire.Dropped, match="bad_heartbeat"):
        wire.heartbeat_from(env, "127.0.0.1")


def test_unknown_fields_from_a_newer_node_are_ignored() -> None:
    # Field 99 does not exist today; a future node may send it.
    data = wire.encode(heartbeat_envelope()) + b"\xf8\x06\x01"
    assert wire.decode(data).sender_id == "node-b"


def test_a_message_too_large_for_a_datagram_is_refused_when_sending() -> None:
    env = heartbeat_envelope()
    env.heartbeat.metadata["big"] = "x" * 9000
    with pytest.raises(ValueError, match="datagram limit"):
        wire.encode(env)

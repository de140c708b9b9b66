"""Security across real `run_node.py` processes (issue 5): a sealed mesh, captured traffic sent
again, key rotation under load, API tokens, TLS, safe start-up defaults and job safety.

Host traffic goes only to 127.0.0.1 and 127.255.255.255, on each test's own discovery port. The
tests that need a non-loopback address (`--lan`) build their own network namespace (a dummy
interface in it, no link to the host) and run the node inside it. Waits poll with deadlines.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import ipaddress
import json
import os
import pwd
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from actors.mesh_transport import MeshError, request
from proto import wire
from proto.codec import pb, to_timestamp, utcnow
from proto.seal import KeyHolder, Keyring, generate_key
from tests.helpers import free_udp_port
from tests.meshjobs import Cluster, expect, finals, job, jobs, peer_status, submit
from tests.meshnodes import RUN_NODE, MeshNode, all_see_all, sees_exactly, wait_until

pytestmark = pytest.mark.process

ROOT = os.geteuid() == 0
HAVE_IP = shutil.which("ip") is not None
needs_namespaces = [
    pytest.mark.lan,
    pytest.mark.skipif(not HAVE_IP, reason="needs iproute2's `ip` to build a network namespace"),
    pytest.mark.skipif(not ROOT, reason="needs root to create a network namespace"),
]
LOOPBACK_BROADCAST = "127.255.255.255"
HEADER = len(wire.SEALED_PREFIX) + 4  # prefix and key id of a sealed message


# -- helpers --------------------------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def http(
    url: str,
    method: str = "GET",
    data: bytes | None = None,
    headers: dict[str, str] | None = None,
    context: ssl.SSLContext | None = None,
    timeout: float = 10.0,
) -> Answer:
    """One HTTP(S) request from this host to a node on 127.0.0.1; error statuses are answers too."""
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})  # noqa: S310
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=context) as response:  # noqa: S310
            return Answer(
                response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()
            )
    except urllib.error.HTTPError as exc:
        return Answer(exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read())


def key_file(path: Path, *keys: str) -> Path:
    path.write_text("".join(f"{k}\n" for k in keys))
    return path


def dropped(node: MeshNode, reason: str, where: str = "discovery") -> int:
    """How many datagrams (`discovery`) or frames (`mesh`) `node` dropped for `reason`."""
    return int(node.status()[where]["dropped"].get(reason, 0))


def handoff(channel: wire.Channel, target: MeshNode, command: str) -> pb.Envelope:
    """A hand-off envelope from `channel`'s node (the job's origin) to `target`."""
    envelope = channel.envelope()
    handed = envelope.handoff.job
    handed.job_id = str(uuid.uuid4())
    handed.command = command
    handed.timeout_seconds = 30
    handed.status = pb.JOB_PENDING
    handed.created_by_node = channel.node_id
    handed.target_node_id = target.node_id
    handed.attempt = 1
    handed.created_at.CopyFrom(to_timestamp(utcnow()))
    return envelope


def mesh_address(node: MeshNode) -> tuple[str, int]:
    line = node.started_line()
    assert line is not None
    host, _, port = line["mesh_address"].rpartition(":")
    return host, int(port)


def send_frame(node: MeshNode, frame: bytes, channel: wire.Channel) -> pb.Envelope | None:
    """Send raw frame bytes to `node`'s mesh port; its reply, or None when it closed without one."""
    with socket.create_connection(mesh_address(node), timeout=10) as sock:
        sock.sendall(frame)
        header = _recv(sock, wire.FRAME_HEADER.size)
        if not header:
            return None
        body = _recv(sock, wire.frame_length(header))
        return channel.open(body, limit=wire.MAX_FRAME, check_replay=False)


def _recv(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        try:
            chunk = sock.recv(size - len(data))
        except ConnectionResetError:
            return b""
        if not chunk:
            return b""
        data += chunk
    return data


@contextlib.contextmanager
def listening(port: int) -> Iterator[socket.socket]:
    """Our own socket on the test's discovery port: it hears every heartbeat broadcast there."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(("0.0.0.0", port))
        sock.settimeout(0.5)
        yield sock
    finally:
        sock.close()


def capture_heartbeat(sock: socket.socket, key: str, sender: str, timeout: float = 10.0) -> bytes:
    """The bytes of the next heartbeat datagram `sender` broadcast (opened with `key` to tell)."""
    keyring = Keyring([base64.b64decode(key)])
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            data = sock.recv(wire.MAX_DATAGRAM + 1)
        except TimeoutError:
            continue
        with contextlib.suppress(ValueError, wire.Dropped):
            envelope = pb.Envelope.FromString(keyring.open(data, len(wire.SEALED_PREFIX)))
            if envelope.sender_id == sender and envelope.WhichOneof("body") == "heartbeat":
                return data
    raise AssertionError(f"no heartbeat of {sender} heard within {timeout}s")


def broadcast(data: bytes, port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        sock.sendto(data, (LOOPBACK_BROADCAST, port))


def run_node(
    *args: str, env: dict[str, str] | None = None, netns: str | None = None
) -> tuple[int, str, str, float]:
    """Run run_node.py to its end (it must refuse to start): exit code, stdout, stderr, seconds."""
    clean = {k: v for k, v in os.environ.items() if k not in ("MESH_KEY", "MESH_API_TOKEN")}
    prefix = ["ip", "netns", "exec", netns] if netns else []
    began = time.monotonic()
    done = subprocess.run(
        [*prefix, sys.executable, str(RUN_NODE), *args],
        capture_output=True,
        text=True,
        timeout=20,
        env={**clean, **(env or {})},
        check=False,
    )
    return done.returncode, done.stdout, done.stderr, time.monotonic() - began


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, f"expected one line, got: {text!r}"
    return lines[0]


def log_text(node: MeshNode) -> str:
    return node.stdout_path.read_text(errors="replace") + node.stderr()


# -- a sealed mesh with two strangers: another key, and no key -----------------------------------


@dataclass
class SealedMesh:
    cluster: Cluster
    key: str
    other_key: str
    a: MeshNode
    b: MeshNode
    stranger: MeshNode  # another key
    unsealed: MeshNode

    @property
    def port(self) -> int:
        return self.cluster.port


@pytest.fixture(scope="module")
def sealed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SealedMesh]:
    """A and B share a key; a third node has another key and a fourth none, on one discovery port.
    Returns once each node has heard (and dropped) the ones it cannot read."""
    tmp = tmp_path_factory.mktemp("sealed")
    cluster = Cluster(tmp)
    key, other = generate_key(), generate_key()
    try:
        a = cluster.spawn(
            "a", "--max-jobs", "2", "--log-level", "debug", "--key-file", str(key_file(tmp / "a.key", key))
        )
        b = cluster.spawn(
            "b", "--max-jobs", "2", "--log-level", "debug", "--key-file", str(key_file(tmp / "b.key", key))
        )
        stranger = cluster.spawn(
            "c", "--log-level", "debug", "--key-file", str(key_file(tmp / "c.key", other))
        )
        unsealed = cluster.spawn("d")
        for node in (a, b, stranger, unsealed):
            node.wait_started()
        mesh = SealedMesh(cluster, key, other, a, b, stranger, unsealed)
        wait_until(lambda: sees_exactly(a, [b]) and sees_exactly(b, [a]), 15, "A and B to see each other")
        for node in (a, b):
            wait_until(lambda n=node: dropped(n, "bad_key") and dropped(n, "unsealed"), 10, "drops")
        wait_until(lambda: dropped(stranger, "bad_key"), 10, "the stranger to drop the mesh's heartbeats")
        wait_until(lambda: dropped(unsealed, "sealed"), 10, "the unsealed node to drop sealed heartbeats")
        yield mesh
    finally:
        cluster.close()


def test_two_nodes_with_the_same_key_mesh_and_share_jobs(sealed: SealedMesh) -> None:
    a, b = sealed.a, sealed.b
    posted = [submit(a, "sleep 0.3; echo shared") for _ in range(8)]
    done = finals(a, [p["job_id"] for p in posted])
    assert {j["status"] for j in done} == {"JOB_COMPLETED"}
    assert {j["stdout"] for j in done} == {"shared\n"}
    executors = {j["executor_node"] for j in done}
    assert b.node_id in executors, f"no job ran on B: {executors}"
    assert a.peer_ids() == {b.node_id}
    assert b.peer_ids() == {a.node_id}


def test_a_node_with_another_key_neither_sees_nor_is_seen_by_the_mesh(sealed: SealedMesh) -> None:
    a, b, stranger = sealed.a, sealed.b, sealed.stranger
    assert stranger.node_id not in a.peer_ids() | b.peer_ids()
    assert stranger.peer_ids() == set()
    assert {p["node_id"] for p in stranger.peers(include_all=True)} == set()
    assert stranger.node_id not in {p["node_id"] for p in a.peers(include_all=True)}
    before = dropped(a, "bad_key")
    wait_until(lambda: dropped(a, "bad_key") > before, 10, "A to count more of the stranger's heartbeats")


def test_an_unsealed_node_is_invisible_to_sealed_ones_and_its_heartbeats_count_as_unsealed(
    sealed: SealedMesh,
) -> None:
    a, b, unsealed = sealed.a, sealed.b, sealed.unsealed
    assert unsealed.node_id not in a.peer_ids() | b.peer_ids()
    assert unsealed.peer_ids() == set()
    [said] = unsealed.events("mesh_unsealed")  # one line saying so, and that it stays on this host
    assert "loopback" in said["message"]
    assert not unsealed.events("insecure_configuration")
    assert unsealed.status()["security"]["sealed"] is False
    before = dropped(b, "unsealed")
    wait_until(lambda: dropped(b, "unsealed") > before, 10, "B to count more unsealed heartbeats")
    assert dropped(unsealed, "sealed") > 0


def test_a_handoff_sealed_with_another_key_is_refused_and_its_job_never_runs(
    sealed: SealedMesh, tmp_path: Path
) -> None:
    a = sealed.a
    out = tmp_path / "ran"
    intruder = wire.Channel("node-intruder", 1, KeyHolder(Keyring([base64.b64decode(sealed.other_key)])))
    envelope = handoff(intruder, a, f"echo pwned > {out}")
    before = dropped(a, "bad_key", "mesh")

    with pytest.raises(MeshError):
        request(mesh_address(a), envelope, 5.0, intruder)

    wait_until(lambda: dropped(a, "bad_key", "mesh") > before, 10, "A to count the frame as bad_key")
    assert job(a, envelope.handoff.job.job_id) is None
    assert not out.exists()


def test_an_unsealed_handoff_to_a_sealed_node_is_refused_and_its_job_never_runs(
    sealed: SealedMesh, tmp_path: Path
) -> None:
    a = sealed.a
    out = tmp_path / "ran"
    plain = wire.Channel("node-plain", 1)
    envelope = handoff(plain, a, f"echo pwned > {out}")
    before = dropped(a, "unsealed", "mesh")

    with pytest.raises(MeshError):
        request(mesh_address(a), envelope, 5.0, plain)

    wait_until(lambda: dropped(a, "unsealed", "mesh") > before, 10, "A to count the frame as unsealed")
    assert job(a, envelope.handoff.job.job_id) is None
    assert not out.exists()


def test_a_captured_heartbeat_with_one_flipped_bit_is_dropped_as_tampered(sealed: SealedMesh) -> None:
    a, b = sealed.a, sealed.b
    with listening(sealed.port) as sock:
        captured = capture_heartbeat(sock, sealed.key, a.node_id)
    before = dropped(b, "tampered")
    index = HEADER + 12 + 5  # inside the ciphertext, after the 8-byte header and the nonce
    forged = captured[:index] + bytes([captured[index] ^ 0x01]) + captured[index + 1 :]

    broadcast(forged, sealed.port)

    wait_until(lambda: dropped(b, "tampered") > before, 10, "B to count the forged heartbeat as tampered")
    assert dropped(b, "tampered") == before + 1
    assert b.peer_ids() == {a.node_id}


def test_a_replayed_handoff_frame_is_dropped_as_replayed_and_the_job_runs_once(
    sealed: SealedMesh, tmp_path: Path
) -> None:
    a = sealed.a
    out = tmp_path / "lines"
    sender = wire.Channel(
        f"node-{uuid.uuid4().hex[:8]}", 1, KeyHolder(Keyring([base64.b64decode(sealed.key)]))
    )
    envelope = handoff(sender, a, f"echo x >> {out}")
    job_id = envelope.handoff.job.job_id
    frame = sender.frame(envelope)  # the bytes an eavesdropper would have captured
    before = dropped(a, "replayed", "mesh")

    reply = send_frame(a, frame, sender)
    assert reply is not None
    assert (reply.ack.job_id, reply.ack.accepted) == (job_id, True)
    assert finals(a, [job_id])[0]["status"] == "JOB_COMPLETED"

    assert send_frame(a, frame, sender) is None  # the replay: closed without an answer
    wait_until(lambda: dropped(a, "replayed", "mesh") > before, 10, "A to count the replay")
    assert out.read_text() == "x\n"
    assert [j["job_id"] for j in jobs(a)].count(job_id) == 1


def test_a_post_form_encoded_like_an_html_form_is_refused_with_415_and_creates_no_job(
    sealed: SealedMesh,
) -> None:
    a = sealed.a
    before = {j["job_id"] for j in jobs(a)}
    form = http(
        a.api_url + "/jobs",
        "POST",
        b"command=id&timeout_seconds=60",
        {"Content-Type": "application/x-www-form-urlencoded", "Origin": "http://evil.example"},
    )
    text = http(
        a.api_url + "/jobs",
        "POST",
        json.dumps({"command": "id"}).encode(),
        {"Content-Type": "text/plain", "Origin": "http://evil.example"},
    )
    assert form.status == 415
    assert form.json()["error"]["code"] == "unsupported_media_type"
    assert text.status == 415
    assert {j["job_id"] for j in jobs(a)} == before


@pytest.mark.parametrize("path", ["/drain", "/resume"])
@pytest.mark.parametrize("content_type", ["application/x-www-form-urlencoded", "text/plain"])
def test_a_cross_site_style_post_to_drain_or_resume_is_refused_with_415_and_changes_nothing(
    sealed: SealedMesh, path: str, content_type: str
) -> None:
    node = sealed.unsealed  # no job of another test runs there
    want = "DRAINING" if path == "/resume" else "IDLE"
    flip = "/drain" if path == "/resume" else "/resume"
    json_post = {"Content-Type": "application/json"}
    assert http(node.api_url + flip, "POST", b"{}", json_post).json()["status"] == want
    try:
        answer = http(
            node.api_url + path,
            "POST",
            b"a=b",
            {"Content-Type": content_type, "Origin": "http://evil.example"},
        )
        assert answer.status == 415, (answer.status, answer.body)
        assert node.status()["status"] == want
    finally:
        http(node.api_url + "/resume", "POST", b"{}", json_post)


def test_no_response_allows_another_origin(sealed: SealedMesh) -> None:
    a = sealed.a
    origin = {"Origin": "http://evil.example"}
    answers = [
        http(a.api_url + "/health", headers=origin),
        http(a.api_url + "/status", headers=origin),
        http(a.api_url + "/jobs", headers=origin),
        http(a.api_url + "/jobs", "OPTIONS", headers={**origin, "Access-Control-Request-Method": "POST"}),
        http(
            a.api_url + "/jobs",
            "POST",
            json.dumps({"command": "echo hi", "timeout_seconds": 5}).encode(),
            {**origin, "Content-Type": "application/json"},
        ),
    ]
    for answer in answers:
        assert not any(name.startswith("access-control-") for name in answer.headers), answer.headers


def test_a_key_file_broken_before_sighup_keeps_the_old_keys_and_the_error_shows_no_key(
    sealed: SealedMesh,
) -> None:
    stranger = sealed.stranger
    path = Path(stranger.args[stranger.args.index("--key-file") + 1])
    short = base64.b64encode(os.urandom(16)).decode()
    failures = len(stranger.events("keys_not_reloaded"))
    path.write_text(f"{sealed.other_key}\n{short}\n")
    try:
        os.kill(stranger.pid, signal.SIGHUP)
        wait_until(lambda: len(stranger.events("keys_not_reloaded")) > failures, 10, "the failed reload")
    finally:
        key_file(path, sealed.other_key)
    reason = stranger.events("keys_not_reloaded")[-1]["reason"]
    assert str(path) in reason
    assert "16 bytes" in reason
    for secret in (short, sealed.other_key):
        assert secret not in log_text(stranger)
    assert stranger.status()["security"]["sealed"] is True
    before = dropped(sealed.a, "bad_key")  # it still seals with its old key, which A cannot open
    wait_until(lambda: dropped(sealed.a, "bad_key") > before, 10, "A to drop the stranger's heartbeats")
    assert stranger.node_id not in sealed.a.peer_ids()


def test_the_keys_never_appear_in_the_logs_or_the_api_of_running_nodes(sealed: SealedMesh) -> None:
    for node, key in ((sealed.a, sealed.key), (sealed.b, sealed.key), (sealed.stranger, sealed.other_key)):
        raw = base64.b64decode(key)
        api = "".join(
            json.dumps(node.get(path)) for path in ("/status", "/peers?all=true", "/jobs", "/health")
        )
        for text in (log_text(node), api):
            assert key not in text
            assert key[:16] not in text
            assert raw.hex() not in text
        security = node.status()["security"]
        assert (security["sealed"], security["keys"]) == (True, 1)


# -- replays of a dead node, key rotation -------------------------------------------------------


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    group = Cluster(tmp_path)
    try:
        yield group
    finally:
        group.close()


def test_a_captured_heartbeat_of_a_dead_node_replayed_after_it_expired_does_not_revive_it(
    cluster: Cluster, tmp_path: Path
) -> None:
    key = generate_key()
    a, b = cluster.start("a", "b", args=("--key-file", str(key_file(tmp_path / "mesh.key", key))))
    with listening(cluster.port) as sock:
        captured = capture_heartbeat(sock, key, b.node_id)
    b.kill()
    wait_until(lambda: peer_status(a, b.node_id) == "FAILED", 10, "A to list B as FAILED")
    before = dropped(a, "replayed")

    broadcast(captured, cluster.port)

    wait_until(lambda: dropped(a, "replayed") > before, 10, "A to drop the replayed heartbeat")
    assert peer_status(a, b.node_id) == "FAILED"
    assert b.node_id not in a.peer_ids()
    assert len(a.events("peer_joined")) == 1


def test_a_key_rotates_through_three_running_nodes_one_at_a_time_without_refusing_a_job(
    cluster: Cluster, tmp_path: Path
) -> None:
    old, new = generate_key(), generate_key()
    files = [key_file(tmp_path / f"{name}.key", old) for name in ("a", "b", "c")]
    nodes = [
        cluster.spawn(n, "--max-jobs", "2", "--key-file", str(f)) for n, f in zip("abc", files, strict=True)
    ]
    for node in nodes:
        node.wait_started()
    wait_until(lambda: all_see_all(nodes), 15, "every node to see the others")

    posted: list[tuple[MeshNode, int, Any]] = []
    stop = threading.Event()

    def client() -> None:
        turn = 0
        while not stop.is_set():
            node = nodes[turn % len(nodes)]
            turn += 1
            code, body = node.call("POST", "/jobs", {"command": "echo ok", "timeout_seconds": 60}, 10)
            posted.append((node, code, body))
            stop.wait(0.05)  # a steady trickle of jobs, not a flood

    def jobs_flow(more: int = 6) -> None:
        """Wait until the client got `more` answers and every node heard a few more heartbeats."""
        count = len(posted)
        heard = [n.status()["discovery"]["heartbeats_received"] for n in nodes]
        wait_until(lambda: len(posted) >= count + more, 20, "more jobs to be posted")
        wait_until(
            lambda: all(
                n.status()["discovery"]["heartbeats_received"] >= h + 4
                for n, h in zip(nodes, heard, strict=True)
            ),
            10,
            "every node to hear more heartbeats",
        )

    def reload(node: MeshNode, path: Path, *keys: str) -> None:
        reloads = len(node.events("keys_reloaded"))
        key_file(path, *keys)
        os.kill(node.pid, signal.SIGHUP)
        wait_until(lambda: len(node.events("keys_reloaded")) > reloads, 10, f"{node.name} to reload")
        assert node.events("keys_reloaded")[-1]["keys"] == len(keys)
        jobs_flow()

    thread = threading.Thread(target=client, name="rotation-client", daemon=True)
    thread.start()
    try:
        jobs_flow()
        for node, path in zip(nodes, files, strict=True):  # 1: the new key opens everywhere
            reload(node, path, old, new)
        for node, path in zip(nodes, files, strict=True):  # 2: the new key seals, one node at a time
            reload(node, path, new, old)
        for node, path in zip(nodes, files, strict=True):  # 3: the old key is gone
            reload(node, path, new)
    finally:
        stop.set()
        thread.join(timeout=30)

    refused = [(n.name, code, body) for n, code, body in posted if code != 202]
    assert not refused, refused
    for node in nodes:
        ids = [body["job_id"] for n, _code, body in posted if n is node]
        done = finals(node, ids)
        assert {j["status"] for j in done} == {"JOB_COMPLETED"}, [
            j for j in done if j["status"] != "JOB_COMPLETED"
        ]
    executed_elsewhere = [body for n, _code, body in posted if body["target_node"] != n.node_id]
    assert executed_elsewhere, "no job crossed the mesh during the rotation"
    for node in nodes:
        assert not node.events("handoff_refused"), node.events("handoff_refused")
        assert not node.events("peer_failed"), node.events("peer_failed")
        assert dropped(node, "bad_key") == 0
        assert dropped(node, "bad_key", "mesh") == 0
        assert node.status()["security"]["keys"] == 1
    assert all_see_all(nodes)
    old_only = wire.Channel("node-old-key", 1, KeyHolder(Keyring([base64.b64decode(old)])))
    with pytest.raises(MeshError):  # the retired key no longer opens anything
        request(mesh_address(nodes[0]), handoff(old_only, nodes[0], "true"), 5.0, old_only)


# -- the API: token, TLS ------------------------------------------------------------------------


def test_with_an_api_token_every_route_but_health_needs_the_bearer_token(
    cluster: Cluster, tmp_path: Path
) -> None:
    token = uuid.uuid4().hex
    (tmp_path / "token").write_text(token + "\n")
    node = cluster.spawn("a", "--api-token-file", str(tmp_path / "token"))
    node.wait_started()
    url = node.api_url
    good = {"Authorization": f"Bearer {token}"}
    job_json = json.dumps({"command": "echo hi", "timeout_seconds": 10}).encode()

    for path in ("/status", "/peers", "/jobs", "/openapi.json"):
        for headers in ({}, {"Authorization": f"Bearer {token}x"}, {"Authorization": token}):
            answer = http(url + path, headers=headers)
            assert answer.status == 401, (path, headers, answer)
            assert answer.headers.get("www-authenticate") == "Bearer"
            assert answer.headers["content-type"].startswith("application/json")
            assert answer.json()["error"]["code"] == "unauthorized"
            assert token not in answer.body.decode()
        assert http(url + path, headers=good).status == 200
    refused = http(url + "/jobs", "POST", job_json, {"Content-Type": "application/json"})
    assert refused.status == 401
    assert http(url + "/jobs", headers=good).json() == []

    assert http(url + "/health").status == 200
    accepted = http(url + "/jobs", "POST", job_json, {**good, "Content-Type": "application/json"})
    assert accepted.status == 202
    form = http(
        url + "/jobs", "POST", b"command=id", {**good, "Content-Type": "application/x-www-form-urlencoded"}
    )
    assert form.status == 415
    assert [j["job_id"] for j in http(url + "/jobs", headers=good).json()] == [accepted.json()["job_id"]]
    assert token not in log_text(node)


def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, made with the `cryptography` package."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


@dataclass
class TlsNode:
    node: MeshNode
    cert: Path
    port: int


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsNode]:
    """A node serving its API over HTTPS with a self-signed certificate for 127.0.0.1."""
    tmp = tmp_path_factory.mktemp("tls")
    group = Cluster(tmp)
    cert, key = self_signed(tmp)
    try:
        node = group.spawn("a", "--tls-cert", str(cert), "--tls-key", str(key)).wait_started()
        yield TlsNode(node, cert, int(node.api_url.rsplit(":", 1)[1].split("/", 1)[0]))
    finally:
        group.close()


def test_with_a_certificate_the_api_speaks_https_and_not_plain_http(tls: TlsNode) -> None:
    context = ssl.create_default_context(cafile=str(tls.cert))

    health = http(f"https://127.0.0.1:{tls.port}/api/v1/health", context=context)
    status = http(f"https://127.0.0.1:{tls.port}/api/v1/status", context=context)

    assert health.status == 200
    assert health.json()["node_id"] == tls.node.node_id
    assert status.json()["security"]["tls"] is True
    try:
        plain: Answer | OSError = http(f"http://127.0.0.1:{tls.port}/api/v1/health", timeout=5)
    except OSError as exc:  # the TLS server cannot make sense of plain HTTP
        plain = exc
    assert not isinstance(plain, Answer) or plain.status >= 400, plain  # at most an error page
    with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):  # an untrusting client
        http(f"https://127.0.0.1:{tls.port}/api/v1/health", context=ssl.create_default_context())


def test_the_node_started_line_of_a_tls_node_gives_its_https_url(tls: TlsNode) -> None:
    assert tls.node.api_url == f"https://127.0.0.1:{tls.port}/api/v1"


# -- start-up: refusals, --insecure ---------------------------------------------------------------


def test_a_non_loopback_broadcast_without_a_key_refuses_to_start_before_sending_anything(
    tmp_path: Path,
) -> None:
    code, stdout, stderr, took = run_node(
        "--broadcast", "10.255.255.255", "--discovery-port", str(free_udp_port()),
        "--api-port", "0", "--data-dir", str(tmp_path / "d"),
    )  # fmt: skip
    assert code == 2
    assert took < 10
    line = one_line(stderr)
    assert "10.255.255.255" in line
    assert "keygen" in line
    assert stdout == ""  # no node_started, no log at all: it never got as far as a socket
    assert not (tmp_path / "d").exists()


def test_a_mesh_port_beyond_loopback_without_a_key_refuses_to_start(tmp_path: Path) -> None:
    code, stdout, stderr, took = run_node(
        "--mesh-host", "0.0.0.0", "--api-port", "0", "--discovery-port", str(free_udp_port()),
        "--data-dir", str(tmp_path / "d"),
    )  # fmt: skip
    assert code == 2
    assert took < 10
    line = one_line(stderr)
    assert "0.0.0.0" in line
    assert "keygen" in line
    assert stdout == ""


def test_an_api_beyond_loopback_without_a_token_refuses_to_start(tmp_path: Path) -> None:
    code, stdout, stderr, took = run_node(
        "--api-host", "0.0.0.0", "--api-port", "0", "--discovery-port", str(free_udp_port()),
        "--data-dir", str(tmp_path / "d"),
    )  # fmt: skip
    assert code == 2
    assert took < 10
    line = one_line(stderr)
    assert "--api-host 0.0.0.0" in line
    assert "MESH_API_TOKEN" in line or "--api-token-file" in line
    assert stdout == ""


@pytest.mark.parametrize(
    "problem", ["missing", "a directory", "not base64", "16 bytes", "empty", "one bad line"]
)
def test_a_key_file_that_cannot_be_used_stops_the_node_with_one_line_that_never_shows_a_key(
    tmp_path: Path, problem: str
) -> None:
    path = tmp_path / "mesh.key"
    good = generate_key()
    secrets = [good]
    if problem == "a directory":
        path.mkdir()
    elif problem == "not base64":
        bad = good[:10] + "*" + good[11:]
        secrets.append(bad)
        path.write_text(bad + "\n")
    elif problem == "16 bytes":
        short = base64.b64encode(os.urandom(16)).decode()
        secrets.append(short)
        path.write_text(short + "\n")
    elif problem == "empty":
        path.write_text("\n# no keys yet\n")
    elif problem == "one bad line":
        path.write_text(f"{good}\n{good[:-4]}\n")
        secrets.append(good[:-4])

    code, stdout, stderr, _took = run_node(
        "--key-file", str(path), "--api-port", "0", "--discovery-port", str(free_udp_port()),
        "--data-dir", str(tmp_path / "d"),
    )  # fmt: skip

    assert code == 2
    line = one_line(stderr)
    assert str(path) in line
    for secret in secrets:
        assert secret not in stdout + stderr
        assert secret[:12] not in stdout + stderr


def test_a_malformed_mesh_key_variable_stops_the_node_without_showing_it(tmp_path: Path) -> None:
    short = base64.b64encode(os.urandom(20)).decode()
    code, stdout, stderr, _took = run_node(
        "--api-port", "0", "--discovery-port", str(free_udp_port()), "--data-dir", str(tmp_path / "d"),
        env={"MESH_KEY": short},
    )  # fmt: skip
    assert code == 2
    assert "MESH_KEY" in one_line(stderr)
    assert short not in stdout + stderr


@dataclass
class Namespace:
    name: str
    address: str
    broadcast: str


@pytest.fixture
def namespace() -> Iterator[Namespace]:
    """A network namespace of this test with a veth pair inside it, one end on a private /24 (no
    link to the host: what a node broadcasts there never leaves it), removed whatever happens."""
    pid = os.getpid()
    name = f"wmsec{pid}-{uuid.uuid4().hex[:4]}"
    network = ipaddress.IPv4Network(f"10.{pid // 256 % 200 + 20}.{pid % 256}.0/24")
    address = f"{network[2]}/{network.prefixlen}"

    def ip(*args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True, timeout=20)

    ip("netns", "add", name)
    try:
        ip("-n", name, "link", "add", "wm0", "type", "veth", "peer", "name", "wm1")
        ip("-n", name, "addr", "add", address, "brd", "+", "dev", "wm0")
        ip("-n", name, "link", "set", "wm0", "up")
        ip("-n", name, "link", "set", "wm1", "up")
        ip("-n", name, "link", "set", "lo", "up")
        yield Namespace(name, str(network[2]), str(network.broadcast_address))
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True, timeout=20)


@pytest.mark.lan
@pytest.mark.skipif(not HAVE_IP, reason="needs iproute2's `ip` to build a network namespace")
@pytest.mark.skipif(not ROOT, reason="needs root to create a network namespace")
def test_lan_without_a_key_refuses_to_start_and_says_how_to_make_one(
    namespace: Namespace, tmp_path: Path
) -> None:
    code, stdout, stderr, _took = run_node(
        "--lan", "--api-port", "0", "--data-dir", str(tmp_path / "d"), netns=namespace.name
    )
    assert code == 2
    line = one_line(stderr)
    assert "keygen" in line
    assert "--insecure" in line
    assert stdout == ""


@pytest.mark.lan
@pytest.mark.skipif(not HAVE_IP, reason="needs iproute2's `ip` to build a network namespace")
@pytest.mark.skipif(not ROOT, reason="needs root to create a network namespace")
def test_insecure_lets_a_lan_node_start_unsealed_with_a_loud_warning(
    namespace: Namespace, tmp_path: Path
) -> None:
    node = MeshNode(
        "insecure",
        ["--lan", "--insecure", "--api-port", "0", "--data-dir", str(tmp_path / "d"),
         "--heartbeat-interval", "0.2s", "--peer-timeout", "1s"],
        tmp_path / "logs",
        netns=namespace.name,
    )  # fmt: skip
    try:
        node.start().wait_started()
        security = node.status()["security"]
        broadcast_to = node.status()["discovery"]["broadcast"]
    finally:
        node.kill()
    assert security["insecure"] is True
    assert security["sealed"] is False
    assert security["warnings"]
    assert any("UNSEALED" in w for w in security["warnings"])
    warnings = node.events("insecure_configuration")
    assert warnings
    assert {w["level"] for w in warnings} == {"warning"}
    assert broadcast_to == [namespace.broadcast]


# -- jobs: --run-as, secrets in the environment, --allow-commands --------------------------------


def node_with_env(cluster: Cluster, name: str, env: dict[str, str], *args: str, data_dir: Path) -> MeshNode:
    argv = [
        "--discovery-port", str(cluster.port), "--heartbeat-interval", "0.2s", "--peer-timeout", "1s",
        "--api-port", "0", "--data-dir", str(data_dir), *args,
    ]  # fmt: skip
    node = MeshNode(name, argv, cluster.tmp_path / "logs", env=env)
    cluster.nodes.append(node)
    return node.start().wait_started()


def run_job(node: MeshNode, command: str) -> dict[str, Any]:
    return finals(node, [submit(node, command)["job_id"]])[0]


def test_jobs_do_not_see_the_mesh_key_or_api_token_the_node_got_from_its_environment(
    cluster: Cluster, tmp_path: Path
) -> None:
    key, token = generate_key(), uuid.uuid4().hex
    node = node_with_env(cluster, "a", {"MESH_KEY": key, "MESH_API_TOKEN": token}, data_dir=tmp_path / "a")
    auth = {"Authorization": f"Bearer {token}"}

    def run(command: str) -> dict[str, Any]:
        posted = http(
            node.api_url + "/jobs",
            "POST",
            json.dumps({"command": command, "timeout_seconds": 10}).encode(),
            {**auth, "Content-Type": "application/json"},
        )
        assert posted.status == 202, posted
        return http(f"{node.api_url}/jobs/{posted.json()['job_id']}?wait=20", headers=auth, timeout=30).json()

    printed_key, printed_token, listed = run("printenv MESH_KEY"), run("printenv MESH_API_TOKEN"), run("env")
    security = http(node.api_url + "/status", headers=auth).json()["security"]

    assert (security["sealed"], security["api_token"]) == (True, True)
    assert (printed_key["status"], printed_key["exit_code"], printed_key["stdout"]) == ("JOB_FAILED", 1, "")
    assert (printed_token["exit_code"], printed_token["stdout"]) == (1, "")
    assert listed["status"] == "JOB_COMPLETED"
    assert "PATH=" in listed["stdout"]
    for secret in (key, token):
        assert secret not in listed["stdout"]
        assert secret not in log_text(node)


@pytest.mark.skipif(not ROOT, reason="--run-as needs the node to run as root")
def test_run_as_nobody_runs_jobs_as_nobody(cluster: Cluster) -> None:
    nobody = pwd.getpwnam("nobody")
    # nobody must be able to reach the work dir, and pytest's tmp_path is private to root
    base = Path(tempfile.mkdtemp(prefix="wm-run-as-"))
    base.chmod(0o755)
    try:
        node = node_with_env(cluster, "a", {}, "--run-as", "nobody", data_dir=base / "a")
        uid = run_job(node, "id -u")
        home = run_job(node, "echo $USER $HOME; touch made-by-job && stat -c %u made-by-job")
    finally:
        cluster.close()
        shutil.rmtree(base, ignore_errors=True)
    assert uid["status"] == "JOB_COMPLETED", uid
    assert uid["stdout"].strip() == str(nobody.pw_uid)
    assert home["stdout"].split() == ["nobody", nobody.pw_dir, str(nobody.pw_uid)]


def test_allow_commands_refuses_other_commands_with_403_where_they_are_posted(cluster: Cluster) -> None:
    [node] = cluster.start("a", args=("--allow-commands", "^echo .*$"))

    allowed = run_job(node, "echo hi")
    code, body = node.call("POST", "/jobs", {"command": "id", "timeout_seconds": 10})

    assert (allowed["status"], allowed["stdout"]) == ("JOB_COMPLETED", "hi\n")
    assert code == 403
    assert body["error"]["code"] == "command_not_allowed"
    assert [j["command"] for j in jobs(node)] == ["echo hi"]
    assert node.status()["security"]["allow_commands"] == ["^echo .*$"]


def test_the_executor_checks_the_command_again_and_never_runs_a_disallowed_pinned_job(
    cluster: Cluster, tmp_path: Path
) -> None:
    origin = cluster.spawn("a", "--max-jobs", "2")
    executor = cluster.spawn("b", "--max-jobs", "2", "--allow-commands", "^echo .*$")
    for node in (origin, executor):
        node.wait_started()
    wait_until(lambda: all_see_all([origin, executor]), 15, "the two nodes to see each other")
    out = tmp_path / "ran"

    posted = expect(
        origin.call(
            "POST",
            "/jobs",
            {"command": f"id > {out}", "timeout_seconds": 10, "target_node": executor.node_id},
        ),
        202,
    )
    [ended] = finals(origin, [posted["job_id"]])
    fine = expect(
        origin.call(
            "POST", "/jobs", {"command": "echo ok", "timeout_seconds": 10, "target_node": executor.node_id}
        ),
        202,
    )
    [ok] = finals(origin, [fine["job_id"]])

    assert ended["status"] == "JOB_FAILED"
    assert executor.node_id in (ended["error"] or "")
    assert "command_not_allowed" in (ended["error"] or "")
    assert job(executor, posted["job_id"]) is None
    assert not out.exists()
    assert (ok["status"], ok["executor_node"]) == ("JOB_COMPLETED", executor.node_id)

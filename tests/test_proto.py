"""The wire schema: the generated code matches mesh.proto, and the seed's field numbers hold."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf.descriptor import FieldDescriptor

from proto.codec import pb

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("generated", ["mesh_pb2.py", "mesh_pb2.pyi"])
def test_the_generated_code_is_up_to_date_with_mesh_proto(tmp_path: Path, generated: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", "-Iproto", f"--python_out={tmp_path}",
         f"--pyi_out={tmp_path}", "proto/mesh.proto"],
        cwd=ROOT, check=True, capture_output=True, timeout=60,
    )  # fmt: skip

    fresh = (tmp_path / generated).read_text()
    checked_out = (ROOT / "proto" / generated).read_text()
    assert fresh == checked_out, f"proto/{generated} is stale: run `make proto`"


SEED_FIELDS = {
    "NodeInfo": {"node_id": 1, "address": 2, "status": 3, "last_heartbeat": 4, "metadata": 5, "version": 6},
    "Job": {
        "job_id": 1,
        "target_node_id": 2,
        "command": 3,
        "env": 4,
        "timeout_seconds": 5,
        "status": 6,
        "created_by_node": 7,
    },
    "JobResult": {
        "job_id": 1,
        "executor_node_id": 2,
        "exit_code": 3,
        "stdout": 4,
        "stderr": 5,
        "started_at": 6,
        "finished_at": 7,
    },
}


@pytest.mark.parametrize("message", sorted(SEED_FIELDS))
def test_the_seed_messages_keep_the_seed_field_numbers(message: str) -> None:
    fields = getattr(pb, message).DESCRIPTOR.fields_by_name

    assert {name: fields[name].number for name in SEED_FIELDS[message]} == SEED_FIELDS[message]


def test_the_schema_lives_in_package_mesh_v1() -> None:
    assert pb.DESCRIPTOR.package == "mesh.v1"


def test_times_are_timestamps_and_metadata_and_env_are_string_maps() -> None:
    times = (("NodeInfo", "last_heartbeat"), ("JobResult", "started_at"), ("JobResult", "finished_at"))
    for message, name in times:
        field = getattr(pb, message).DESCRIPTOR.fields_by_name[name]
        assert field.message_type.full_name == "google.protobuf.Timestamp"
    for message, name in (("NodeInfo", "metadata"), ("Job", "env")):
        entry = getattr(pb, message).DESCRIPTOR.fields_by_name[name].message_type
        assert entry.GetOptions().map_entry
        assert {f.type for f in entry.fields} == {FieldDescriptor.TYPE_STRING}
    assert pb.JobResult.DESCRIPTOR.fields_by_name["stdout"].type == FieldDescriptor.TYPE_BYTES


def test_the_status_enums_have_the_names_the_api_shows_with_unspecified_zero() -> None:
    job_statuses = [(v.name, v.number) for v in pb.JobStatus.DESCRIPTOR.values]
    node_statuses = [v.name for v in pb.NodeStatus.DESCRIPTOR.values]

    assert job_statuses[0] == ("JOB_STATUS_UNSPECIFIED", 0)
    assert [name for name, _ in job_statuses[1:]] == [
        "JOB_PENDING", "JOB_RUNNING", "JOB_COMPLETED", "JOB_FAILED", "JOB_TIMEOUT", "JOB_CANCELLED",
    ]  # fmt: skip
    assert node_statuses[0] == "NODE_STATUS_UNSPECIFIED"
    assert {"IDLE", "BUSY", "DRAINING", "FAILED"} <= set(node_statuses)

"""Pure unit tests of ProcessRunner: one shell command, its process group, its output and its end."""

from __future__ import annotations

import os
import signal
import threading
import time
import tracemalloc
from pathlib import Path

import pytest

from actors.process import ProcessOutcome, ProcessRunner, ProcessSpec
from proto.codec import pb
from tests.helpers import group_is_gone, live_pids_in_group, wait_for

GRACE = 0.5
MIB = 1024 * 1024


def spec(command: str, cwd: Path, timeout: float = 10.0, cap: int = MIB) -> ProcessSpec:
    return ProcessSpec(
        command=command, env=dict(os.environ), cwd=str(cwd), timeout=timeout, grace=GRACE, output_cap=cap
    )


def run(command: str, cwd: Path, timeout: float = 10.0, cap: int = MIB) -> tuple[ProcessOutcome, float]:
    """Run to the end; the outcome and how long it took in seconds."""
    began = time.monotonic()
    outcome = ProcessRunner(spec(command, cwd, timeout, cap)).run()
    return outcome, time.monotonic() - began


def test_a_command_that_exits_zero_is_completed_with_its_output(tmp_path: Path) -> None:
    outcome, _ = run("echo Hello World!; echo oops >&2", tmp_path)

    assert outcome.status == pb.JOB_COMPLETED
    assert outcome.exit_code == 0
    assert outcome.stdout == b"Hello World!\n"
    assert outcome.stderr == b"oops\n"
    assert outcome.error == ""
    assert outcome.started_at <= outcome.finished_at


def test_a_non_zero_exit_is_failed_with_its_exit_code_and_a_reason(tmp_path: Path) -> None:
    outcome, _ = run("echo partial; exit 3", tmp_path)

    assert outcome.status == pb.JOB_FAILED
    assert outcome.exit_code == 3
    assert outcome.stdout == b"partial\n"
    assert "3" in outcome.error


def test_a_shell_killed_by_a_signal_reports_128_plus_the_signal_number(tmp_path: Path) -> None:
    outcome, _ = run("kill -KILL $$", tmp_path)

    assert outcome.status == pb.JOB_FAILED
    assert outcome.exit_code == 128 + 9
    assert "SIGKILL" in outcome.error


def test_a_job_runs_in_the_given_directory_with_the_given_environment(tmp_path: Path) -> None:
    runner = ProcessRunner(
        ProcessSpec(
            command='pwd; echo "$GREETING"',
            env={"PATH": os.environ["PATH"], "GREETING": "hi there"},
            cwd=str(tmp_path),
            timeout=10,
            grace=GRACE,
            output_cap=MIB,
        )
    )

    outcome = runner.run()

    assert outcome.stdout == f"{tmp_path}\nhi there\n".encode()


def test_a_working_directory_that_does_not_exist_fails_as_could_not_start(tmp_path: Path) -> None:
    outcome, _ = run("echo never", tmp_path / "missing")

    assert outcome.status == pb.JOB_FAILED
    assert outcome.exit_code is None
    assert outcome.error.startswith("could not start")
    assert outcome.stdout == b""


def test_a_background_and_a_foreground_sleep_time_out_and_leave_no_process(tmp_path: Path) -> None:
    outcome, took = run("echo $$; sleep 300 & echo $!; sleep 300", tmp_path, timeout=1)

    assert outcome.status == pb.JOB_TIMEOUT
    assert took < 1 + GRACE + 1
    pgid, background_pid = (int(word) for word in outcome.stdout.split())
    assert group_is_gone(pgid)
    assert background_pid not in live_pids_in_group(pgid)
    assert "timed out" in outcome.error


def test_a_shell_that_ignores_sigterm_is_killed_after_the_grace(tmp_path: Path) -> None:
    outcome, took = run("trap '' TERM; echo $$; sleep 300", tmp_path, timeout=1)

    assert outcome.status == pb.JOB_TIMEOUT
    assert took < 1 + GRACE + 1
    assert group_is_gone(int(outcome.stdout))


def test_a_job_that_leaves_a_sleep_in_the_background_returns_promptly_and_kills_it(
    tmp_path: Path,
) -> None:
    outcome, took = run("sleep 300 & echo started; echo $$ >&2", tmp_path, timeout=60)

    assert outcome.status == pb.JOB_COMPLETED
    assert outcome.stdout == b"started\n"
    assert took < 2
    assert group_is_gone(int(outcome.stderr))


def test_a_flood_of_output_is_capped_at_one_mib_and_the_runner_stays_small(tmp_path: Path) -> None:
    tracemalloc.start()
    try:
        outcome, _ = run("yes | head -c 50000000", tmp_path, timeout=60)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert outcome.status == pb.JOB_COMPLETED
    assert len(outcome.stdout) == MIB
    assert outcome.stdout.startswith(b"y\ny\n")
    assert outcome.stdout_truncated is True
    assert outcome.stderr_truncated is False
    assert peak < 8 * MIB, f"the runner held {peak} bytes for a 50 MB stream"


def test_output_that_is_not_utf8_survives_byte_for_byte(tmp_path: Path) -> None:
    outcome, _ = run(r"printf '\377\000abc\200'; printf '\376' >&2", tmp_path)

    assert outcome.stdout == b"\xff\x00abc\x80"
    assert outcome.stderr == b"\xfe"


def test_cancelling_a_running_job_stops_it_as_cancelled_and_kills_its_group(tmp_path: Path) -> None:
    runner = ProcessRunner(spec("echo $$ > pgid; sleep 300 & sleep 300", tmp_path, timeout=60))
    thread = threading.Thread(target=runner.run, name="test-runner")
    thread.start()
    pgid_file = tmp_path / "pgid"
    wait_for(lambda: pgid_file.exists() and pgid_file.read_text().strip(), what="the job to start")
    began = time.monotonic()

    runner.cancel("cancelled by test")
    thread.join(timeout=GRACE + 5)

    assert not thread.is_alive()
    assert time.monotonic() - began < GRACE + 1
    assert runner.outcome is not None
    assert runner.outcome.status == pb.JOB_CANCELLED
    assert runner.outcome.error == "cancelled by test"
    assert group_is_gone(int(pgid_file.read_text()))


def test_a_cancel_after_the_job_ended_writes_to_no_other_descriptor(tmp_path: Path) -> None:
    runner = ProcessRunner(spec("true", tmp_path))
    runner.run()
    pipes = [os.pipe() for _ in range(8)]  # reuse the descriptor numbers the runner closed
    try:
        runner.cancel("too late")

        for read_end, _ in pipes:
            os.set_blocking(read_end, False)
            with pytest.raises(BlockingIOError):
                os.read(read_end, 1)
    finally:
        for pair in pipes:
            for fd in pair:
                os.close(fd)


def test_a_process_that_escaped_the_group_cannot_keep_the_job_alive(tmp_path: Path) -> None:
    escape = "setsid sh -c 'echo $$ > escaped.tmp; mv escaped.tmp escaped; exec sleep 300' &"
    wait_until_escaped = "while [ ! -e escaped ]; do sleep 0.01; done"
    outcome, took = run(f"{escape} {wait_until_escaped}; echo done", tmp_path, timeout=60)
    escaped = tmp_path / "escaped"
    try:
        assert outcome.status == pb.JOB_COMPLETED
        assert outcome.stdout == b"done\n"
        assert took < 2, "a grandchild holding the pipes open must not hold the job"
    finally:
        pid = int(wait_for(lambda: escaped.exists() and escaped.read_text().strip(), what="the escapee"))
        os.killpg(pid, signal.SIGKILL)  # it left the job's group on purpose: this test cleans it up

"""The code benchmarks' sandbox: whatever a generated program does, it is one failed sample with its reason,
never a hung or crashed evaluation, and it leaves nothing behind outside its own directory."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from operators.evaluate.benchmark_suite import generated_rows
from operators.evaluate.benchmarks import SHIPPED_DIR, pose
from operators.evaluate.generative_benchmarks import GENERATIVE
from operators.evaluate.sandbox import SandboxLimits, guarantees, run_program

QUICK = SandboxLimits(timeout_s=1.0, memory_bytes=256 << 20)


def test_a_program_whose_asserts_hold_passes():
    assert run_program("def add(a, b):\n    return a + b\nassert add(2, 3) == 5\n", QUICK).passed


def test_a_failed_assert_fails_with_its_exception():
    assert run_program("assert 1 + 1 == 3\n", QUICK).reason == "AssertionError"


def test_an_infinite_loop_is_a_timeout_within_the_wall_clock():
    started = time.perf_counter()
    outcome = run_program("while True:\n    pass\n", QUICK)
    assert (outcome.passed, outcome.reason) == (False, "timeout")
    assert time.perf_counter() - started < QUICK.timeout_s + 5


def test_a_fork_bomb_fails_and_leaves_no_process_behind(monkeypatch):
    # The sandbox's directory under a parent of this test's own, so that programs other tests run at
    # the same time (pytest-xdist) are not counted; world-readable, as the sandbox's user must enter it.
    parent = Path(tempfile.mkdtemp(prefix="fork-bomb-test-"))
    parent.chmod(0o755)
    monkeypatch.setattr(tempfile, "tempdir", str(parent))
    try:
        outcome = run_program("import os\nwhile True:\n    os.fork()\n", QUICK)
        assert not outcome.passed and outcome.reason in ("BlockingIOError", "timeout")
        time.sleep(0.5)
        assert not any(str(parent) in str(p) for p in _sandboxed_processes())
    finally:
        shutil.rmtree(parent, ignore_errors=True)


def test_exhausting_memory_is_a_memory_failure():
    assert run_program("x = bytearray(10 ** 11)\n", QUICK).reason == "memory"
    grown = run_program("x = []\nwhile True:\n    x.append(bytearray(10 ** 7))\n", SandboxLimits(5.0, 256 << 20))
    assert grown.reason == "memory"


@pytest.mark.skipif(not (guarantees()["network_namespace"] or guarantees()["landlock_tcp"]),
                    reason="this machine offers neither a network namespace nor Landlock TCP rules")
def test_the_network_is_out_of_reach():
    connect = "import socket\nsocket.create_connection(('127.0.0.1', 9), timeout=1)\n"
    assert run_program(connect, QUICK).reason in ("PermissionError", "ConnectionRefusedError", "OSError")
    udp = "import socket\nsocket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', ('192.0.2.1', 53))\n"
    assert not run_program(udp, QUICK).passed


@pytest.mark.skipif(not guarantees()["landlock"], reason="no Landlock on this machine")
def test_nothing_is_written_outside_its_own_directory(tmp_path):
    target = tmp_path / "escaped"
    os.chmod(tmp_path, 0o777)
    outcome = run_program(f"open({str(target)!r}, 'w').write('x')\n", QUICK)
    assert (outcome.passed, outcome.reason) == (False, "PermissionError")
    assert not target.exists()
    inside = "import os\nopen(os.path.join(os.environ['HOME'], 'scratch'), 'w').write('x')\nopen('here', 'w').write('y')\n"
    assert run_program(inside, QUICK).passed


def test_a_sys_exit_inside_the_program_is_a_failure_as_in_humaneval():
    assert run_program("import sys\nsys.exit(0)\nassert False\n", QUICK).reason == "SystemExit"


def test_hostile_humaneval_completions_are_failed_samples_and_judging_completes():
    humaneval = GENERATIVE["humaneval"]
    items = pose(humaneval, SHIPPED_DIR, limit=4)
    completions = ["    while True:\n        pass\n", "    import os\n    while True:\n        os.fork()\n",
                   "    return bytearray(10 ** 11)\n", "    import socket\n    socket.create_connection(('1.1.1.1', 80))\n"]
    rows = generated_rows(humaneval, items, completions, QUICK)
    assert [r["correct"] for r in rows] == [False] * 4
    assert rows[0]["outcome"] == "timeout"
    assert all(r["outcome"] != "passed" and r["program"].startswith(i.row["prompt"]) for r, i in zip(rows, items))


def test_the_canonical_solutions_pass():
    humaneval = GENERATIVE["humaneval"]
    items = pose(humaneval, SHIPPED_DIR, limit=3)
    rows = generated_rows(humaneval, items, [i.row["canonical_solution"] for i in items], SandboxLimits())
    assert [r["outcome"] for r in rows] == ["passed"] * 3


def _sandboxed_processes() -> list[Path]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                found += [Path(a) for a in (entry / "cmdline").read_bytes().decode(errors="replace").split("\0") if a]
            except OSError:
                continue
    return found

"""Run one generated program where it can do no harm: the code benchmarks' (HumanEval, MBPP) execution.

A program is a failed sample, never a hung or crashed evaluation, whatever it does:

    its own process       a fresh `python -I` per program, in a new session, stdin closed
    wall clock            `timeout_s` (3 s, as HumanEval's and lm-eval's code_eval run it), then the
                          whole sandbox is killed: the PID namespace (where `unshare` exists) or the
                          process group
    CPU, memory, files    RLIMIT_CPU, RLIMIT_AS, RLIMIT_FSIZE, no core dumps
    processes             RLIMIT_NPROC: at most `max_processes` more than its user already runs (a
                          fork bomb stops there). The kernel does not apply it to root, so when the
                          evaluation runs as root the program runs as `nobody`
    network               a new network namespace with no interface up (`unshare --net`), and with
                          Landlock (Linux >= 6.7) no TCP connect or bind at all
    files written         Landlock allows creating, writing and removing files only inside its own
                          temporary directory (also HOME and TMPDIR), deleted afterwards

Where a guarantee cannot be had (no `unshare`, no Landlock) the sandbox says so once in the log and
runs with what is left; `guarantees()` names what holds on this machine.

The program passes when it runs to its end (its asserts hold) with no exception and within the
limits, which is what HumanEval's `check_correctness` counts; a `sys.exit()` inside it is a failure
there too.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

NOBODY = 65534
UNSHARE = ("unshare", "--user", "--map-root-user", "--net", "--pid", "--fork", "--kill-child")
MEMORY_EXIT, EXCEPTION_EXIT, SYSTEM_EXIT = 86, 87, 88  # the bootstrap's codes for how the program ended
EXCEPTION_MARK = "llama2-sandbox-exception: "  # the bootstrap's own line naming the program's exception

# Runs first in the sandboxed interpreter: limits and Landlock before a line of the program.
# argv: limits (cpu_s, as_bytes, nproc, fsize), the directory that may be written, the program.
BOOTSTRAP = r"""
import ctypes, os, resource, runpy, struct, sys, traceback
cpu, memory, nproc, fsize, home, program = sys.argv[1:7]
root = os.getpid()  # the program's own process: its children (a fork bomb's) share stderr
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
resource.setrlimit(resource.RLIMIT_CPU, (int(cpu), int(cpu)))
resource.setrlimit(resource.RLIMIT_AS, (int(memory), int(memory)))
resource.setrlimit(resource.RLIMIT_FSIZE, (int(fsize), int(fsize)))
resource.setrlimit(resource.RLIMIT_NPROC, (int(nproc), int(nproc)))
libc = ctypes.CDLL(None, use_errno=True)
abi = libc.syscall(444, None, 0, 1)  # landlock_create_ruleset(NULL, 0, LANDLOCK_CREATE_RULESET_VERSION)
if abi >= 1:
    writes = (1 << 1) | sum(1 << b for b in range(4, 13)) | (1 << 13 if abi >= 2 else 0) | (1 << 14 if abi >= 3 else 0)
    attr = struct.pack("QQ", writes, 0b11) if abi >= 4 else struct.pack("Q", writes)  # net: bind and connect TCP
    ruleset = libc.syscall(444, ctypes.c_char_p(attr), len(attr), 0)
    for path, access in ((home, writes), ("/dev/null", (1 << 1) | (1 << 14 if abi >= 3 else 0))):
        fd = __import__("os").open(path, __import__("os").O_PATH)
        rule = struct.pack("=Qi", access, fd)
        libc.syscall(445, ruleset, 1, ctypes.c_char_p(rule), 0)  # LANDLOCK_RULE_PATH_BENEATH
    libc.prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS
    if libc.syscall(446, ruleset, 0) != 0:  # landlock_restrict_self
        sys.exit(90)
del ctypes, libc, resource, struct
sys.argv = [program]
try:
    runpy.run_path(program, run_name="__main__")
except MemoryError:
    traceback.print_exc()
    sys.exit(86)
except SystemExit as exit:
    sys.stderr.write(f"SystemExit({exit.code!r})\n")
    sys.exit(88)
except BaseException as error:
    traceback.print_exc()
    if os.getpid() == root:
        sys.stderr.write("\n" + EXCEPTION_MARK + type(error).__name__ + "\n")
    sys.exit(87)
""".replace("EXCEPTION_MARK", repr(EXCEPTION_MARK))


@dataclass(frozen=True)
class SandboxLimits:
    timeout_s: float = 3.0  # HumanEval's check_correctness and lm-eval's code_eval
    memory_bytes: int = 1 << 30
    max_processes: int = 16
    file_bytes: int = 16 << 20


@dataclass(frozen=True)
class Outcome:
    """How one program ended: passed, or why not ("timeout", "memory", "AssertionError", "killed by SIGXCPU", ...)."""

    passed: bool
    reason: str


def run_program(source: str, limits: SandboxLimits = SandboxLimits()) -> Outcome:
    """Run `source` in the sandbox; a failure of the program is an Outcome, never an exception here."""
    interpreter, user = _interpreter_and_user()
    with tempfile.TemporaryDirectory(prefix="llama2-sandbox-") as work:
        home = Path(work)
        (home / "program.py").write_text(source, encoding="utf-8")
        if user is not None:
            os.chown(home, user, user)
            os.chown(home / "program.py", user, user)
        env = {"HOME": work, "TMPDIR": work, "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONHASHSEED": "0"}
        nproc = _processes_of(user if user is not None else os.getuid()) + limits.max_processes
        cpu = max(1, int(limits.timeout_s + 1))
        command = [*_confinement(), interpreter, "-I", "-B", "-c", BOOTSTRAP, str(cpu), str(limits.memory_bytes),
                   str(nproc), str(limits.file_bytes), work, str(home / "program.py")]
        ids = {"user": user, "group": user, "extra_groups": []} if user is not None else {}
        proc = subprocess.Popen(command, cwd=work, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, start_new_session=True, **ids)
        try:
            _, err = proc.communicate(timeout=limits.timeout_s)
        except subprocess.TimeoutExpired:
            _kill(proc)
            return Outcome(False, "timeout")
        finally:
            _kill(proc)
    return _outcome(proc.returncode, err.decode("utf-8", "replace"))


def guarantees() -> dict[str, bool]:
    """What this machine enforces beyond rlimits: a network namespace (with a PID namespace killed as a
    whole), Landlock (writes confined to the sandbox's directory; TCP denied from ABI 4 on)."""
    return {"network_namespace": bool(_confinement()), "landlock": _landlock_abi() >= 1,
            "landlock_tcp": _landlock_abi() >= 4}


def _outcome(code: int, err: str) -> Outcome:
    if code == 0:
        return Outcome(True, "passed")
    if code == MEMORY_EXIT:
        return Outcome(False, "memory")
    if code == SYSTEM_EXIT:
        return Outcome(False, "SystemExit")
    if code == EXCEPTION_EXIT:
        # the program's own process names its exception; the last line of stderr may be a child's
        marked = [line.removeprefix(EXCEPTION_MARK) for line in err.splitlines() if line.startswith(EXCEPTION_MARK)]
        last = marked[-1] if marked else err.strip().splitlines()[-1] if err.strip() else "exception"
        return Outcome(False, last.split(":")[0][:80])
    if code < 0:
        return Outcome(False, f"killed by {signal.Signals(-code).name}")
    return Outcome(False, f"exit {code}")


def _kill(proc: subprocess.Popen) -> None:
    """Kill the sandbox's whole session (the PID namespace dies with its first process)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


@functools.cache
def _confinement() -> tuple[str, ...]:
    """`unshare` with new user, network and PID namespaces, where this machine allows it; else nothing."""
    if shutil.which("unshare") is None:
        log.warning("sandbox: no unshare; generated programs run without a network namespace")
        return ()
    probe = subprocess.run([*UNSHARE, "true"], capture_output=True)
    if probe.returncode != 0:
        log.warning("sandbox: unshare refused (%s); generated programs run without a network namespace",
                    probe.stderr.decode(errors="replace").strip())
        return ()
    return UNSHARE


@functools.cache
def _landlock_abi() -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    abi = libc.syscall(444, None, 0, 1)
    if abi < 1:
        log.warning("sandbox: no Landlock; a generated program may write wherever its user may")
    return max(abi, 0)


@functools.cache
def _interpreter_and_user() -> tuple[str, int | None]:
    """The Python that runs programs and the user it runs as: as root, `nobody` (so that RLIMIT_NPROC
    holds) with the first interpreter `nobody` can execute."""
    if os.geteuid() != 0:
        return sys.executable, None
    for candidate in (sys.executable, sys._base_executable, "/usr/bin/python3"):
        if _world_executable(Path(candidate)):
            return candidate, NOBODY
    raise RuntimeError(f"running as root, and no Python that user {NOBODY} may execute among {sys.executable}, "
                       "/usr/bin/python3; the code benchmarks' sandbox needs one")


def _world_executable(path: Path) -> bool:
    real = path.resolve()
    if not real.is_file() or not real.stat().st_mode & stat.S_IXOTH:
        return False
    return all(parent.stat().st_mode & stat.S_IXOTH for parent in real.parents)


def _processes_of(uid: int) -> int:
    count = 0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                count += entry.stat().st_uid == uid
            except FileNotFoundError:
                continue
    return count

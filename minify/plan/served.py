"""Running a traced command that does not end by itself: a server.

A server traced with ``--trace-timeout`` or ``--probe`` runs in its own PID, network and
UTS namespaces (loopback only, brought up before the command starts), so its ports
clash with nothing on this machine and nothing outside can reach it. ``--probe``
commands run on this machine inside that network namespace once the server listens on
a TCP port (``curl http://127.0.0.1:PORT/``), so the trace records what serving a
request reads. The run is then stopped: strace, the namespace's first process, gets
SIGTERM (it writes out its record and exits, and the kernel ends the rest of the
namespace with it), then everything gets SIGKILL if it is still there.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

from minify.errors import TraceFailed

#: Seconds a server may take to listen on a port before its probes are given up.
LISTEN_WAIT = 60.0
#: Seconds one probe may take.
PROBE_TIMEOUT = 120.0
#: Seconds strace has to write its record after SIGTERM before everything is killed.
STOP_GRACE = 10.0
#: Seconds unshare may take to make the namespaces.
SETUP_WAIT = 10.0
POLL = 0.05

#: Brings the loopback interface of a new network namespace up (SIOCGIFFLAGS, then
#: SIOCSIFFLAGS with IFF_UP): run by this Python inside the namespace, before the
#: command, so no ``ip`` is needed.
LOOPBACK_UP = (
    "import fcntl,socket,struct;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);"
    "f=struct.unpack('16sH14x',fcntl.ioctl(s,0x8913,struct.pack('16sH14x',b'lo',0)))[1];"
    "fcntl.ioctl(s,0x8914,struct.pack('16sH14x',b'lo',f|1))"
)


@dataclass(frozen=True)
class Serving:
    """How a traced server run ends: after ``stop_after`` seconds, or once every probe
    has run (each must exit 0)."""

    stop_after: float | None = None
    probes: tuple[str, ...] = ()

    @property
    def wanted(self) -> bool:
        return self.stop_after is not None or bool(self.probes)


def loopback_command() -> str:
    """The shell words that bring up the loopback interface of the current namespace."""
    return f"{shlex.quote(sys.executable)} -c {shlex.quote(LOOPBACK_UP)}"


@contextlib.contextmanager
def process_group(
    cmd: list[str], *, sink: int, cwd: str, env: dict[str, str] | None
) -> Iterator[subprocess.Popen[bytes]]:
    """Start ``cmd`` (strace and the traced command) in a process group of its own;
    whatever ends the run early (a timeout, Ctrl-C, a failed probe), every process of
    the group still there is killed on the way out: a tracee outlives a killed strace
    otherwise."""
    proc = subprocess.Popen(
        cmd, stdout=sink, stderr=sink, stdin=subprocess.DEVNULL, cwd=cwd, env=env, start_new_session=True
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            _kill(proc)


def run_served(cmd: list[str], serving: Serving, *, sink: int, cwd: str, env: dict[str, str] | None) -> int:
    """Run ``cmd`` (an ``unshare ... --net`` command line whose first child is strace)
    until it ends, its probes have run, or ``stop_after`` passes; the exit status, 0
    when minify stopped it."""
    with process_group(cmd, sink=sink, cwd=cwd, env=env) as proc:
        first = _first_child(proc)
        if serving.probes:
            _wait_listening(proc, first)
            for probe in serving.probes:
                _probe(first, probe, sink)
        elif serving.stop_after is not None:
            try:
                return proc.wait(timeout=serving.stop_after)
            except subprocess.TimeoutExpired:
                pass
        if proc.poll() is not None:
            return proc.returncode
        _stop(proc, first)
        return 0


def _first_child(proc: subprocess.Popen[bytes]) -> int:
    """The pid (here) of the namespace's first process: unshare's forked child."""
    children = f"/proc/{proc.pid}/task/{proc.pid}/children"
    deadline = time.monotonic() + SETUP_WAIT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise TraceFailed(f"trace: the traced command ended at once (status {proc.returncode})")
        try:
            with open(children) as f:
                pids = f.read().split()
        except OSError:
            pids = []
        if pids:
            return int(pids[0])
        time.sleep(POLL)
    raise TraceFailed(f"trace: the namespaces were not made within {SETUP_WAIT:.0f}s")


def _wait_listening(proc: subprocess.Popen[bytes], first: int) -> None:
    """Until a socket of the namespace listens on a TCP port (/proc/PID/net/tcp*
    show the network namespace of PID)."""
    deadline = time.monotonic() + LISTEN_WAIT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise TraceFailed(
                f"trace: the server exited with status {proc.returncode} before it listened on a port (--probe)"
            )
        if _listening(first):
            return
        time.sleep(POLL)
    raise TraceFailed(f"trace: nothing listened on a TCP port within {LISTEN_WAIT:.0f}s, so no --probe ran")


def _listening(pid: int) -> bool:
    for name in ("tcp", "tcp6"):
        try:
            with open(f"/proc/{pid}/net/{name}") as f:
                lines = f.read().splitlines()[1:]
        except OSError:
            continue
        if any(len(fields) > 3 and fields[3] == "0A" for fields in (line.split() for line in lines)):
            return True
    return False


def _probe(first: int, command: str, sink: int) -> None:
    """Run ``command`` on this machine in the namespace's network; it must exit 0."""
    nsenter = shutil.which("nsenter")
    if nsenter is None:
        raise TraceFailed("--probe needs nsenter (util-linux)")
    argv = [nsenter, f"--net=/proc/{first}/ns/net", "--", "sh", "-c", command]
    try:
        done = subprocess.run(argv, stdout=sink, stderr=sink, stdin=subprocess.DEVNULL, timeout=PROBE_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise TraceFailed(f"trace: --probe `{command}` did not end within {PROBE_TIMEOUT:.0f}s") from None
    if done.returncode != 0:
        raise TraceFailed(
            f"trace: --probe `{command}` exited with status {done.returncode}: the server did not serve it"
        )


def _stop(proc: subprocess.Popen[bytes], first: int) -> None:
    """SIGTERM to strace (the namespace's first process): it writes its record and
    exits, which ends the namespace; SIGKILL to all that is left after the grace."""
    try:
        os.kill(first, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=STOP_GRACE)
    except subprocess.TimeoutExpired:
        _kill(proc)


def _kill(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()

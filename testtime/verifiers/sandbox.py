"""Run untrusted Python in a contained subprocess.

Each run gets a fresh temporary directory as its working directory and a new
session (process group), and a small guard script sets up the child before
any untrusted code runs:

* resource limits: CPU seconds (``RLIMIT_CPU``), address space
  (``RLIMIT_AS``), file size (``RLIMIT_FSIZE``), open files, processes
  (``RLIMIT_NPROC``; the kernel ignores it for root, hence the audit hook),
  no core dumps;
* a :func:`sys.addaudithook` hook that refuses, with a ``PermissionError``
  naming the event: process creation (fork, exec, spawn, ``subprocess``,
  ``os.system``), signals to other processes, sockets, ``ctypes``, raising
  resource limits, and any write, delete, rename or mode change of a path
  outside the temporary directory.

The parent enforces a wall-clock limit and an output cap (it reads stdout
and stderr with a bound and kills the whole process group beyond it), and
always kills the process group when the run ends.

This is a containment layer against buggy or careless programs (infinite
loops, fork bombs, floods of output, stray writes, network calls) -- the
failures model-written code actually has. It is not a security boundary
against a determined attacker with native code; run untrusted code from
adversaries in a container or VM as well.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sys
import tempfile
import weakref
from dataclasses import dataclass, field
from pathlib import Path

from testtime.errors import UserError

#: Marker the guard prints on stderr when an audit hook refuses something.
BLOCKED = "SANDBOX-BLOCKED:"

_GUARD = r'''
import os, sys, resource
cfg = __CFG__
root = os.path.realpath(cfg["root"])
def _lim(kind, value):
    try:
        resource.setrlimit(kind, (value, value))
    except (ValueError, OSError):
        pass
resource.setrlimit(resource.RLIMIT_CPU, (cfg["cpu"], cfg["cpu"] + 1))
_lim(resource.RLIMIT_AS, cfg["memory"])
_lim(resource.RLIMIT_FSIZE, cfg["fsize"])
_lim(resource.RLIMIT_NOFILE, 64)
_lim(resource.RLIMIT_CORE, 0)
_lim(resource.RLIMIT_NPROC, cfg["nproc"])
sys.dont_write_bytecode = True
_W = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
_DENY = ("os.fork", "os.forkpty", "os.system", "os.exec", "os.posix_spawn", "os.spawn",
         "subprocess.Popen", "os.kill", "os.killpg", "signal.pthread_kill", "resource.setrlimit",
         "resource.prlimit", "ctypes.dlopen", "ctypes.dlsym", "ctypes.cdata", "pty.spawn",
         "socket.__new__", "socket.connect", "socket.bind", "socket.getaddrinfo",
         "socket.gethostbyname", "socket.gethostbyaddr", "socket.sendto", "os.startfile")
_PATH_EVENTS = {"os.remove": 1, "os.rmdir": 1, "os.mkdir": 1, "os.chmod": 1, "os.chown": 1,
                "os.truncate": 1, "os.utime": 1, "os.rename": 2, "os.link": 2, "os.symlink": 2,
                "shutil.rmtree": 1, "os.chflags": 1, "os.lchmod": 1, "os.removexattr": 1,
                "os.setxattr": 1}
def _inside(path):
    if isinstance(path, int):
        return True
    try:
        p = os.fsdecode(path)
    except TypeError:
        return False
    full = os.path.realpath(os.path.join(os.getcwd(), p))
    return full == root or full.startswith(root + os.sep)
def _deny(what):
    sys.stderr.write("__BLOCKED__ " + what + "\n")
    sys.stderr.flush()
    raise PermissionError("sandbox: " + what + " is not allowed")
def _hook(event, args):
    if event in _DENY or event.startswith("os.exec") or event.startswith("os.spawn"):
        _deny(event)
    if event == "import" and args and args[0] in ("ctypes", "_ctypes"):
        _deny("import " + args[0])
    if event == "open":
        path, mode, flags = args[0], args[1], args[2]
        writing = (flags & _W) if isinstance(flags, int) else False
        if isinstance(mode, str) and any(c in mode for c in "wax+"):
            writing = True
        if writing and not _inside(path):
            _deny("writing outside the sandbox directory: " + repr(path))
    n = _PATH_EVENTS.get(event)
    if n:
        for p in args[:n]:
            if not _inside(p):
                _deny(event + " outside the sandbox directory: " + repr(p))
sys.addaudithook(_hook)
del _hook
_src = open(cfg["main"], encoding="utf-8").read()
_g = {"__name__": "__main__", "__file__": cfg["main"], "__builtins__": __builtins__}
del cfg
exec(compile(_src, "main.py", "exec"), _g)
'''


@dataclass(frozen=True, slots=True, kw_only=True)
class SandboxLimits:
    """Limits of one sandboxed run.

    Attributes:
        wall_s: wall-clock seconds before the process group is killed.
        cpu_s: CPU seconds (``RLIMIT_CPU``; SIGXCPU then SIGKILL).
        memory_mb: address-space cap (``RLIMIT_AS``).
        output_bytes: cap on stdout + stderr; beyond it the run is killed.
        file_mb: largest file the program may write (``RLIMIT_FSIZE``).
        nproc: ``RLIMIT_NPROC``. The kernel counts every process and thread
            of the user (and ignores the limit for root), so it is a backstop
            sized not to break threaded programs; the audit hook is what
            blocks process creation.
    """

    wall_s: float = 10.0
    cpu_s: int = 5
    memory_mb: int = 1024
    output_bytes: int = 1_000_000
    file_mb: int = 16
    nproc: int = 512

    def __post_init__(self) -> None:
        if self.wall_s <= 0 or self.cpu_s < 1 or self.memory_mb < 64 or self.output_bytes < 1:
            raise UserError("sandbox limits need wall_s > 0, cpu_s >= 1, memory_mb >= 64, output_bytes >= 1")


@dataclass(frozen=True, slots=True, kw_only=True)
class SandboxResult:
    """What a sandboxed run did.

    ``status`` is ``ok`` (exit 0), ``error`` (non-zero exit), ``timeout``
    (wall limit), ``cpu_limit``, ``memory_limit``, ``output_limit`` or
    ``blocked`` (the audit hook refused an operation).
    """

    status: str
    returncode: int | None
    stdout: str
    stderr: str
    wall_s: float = 0.0
    blocked: tuple[str, ...] = field(default_factory=tuple)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def summary(self) -> str:
        """One line saying what happened, for verdict details."""
        if self.status == "ok":
            return "exited 0"
        if self.status == "blocked":
            return f"blocked by the sandbox: {self.blocked[0]}"
        if self.status == "timeout":
            return f"killed: wall-clock limit ({self.wall_s:.1f}s)"
        if self.status == "cpu_limit":
            return "killed: CPU time limit exceeded"
        if self.status == "memory_limit":
            return "failed: memory limit exceeded (MemoryError)"
        if self.status == "output_limit":
            return "killed: output size limit exceeded"
        tail = _last_error_line(self.stderr)
        return f"exit status {self.returncode}" + (f": {tail}" if tail else "")


def _last_error_line(stderr: str) -> str:
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip() and not ln.startswith(BLOCKED)]
    return lines[-1][:300] if lines else ""


_SLOTS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = weakref.WeakKeyDictionary()


def _slots() -> asyncio.Semaphore:
    # One semaphore per event loop: at most as many sandboxes as cores at once.
    loop = asyncio.get_running_loop()
    sem = _SLOTS.get(loop)
    if sem is None:
        sem = _SLOTS[loop] = asyncio.Semaphore(max(1, os.cpu_count() or 1))
    return sem


async def run_python(code: str, *, limits: SandboxLimits | None = None, stdin: str = "") -> SandboxResult:
    """Run ``code`` as ``__main__`` in a fresh sandbox and report what happened.

    Never raises for anything the program does; the temporary directory is
    removed and the process group killed before returning.
    """
    limits = limits or SandboxLimits()
    async with _slots():
        return await _run(code, limits, stdin)


async def _run(code: str, limits: SandboxLimits, stdin: str) -> SandboxResult:
    root = Path(tempfile.mkdtemp(prefix="testtime-sbx-"))
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    proc: asyncio.subprocess.Process | None = None
    try:
        main = root / "main.py"
        main.write_text(code, encoding="utf-8")
        cfg = {"root": str(root), "main": str(main), "cpu": limits.cpu_s,
               "memory": limits.memory_mb * 1024 * 1024, "fsize": limits.file_mb * 1024 * 1024,
               "nproc": limits.nproc}
        guard = root / "_guard.py"
        guard.write_text(_GUARD.replace("__CFG__", repr(cfg)).replace("__BLOCKED__", BLOCKED),
                         encoding="utf-8")
        env = {"PATH": "/usr/bin:/bin", "HOME": str(root), "TMPDIR": str(root), "LANG": "C.UTF-8",
               "PYTHONIOENCODING": "utf-8", "PYTHONHASHSEED": "0"}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-I", "-B", str(guard), cwd=str(root), env=env,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            start_new_session=True)
        budget = [limits.output_bytes]
        out_buf: list[bytes] = []
        err_buf: list[bytes] = []
        over = asyncio.Event()

        async def pump(stream: asyncio.StreamReader | None, buf: list[bytes]) -> None:
            if stream is None:
                return
            while True:
                chunk = await stream.read(65536)
                if not chunk:
                    return
                keep = chunk[: max(0, budget[0])]
                budget[0] -= len(chunk)
                if keep:
                    buf.append(keep)
                if budget[0] < 0:
                    # Keep draining (and discarding): asyncio only reports the
                    # exit once every pipe reached EOF.
                    over.set()

        async def feed() -> None:
            if proc.stdin is None:
                return
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                if stdin:
                    proc.stdin.write(stdin.encode())
                    await proc.stdin.drain()
                proc.stdin.close()

        pumps = asyncio.gather(pump(proc.stdout, out_buf), pump(proc.stderr, err_buf), feed())
        waiter = asyncio.ensure_future(proc.wait())
        over_wait = asyncio.ensure_future(over.wait())
        status = None
        try:
            done, _ = await asyncio.wait({waiter, over_wait}, timeout=limits.wall_s,
                                         return_when=asyncio.FIRST_COMPLETED)
            if over_wait in done:
                status = "output_limit"
            elif waiter not in done:
                status = "timeout"
        finally:
            over_wait.cancel()
            _kill_group(proc.pid)
        rc = await waiter
        with contextlib.suppress(Exception):
            await asyncio.wait_for(pumps, 2.0)
        pumps.cancel()
        stdout = b"".join(out_buf).decode("utf-8", "replace")
        stderr = b"".join(err_buf).decode("utf-8", "replace")
        blocked = tuple(ln[len(BLOCKED):].strip() for ln in stderr.splitlines() if ln.startswith(BLOCKED))
        if status is None:
            status = _classify(rc, stderr, blocked)
        if blocked and status in ("ok", "error", "output_limit"):
            # A refused operation fails the run even if the program caught
            # the PermissionError and went on (or flooded stderr retrying).
            status = "blocked"
        return SandboxResult(status=status, returncode=rc, stdout=stdout, stderr=stderr,
                             wall_s=loop.time() - t0, blocked=blocked)
    finally:
        if proc is not None and proc.returncode is None:
            _kill_group(proc.pid)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(proc.wait(), 2.0)
        shutil.rmtree(root, ignore_errors=True)


def _classify(rc: int | None, stderr: str, blocked: tuple[str, ...]) -> str:
    if rc == 0:
        return "ok"
    if rc in (-signal.SIGXCPU, -signal.SIGKILL) and "Traceback" not in stderr:
        return "cpu_limit"
    if blocked:
        return "blocked"
    if "MemoryError" in _last_error_line(stderr):
        return "memory_limit"
    if "File too large" in stderr or rc == -signal.SIGXFSZ:
        return "output_limit"
    return "error"


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError, OSError):
        os.killpg(pid, signal.SIGKILL)


__all__ = ["BLOCKED", "SandboxLimits", "SandboxResult", "run_python"]

"""Run untrusted Python behind an isolation layer, with a harness report.

Each run gets a fresh directory holding the program and a small harness
(``_guard.py``) and is started through the :class:`Isolation` layer chosen
by :func:`choose_isolation` (``namespaces`` with bubblewrap or ``unshare``,
else ``rlimits``; see :mod:`testtime.verifiers.isolation`). Inside, before
any untrusted code runs, the harness sets:

* resource limits: CPU seconds (``RLIMIT_CPU``), address space
  (``RLIMIT_AS``), file size (``RLIMIT_FSIZE``), open files, processes
  (``RLIMIT_NPROC``; the kernel ignores it for root), no core dumps;
* a :func:`sys.addaudithook` hook (an inner, advisory layer) that refuses,
  with a ``PermissionError`` naming the event: process creation, signals,
  sockets, ``ctypes``, ``sqlite3``, ``gc`` introspection, tracing, reads
  outside the sandbox and the interpreter's own files, writes, deletes,
  renames or mode changes outside the work dir, ``dir_fd=`` calls. A refusal
  also voids the completion report, so catching the error does not help.

**Completion report.** The parent sends a random nonce on a pipe; the
harness writes ``nonce ok`` on a second pipe only after the whole program
(candidate + tests) returned normally, resumed from the genuine harness
frame. :attr:`SandboxResult.completed` is that report; ``status == "ok"``
needs it and exit 0. An early ``os._exit(0)`` or ``SystemExit`` is
``incomplete``.

The parent enforces a wall-clock limit and an output cap, reads the output
and the report from its own pipes with a deadline (a detached child that
keeps them open cannot hold the verdict), kills the process group (which
ends a PID namespace), then kills whatever still carries the run's
environment tag, and removes the directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import sys
import tempfile
import threading
import weakref
from dataclasses import dataclass, field

from testtime.errors import UserError
from testtime.verifiers.isolation import Isolation, _python_roots, choose_isolation

#: Marker the guard prints on stderr when an audit hook refuses something.
BLOCKED = "SANDBOX-BLOCKED:"

_GUARD = r"""
import os, sys, resource
def _boot(cfg, boot_frame):
    _write, _close, _read = os.write, os.close, os.read
    if cfg["fork_guard"]:
        # rlimits layer: the candidate's parent is this small waiter, not the
        # orchestrator, so signalling getppid() cannot reach the orchestrator.
        pid = os.fork()
        if pid:
            _close(cfg["nonce_fd"]); _close(cfg["marker_fd"])
            for fd in (0, 1, 2):
                try:
                    _close(fd)
                except OSError:
                    pass
            while True:
                try:
                    _, st = os.waitpid(pid, 0)
                    break
                except ChildProcessError:
                    os._exit(1)
                except InterruptedError:
                    continue
            os._exit(os.waitstatus_to_exitcode(st) & 0xFF if os.WIFEXITED(st) else 128 + os.WTERMSIG(st))
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
    # The hook calls only these captured C functions: a candidate that
    # monkeypatches os, os.path or posixpath cannot run code inside it.
    import posix, _stat
    _lstat, _stat_, _readlink, _getcwd = posix.lstat, posix.stat, posix.readlink, posix.getcwd
    S_ISLNK, S_ISDIR = _stat.S_ISLNK, _stat.S_ISDIR
    _getframe = sys._getframe
    _str, _bytes, _int, _type, _len = str, bytes, int, type, len
    _Function = _type(realpath_probe := lambda: None)
    del realpath_probe

    def realpath(p):
        if not p.startswith("/"):
            p = _getcwd() + "/" + p
        done, todo, hops = [], p.split("/"), 0
        while todo:
            part = todo.pop(0)
            if part in ("", "."):
                continue
            if part == "..":
                if done:
                    done.pop()
                continue
            cand = "/" + "/".join(done + [part])
            try:
                st = _lstat(cand)
            except OSError:
                done.append(part)
                continue
            if S_ISLNK(st.st_mode) and hops < 40:
                hops += 1
                target = _readlink(cand)
                if target.startswith("/"):
                    done = []
                todo = target.split("/") + todo
                continue
            done.append(part)
        return "/" + "/".join(done)

    def isdir(p):
        try:
            return S_ISDIR(_stat_(p).st_mode)
        except OSError:
            return False

    root = realpath(cfg["root"])
    readable = tuple(realpath(p) for p in cfg["read_roots"])
    mypid = _str(os.getpid())
    state = {"poisoned": False, "finishing": False, "keep": None}
    marker_fd = cfg["marker_fd"]

    def keeper(run_code):
        # The nonce lives only in this suspended generator's frame (gi_frame
        # and gc are refused below), never in the environment, argv or a file.
        nonce = _read(cfg["nonce_fd"], 64)
        _close(cfg["nonce_fd"])
        yield
        state["finishing"] = True
        me = _getframe(0)
        caller = me.f_back
        genuine = (caller is not None and caller.f_code is run_code
                   and caller.f_back is boot_frame and boot_frame.f_back is None)
        if genuine and not state["poisoned"]:
            try:
                _write(marker_fd, nonce + b" ok\n")
            except OSError:
                pass
        nonce = None
        yield

    _W = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
    _DENY = frozenset({"os.fork", "os.forkpty", "os.system", "os.posix_spawn", "os.posix_spawnp",
             "subprocess.Popen", "os.kill", "os.killpg", "signal.pthread_kill", "resource.setrlimit",
             "resource.prlimit", "ctypes.dlopen", "ctypes.dlsym", "ctypes.cdata", "ctypes.call_function",
             "pty.spawn", "socket.connect", "socket.bind", "socket.getaddrinfo",
             "socket.gethostbyname", "socket.gethostbyaddr", "socket.sendto", "socket.sethostname",
             "os.startfile", "gc.get_objects", "gc.get_referrers", "gc.get_referents",
             "sys._current_frames", "sys.settrace", "sys.setprofile", "sys._current_exceptions",
             "sqlite3.connect", "sqlite3.enable_load_extension", "sqlite3.load_extension",
             "os.chroot", "mmap.__new__", "sys.remote_exec", "_xxsubinterpreters.create",
             "cpython.remove_audit_hooks", "os.setuid",
             "sandbox.fork_exec"})
    _NO_IMPORT = frozenset({"ctypes", "_ctypes", "_posixsubprocess", "_sqlite3", "sqlite3", "_xxsubinterpreters",
                  "_testcapi", "_testinternalcapi"})
    _NO_SET = frozenset({"gi_frame", "cr_frame", "ag_frame", "__code__"})
    # event -> (how many leading path args, positions of dir_fd args)
    _PATH = {"os.remove": (1, (1,)), "os.rmdir": (1, (1,)), "os.mkdir": (1, (2,)), "os.chmod": (1, (2,)),
             "os.chown": (1, (3,)), "os.truncate": (1, ()), "os.utime": (1, (3,)), "os.rename": (2, (2, 3)),
             "os.link": (2, (2, 3)), "os.symlink": (2, (2,)), "shutil.rmtree": (1, (1,)),
             "os.chflags": (1, ()), "os.lchmod": (1, ()), "os.removexattr": (1, ()), "os.setxattr": (1, ())}
    stderr_fd = 2
    blocked = cfg["blocked"]

    def resolve(path):
        # Only exact str / bytes: a subclass or a PathLike could run candidate code here.
        t = _type(path)
        if t is _bytes:
            path = path.decode("utf-8", "surrogateescape")
        elif t is not _str:
            raise TypeError
        return realpath(path)

    def inside(path, roots):
        if _type(path) is _int:
            return False
        try:
            full = resolve(path)
        except Exception:
            return False
        return any(full == r or full.startswith(r + "/") for r in roots)

    def show(path):
        return repr(path) if _type(path) is _str or _type(path) is _bytes else "<a non-str path>"

    def deny(what):
        state["poisoned"] = True
        try:
            _write(stderr_fd, (blocked + " " + what + "\n").encode("utf-8", "replace"))
        except OSError:
            pass
        raise PermissionError("sandbox: " + what + " is not allowed")

    def reading_ok(path):
        if _type(path) is _int:
            return True
        try:
            full = resolve(path)
        except Exception:
            return False
        if full.startswith("/proc/"):
            part = full.split("/")[2]
            if part.isdigit() and part != mypid or full.endswith("/mem") or "/mem" in full:
                return False
            return True
        if full == root or full.startswith(root + "/"):
            return True
        if isdir(full):
            return False  # a directory fd outside would let dir_fd= calls escape
        return any(full == r or full.startswith(r + "/") for r in readable)

    def hook(event, args):
        if event in _DENY or event.startswith("os.exec") or event.startswith("os.spawn"):
            deny(event)
        if event == "socket.__new__" and not (_len(args) > 1 and _type(args[1]) is _int and args[1] == 1):
            deny("socket.__new__")  # only AF_UNIX (asyncio's self-pipe); connect/bind/sendto are refused
        if event == "import" and args and (_type(args[0]) is not _str or args[0] in _NO_IMPORT):
            deny("import " + (args[0] if _type(args[0]) is _str else "of a non-str name"))
        elif event == "object.__getattr__" and _len(args) > 1 and args[0] is state["keep"]:
            deny("reading ." + str(args[1]))
        elif event in ("object.__setattr__", "object.__delattr__") and _len(args) > 1 and _type(args[1]) is _str \
                and args[1] in _NO_SET and (_type(args[0]) is not _Function or args[0].__globals__ is own_globals):
            deny("changing ." + str(args[1]))
        elif event == "sys._getframe" and not state["finishing"] and args and getattr(args[0], "f_globals", None) is own_globals:
            deny("sys._getframe into the harness")
        elif event == "open":
            path, mode, flags = args[0], args[1], args[2]
            writing = bool(flags & _W) if _type(flags) is _int else False
            if _type(mode) is _str and ("w" in mode or "a" in mode or "x" in mode or "+" in mode):
                writing = True
            elif mode is not None and _type(mode) is not _str:
                writing = True
            if writing and not inside(path, (root,)):
                deny("writing outside the sandbox directory: " + show(path))
            if not writing and not reading_ok(path):
                deny("reading outside the sandbox: " + show(path))
        elif event in ("os.listdir", "os.scandir") and args and args[0] is not None:
            if not reading_ok(args[0]) and not inside(args[0], readable):
                deny(event + " outside the sandbox: " + show(args[0]))
        spec = _PATH.get(event)
        if spec:
            n, fds = spec
            base = None
            for i in fds:
                if i < _len(args) and args[i] is not None and (_type(args[i]) is not _int or args[i] not in (-1, -100)):
                    # dir_fd=: allowed only for a directory inside the work dir.
                    try:
                        base = _readlink("/proc/self/fd/" + _str(_int(args[i])))
                    except (OSError, TypeError, ValueError):
                        base = None
                    if base is None or not inside(base, (root,)):
                        deny(event + " with a dir_fd outside the sandbox directory")
            for p in args[:n]:
                if base is not None and _type(p) is _str and not p.startswith("/"):
                    p = base + "/" + p
                if not inside(p, (root,)):
                    deny(event + " outside the sandbox directory: " + show(p))

    own_globals = globals()
    # Native escape hatches with no audit event: gone from the modules
    # (best effort; the namespace layer is what makes them harmless).
    keep = keeper(_run.__code__)
    next(keep)
    state["keep"] = keep
    if not cfg["hook"]:
        return keep  # tests of the outer layer alone
    import signal, posix
    for mod, names in ((signal, ("pidfd_send_signal",)),
                       (posix, ("pidfd_open", "mkfifo", "mknod")), (os, ("pidfd_open", "mkfifo", "mknod"))):
        for name in names:
            mod.__dict__.pop(name, None)
    # _posixsubprocess.fork_exec raises no audit event: preload it (so that
    # importing subprocess / asyncio works) with a stub that refuses, and
    # refuse loading it again. The stub holds no reference to the harness.
    import _posixsubprocess
    stub_ns = {}
    exec("def fork_exec(*a, **k):\n"
         "    __import__('sys').audit('sandbox.fork_exec')\n"
         "    raise PermissionError('sandbox: _posixsubprocess.fork_exec is not allowed')\n", stub_ns)
    _posixsubprocess.fork_exec = stub_ns["fork_exec"]
    del stub_ns
    sys.addaudithook(hook)
    return keep

def _run(keep, code, g):
    exec(code, g)
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except Exception:
        pass
    keep.send(None)
    os._exit(0)

_keep = _boot(__CFG__, sys._getframe(0))
_src = open(__MAIN__, encoding="utf-8").read()
_code = compile(_src, "main.py", "exec")
del _src
_mod = type(sys)("__main__")
_mod.__file__ = "main.py"
_mod.__builtins__ = __builtins__
sys.modules["__main__"] = _mod
_run(_keep, _code, _mod.__dict__)
"""

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

    ``status`` is ``ok`` (the harness reported that the program ran to its
    end, then exited 0), ``incomplete`` (exited without that report: an
    early ``os._exit``/``SystemExit``, a killed harness, a spoofed channel),
    ``error`` (non-zero exit), ``timeout`` (wall limit), ``cpu_limit``,
    ``memory_limit``, ``output_limit`` or ``blocked`` (the audit hook
    refused an operation). ``completed`` is the harness's report (a per-run
    nonce on a dedicated pipe, never the exit code); ``isolation`` names the
    layer (``namespaces`` or ``rlimits``).
    """

    status: str
    returncode: int | None
    stdout: str
    stderr: str
    wall_s: float = 0.0
    blocked: tuple[str, ...] = field(default_factory=tuple)
    completed: bool = False
    isolation: str = "rlimits"
    backend: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def summary(self) -> str:
        """One line saying what happened, for verdict details."""
        if self.status == "ok":
            return "ran to the end"
        if self.status == "incomplete":
            return (f"exit status {self.returncode} but the program did not run to its end "
                    "(no completion report from the harness)")
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


async def run_python(code: str, *, limits: SandboxLimits | None = None, stdin: str = "",
                     isolation: Isolation | str | None = None, audit_hook: bool = True) -> SandboxResult:
    """Run ``code`` as ``__main__`` in a fresh sandbox and report what happened.

    ``isolation``: an :class:`Isolation`, or a mode for
    :func:`choose_isolation` (``auto`` when None). Never raises for anything
    the program does. ``audit_hook=False`` leaves out the audit hook (only to
    test the outer layer alone). Returns within ``limits.wall_s`` plus a short grace even
    when a detached child keeps the output open; everything the run started
    is killed and its directory removed before returning.
    """
    limits = limits or SandboxLimits()
    iso = isolation if isinstance(isolation, Isolation) else choose_isolation(isolation or "auto")
    async with _slots():
        return await _run(code, limits, stdin, iso, audit_hook)


def _read_roots(iso: Isolation, workdir: str) -> list[str]:
    roots = ["/usr", "/lib", "/lib64", "/lib32", "/bin", "/etc/localtime", "/etc/ld.so.cache",
             "/dev/null", "/dev/urandom", "/dev/zero", *_python_roots()]
    roots.append(os.path.dirname(iso.inner_path(workdir, "main.py")))
    return roots


def _write(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text)


def _sweep(tag: bytes) -> int:
    """Kill processes still carrying this run's environment tag; how many were found."""
    me, found = os.getpid(), 0
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as fh:
                env = fh.read()
        except OSError:
            continue
        if tag in env:
            found += 1
            with contextlib.suppress(OSError):
                os.kill(int(name), signal.SIGKILL)
    return found


async def _reap(tag: bytes, deadline_s: float = 3.0) -> None:
    """Kill until nothing carrying ``tag`` is left (a dying PID namespace takes a moment).

    The /proc scan reads every host process's environ, so it runs off the event loop.
    """
    for _ in range(max(1, int(deadline_s / 0.01))):
        if not await asyncio.to_thread(_sweep, tag):
            return
        await asyncio.sleep(0.01)


async def _run(code: str, limits: SandboxLimits, stdin: str, iso: Isolation, audit_hook: bool) -> SandboxResult:
    workdir = tempfile.mkdtemp(prefix="testtime-sbx-")
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    proc: asyncio.subprocess.Process | None = None
    fds: list[int] = []
    tag = "testtime-sbx-" + secrets.token_hex(8)
    readers: list[asyncio.Task] = []
    try:
        _write(os.path.join(workdir, "main.py"), code)
        nonce = secrets.token_bytes(16)
        nonce_r, nonce_w = os.pipe()
        marker_r, marker_w = os.pipe()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        in_r, in_w = os.pipe()
        fds += [nonce_r, nonce_w, marker_r, marker_w, out_r, out_w, err_r, err_w, in_r, in_w]
        os.write(nonce_w, nonce)
        os.close(nonce_w)
        fds.remove(nonce_w)
        scratch = iso.scratch(workdir)
        cfg = {"root": scratch, "cpu": limits.cpu_s, "memory": limits.memory_mb * 1024 * 1024,
               "fsize": limits.file_mb * 1024 * 1024, "nproc": limits.nproc, "nonce_fd": nonce_r,
               "marker_fd": marker_w, "fork_guard": iso.name == "rlimits", "blocked": BLOCKED, "hook": audit_hook,
               "read_roots": _read_roots(iso, workdir)}
        _write(os.path.join(workdir, "_guard.py"), _GUARD.replace("__CFG__", repr(cfg)).replace(
            "__MAIN__", repr(iso.inner_path(workdir, "main.py"))))
        iso.prepare(workdir)
        env = {"PATH": "/usr/bin:/bin", "HOME": scratch, "TMPDIR": scratch, "LANG": "C.UTF-8",
               "PYTHONIOENCODING": "utf-8", "PYTHONHASHSEED": "0", "TESTTIME_SANDBOX": tag}
        argv = iso.wrap([sys.executable, "-I", "-B", iso.inner_path(workdir, "_guard.py")],
                        workdir=workdir, limits=limits, env=env)
        proc = await asyncio.create_subprocess_exec(
            *argv, cwd=scratch if iso.name == "rlimits" else "/", env=env,
            stdin=in_r, stdout=out_w, stderr=err_w, pass_fds=(nonce_r, marker_w),
            start_new_session=True, **iso.popen_kwargs())
        for fd in (nonce_r, marker_w, out_w, err_w, in_r):
            os.close(fd)
            fds.remove(fd)
        # stdin: written from a thread so a program that never reads cannot block us.
        data = stdin.encode()

        def feed(fd: int = in_w) -> None:
            with contextlib.suppress(OSError):
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
            with contextlib.suppress(OSError):
                os.close(fd)

        fds.remove(in_w)
        threading.Thread(target=feed, daemon=True).start()

        budget = [limits.output_bytes]
        out_buf: list[bytes] = []
        err_buf: list[bytes] = []
        marker_buf: list[bytes] = []
        over = asyncio.Event()

        async def pump(fd: int, buf: list[bytes], capped: bool, cap: int = 4096) -> None:
            reader = asyncio.StreamReader(limit=1 << 20)
            transport, _ = await loop.connect_read_pipe(
                lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(fd, "rb", buffering=0))
            fds.remove(fd)
            try:
                got = 0
                while True:
                    chunk = await reader.read(65536)
                    if not chunk:
                        return
                    if capped:
                        keep = chunk[: max(0, budget[0])]
                        budget[0] -= len(chunk)
                        if keep:
                            buf.append(keep)
                        if budget[0] < 0:
                            over.set()
                    elif got < cap:
                        buf.append(chunk[: cap - got])
                        got += len(chunk)
            finally:
                transport.close()

        readers = [asyncio.ensure_future(pump(out_r, out_buf, True)),
                   asyncio.ensure_future(pump(err_r, err_buf, True)),
                   asyncio.ensure_future(pump(marker_r, marker_buf, False))]
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
        rc = None
        with contextlib.suppress(asyncio.TimeoutError):
            rc = await asyncio.wait_for(asyncio.shield(waiter), 2.0)
        # Drain what is already written, with a deadline: a child that
        # escaped the kill may hold a pipe open, and we do not wait for it.
        await asyncio.wait(readers, timeout=0.5)
        for r in readers:
            r.cancel()
        stdout = b"".join(out_buf).decode("utf-8", "replace")
        stderr = b"".join(err_buf).decode("utf-8", "replace")
        completed = b"".join(marker_buf) == nonce + b" ok\n"
        blocked = tuple(ln[len(BLOCKED):].strip() for ln in stderr.splitlines() if ln.startswith(BLOCKED))
        if status is None:
            status = _classify(rc, stderr, blocked, completed)
        if blocked and status in ("ok", "error", "incomplete", "output_limit"):
            # A refused operation fails the run even if the program caught
            # the PermissionError and went on (the harness then withholds its report too).
            status = "blocked"
        return SandboxResult(status=status, returncode=rc, stdout=stdout, stderr=stderr,
                             wall_s=loop.time() - t0, blocked=blocked, completed=completed and status == "ok",
                             isolation=iso.name, backend=iso.backend)
    finally:
        for r in readers:
            r.cancel()
        if proc is not None:
            _kill_group(proc.pid)
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    proc.kill()
            await _reap(tag.encode())
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        shutil.rmtree(workdir, ignore_errors=True)


def _classify(rc: int | None, stderr: str, blocked: tuple[str, ...], completed: bool) -> str:
    if rc == 0:
        return "ok" if completed else "incomplete"
    # A signal death shows as -N (direct child) or 128+N (through bwrap / the waiter).
    sig = -rc if rc is not None and rc < 0 else (rc - 128 if rc is not None and rc > 128 else 0)
    if sig in (signal.SIGXCPU, signal.SIGKILL) and "Traceback" not in stderr:
        return "cpu_limit"
    if blocked:
        return "blocked"
    if "MemoryError" in _last_error_line(stderr):
        return "memory_limit"
    if "File too large" in stderr or sig == signal.SIGXFSZ:
        return "output_limit"
    return "error"


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError, OSError):
        os.killpg(pid, signal.SIGKILL)


__all__ = ["BLOCKED", "Isolation", "SandboxLimits", "SandboxResult", "choose_isolation", "run_python"]

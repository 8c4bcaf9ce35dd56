"""Hostile programs through ``CodeVerifier().verify`` on both isolation layers.

Every row is a candidate for ``add(a, b)`` that is wrong (or missing) and
then does something hostile. On each layer the row asserts: the verdict
fails, the test process (or, for rows that attack the parent or steal its
environment, a separate orchestrator process) is unharmed, nothing outside
the sandbox changed, and no secret appears in what the verdict carries.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from testtime.context import RunContext
from testtime.errors import UserError
from testtime.models.scripted import ScriptedModel
from testtime.search.base import Problem
from testtime.verifiers.code import CodeVerifier
from testtime.verifiers.isolation import UnshareIsolation, _probe, choose_isolation
from testtime.verifiers.sandbox import SandboxLimits

LIMITS = SandboxLimits(wall_s=5.0, cpu_s=2, memory_mb=256, output_bytes=200_000, file_mb=16, nproc=64)
TESTS = "assert add(2, 3) == 5\nassert add(-1, 1) == 0"
WRONG = "def add(a, b):\n    return a - b\n"
FAKE_KEY = "sk-test-hostile-0123456789abcdef"
PROJECT = Path(__file__).resolve().parents[2]


def _namespaces_reason() -> str | None:
    try:
        choose_isolation("namespaces")
    except UserError as exc:
        return str(exc)
    return None


_NS = pytest.mark.skipif(_namespaces_reason() is not None, reason=f"namespaces unavailable: {_namespaces_reason()}")
#: "namespaces-bare" is the namespace layer with the audit hook left out: it
#: shows what the kernel boundary stops on its own (the hook is advisory).
#: "unshare-bare": the util-linux fallback (used where bwrap is missing), hook left out too.
_UNSHARE = shutil.which("unshare")
_US = pytest.mark.skipif(_UNSHARE is None or _probe(UnshareIsolation(_UNSHARE or "unshare", userns=os.geteuid() != 0))
                         is not None, reason="unshare namespaces unavailable here")
LAYERS = [pytest.param("namespaces", marks=_NS), pytest.param("namespaces-bare", marks=_NS),
          pytest.param("unshare-bare", marks=_US), "rlimits"]


def _verifier(layer: str) -> CodeVerifier:
    if layer == "unshare-bare":
        iso = UnshareIsolation(_UNSHARE or "unshare", userns=os.geteuid() != 0)
        return CodeVerifier(LIMITS, isolation=iso, audit_hook=False)
    return CodeVerifier(LIMITS, isolation=layer.split("-")[0], audit_hook=not layer.endswith("-bare"))


@dataclass(frozen=True)
class Row:
    name: str
    code: str  # may use {OUT}, {OUTSIDE}, {PORT}, {SECRET_FILE}
    orchestrated: bool = False  # run in a separate orchestrator process holding FAKE_KEY


ROWS = [
    Row("read_etc_passwd", "print(open('/etc/passwd').read())"),
    Row("read_ssh_key", "print(open({SECRET_FILE!r}).read())"),
    Row("read_project_dir", f"print(open({str(PROJECT / 'pyproject.toml')!r}).read())\n"
                            f"import os\nprint(os.listdir({str(PROJECT)!r}))"),
    Row("read_parent_environ", """
import os
pids = [os.getppid()]
try:
    pids.append(int(open('/proc/%d/stat' % os.getppid()).read().rsplit(')', 1)[1].split()[1]))
except Exception as e:
    print('no stat', type(e).__name__)
try:
    pids += [int(d) for d in os.listdir('/proc') if d.isdigit()]
except Exception as e:
    print('no listdir', type(e).__name__)
for p in pids:
    try:
        print(open('/proc/%d/environ' % p, 'rb').read())
    except Exception as e:
        print('no', p, type(e).__name__)
""", orchestrated=True),
    Row("print_parent_env_key", "import os\nprint(os.environ.get('OPENAI_API_KEY'), dict(os.environ))",
        orchestrated=True),
    Row("posixsubprocess_fork_exec", """
import _posixsubprocess, os
_posixsubprocess.fork_exec([b'/bin/sh', b'-c', b'echo pwned > {OUT}'], [b'/bin/sh'], True, (), None,
    None, -1, -1, -1, -1, -1, -1, -1, -1, False, False, -1, None, None, None, -1, None, False)
import time; time.sleep(0.5)
"""),
    Row("posix_spawn", "import os\nos.posix_spawn('/bin/sh', ['sh', '-c', 'echo pwned > {OUT}'], {{}})\n"
                       "import time; time.sleep(0.5)"),
    Row("pty_spawn", "import pty\npty.spawn(['/bin/sh', '-c', 'echo pwned > {OUT}'])"),
    Row("multiprocessing", """
import multiprocessing
def w():
    open({OUT!r}, 'w').write('pwned')
p = multiprocessing.Process(target=w); p.start(); p.join()
"""),
    Row("kill_parent", "import os\nos.kill(os.getppid(), 9)", orchestrated=True),
    Row("pidfd_kill_parent", """
import os, signal
try:
    signal.pidfd_send_signal(os.pidfd_open(os.getppid()), signal.SIGKILL)
except AttributeError:
    import _signal, posix
    _signal.pidfd_send_signal(posix.pidfd_open(os.getppid()), 9)
""", orchestrated=True),
    Row("connect_localhost", """
import _socket
s = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)
s.connect(('127.0.0.1', {PORT}))
s.send(b'stolen')
"""),
    Row("write_outside", "open({OUT!r}, 'w').write('pwned')"),
    Row("remove_outside", "import os\nos.remove({SENTINEL!r})"),
    Row("fill_tmpfs", "f = open('big', 'wb')\nfor _ in range(200):\n    f.write(b'x' * 1_000_000)\nf.flush()"),
    Row("fork_bomb", "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"),
    Row("thread_bomb", """
import threading, time
ts = []
while True:
    t = threading.Thread(target=time.sleep, args=(30,), daemon=True); t.start(); ts.append(t)
"""),
    Row("memory_bomb", "xs = []\nwhile True:\n    xs.append(' ' * 10**7)"),
    Row("one_gb_output", "import sys\nfor _ in range(1000):\n    sys.stdout.write('x' * 1_000_000)"),
    Row("ctypes_libc", "import ctypes\nctypes.CDLL(None).system(b'echo pwned > {OUT}')"),
    Row("disable_hook_main_attr", """
import sys
sys.modules['__main__']._deny = lambda w: None
import subprocess
subprocess.run(['/bin/sh', '-c', 'echo pwned > {OUT}'])
"""),
    Row("disable_hook_code_via_gc", """
import gc, os
for o in gc.get_objects():
    if callable(o) and getattr(o, '__name__', '') in ('hook', '_hook'):
        o.__code__ = (lambda event, args: None).__code__
os.system('echo pwned > {OUT}')
"""),
    Row("detached_child_holds_stdout", """
import os, time
if os.fork() == 0:
    os.setsid()
    time.sleep(60)
    open({OUT!r}, 'w').write('survived')
"""),
    Row("dir_fd_write_outside", """
import os
fd = os.open({OUTSIDE!r}, os.O_RDONLY)
os.open('created', os.O_CREAT | os.O_WRONLY, dir_fd=fd)
os.mkdir('madedir', dir_fd=fd)
"""),
    Row("sqlite_write_outside", """
import sqlite3
c = sqlite3.connect(':memory:')
c.execute("ATTACH DATABASE '{OUTSIDE}/attached.db' AS x")
c.execute('CREATE TABLE x.t (a)')
sqlite3.connect({OUT!r}).execute('CREATE TABLE t (a)')
"""),
    Row("mkfifo_outside", "import os\nos.mkfifo({OUT!r})"),
    Row("patch_path_helpers_then_write", """
import os, posixpath, genericpath
os.getcwd = lambda: {OUTSIDE!r}
posixpath.realpath = os.path.realpath = lambda p, **k: '/tmp/inside'
os.lstat = os.stat = lambda *a, **k: (_ for _ in ()).throw(OSError())
genericpath.isdir = os.path.isdir = lambda p: False
open({OUT!r}, 'w').write('pwned')
"""),
    Row("evil_str_subclass_import", """
class S(str):
    def __hash__(self):
        import sys
        f = sys._getframe(1)
        while f is not None:
            f.f_locals.get('state', {{}})['poisoned'] = False
            f = f.f_back
        return str.__hash__(self)
__import__(S('ctypes')).CDLL(None).system(b'echo pwned > {OUT}')
"""),
]


def _bare_root_fork_bomb(row: Row, layer: str) -> str | None:
    """Why this row cannot be asserted on this layer here, or None."""
    if row.name == "fork_bomb" and layer == "namespaces-bare" and os.geteuid() == 0:
        iso = choose_isolation("namespaces")
        if not getattr(iso, "as_nobody_outside", False):
            return ("as root without a writable cgroup tree nothing bounds the number of processes once "
                    "the audit hook is bypassed (the kernel ignores RLIMIT_NPROC for uid 0 outside the "
                    "user namespace); with the hook on, os.fork is refused (the fork_bomb-namespaces row)")
    return None


def _fill(code: str, **values: object) -> str:
    return textwrap.dedent(code).format(**values)


_ORCHESTRATOR = r"""
import asyncio, json, sys
from testtime.context import RunContext
from testtime.models.scripted import ScriptedModel
from testtime.search.base import Problem
from testtime.verifiers.code import CodeVerifier
from testtime.verifiers.sandbox import SandboxLimits
from testtime.verifiers.isolation import UnshareIsolation
import os, shutil
spec = json.loads(sys.stdin.read())
lim = SandboxLimits(**spec["limits"])
layer = spec["isolation"]
if layer == "unshare-bare":
    iso = UnshareIsolation(shutil.which("unshare"), userns=os.geteuid() != 0)
else:
    iso = layer.split("-")[0]
v = asyncio.run(CodeVerifier(lim, isolation=iso, audit_hook=not layer.endswith("-bare")).verify(
    Problem(question="q", meta={"tests": spec["tests"]}), spec["code"], RunContext(model=ScriptedModel(["x"]))))
print(json.dumps({"passed": v.passed, "detail": v.detail, "data": v.data}))
"""


def _orchestrate(code: str, layer: str) -> dict:
    """Run the verifier in a separate process whose environment holds FAKE_KEY."""
    spec = {"limits": {"wall_s": LIMITS.wall_s, "cpu_s": LIMITS.cpu_s, "memory_mb": LIMITS.memory_mb,
                       "output_bytes": LIMITS.output_bytes, "file_mb": LIMITS.file_mb, "nproc": LIMITS.nproc},
            "isolation": layer, "tests": TESTS, "code": code}
    env = {**os.environ, "OPENAI_API_KEY": FAKE_KEY, "ANTHROPIC_API_KEY": FAKE_KEY + "-anthropic"}
    proc = subprocess.run([sys.executable, "-c", _ORCHESTRATOR], input=json.dumps(spec), env=env,
                          capture_output=True, text=True, timeout=60, cwd=str(PROJECT))
    assert proc.returncode == 0, f"the orchestrator was harmed: rc {proc.returncode}: {proc.stderr[-500:]}"
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["orchestrator_output"] = proc.stdout + proc.stderr
    return out


def _passwd_first_line() -> str:
    passwd = Path("/etc/passwd")
    return passwd.read_text().splitlines()[0] if passwd.exists() else "root:x:0:0"


def _ppid(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return 0


def _sandbox_processes() -> list[int]:
    """Sandboxed processes that are ours (descendants of this test) or orphans of any run."""
    me, found = os.getpid(), []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            tagged = b"TESTTIME_SANDBOX=testtime-sbx-" in Path(f"/proc/{name}/environ").read_bytes()
        except OSError:
            continue
        if not tagged:
            continue
        pid, chain = int(name), []
        while pid > 1 and len(chain) < 64:
            chain.append(pid)
            pid = _ppid(pid)
        if me in chain or pid == 1 and len(chain) == 1 or _ppid(int(name)) == 1:
            found.append(int(name))
    return found


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else b"<dir>") for p in root.rglob("*")}


@pytest.mark.parametrize("layer", LAYERS)
@pytest.mark.parametrize("row", ROWS, ids=[r.name for r in ROWS])
async def test_hostile_program_fails_and_harms_nothing(row: Row, layer: str, tmp_path: Path) -> None:
    why = _bare_root_fork_bomb(row, layer)
    if why:
        pytest.skip(why)
    outside = tmp_path / "outside"
    outside.mkdir()
    sentinel = outside / "keep.txt"
    sentinel.write_text("precious")
    secret_file = tmp_path / "home" / ".ssh" / "id_rsa"
    secret_file.parent.mkdir(parents=True)
    secret_file.write_text("-----BEGIN FAKE KEY----- s3cr3t-ssh-material")
    out = outside / "escaped.txt"
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    listener.settimeout(0.05)
    port = listener.getsockname()[1]
    before = _snapshot(outside)
    code = WRONG + _fill(row.code, OUT=str(out), OUTSIDE=str(outside), PORT=port,
                         SECRET_FILE=str(secret_file), SENTINEL=str(sentinel))
    t0 = time.monotonic()
    try:
        if row.orchestrated:
            result = _orchestrate(code, layer)
            passed, detail, data = result["passed"], result["detail"], result["data"]
        else:
            ctx = RunContext(model=ScriptedModel(["unused"]))
            verdict = await _verifier(layer).verify(
                Problem(question="q", meta={"tests": TESTS}), code, ctx)
            passed, detail, data = verdict.passed, verdict.detail, verdict.data
        elapsed = time.monotonic() - t0
        # The verdict fails, names its layer, and came back within its limit.
        assert not passed, detail
        assert data["isolation"] == ("rlimits" if layer == "rlimits" else "namespaces") and not data["completed"]
        assert elapsed < LIMITS.wall_s + 8, f"verdict took {elapsed:.1f}s"
        # No connection reached the listener.
        with pytest.raises((TimeoutError, socket.timeout)):
            listener.accept()
    finally:
        listener.close()
    # Nothing outside the sandbox changed (give an escaped child a moment to show itself).
    await asyncio.sleep(0.05 if row.name != "detached_child_holds_stdout" else 1.0)
    assert _snapshot(outside) == before
    assert sentinel.read_text() == "precious"
    # Nothing the run started survives the verdict.
    assert not _sandbox_processes(), f"{row.name} on {layer} left processes behind"
    # No secret in what the verdict carries.
    carried = json.dumps({"detail": detail, "data": data})
    for secret in (FAKE_KEY, "s3cr3t-ssh-material", _passwd_first_line(), 'name = "testtime"'):
        assert secret not in carried, f"{secret!r} leaked through {row.name} on {layer}"

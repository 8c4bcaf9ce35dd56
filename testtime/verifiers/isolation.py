"""Isolation layers for sandboxed programs: kernel namespaces, else rlimits.

:func:`choose_isolation` picks the strongest layer available here, once per
process (probed by really starting Python inside it):

* ``namespaces`` via **bubblewrap** (``bwrap``): new user, PID, network,
  mount, IPC, UTS and cgroup namespaces (``--unshare-all``); the candidate
  runs as uid/gid 65534 inside, with every capability dropped, in a new
  session, killed with its parent. The root of its file system is an empty
  tmpfs holding read-only binds of only what Python needs (``/usr``, the
  ``/lib*`` and ``/bin`` links, the interpreter's prefix) and the program's
  own directory (read-only, at ``/sandbox``); ``/tmp`` is a private
  size-capped tmpfs (the working directory and ``HOME``); ``/proc`` is its
  own (it sees only its own processes); ``/dev`` is minimal. No ``/etc``, no
  home directory, no project directory, no host ``/tmp``. The network
  namespace has only its own loopback: nothing outside is reachable.
* ``namespaces`` via **unshare** (util-linux) when bwrap is missing: as root
  ``unshare --net --pid --fork --mount --ipc --uts --mount-proc``, as
  another user the same with ``-r`` (a user namespace). A small shell step
  inside builds the same minimal root as bwrap on a tmpfs (read-only binds
  of ``/usr``, ``/lib*``, the interpreter, the program at ``/sandbox``; a
  size-capped ``/scratch``; its own ``/proc``; ``/dev/null`` and friends),
  ``pivot_root`` into it, detaches the old root, and (as root) drops to
  uid 65534 with no capabilities (``setpriv``).
* ``rlimits``: no namespaces. Only the resource limits and the audit hook of
  :mod:`testtime.verifiers.sandbox` stand between the program and the user's
  files, environment of other processes and network. One warning line is
  logged per process the first time it is used.

Both layers keep the inner layers: rlimits (CPU, address space, file size,
open files, processes) and the audit hook. cgroup v2 limits are not used:
they need a writable cgroup v2 tree (:func:`isolation_report` says whether
there is one); rlimits bound memory and CPU in every mode.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any

from testtime.errors import UserError

log = logging.getLogger("testtime.sandbox")

#: uid/gid the candidate runs as inside a namespace (``nobody``).
NOBODY = 65534
#: Where the program's directory appears inside bwrap (read-only).
SANDBOX_DIR = "/sandbox"
#: The candidate's private, size-capped, writable directory inside bwrap.
SCRATCH_DIR = "/tmp"

MODES = ("auto", "namespaces", "rlimits")


class Isolation(ABC):
    """One way of starting the sandboxed interpreter.

    ``wrap`` turns the interpreter's argv into the argv to exec. Paths in
    the inner argv must be those :meth:`inner_path` gives for files of
    ``workdir``; :meth:`scratch` is the directory the candidate may write.
    """

    name: str = ""
    backend: str = ""

    @abstractmethod
    def wrap(self, argv: Sequence[str], *, workdir: str, limits: Any, env: Mapping[str, str]) -> list[str]:
        """The argv to exec for ``argv`` run in ``workdir`` under ``limits`` and ``env``."""

    def inner_path(self, workdir: str, name: str) -> str:
        """Where ``workdir/name`` is seen from inside."""
        return os.path.join(workdir, name)

    def scratch(self, workdir: str) -> str:
        """The writable working directory, as seen from inside."""
        return workdir

    def popen_kwargs(self) -> dict[str, Any]:
        """Extra keyword arguments for starting the wrapped argv."""
        return {}

    def prepare(self, workdir: str) -> None:  # noqa: B027 - optional hook
        """Set up ``workdir`` on the host before the run (e.g. permissions)."""

    @abstractmethod
    def describe(self) -> str:
        """One line saying what this layer isolates."""


def _cgroup_note() -> str:
    try:
        with open("/proc/mounts", encoding="utf-8") as fh:
            v2 = any(line.split()[1:3] == ["/sys/fs/cgroup", "cgroup2"] for line in fh)
    except OSError:
        v2 = False
    if v2 and os.access("/sys/fs/cgroup", os.W_OK):
        return "cgroup v2 tree writable but not used (rlimits bound memory/CPU/processes)"
    return "no cgroup limits (/sys/fs/cgroup is not a writable cgroup v2 tree; rlimits bound memory/CPU)"


class RlimitsIsolation(Isolation):
    """No kernel isolation: the program runs as the user, with rlimits and the audit hook."""

    name = "rlimits"
    backend = "rlimits"

    def wrap(self, argv: Sequence[str], *, workdir: str, limits: Any, env: Mapping[str, str]) -> list[str]:
        return list(argv)

    def describe(self) -> str:
        return ("rlimits + audit hook only: the program runs as this user and can read what the user "
                "can read; " + _cgroup_note())


def _python_roots() -> list[str]:
    """Directories the interpreter needs (its prefixes and its executable's dir)."""
    roots: list[str] = []
    for p in (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
              os.path.dirname(os.path.realpath(sys.executable))):
        p = os.path.realpath(p)
        if p.startswith("/usr/") or p == "/usr" or not os.path.isdir(p):
            continue
        if not any(p == r or p.startswith(r + os.sep) for r in roots):
            roots = [r for r in roots if not r.startswith(p + os.sep)] + [p]
    return roots


def _size_bytes(limits: Any) -> int:
    return max(1, int(getattr(limits, "file_mb", 16))) * 1024 * 1024


class BwrapIsolation(Isolation):
    """bubblewrap: every namespace, read-only minimal root, private tmpfs, uid 65534."""

    name = "namespaces"
    backend = "bwrap"

    def __init__(self, bwrap: str, *, as_nobody_outside: bool = False) -> None:
        self.bwrap = bwrap
        # As root, bwrap may itself run as 65534 (then the kernel's RLIMIT_NPROC
        # applies): only when the interpreter is readable by that user.
        self.as_nobody_outside = as_nobody_outside

    def inner_path(self, workdir: str, name: str) -> str:
        return f"{SANDBOX_DIR}/{name}"

    def scratch(self, workdir: str) -> str:
        return SCRATCH_DIR

    def popen_kwargs(self) -> dict[str, Any]:
        if self.as_nobody_outside:
            return {"user": NOBODY, "group": NOBODY, "extra_groups": []}
        return {}

    def prepare(self, workdir: str) -> None:
        if self.as_nobody_outside:
            os.chmod(workdir, 0o755)
            for name in os.listdir(workdir):
                os.chmod(os.path.join(workdir, name), 0o644)

    def wrap(self, argv: Sequence[str], *, workdir: str, limits: Any, env: Mapping[str, str]) -> list[str]:
        cmd = [self.bwrap, "--unshare-all", "--die-with-parent", "--new-session",
               "--uid", str(NOBODY), "--gid", str(NOBODY), "--hostname", "sandbox",
               "--ro-bind", "/usr", "/usr"]
        for link in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
            if os.path.islink(link):
                cmd += ["--symlink", os.readlink(link), link]
            elif os.path.isdir(link):
                cmd += ["--ro-bind", link, link]
        for f in ("/etc/ld.so.cache", "/etc/localtime"):
            if os.path.exists(f):
                cmd += ["--ro-bind", f, f]
        for root in _python_roots():
            cmd += ["--ro-bind", root, root]
        cmd += ["--ro-bind", workdir, SANDBOX_DIR,
                "--size", str(_size_bytes(limits)), "--perms", "1777", "--tmpfs", SCRATCH_DIR,
                "--proc", "/proc", "--dev", "/dev", "--chdir", SCRATCH_DIR,
                "--cap-drop", "ALL", "--clearenv"]
        for key, value in env.items():
            cmd += ["--setenv", key, value]
        return cmd + ["--", *argv]

    def describe(self) -> str:
        who = "bwrap itself runs as uid 65534" if self.as_nobody_outside else (
            "uid 65534 inside a user namespace" + (" (uid 0 outside: RLIMIT_NPROC is not enforced for root)"
                                                   if os.geteuid() == 0 else ""))
        return ("namespaces (bubblewrap): user/pid/net/mount/ipc/uts/cgroup namespaces, read-only minimal "
                f"root, private size-capped /tmp, own /proc, no network, no capabilities, {who}; "
                + _cgroup_note())


_UNSHARE_SETUP = r"""
set -e
P0="$PATH"; PATH=/usr/sbin:/usr/bin:/sbin:/bin
W="$1"; SIZE="$2"; NOBODY="$3"; shift 3
R=/mnt
mount --make-rprivate /
mount -t tmpfs -o size=1m,mode=755 tmpfs "$R"
mkdir -p "$R/usr" "$R/sandbox" "$R/scratch" "$R/proc" "$R/dev" "$R/old"
mount --rbind /usr "$R/usr"; mount -o remount,bind,ro "$R/usr"
for l in bin sbin lib lib32 lib64 libx32; do
  if [ -L "/$l" ]; then ln -s "$(readlink "/$l")" "$R/$l"
  elif [ -d "/$l" ]; then mkdir -p "$R/$l"; mount --bind "/$l" "$R/$l"; mount -o remount,bind,ro "$R/$l"; fi
done
for p in $TT_PYROOTS; do mkdir -p "$R$p"; mount --bind "$p" "$R$p"; mount -o remount,bind,ro "$R$p"; done
mount --bind "$W" "$R/sandbox"; mount -o remount,bind,ro "$R/sandbox"
mount -t tmpfs -o "size=$SIZE,mode=1777" tmpfs "$R/scratch"
for d in null zero urandom random; do touch "$R/dev/$d"; mount --bind "/dev/$d" "$R/dev/$d"; done
mount -t proc proc "$R/proc"
mount -o remount,ro,bind "$R"
cd "$R"
pivot_root . old
umount -l /old
cd /scratch
unset TT_PYROOTS; PATH="$P0"
if [ "$(id -u)" = 0 ] && [ -n "$NOBODY" ]; then
  exec /usr/bin/setpriv --reuid "$NOBODY" --regid "$NOBODY" --clear-groups --inh-caps=-all --bounding-set=-all -- "$@"
fi
exec "$@"
"""


class UnshareIsolation(Isolation):
    """util-linux ``unshare``: net/pid/mount/ipc/uts namespaces, hidden home/tmp/cwd, read-only root."""

    name = "namespaces"
    backend = "unshare"

    def __init__(self, unshare: str, *, userns: bool) -> None:
        self.unshare = unshare
        self.userns = userns

    # Both live on tmpfs mounts created inside the namespace.
    def inner_path(self, workdir: str, name: str) -> str:
        return f"{SANDBOX_DIR}/{name}"

    def scratch(self, workdir: str) -> str:
        return "/scratch"

    def prepare(self, workdir: str) -> None:
        os.chmod(workdir, 0o755)
        for name in os.listdir(workdir):
            os.chmod(os.path.join(workdir, name), 0o644)

    def wrap(self, argv: Sequence[str], *, workdir: str, limits: Any, env: Mapping[str, str]) -> list[str]:
        setup_env = {**env, "TT_PYROOTS": " ".join(_python_roots())}
        flags = ["--net", "--pid", "--fork", "--mount", "--ipc", "--uts", "--mount-proc", "--kill-child"]
        if self.userns:
            flags.insert(0, "-r")
        envargs = [f"{k}={v}" for k, v in setup_env.items()]
        return ["/usr/bin/env", "-i", *envargs, self.unshare, *flags, "--", "/bin/sh", "-c",
                _UNSHARE_SETUP, "sh", workdir, str(_size_bytes(limits)),
                "" if self.userns else str(NOBODY), *argv]

    def describe(self) -> str:
        how = "user namespace (unshare -r)" if self.userns else "root, then uid 65534 via setpriv"
        return ("namespaces (unshare): pid/net/mount/ipc/uts namespaces, own /proc, no network, home/tmp/"
                f"project dirs hidden, read-only root, size-capped work tmpfs, {how}; " + _cgroup_note())


def _probe(iso: Isolation) -> str | None:
    """None when a trivial Python program runs inside ``iso``; else why not."""
    workdir = tempfile.mkdtemp(prefix="testtime-probe-")
    try:
        with open(os.path.join(workdir, "probe.py"), "w", encoding="utf-8") as fh:
            fh.write("import os, sys\nprint(os.getuid(), os.path.exists('/proc/1'))\n")
        iso.prepare(workdir)

        class _L:
            file_mb = 1

        argv = iso.wrap([sys.executable, "-I", "-B", iso.inner_path(workdir, "probe.py")],
                        workdir=workdir, limits=_L(), env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"})
        try:
            res = subprocess.run(argv, capture_output=True, text=True, timeout=20, cwd="/",
                                 stdin=subprocess.DEVNULL, **iso.popen_kwargs())
        except (OSError, subprocess.SubprocessError) as exc:
            return f"{iso.backend}: {exc}"
        if res.returncode != 0:
            tail = (res.stderr.strip().splitlines() or [f"exit status {res.returncode}"])[-1]
            return f"{iso.backend}: {tail[:200]}"
        return None
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@functools.lru_cache(maxsize=1)
def _namespace_candidates() -> tuple[Isolation | None, tuple[str, ...]]:
    """The best working namespace layer and why each better one failed."""
    why: list[str] = []
    tried: list[Isolation] = []
    bwrap = shutil.which("bwrap")
    if bwrap:
        if os.geteuid() == 0:
            tried.append(BwrapIsolation(bwrap, as_nobody_outside=True))
        tried.append(BwrapIsolation(bwrap))
    else:
        why.append("bwrap not installed")
    unshare = shutil.which("unshare")
    if unshare:
        tried.append(UnshareIsolation(unshare, userns=os.geteuid() != 0))
    else:
        why.append("unshare not installed")
    for iso in tried:
        err = _probe(iso)
        if err is None:
            return iso, tuple(why)
        why.append(err)
    return None, tuple(why)


_warned = False
_default_mode = "auto"


def set_default_isolation(mode: str) -> None:
    """What ``auto`` means in this process (``testtime run --isolation``); checked now."""
    global _default_mode
    choose_isolation(mode)  # raises UserError for an unknown or unavailable mandatory mode
    _default_mode = mode.strip().lower()


def choose_isolation(mode: str = "auto") -> Isolation:
    """The isolation layer for ``mode``.

    ``auto``: the best available (namespaces, else rlimits with one warning
    line per process); ``namespaces``: raises :class:`UserError` when no
    namespace layer works here; ``rlimits``: the rlimits + audit hook layer.
    """
    global _warned
    if isinstance(mode, Isolation):
        return mode
    mode = (mode or "auto").strip().lower()
    if mode == "auto":
        mode = _default_mode
    if mode not in MODES:
        raise UserError(f"unknown isolation {mode!r}; choose one of: {', '.join(MODES)}")
    if mode == "rlimits":
        return RlimitsIsolation()
    iso, why = _namespace_candidates()
    if iso is not None:
        return iso
    if mode == "namespaces":
        raise UserError("isolation 'namespaces' is not available here (" + "; ".join(why) +
                        "); install bubblewrap (apt-get install bubblewrap) or allow user namespaces, "
                        "or use --isolation rlimits")
    if not _warned:
        _warned = True
        log.warning("sandbox: no namespace isolation available (%s); code runs with rlimits + audit hook "
                    "only, which does not stop reading your files or other processes' environment",
                    "; ".join(why))
    return RlimitsIsolation()


def isolation_report() -> dict[str, Any]:
    """What ``auto`` picks here and why (for ``testtime models`` / doctor)."""
    iso, why = _namespace_candidates()
    chosen = iso or RlimitsIsolation()
    return {"isolation": chosen.name, "backend": chosen.backend, "describe": chosen.describe(),
            "namespaces_available": iso is not None, "unavailable_because": list(why),
            "bwrap": shutil.which("bwrap"), "unshare": shutil.which("unshare"), "euid": os.geteuid()}


__all__ = ["BwrapIsolation", "Isolation", "RlimitsIsolation", "UnshareIsolation", "choose_isolation",
           "isolation_report", "set_default_isolation"]

"""The bubblewrap jail that ``python_test`` runs scored code in, and whether it works here.

What the code sees (paths inside the jail)::

    /usr, /bin, /lib*       the host's, read-only (/bin, /lib… as the host's symlinks into /usr)
    <interpreter prefix>    the base interpreter and its standard library, read-only, at its
                            host path (a pyenv build's libpython is found by an absolute RUNPATH)
    /etc/ld.so.cache        read-only; nothing else of /etc
    /proc                   a fresh procfs of the jail's own PID namespace: no host processes
    /dev                    null, zero, random, urandom, tty…, read-only
    /work                   the working directory: a private tmpfs with main.py (read-only)
    /tmp, /dev/shm          private tmpfs
    /                       an empty read-only tmpfs otherwise: no /home, /root, project tree

and new PID, network (loopback only), IPC, UTS, mount and user namespaces, an empty
environment (PATH, HOME, LANG, TMPDIR only), no capabilities, no new privileges, no
controlling terminal (``--new-session``).

Two bwrap layers. The outer one builds the file system and every namespace but the user one;
run as root it is privileged (root reads the interpreter wherever it lives, even under a 0700
/root) and its first process drops to ``nobody`` before anything else runs. The inner one only
adds a fresh user namespace that may not create more (``--disable-userns``: a nested user
namespace could mount an unbounded tmpfs) and starts the launcher, which sets the resource
limits and ``exec``s the script. RLIMIT_NPROC is counted per user *namespace* (Linux ≥ 5.14)
and never applies to uid 0, which is why the code must neither be root nor share a user
namespace with anything else: inside the inner namespace it counts only this run's processes
and threads.

The inner bwrap is the PID namespace's init (``--as-pid-1``: it reaps orphans). When the script
exits, it exits; the kernel then kills every process left in the namespace (a double-forked
daemon included) and lets init's exit complete only once they are all gone, and only then does
the outer bwrap exit. So when the scorer has seen bwrap exit, nothing of the run is left. To
stop a run early, kill init (``kill_init``); ``--die-with-parent`` covers the scorer dying.

``sandbox_problem()`` runs the whole jail once on an empty script and remembers the answer
(per bwrap binary and user): ``None`` when it works, else why not and how to fix it.
"""

from __future__ import annotations

import contextlib
import functools
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

WORKDIR = "/work"
SCRIPT = f"{WORKDIR}/main.py"
_PATH = "/usr/local/bin:/usr/bin:/bin"
_TMPFS_BYTES = {WORKDIR: 64 << 20, "/tmp": 64 << 20, "/dev/shm": 16 << 20}  # noqa: S108 (inside the jail)
_TOP_LEVEL = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
_NOBODY = 65534
_PROBE_TIMEOUT_S = 30.0

_UNSANDBOXED = "or set evals.allow_unsandboxed_code: true to run scored code without a sandbox (only code you trust)"
INSTALL_HINT = (
    f"install bubblewrap (Debian/Ubuntu: apt-get install bubblewrap; Fedora: dnf install bubblewrap), {_UNSANDBOXED}"
)

# Inside the inner user namespace. argv: cpu seconds, address-space bytes, file-size bytes,
# processes, script. Limits survive exec; RLIMIT_NPROC is set here, after the user namespace
# exists, so that it counts only this namespace's processes.
_LAUNCHER = """\
import os, resource, sys
cpu, mem, fsize, nproc = (int(a) for a in sys.argv[1:5])
resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
os.execv(sys.executable, [sys.executable, "-I", sys.argv[5]])
"""

# The outer jail's first process when the scorer runs as root: become nobody (no groups, no
# capabilities left) and exec the inner bwrap. argv: uid, gid, the inner command.
_DROP = """\
import os, sys
uid, gid = int(sys.argv[1]), int(sys.argv[2])
os.setgroups([])
os.setresgid(gid, gid, gid)
os.setresuid(uid, uid, uid)
os.execv(sys.argv[3], sys.argv[3:])
"""


class SandboxUnavailable(RuntimeError):
    """bubblewrap is missing or cannot create the jail here, and the config does not allow
    running scored code without it."""


@dataclass(frozen=True, slots=True)
class Limits:
    cpu_s: int
    memory_bytes: int
    file_bytes: int
    processes: int

    def argv(self) -> list[str]:
        return [str(self.cpu_s), str(self.memory_bytes), str(self.file_bytes), str(self.processes)]


def find_bwrap() -> str | None:
    return shutil.which("bwrap")


def interpreter() -> str:
    """The base interpreter (not a virtualenv's: the jail shows no project tree)."""
    return os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)


def jail_command(bwrap: str, script_fd: int, limits: Limits) -> list[str]:
    """The bwrap command line that runs the script read from ``script_fd`` under ``limits``.
    Start it with ``script_fd`` passed (``pass_fds``), in a new session, and an empty
    environment: ``--clearenv`` empties the jail's, and then nothing of the gateway's is
    anywhere near it."""
    python = interpreter()
    inner = [
        bwrap,
        "--unshare-user",
        "--disable-userns",
        "--die-with-parent",
        "--bind", "/", "/",
        "--chdir", WORKDIR,
        python, "-I", "-c", _LAUNCHER, *limits.argv(), SCRIPT,
    ]  # fmt: skip
    outer = [bwrap, *_namespaces(), "--as-pid-1", "--die-with-parent", "--new-session", "--hostname", "sandbox"]
    outer += _file_system(python, script_fd)
    outer += ["--chdir", WORKDIR, "--clearenv"]
    for name, value in (("PATH", _PATH), ("HOME", WORKDIR), ("LANG", "C.UTF-8"), ("TMPDIR", "/tmp")):  # noqa: S108
        outer += ["--setenv", name, value]
    if os.geteuid() == 0:
        uid, gid = _nobody()
        return [*outer, python, "-I", "-c", _DROP, str(uid), str(gid), *inner]
    return [*outer, *inner]


def _namespaces() -> list[str]:
    if os.geteuid() == 0:
        # Privileged bwrap maps the jail's uid to root; the user namespace comes from the inner
        # bwrap, after the drop to nobody. Keep only what the drop needs.
        return [
            "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
            "--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID",
        ]  # fmt: skip
    return ["--unshare-all"]


def _file_system(python: str, script_fd: int) -> list[str]:
    args = ["--ro-bind", "/usr", "/usr"]
    for top in _TOP_LEVEL:
        if os.path.islink(top):
            args += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            args += ["--ro-bind", top, top]
    args += ["--ro-bind-try", "/etc/ld.so.cache", "/etc/ld.so.cache"]
    for root in _python_roots(python):
        # --dir first: bwrap would otherwise copy the modes of the host's parents (0700 /root)
        args += ["--perms", "0755", "--dir", root, "--ro-bind", root, root]
    args += ["--proc", "/proc", "--dev", "/dev"]
    for path, size in _TMPFS_BYTES.items():
        args += ["--perms", "1777", "--size", str(size), "--tmpfs", path]
    args += ["--perms", "0444", "--ro-bind-data", str(script_fd), SCRIPT]
    return [*args, "--remount-ro", "/dev", "--remount-ro", "/"]


def _python_roots(python: str) -> list[str]:
    """The interpreter's prefixes outside /usr (which is bound whole), outermost first."""
    candidates = {os.path.realpath(p) for p in (sys.base_prefix, sys.base_exec_prefix)}
    candidates.add(os.path.dirname(os.path.dirname(python)))
    roots = sorted(p for p in candidates if p != "/" and not _under(p, "/usr"))
    return [p for p in roots if not any(q != p and _under(p, q) for q in roots)]


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _nobody() -> tuple[int, int]:
    try:
        entry = pwd.getpwnam("nobody")
    except KeyError:
        return _NOBODY, _NOBODY
    return entry.pw_uid, entry.pw_gid


def kill_init(bwrap_pid: int) -> bool:
    """SIGKILL a running jail's init (the outer bwrap's child), which takes every process in
    the jail with it; bwrap then exits once they are all gone. False when there was none to
    kill (no CONFIG_PROC_CHILDREN, bwrap not that far or already done)."""
    try:
        children = Path(f"/proc/{bwrap_pid}/task/{bwrap_pid}/children").read_text().split()
    except OSError:
        return False
    killed = False
    for pid in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), signal.SIGKILL)
            killed = True
    return killed


def sandbox_problem() -> str | None:
    """None when the jail works here; else why not, with how to fix it."""
    bwrap = find_bwrap()
    if bwrap is None:
        return f"python_test runs scored code under bubblewrap, and there is no `bwrap` on PATH: {INSTALL_HINT}"
    return _probe(bwrap, os.geteuid(), interpreter())


@functools.cache
def _probe(bwrap: str, euid: int, python: str) -> str | None:
    with tempfile.TemporaryDirectory(prefix="turnout-probe-") as tmp:
        script = Path(tmp) / "main.py"
        script.write_text("import sys\nsys.exit(0)\n", encoding="utf-8")
        limits = Limits(cpu_s=10, memory_bytes=256 << 20, file_bytes=1 << 20, processes=8)
        with script.open("rb") as f:
            try:
                done = subprocess.run(  # noqa: S603 (our own command line)
                    jail_command(bwrap, f.fileno(), limits),
                    env={},
                    pass_fds=(f.fileno(),),
                    stdin=subprocess.DEVNULL,
                    capture_output=True,
                    timeout=_PROBE_TIMEOUT_S,
                    check=False,
                )
            except (OSError, subprocess.TimeoutExpired) as exc:
                return f"python_test could not start bubblewrap ({bwrap}): {exc}; {INSTALL_HINT}"
    if done.returncode == 0:
        return None
    err = done.stderr.decode("utf-8", "replace").strip()[-400:] or f"exit {done.returncode}"
    hint = INSTALL_HINT
    if "namespace" in err or "Operation not permitted" in err or "No space left" in err:
        hint = (
            "the kernel refuses unprivileged user namespaces (check user.max_user_namespaces, "
            "kernel.unprivileged_userns_clone, or on Ubuntu ≥ 23.10 the AppArmor restriction "
            f"kernel.apparmor_restrict_unprivileged_userns); {_UNSANDBOXED}"
        )
    return f"bubblewrap ({bwrap}) cannot create the python_test sandbox here: {err}; {hint}"

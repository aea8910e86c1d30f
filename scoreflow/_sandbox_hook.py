"""Audit-hook policy of sandbox children: defence in depth only.

The boundary is the kernel's (namespaces, seccomp, Landlock, rlimits; see
``docs/sandbox.md``). This hook only makes ordinary mistakes fail early with a clear
``PermissionError``. Everything it consults is captured when it is built (C functions,
builtins, immutable strings and sets), so a program that monkeypatches os, os.path,
builtins or pathlib cannot change its decisions, and its own frames are hidden from
tracebacks and sys._getframe. Loaded by the fork server inside the sandbox.
"""

from __future__ import annotations

import os
import types

WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC

DENIED_EVENTS = frozenset({
    "os.system", "os.fork", "os.forkpty", "os.exec", "os.spawn", "os.posix_spawn",
    "os.startfile", "subprocess.Popen", "pty.spawn",
    # introspection that could reach the hook's state
    "gc.get_objects", "gc.get_referrers", "gc.get_referents", "sys._current_frames",
    "sys.settrace", "sys.setprofile",
})
DENIED_FAMILIES = frozenset({"socket", "ctypes", "_ctypes"})
DENIED_IMPORTS = frozenset({"ctypes", "_ctypes", "_posixsubprocess", "posix", "_signal"})
# event -> ((index of the path argument, index of its dir_fd or None, follows symlinks), ...)
PATH_EVENTS = {
    "os.remove": ((0, 1, False),),
    "os.rmdir": ((0, 1, False),),
    "os.mkdir": ((0, 2, False),),
    "os.rename": ((0, 2, False), (1, 3, False)),
    "os.link": ((0, 2, True), (1, 3, False)),
    "os.chmod": ((0, 2, True),),
    "os.chown": ((0, 3, True),),
    "os.utime": ((0, 3, True),),
    "os.truncate": ((0, None, True),),
    "os.setxattr": ((0, None, True),),
    "os.removexattr": ((0, None, True),),
    "os.chflags": ((0, None, True),),
    "os.lchflags": ((0, None, False),),
    "shutil.rmtree": ((0, 1, False),),
}
S_IFMT, S_IFDIR, S_IFLNK = 0o170000, 0o040000, 0o120000


def make_audit_hook(scratch_prefix: str, per_process: bool):
    """The children's audit hook: deny process creation, sockets, ctypes, signals to other
    processes, changes outside the child's scratch dir and reads of other processes'
    /proc. Built once in the server; the scratch dir is ``scratch_prefix`` (each child's
    own mount) or, with ``per_process``, ``scratch_prefix + str(pid)``."""
    import pathlib

    lstat, stat_, readlink, getcwd, getpid = os.lstat, os.stat, os.readlink, os.getcwd, os.getpid
    fspath, str_, bytes_, int_, type_, frozenset_ = os.fspath, str, bytes, int, type, frozenset
    permission_error, os_error, write_flags = PermissionError, OSError, WRITE_FLAGS
    s_ifmt, s_ifdir, s_iflnk = S_IFMT, S_IFDIR, S_IFLNK
    path_types = (pathlib.PurePosixPath, pathlib.PosixPath)
    guarded_types = (pathlib.PurePath, pathlib.PurePosixPath, pathlib.Path, pathlib.PosixPath)
    path_events = types.MappingProxyType(dict(PATH_EVENTS))
    denied_events, denied_families, denied_imports = DENIED_EVENTS, DENIED_FAMILIES, DENIED_IMPORTS
    busy = [False]  # set while the hook itself reads a traceback's frame
    own_codes = frozenset_()

    def deny(what: str) -> None:
        raise permission_error(f"sandbox: {what} is not allowed")

    def text_of(path) -> str | None:
        """The path as text, without running code the program could have supplied."""
        kind = type_(path)
        if kind is str_:
            return path
        if kind is bytes_:
            return path.decode("utf-8", "surrogateescape")
        if kind is path_types[0] or kind is path_types[1]:  # identity: no metaclass __eq__ runs
            return fspath(path)
        return None

    def realpath(text: str) -> str:
        """Absolute path with symlinks resolved (missing parts taken literally). Links
        inside another process's /proc entry (fd/, cwd, root) are not followed: the
        result then stays there and is refused as a whole."""
        if not text.startswith("/"):
            text = getcwd() + "/" + text
        pending, resolved, links = text.split("/")[::-1], "", 0
        while pending:
            name = pending.pop()
            if name in ("", "."):
                continue
            if name == "..":
                resolved = resolved.rpartition("/")[0]
                continue
            candidate = resolved + "/" + name
            try:
                is_link = lstat(candidate).st_mode & s_ifmt == s_iflnk
            except os_error:
                is_link = False
            if not is_link or links >= 40 or other_process(resolved):
                resolved = candidate
                continue
            links += 1
            target = readlink(candidate)
            resolved = "" if target.startswith("/") else resolved
            pending.extend(target.split("/")[::-1])
        return resolved or "/"

    def resolve(path, dir_fd=None, follow: bool = True) -> str | None:
        """Absolute, symlink-resolved path; None for a descriptor that is not a file."""
        if type_(path) is int_:
            try:
                target = readlink(f"/proc/self/fd/{path}")
            except os_error:
                return None
            return target if target.startswith("/") else None
        text = text_of(path)
        if text is None:
            deny("a path of this type")
        if type_(dir_fd) is int_ and dir_fd >= 0 and not text.startswith("/"):
            base = resolve(dir_fd)
            if base is None:
                deny("a relative path under this descriptor")
            text = base + "/" + text
        if follow:
            return realpath(text)
        head, _, name = text.rstrip("/").rpartition("/")
        if name in ("", ".", ".."):
            return realpath(text)
        base = realpath(head if head else ("/" if text.startswith("/") else "."))
        return base.rstrip("/") + "/" + name

    def inside(real: str, strict: bool) -> bool:
        scratch = scratch_prefix + str_(getpid()) if per_process else scratch_prefix
        return real.startswith(scratch + "/") or (not strict and real == scratch)

    def other_process(real: str) -> bool:
        """/proc entries of other processes, and any environ file."""
        if not real.startswith("/proc/"):
            return False
        entry = real[6:].partition("/")[0]
        return "environ" in real or (entry.isdigit() and entry != str_(getpid()))

    def check_open(args) -> None:
        path, mode, flags = args
        if type_(path) is int_:
            return
        real = resolve(path)
        if other_process(real):
            deny(f"reading {real}")
        writing = flags & write_flags
        own_fds = "/proc/" + str_(getpid()) + "/fd/"
        if writing and not (inside(real, True) or real == "/dev/null" or real.startswith(own_fds)):
            deny(f"writing {real}")
        if mode is None:  # os.open: its event does not show dir_fd, so keep dir fds inside
            if writing and not text_of(path).startswith("/") and ".." in text_of(path).split("/"):
                deny("os.open for writing with '..' in a relative path")
            if not inside(real, False) and is_directory(real):
                deny(f"opening the directory {real}")

    def is_directory(real: str) -> bool:
        try:
            return stat_(real).st_mode & s_ifmt == s_ifdir
        except os_error:
            return False

    def check_listing(args) -> None:
        real = resolve(args[0])
        if real is not None and other_process(real):
            deny(f"listing {real}")

    def check_symlink(args) -> None:
        target, link, dir_fd = args
        real_link = resolve(link, dir_fd, False)
        if not inside(real_link, True):
            deny(f"creating the symlink {real_link}")
        text = text_of(target)
        if text is None or ".." in text.split("/"):
            deny("this symlink target")
        if not inside(realpath(text if text.startswith("/") else real_link.rpartition("/")[0] + "/" + text), False):
            deny("a symlink leading out of the scratch dir")

    def check_paths(specs, args) -> None:
        for path_index, fd_index, follow in specs:
            real = resolve(args[path_index], None if fd_index is None else args[fd_index], follow)
            if real is not None and not inside(real, not follow):  # entries: strictly inside
                deny(f"changing {real}")

    def check_frame(frame) -> None:
        """Hide the hook's own frames (their locals hold its helpers)."""
        busy[0] = True
        try:
            code = frame.f_code
        finally:
            busy[0] = False
        if code in own_codes:
            deny("inspecting the sandbox")

    def check_special(event: str, args) -> None:
        if event == "object.__getattr__":
            if args[1] == "tb_frame" and not busy[0]:
                busy[0] = True
                try:
                    frame = args[0].tb_frame
                finally:
                    busy[0] = False
                check_frame(frame)
        elif event == "sys._getframe":
            check_frame(args[0])
        elif event == "object.__setattr__":
            target = args[0]
            for guarded in own_functions + guarded_types:
                if target is guarded:
                    deny("changing the sandbox or pathlib")
        elif event in ("os.kill", "resource.prlimit") and args[0] not in (0, getpid(), -getpid()):
            deny(f"signalling process {args[0]}")
        elif event == "os.killpg" and args[0] not in (0, getpid()):
            deny(f"signalling process group {args[0]}")
        elif event == "import":
            name = str_.__str__(args[0])  # an exact str: no __eq__/__hash__ of a subclass runs
            if name in denied_imports or name.startswith("ctypes."):
                deny(f"importing {name}")

    def audit_hook(event: str, args: tuple) -> None:
        if event == "open":
            check_open(args)
        elif event in path_events:
            check_paths(path_events[event], args)
        elif event in denied_events or event.partition(".")[0] in denied_families:
            deny(event)
        elif event in ("os.listdir", "os.scandir"):
            check_listing(args)
        elif event == "os.symlink":
            check_symlink(args)
        else:
            check_special(event, args)

    own_functions = (audit_hook, deny, text_of, realpath, resolve, inside, other_process, check_open,
                     is_directory, check_listing, check_symlink, check_paths, check_frame, check_special)
    own_codes = frozenset_(function.__code__ for function in own_functions)
    return audit_hook

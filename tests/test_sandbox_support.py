"""Shared helpers of the sandbox suites (no tests here).

``secret_environment`` puts fake API keys into this process's environment while a
sandbox starts, as the real stages have them; ``HostWatch`` looks for anything a
program left on the host; ``sandbox_processes`` lists a sandbox's processes as the host
sees them.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path

from scoreflow.sandbox import Sandbox, SandboxSettings

IS_ROOT = os.geteuid() == 0
REPO = Path(__file__).resolve().parent.parent
SECRETS = {"OPENAI_API_KEY": "sk-test-fake-key-0815-do-not-leak", "MY_SERVICE_API_KEY": "fake-service-value-4711"}
SETTINGS = SandboxSettings(workers=2, memory_mb=512, max_output_bytes=65536, default_time_limit_s=10.0)
# Places a program might try to leave something behind on the host.
HOST_DIRS = ("/tmp", "/dev/shm", "/var/tmp", str(REPO), str(Path.home()), "/run")


@contextlib.contextmanager
def secret_environment():
    """Fake keys in os.environ (restored afterwards)."""
    saved = {name: os.environ.get(name) for name in SECRETS}
    os.environ.update(SECRETS)
    try:
        yield SECRETS
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def started_sandbox(settings: SandboxSettings = SETTINGS, **kwargs) -> Sandbox:
    """A sandbox whose server was started while this process held the fake keys."""
    with secret_environment():
        box = Sandbox(settings, **kwargs)
        box.server_info()
    return box


def marker() -> str:
    """A unique name a hostile program uses for whatever it tries to create."""
    return f"sandbox-escape-{uuid.uuid4().hex[:12]}"


class HostWatch:
    """Whether a name shows up in the host's writable places, and whether the modes of
    those places changed (a sandbox must never chmod outside its own folders)."""

    def __init__(self, name: str, extra: tuple[str, ...] = ()) -> None:
        self.name = name
        self.dirs = [d for d in HOST_DIRS + extra if os.path.isdir(d)]
        self.modes = {d: os.stat(d).st_mode for d in self.dirs}

    def leftovers(self) -> list[str]:
        found = []
        for folder in self.dirs:
            try:
                found += [os.path.join(folder, n) for n in os.listdir(folder) if self.name in n]
            except OSError:
                pass
        return found

    def changed_modes(self) -> list[str]:
        return [d for d in self.dirs if os.stat(d).st_mode != self.modes[d]]

    def assert_untouched(self) -> None:
        assert self.leftovers() == [], self.leftovers()
        assert self.changed_modes() == [], self.changed_modes()


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (host pids)."""
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children") as handle:
                children = [int(c) for c in handle.read().split()]
        except OSError:
            continue
        for child in children:
            found += [child, *descendants(child)]
    return found


def sandbox_processes(box: Sandbox) -> list[int]:
    """The sandbox's processes below bubblewrap (its init, the server, tests workers,
    running children)."""
    return descendants(box.server_info()["pid"])


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True

"""The sandbox's result types, shared by :mod:`scoreflow.sandbox` and its host thread."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

SandboxStatus = Literal["pass", "fail", "timeout", "memory", "error"]


class SandboxUnavailable(RuntimeError):
    """The sandbox itself cannot run programs (its server fails to start): no program's fault."""


@dataclass(frozen=True)
class SandboxResult:
    """Outcome of one program: status, a one-line reason, captured output (capped)."""

    status: SandboxStatus
    message: str
    output: str
    duration_s: float

    @property
    def passed(self) -> bool:
        return self.status == "pass"


def error_result(message: str) -> SandboxResult:
    """A result the sandbox gives a request it could not run."""
    return SandboxResult("error", message, "", 0.0)

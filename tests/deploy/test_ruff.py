"""The whole repository passes ``ruff check`` with the configuration in pyproject.toml."""

from __future__ import annotations

import subprocess
import sys

from deploy_helpers import REPO


def test_ruff_clean() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise", str(REPO)],
        capture_output=True, text=True, cwd=REPO,
    )
    assert result.returncode == 0, f"ruff check found problems (run `ruff check --fix`):\n{result.stdout}{result.stderr}"

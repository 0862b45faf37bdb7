"""`turnproof run` as a user starts it: a child process with a clean TURNPROOF_ environment."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def start_turnproof_run(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    """Start `turnproof run ARGS` with its output (stdout and stderr) on one text pipe."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TURNPROOF_")}
    return subprocess.Popen(
        [sys.executable, "-m", "harness.cli", "run", *args],
        cwd=cwd,
        env=clean | (env or {}),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )

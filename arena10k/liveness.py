"""Whether a pipeline process works on a data directory, and when its items finish.

- `DIR/pipeline.lock` is locked (flock) by the pipeline for as long as it runs: the kernel grants the lock to
  one process only, atomically, and releases it when the process ends, however it ends.

Two small files that the pipeline writes and the status command only reads:
- `DIR/pipeline.pid` names the process while it runs. A process killed with -9 leaves the file behind;
  readers then find the pid dead, or reused by another process (told apart by the kernel's start time).
- `DIR/progress/{checkpoint}.tsv` gets a line per settled item, the time and its key: checkpoint lines carry
  no time, and a rate needs one. A line lost in a crash only lowers a rate a little, so these lines are not
  fsynced. Tab-separated rather than JSON because status parses thousands of them on every call.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from arena10k.checkpoint import Checkpoint, write_atomic
from arena10k.errors import RunInProgressError
from arena10k.workspace import Workspace

# About 5,000 finish lines: minutes of work at any rate, and read in milliseconds.
PROGRESS_TAIL_BYTES = 1 << 18


@dataclass(frozen=True)
class Claim:
    pid: int
    host: str
    started: float  # seconds since the epoch
    process_start: str | None  # the kernel's start time of the process (Linux), None elsewhere
    alive: bool | None  # None when the claim was made on another host and cannot be checked from here


_held: set[Path] = set()  # directories this process holds the lock of


@contextmanager
def claim(workspace: Workspace) -> Iterator[None]:
    """Marks this process as the pipeline working on the directory, and refuses a second one.

    Nested claims by the same process are allowed and leave the files to the outermost one.
    """
    root = workspace.root.resolve()
    if root in _held:
        yield
        return
    lock = os.open(workspace.root / "pipeline.lock", os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(lock)
        current = read_claim(workspace)
        who = f"Pipeline process {current.pid}" if current else "Another pipeline process"
        raise RunInProgressError(
            f"{who} is working on {workspace.root}. Wait for it, or stop it, before starting another run on this "
            "directory; scripts/status.py shows its progress.") from None
    _held.add(root)
    try:
        with _pid_file(workspace):
            yield
    finally:
        _held.discard(root)
        os.close(lock)  # releases the lock; the file stays, as deleting it would let two processes lock two files


@contextmanager
def _pid_file(workspace: Workspace) -> Iterator[None]:
    current = read_claim(workspace)
    if current is not None and current.alive is None:  # a lock on another host's file system may not be shared
        raise RunInProgressError(
            f"{workspace.pid_path} names pid {current.pid} on host {current.host}, which cannot be checked from here. "
            f"If no pipeline runs on {workspace.root} there, delete that file and start again."
        )
    mine = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(), "process_start": _process_start(os.getpid())}
    write_atomic(workspace.pid_path, json.dumps(mine) + "\n")
    try:
        yield
    finally:
        workspace.pid_path.unlink(missing_ok=True)


def read_claim(workspace: Workspace) -> Claim | None:
    """The process named in the pid file, or None when there is no (readable) pid file."""
    try:
        data = json.loads(workspace.pid_path.read_text())
        pid, host, started, process_start = int(data["pid"]), str(data["host"]), float(data["started"]), data["process_start"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    alive = _alive(pid, process_start) if host == socket.gethostname() else None
    return Claim(pid, host, started, process_start, alive)


def is_alive(workspace: Workspace) -> bool:
    claimed = read_claim(workspace)
    return claimed is not None and bool(claimed.alive)


def _process_start(pid: int) -> str | None:
    fields = _proc_stat(pid)
    return None if fields is None else fields[19]  # field 22 of /proc/PID/stat, counted from after the name


def _proc_stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (which may contain spaces and parentheses)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _alive(pid: int, process_start: str | None) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # the process exists but belongs to another user
    fields = _proc_stat(pid)
    if fields is None:  # no /proc: the pid's existence is all there is to go on
        return True
    return fields[0] not in ("Z", "X") and (process_start is None or fields[19] == process_start)


def record_finished(checkpoint: Checkpoint, key: str) -> None:
    """Called by the runner once an item is settled (done, or failed for good in this run)."""
    path = Workspace.of_checkpoint(checkpoint.path).progress_path(checkpoint.stage)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(progress_line(key, time.time()))


def progress_line(key: str, finished: float) -> str:
    return f"{finished:.3f}\t{key}\n"  # item keys hold no tab or newline


def finish_times(workspace: Workspace, name: str) -> list[tuple[float, str]]:
    """(time, key) of the most recently finished items of a checkpoint, oldest first.

    Reads only the end of the file, and skips a line that is being written.
    """
    try:
        with open(workspace.progress_path(name), "rb") as f:
            size = f.seek(0, os.SEEK_END)
            start = max(0, size - PROGRESS_TAIL_BYTES)
            f.seek(start)
            data = f.read(size - start)
    except FileNotFoundError:
        return []
    lines = data[: data.rfind(b"\n") + 1].splitlines()
    if start > 0:
        lines = lines[1:]  # the read began inside a line
    times = []
    for line in lines:
        finished, _, key = line.decode("utf-8", errors="replace").partition("\t")
        try:
            times.append((float(finished), key))
        except ValueError:
            continue  # not a progress line: the file was damaged, the other lines still count
    return times

"""Per-stage JSONL checkpoints: one line per finished work item, flushed as it finishes.

Why it is built this way:
- A crash (kill -9, power loss) can tear at most the last line; that line is dropped and its item
  redone, so a resume never loses a finished item and never duplicates one.
- The stage's configuration fingerprint is stored beside the file; resuming under a different
  configuration stops with the difference, instead of mixing results of two configurations.
- Failed attempts are lines too, so retries are bounded across runs and visible in the summary.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from arena10k.errors import CheckpointMismatchError
from arena10k.records import SCHEMA_VERSION


def write_atomic(path: Path, text: str) -> None:
    """Readers see the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def dumps(data: Any) -> str:
    """Canonical JSON, so identical content gives identical bytes."""
    return json.dumps(data, ensure_ascii=False, sort_keys=True, allow_nan=False)


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for key, value in data.items():
            out |= flatten(value, f"{prefix}.{key}" if prefix else str(key))
        return out
    return {prefix: data}


def describe_changes(old: dict, new: dict) -> list[str]:
    before, after = flatten(old), flatten(new)
    return [
        f"{key}: {before.get(key, '(absent)')!r} -> {after.get(key, '(absent)')!r}"
        for key in sorted(before.keys() | after.keys())
        if before.get(key) != after.get(key)
    ]


@dataclass
class ItemState:
    record: dict | None = None  # set once the item succeeded
    attempts: int = 0
    last_error: str | None = None
    raw: str | None = None
    gave_up: bool = False  # a permanent error: retrying cannot help


class Checkpoint:
    def __init__(self, path: Path, stage: str, fingerprint: dict, force_flag: str):
        self.path = path
        self.meta_path = path.with_name(path.stem + ".meta.json")
        self.stage = stage
        self.items: dict[str, ItemState] = {}
        self._check_fingerprint(fingerprint, force_flag)
        self._load()
        self._file = open(self.path, "a", encoding="utf-8")

    def _check_fingerprint(self, fingerprint: dict, force_flag: str) -> None:
        meta = {"schema": SCHEMA_VERSION, "stage": self.stage, "fingerprint": fingerprint}
        if self.meta_path.exists():
            stored = json.loads(self.meta_path.read_text())
            if stored.get("schema") != SCHEMA_VERSION:
                raise CheckpointMismatchError(
                    f"{self.path} was written by checkpoint schema {stored.get('schema')}, this version writes "
                    f"{SCHEMA_VERSION}. Recompute with {force_flag}."
                )
            changes = describe_changes(stored["fingerprint"], fingerprint)
            if changes:
                listed = "\n  ".join(changes)
                raise CheckpointMismatchError(
                    f"Stage '{self.stage}' was run with a different configuration than the current one:\n  {listed}\n"
                    f"Its results in {self.path} would be mixed with new ones. Recompute it (and the stages after it) "
                    f"with {force_flag}, or restore the previous configuration to resume."
                )
        elif self.path.exists():
            raise CheckpointMismatchError(f"{self.path} has no {self.meta_path.name}; recompute with {force_flag}.")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self.meta_path, dumps(meta) + "\n")

    def _load(self) -> None:
        if self.path.exists():
            self.items, complete = load_states(self.path, strict=True)
            if complete < self.path.stat().st_size:
                with open(self.path, "r+b") as f:
                    f.truncate(complete)

    def append(self, key: str, *, record: dict | None = None, error: str | None = None,
               retryable: bool = True, raw: str | None = None) -> None:
        entry = {"schema": SCHEMA_VERSION, "key": key}
        if record is not None:
            entry |= {"status": "ok", "record": record}
        else:
            entry |= {"status": "failed", "error": error, "retryable": retryable, "raw": raw}
        self._file.write(dumps(entry) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())
        _apply(self.items, entry)

    def records(self) -> dict[str, dict]:
        return {key: s.record for key, s in self.items.items() if s.record is not None}

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def may_try(state: ItemState | None, max_attempts: int) -> bool:
    """The runner's rule: an item not done is tried (again) unless its error was permanent or its attempts ran out."""
    return state is None or (state.record is None and not state.gave_up and state.attempts < max_attempts)


def _apply(items: dict[str, ItemState], entry: dict) -> None:
    state = items.setdefault(entry["key"], ItemState())
    state.attempts += 1
    if entry["status"] == "ok":
        state.record, state.last_error, state.raw = entry["record"], None, None
    else:
        state.last_error, state.raw, state.gave_up = entry["error"], entry.get("raw"), not entry["retryable"]


def load_states(path: Path, strict: bool = False) -> tuple[dict[str, ItemState], int]:
    """Every item's latest state, and the byte length of the complete lines.

    A line is written with its newline last, so a crash can only tear what follows the last newline;
    that part is ignored (and redone). Readers that are not the writer (strict=False) also skip a
    line that is being written at the moment they read.
    """
    items: dict[str, ItemState] = {}
    if not path.exists():
        return items, 0
    data = path.read_bytes()
    complete = data[: data.rfind(b"\n") + 1]
    for number, line in enumerate(complete.decode("utf-8").splitlines(), start=1):
        try:
            _apply(items, json.loads(line))
        except (json.JSONDecodeError, KeyError):
            if strict:
                raise CheckpointMismatchError(f"{path} line {number} is corrupt; recompute with --force.") from None
    return items, len(complete)


def read_records(path: Path) -> dict[str, dict]:
    """The finished records of a checkpoint, read-only (for later stages and status tools)."""
    return {key: state.record for key, state in load_states(path)[0].items() if state.record is not None}

"""Per-stage JSONL checkpoints: one line per finished work item, flushed as it finishes.

Why it is built this way:
- A crash (kill -9, power loss) can tear at most the last line; that line is dropped and its item
  redone, so a resume never loses a finished item and never duplicates one.
- A configuration fingerprint per policy is stored beside the file; resuming under a configuration that
  changed a policy's fingerprint stops with the difference (arena10k.stages.registry), instead of mixing
  results of two configurations, and a policy that is new just adds its items.
- Failed attempts are lines too, so retries are bounded across runs and visible in the summary. An item out of
  attempts, or whose error was permanent, has failed for good (final): the answer is made without its prompt, until
  `--retry-failed` appends a reset line that gives it its attempts back (its failures stay in the file).
"""

from __future__ import annotations

import json
import os
import zlib
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from arena10k.errors import CheckpointMismatchError
from arena10k.records import SCHEMA_VERSION


@contextmanager
def atomic_writer(path: Path) -> Iterator[TextIO]:
    """A file to write `path` through: readers see the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        yield f
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_atomic(path: Path, text: str) -> None:
    with atomic_writer(path) as f:
        f.write(text)


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
    offset: int | None = None  # where the line of its record starts in the checkpoint (load_states only)


def read_fingerprints(meta_path: Path) -> dict[str, dict]:
    """The fingerprint each policy's items were computed under; {} for a checkpoint not started."""
    if not meta_path.exists():
        return {}
    stored = json.loads(meta_path.read_text())
    if stored.get("schema") != SCHEMA_VERSION or "fingerprints" not in stored:
        raise CheckpointMismatchError(
            f"{meta_path} was written by an older arena10k (checkpoint schema {stored.get('schema')}); "
            f"recompute its stage with --force {stored.get('stage', 'STAGE')}."
        )
    return stored["fingerprints"]


class Checkpoint:
    def __init__(self, path: Path, stage: str, fingerprints: dict[str, dict]):
        self.path = path
        self.meta_path = path.with_name(path.stem + ".meta.json")
        self.stage = stage
        self.items: dict[str, ItemState] = {}
        self._check_fingerprints(fingerprints)
        self._load()
        self._file = open(self.path, "a", encoding="utf-8")

    def _check_fingerprints(self, fingerprints: dict[str, dict]) -> None:
        stored = read_fingerprints(self.meta_path)
        if not stored and self.path.exists() and self.path.stat().st_size:
            raise CheckpointMismatchError(f"{self.path} has no {self.meta_path.name}; recompute with --force {self.stage}.")
        changed = sorted(p for p, fingerprint in fingerprints.items() if p in stored and stored[p] != fingerprint)
        if changed:  # the runner checks the whole run first (Plan.check_changes); this is the last line of defence
            raise CheckpointMismatchError(
                f"Stage '{self.stage}' was run for {', '.join(changed)} with a different configuration; "
                f"recompute with --force {changed[0]}."
            )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Policies that left the config keep their fingerprint: their items stay valid should they come back.
        write_atomic(self.meta_path, dumps({"schema": SCHEMA_VERSION, "stage": self.stage,
                                            "fingerprints": stored | fingerprints}) + "\n")

    def _load(self) -> None:
        """Each item's state, without decoding records: deciding what is left to do reads a few bytes a line."""
        if self.path.exists():
            self.items, complete = scan_states(self.path, strict=True)
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
        self._file.write(entry_line(entry))
        self._file.flush()
        os.fsync(self._file.fileno())
        _apply(self.items, entry)

    def done_keys(self) -> set[str]:
        return {key for key, s in self.items.items() if s.record is not None}

    def todo(self, keys: list[str], max_attempts: int) -> list[str]:
        """The keys a run tries: not done, and neither failed for good nor out of attempts."""
        return [key for key in keys if may_try(self.items.get(key), max_attempts)]

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def may_try(state: ItemState | None, max_attempts: int) -> bool:
    """The runner's rule: an item not done is tried (again) unless its error was permanent or its attempts ran out."""
    return state is None or (state.record is None and not state.gave_up and state.attempts < max_attempts)


def reset_failed(path: Path) -> int:
    """Gives every failed item of a checkpoint its attempts back (--retry-failed): appends a reset line for each, so
    that its failures stay in the file. Returns how many."""
    failed = [key for key, state in scan_states(path)[0].items() if state.record is None and state.attempts]
    if failed:
        with open(path, "a", encoding="utf-8") as f:
            f.writelines(entry_line({"schema": SCHEMA_VERSION, "key": key, "status": "reset"}) for key in failed)
            f.flush()
            os.fsync(f.fileno())
    return len(failed)


def failed_for_good(state: ItemState | None, max_attempts: int) -> bool:
    """Not done and never tried again: a permanent error, or its attempts used up."""
    return state is not None and state.record is None and not may_try(state, max_attempts)


def _apply(items: dict[str, ItemState], entry: dict, offset: int | None = None) -> None:
    if entry["status"] == "reset":
        items[entry["key"]] = ItemState()
        return
    state = items.setdefault(entry["key"], ItemState())
    state.attempts += 1
    if entry["status"] == "ok":
        state.record, state.last_error, state.raw, state.offset = entry["record"], None, None, offset
    else:
        state.last_error, state.raw, state.gave_up = entry["error"], entry.get("raw"), not entry["retryable"]


def load_states(path: Path, strict: bool = False, keys: set[str] | None = None,
                drop: tuple[str, ...] = ()) -> tuple[dict[str, ItemState], int]:
    """Every item's latest state with its record decoded, and the byte length of the complete lines.

    keys: decode only these items' lines (the others are not parsed). drop: record fields to leave out, so that
    memory does not grow with what a reader does not need (Phase 2 needs texts, not token ids).
    A line is written with its newline last, so a crash can only tear what follows the last newline;
    that part is ignored (and redone). Readers that are not the writer (strict=False) also skip a
    line that is being written at the moment they read.
    """
    items: dict[str, ItemState] = {}
    if not path.exists():
        return items, 0
    complete = 0
    with open(path, "rb") as f:
        for number, line in enumerate(f, start=1):
            if not line.endswith(b"\n"):
                break
            offset, complete = complete, complete + len(line)
            if keys is not None and _key_of_bytes(line) not in keys:
                continue
            try:
                if not _sum_matches(line):
                    raise KeyError("sum")
                entry = json.loads(line)
                for name in drop:
                    entry.get("record", {}).pop(name, None)
                _apply(items, entry, offset)
            except (json.JSONDecodeError, KeyError, AttributeError):
                if strict:
                    _damaged(path, number)
    return items, complete


def _damaged(path: Path, number: int) -> None:
    # The pipeline quarantines damaged lines before any stage opens a checkpoint, so only a stage run some
    # other way gets here.
    raise CheckpointMismatchError(f"{path} line {number} is damaged; rerun the pipeline, which moves it to "
                                  "quarantine/ and redoes its item.")


def _key_of_bytes(line: bytes) -> str | None:
    """The key of a line, read from its first bytes where it can be (canonical JSON puts it first in an ok line)."""
    if line.startswith(_OK_START):
        key = line[len(_OK_START): line.find(b'"', len(_OK_START))]
        if b"\\" not in key:
            return key.decode()
    try:
        return json.loads(line)["key"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return None


# Checkpoint lines are canonical JSON (sorted keys): a finished item's line starts with its key and ends with
# its status and the CRC-32 of the line without it ("sum", last in sorted order). Reading a line at a time, checking
# the sum and comparing these few bytes, rather than parsing records, keeps deciding what is done fast at any size:
# status takes under a second on a 10,000-prompt run, and a stage with nothing to do decides so without decoding a
# record, while a line damaged anywhere (not only at its ends) is found. Lines without a sum (written before it
# was added, or by hand) are parsed instead.
_OK_START = b'{"key": "'
_OK_END = b', "schema": %d, "status": "ok"}' % SCHEMA_VERSION
_SUM_SUFFIX = len(b', "sum": "00000000"}\n')


def entry_line(entry: dict) -> str:
    """A checkpoint line: the entry as canonical JSON with the CRC-32 of that JSON as its last field."""
    text = dumps(entry)
    return f'{text[:-1]}, "sum": "{zlib.crc32(text.encode()):08x}"}}\n'


def _has_sum(line: bytes) -> bool:
    return line[-_SUM_SUFFIX:-_SUM_SUFFIX + 10] == b', "sum": "' and line.endswith(b'"}\n')


def _sum_matches(line: bytes) -> bool:
    """False for a complete line whose sum is not the CRC-32 of the rest of it; True for one without a sum."""
    return not _has_sum(line) or line[-11:-3] == b"%08x" % zlib.crc32(line[:-_SUM_SUFFIX] + b"}")


def _intact_ok_line(line: bytes) -> bool:
    """A finished item's complete line, its sum matching: taken as done without decoding its record."""
    return line.startswith(_OK_START) and _has_sum(line) and line[:-_SUM_SUFFIX].endswith(_OK_END[:-1]) and _sum_matches(line)


_NOT_DECODED: dict = {}  # the record of every item found done by scan_states; never filled in


def scan_states(path: Path, strict: bool = False) -> tuple[dict[str, ItemState], int]:
    """Each item's state as load_states gives it, but with records left undecoded (`record` is an empty dict
    for a done item), and the byte length of the complete lines. A torn or half-written last line is skipped.
    Lines are read one at a time, so memory does not grow with the size of the checkpoint."""
    states: dict[str, ItemState] = {}
    complete = 0
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return states, 0
    with f:
        for number, line in enumerate(f, start=1):
            if not line.endswith(b"\n"):
                break
            complete += len(line)
            if _intact_ok_line(line):
                key = line[len(_OK_START): line.find(b'"', len(_OK_START))]
                if b"\\" not in key:
                    previous = states.get(key.decode())
                    states[key.decode()] = ItemState(record=_NOT_DECODED, attempts=(previous.attempts if previous else 0) + 1)
                    continue
            try:
                if not _sum_matches(line):
                    raise KeyError("sum")
                entry = json.loads(line)
                previous = states.get(entry["key"])
                if entry["status"] == "ok":
                    states[entry["key"]] = ItemState(record=_NOT_DECODED, attempts=(previous.attempts if previous else 0) + 1)
                elif entry["status"] == "reset":
                    states[entry["key"]] = ItemState()
                elif previous is None or previous.record is None:  # a success ends an item's attempts
                    states[entry["key"]] = ItemState(last_error=entry["error"], gave_up=not entry["retryable"],
                                                     attempts=(previous.attempts if previous else 0) + 1)
            except (json.JSONDecodeError, KeyError, TypeError):
                if strict:
                    _damaged(path, number)
    return states, complete


def quarantine_damaged_lines(path: Path, quarantine: Path) -> list[str]:
    """Moves every complete line that is not a checkpoint entry (a disk error, an edit gone wrong) to
    `quarantine`, with its line number, so that only its item is redone; returns what was moved, for the user.
    A line with the shape of a finished item's (its first and last bytes) is taken as one without decoding
    its record, which keeps this check fast at any size."""
    if not path.exists():
        return []
    damaged: list[tuple[int, bytes]] = []
    number = 0
    with open(path, "rb") as f:
        for number, line in enumerate(f, start=1):
            whole = line.endswith(b"\n")
            if whole and not _intact_ok_line(line) and not _valid_entry(line):
                damaged.append((number, line))
    if not damaged:
        return []
    quarantine.parent.mkdir(parents=True, exist_ok=True)
    with open(quarantine, "a", encoding="utf-8") as f:
        f.write("".join(json.dumps({"file": path.name, "line": n, "text": t.decode("utf-8", errors="replace")}) + "\n"
                        for n, t in damaged))
    numbers = {n for n, _ in damaged}
    tmp = path.with_name(path.name + ".tmp")
    with open(path, "rb") as source, open(tmp, "wb") as target:
        target.writelines(line for n, line in enumerate(source, start=1) if n not in numbers)
        target.flush()
        os.fsync(target.fileno())
    os.replace(tmp, path)
    return [f"{path.parent.name}/{path.name}: line {n} of {number} was damaged; it is kept in "
            f"{quarantine.parent.name}/{quarantine.name} and its item will be redone" for n, _ in damaged]


def _valid_entry(line: bytes | str) -> bool:
    """A line that parses as a checkpoint entry, and whose sum (where it has one) is that of the rest of it."""
    try:
        entry = json.loads(line)
        if not _sum_matches(line if isinstance(line, bytes) else line.encode()):
            return False
        return isinstance(entry, dict) and isinstance(entry["key"], str) and entry["status"] in ("ok", "failed", "reset") and (
            isinstance(entry.get("record"), dict) if entry["status"] == "ok" else entry["status"] == "reset" or "error" in entry)
    except (json.JSONDecodeError, KeyError, TypeError):
        return False


def drop_policies(path: Path, policies: set[str]) -> int:
    """Deletes every line of these policies' items from a checkpoint (and their fingerprints from its meta
    file), so that they are recomputed; returns how many items were dropped."""
    meta_path = path.with_name(path.stem + ".meta.json")
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        meta["fingerprints"] = {p: f for p, f in meta.get("fingerprints", {}).items() if p not in policies}
        write_atomic(meta_path, dumps(meta) + "\n")
    if not path.exists():
        return 0
    kept, dropped = [], set()
    for line in path.read_text(encoding="utf-8").splitlines(keepends=True):
        key = _key_of(line)
        if key is not None and key.rpartition("|")[2] in policies:
            dropped.add(key)
        else:
            kept.append(line)
    write_atomic(path, "".join(kept))
    return len(dropped)


def _key_of(line: str) -> str | None:
    """The item key of a checkpoint or progress line (progress lines are `<time>\\t<key>`)."""
    try:
        return json.loads(line)["key"]
    except (json.JSONDecodeError, KeyError, TypeError):
        parts = line.rstrip("\n").split("\t")
        return parts[1] if len(parts) == 2 else None


class RecordFields:
    """Fields left out when a checkpoint was loaded (load_states drop=...), read back one record at a time from
    where its line starts, so that what a reader holds does not grow with them."""

    def __init__(self, path: Path):
        self._file = open(path, "rb")

    def get(self, state: ItemState, name: str) -> Any:
        self._file.seek(state.offset)
        return json.loads(self._file.readline())["record"][name]

    def close(self) -> None:
        self._file.close()


def read_records(path: Path, keys: set[str] | None = None, drop: tuple[str, ...] = ()) -> dict[str, dict]:
    """The finished records of a checkpoint (of `keys` only, if given), read-only."""
    states = load_states(path, keys=keys, drop=drop)[0]
    return {key: state.record for key, state in states.items() if state.record is not None}


@dataclass
class Coverage:
    expected: int = 0
    done: int = 0
    failed: Counter = field(default_factory=Counter)  # last error -> items whose latest attempt failed
    retrying_by_reason: Counter = field(default_factory=Counter)  # of those, the ones a rerun tries again

    @property
    def missing(self) -> int:
        return self.expected - self.done - sum(self.failed.values())

    @property
    def retrying(self) -> int:
        return sum(self.retrying_by_reason.values())


def tally(keys: list[str], states: dict[str, ItemState], max_attempts: int | None = None) -> Coverage:
    """How many of the items a checkpoint must hold are done, failed (by latest error) or missing, and, given
    max_attempts, how many failed ones a rerun tries again. Stage 6's coverage table and status count with this."""
    coverage = Coverage(expected=len(keys))
    for key in keys:
        state = states.get(key)
        if state is not None and state.record is not None:
            coverage.done += 1
        elif state is not None:
            coverage.failed[state.last_error] += 1
            if max_attempts is not None and may_try(state, max_attempts):
                coverage.retrying_by_reason[state.last_error] += 1
    return coverage

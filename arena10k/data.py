"""Stage 1: ChatBot Arena conversations -> a seeded sample of unique English first-turn prompts."""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from arena10k.errors import ConfigError
from arena10k.language import has_letters, is_english
from arena10k.records import Prompt

HUB_DATASET = "agie-ai/lmsys-chatbot_arena_conversations"
LOCAL_FORMATS = {".json": "json", ".jsonl": "json", ".parquet": "parquet"}
ROW_SHAPE = ('one row per conversation, as ChatBot Arena has them; only the first user turn is used, question_id is '
             'optional:\n  {"conversation_a": [{"role": "user", "content": "Why is the sky blue?"}, '
             '{"role": "assistant", "content": "..."}], "question_id": "q1"}\n'
             "(data/prompts/example_rows.jsonl is a small example)")


@dataclass
class FilterReport:
    rows: int = 0
    empty: int = 0
    duplicate: int = 0
    no_letters: int = 0  # emoji, symbols or numbers only: in no language
    non_english: int = 0
    too_long: int = 0  # of the prompts drawn, those longer than an embedded policy's context leaves room for
    sampled_out: int = 0
    kept: int = 0


def prompt_id_for(text: str) -> str:
    # Derived from the text, not the row, so the same prompt keeps its id across dataset versions.
    return "arena_" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def load_conversations(dataset: str):
    """The rows of a local JSON/JSONL/Parquet file, or of a Hugging Face hub dataset (through `datasets`, which takes
    two seconds to import: a local file is read without it)."""
    path = Path(dataset)
    if path.suffix in LOCAL_FORMATS:
        if not path.is_file():
            raise ConfigError(f"Dataset file {path} does not exist.")
        if path.stat().st_size == 0:
            raise ConfigError(f"Dataset file {path} is empty. Expected {ROW_SHAPE}")
        if LOCAL_FORMATS[path.suffix] == "json":
            return _JsonRows(path)
        import pyarrow.parquet

        try:
            return pyarrow.parquet.read_table(path).to_pylist()
        except (ValueError, OSError) as error:  # pyarrow's errors for a file it cannot read are both
            raise _unreadable(str(path), error) from None
    if path.exists():
        raise ConfigError(f"{path}: a local dataset must be .json, .jsonl or .parquet, not '{path.suffix or path.name}'. "
                          f"Expected {ROW_SHAPE}")
    import datasets

    try:
        return datasets.load_dataset(dataset, split="train")
    except Exception as error:  # the hub client raises many types when offline
        raise ConfigError(
            f"Could not load the Hugging Face dataset '{dataset}' ({type(error).__name__}: {error}). "
            "Without network access, pass --dataset PATH with a local JSON/JSONL/Parquet file of ChatBot Arena rows."
        ) from None


@dataclass(frozen=True)
class _JsonRows:
    """One JSON object per line, or one JSON array of objects, read as they are taken (so that _readable names the
    row that is wrong); each iteration reads the file again, as a `datasets` Dataset can be iterated again."""

    path: Path

    def __iter__(self) -> Iterator[dict]:
        with self.path.open("rb") as lines:
            first = next((line for line in lines if line.strip()), b"")
            if first.lstrip().startswith(b"["):
                rows = _parsed(first + lines.read(), "the file")
                if not isinstance(rows, list):
                    raise ValueError("the file's JSON is not an array of rows")
                yield from (_object(row, f"row {number}") for number, row in enumerate(rows, start=1))
                return
            yield _object(_parsed(first, "row 1"), "row 1")
            number = 1
            for line in lines:
                if line.strip():
                    number += 1
                    yield _object(_parsed(line, f"row {number}"), f"row {number}")


def _parsed(text: bytes, what: str):
    decoded = text.decode("utf-8")  # its UnicodeDecodeError is named by _readable
    try:
        return json.loads(decoded)
    except json.JSONDecodeError as error:
        raise ValueError(f"{what} is not JSON: {error}") from None


def _object(row, what: str) -> dict:
    if not isinstance(row, dict):
        raise ValueError(f"{what} is a JSON {type(row).__name__}, not an object")
    return row


def _unreadable(source: str, error: Exception) -> ConfigError:
    return ConfigError(f"Could not read {source} ({type(error).__name__}: {str(error)[:200]}). Expected {ROW_SHAPE}")


def first_user_turn(row: dict) -> str:
    for message in row.get("conversation_a") or []:
        if message.get("role") == "user":
            return (message.get("content") or "").strip()
    return ""


def _readable(rows, source: str):
    """The rows, or an error naming the one that is not UTF-8 or not a JSON object (rows are decoded as they are read)."""
    rows = iter(rows)
    number = 0
    while True:
        try:
            row = next(rows)
        except StopIteration:
            return
        except UnicodeDecodeError as error:
            raise ConfigError(f"{source}: row {number + 1} is not UTF-8 text ({error.reason} at byte {error.start} of "
                              "it): save the file as UTF-8.") from None
        except ValueError as error:  # not JSON, or not an object
            raise _unreadable(source, error) from None
        number += 1
        yield row


def prepare_prompts(rows, samples: int | str, seed: int, source: str = "the dataset",
                    too_long: Callable[[str], bool] = lambda text: False) -> tuple[list[Prompt], FilterReport]:
    """Refuses, with the expected row shape, inputs that yield no prompt or fewer than `samples`. Prompts are drawn in
    a seeded order and each drawn prompt that is `too_long` is passed over, so a larger N is a superset of a smaller."""
    report = FilterReport()
    seen: set[str] = set()
    candidates: list[Prompt] = []
    conversations = 0
    for row in _readable(rows, source):
        report.rows += 1
        conversations += bool(row.get("conversation_a"))
        text = first_user_turn(row)
        if not text:
            report.empty += 1
        elif text in seen:
            report.duplicate += 1
        else:
            seen.add(text)
            if not has_letters(text):
                report.no_letters += 1
            elif not is_english(text):
                report.non_english += 1
            else:
                source_id = row.get("question_id")
                candidates.append(Prompt(prompt_id_for(text), text, None if source_id is None else str(source_id)))
    # Shuffling the whole pool and taking a prefix makes a larger N a superset of a smaller one,
    # so growing an experiment reuses every finished item.
    if conversations == 0:
        raise ConfigError(f"{source}: no row has a conversation_a ({report.rows} rows). Expected {ROW_SHAPE}")
    if not candidates:
        raise ConfigError(f"{source}: no English first-turn prompt ({report.rows} rows: {report.empty} empty, "
                          f"{report.duplicate} duplicate, {report.no_letters} without letters, {report.non_english} not English). "
                          f"Expected {ROW_SHAPE}")
    if samples != "all" and int(samples) > len(candidates):
        raise ConfigError(f"The run asks for {samples} prompts, but {source} yields {len(candidates)} after filtering "
                          f"({report.rows} rows: {report.empty} empty, {report.duplicate} duplicate, {report.no_letters} without "
                          f"letters, {report.non_english} not English). Ask for at most {len(candidates)}, or 'all'.")
    random.Random(seed).shuffle(candidates)
    wanted = len(candidates) if samples == "all" else int(samples)
    chosen = []
    for drawn, prompt in enumerate(candidates, start=1):
        if too_long(prompt.prompt):
            report.too_long += 1
        else:
            chosen.append(prompt)
        if len(chosen) == wanted:
            break
    if samples != "all" and len(chosen) < wanted:
        raise ConfigError(f"The run asks for {samples} prompts, but {source} yields {len(chosen)} that fit every "
                          f"embedded policy's context ({report.too_long} are too long). Ask for at most {len(chosen)}, "
                          "or raise n_ctx in the model config.")
    report.sampled_out = len(candidates) - drawn
    report.kept = len(chosen)
    return chosen, report

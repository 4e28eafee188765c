"""A CJE dataset as cje-eval reads it: logged rows (the logging policy's responses with every policy's log-prob) and
fresh draws per target policy, from our Phase 2 files or any dataset cje-eval loads. Read without the response texts,
which no number needs, so that memory stays flat."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from arena10k.errors import Arena10kError


@dataclass
class Rows:
    """One CJE dataset: logged rows (P0's responses with every policy's log-prob) and fresh draws per policy."""

    logged: list[dict]
    fresh: dict[str, list[dict]] = field(default_factory=dict)

    def target_policies(self) -> tuple[str, ...]:
        """The target policies the logged rows give log-probs of, in their order."""
        return tuple(dict.fromkeys(p for row in self.logged for p in row["target_policy_logprobs"]))


def read(logged_path: Path, order: tuple[str, ...] = ()) -> Rows:
    """A CJE dataset file, with the fresh draws in `fresh_draws/` beside it when there are any. Judge scores
    and oracle labels may sit at the top level (our Phase 2 files) or in `metadata` (the shared reference sample).
    Target policies come in `order` (a run's config order) where given, else alphabetically, as the files list them."""
    if not logged_path.is_file():
        raise Arena10kError(f"{logged_path} does not exist.")
    fresh_dir = logged_path.parent / "fresh_draws"
    fresh = {path.name.removesuffix("_responses.jsonl"): _read_rows(path) for path in sorted(fresh_dir.glob("*_responses.jsonl"))}
    logged = _read_rows(logged_path)
    for row in logged:
        row["target_policy_logprobs"] = _in_order(row["target_policy_logprobs"], order)
    return Rows(logged, _in_order(fresh, order))


def _in_order(by_policy: dict, order: tuple[str, ...]) -> dict:
    rank = {policy: index for index, policy in enumerate(order)}
    return dict(sorted(by_policy.items(), key=lambda item: rank.get(item[0], len(rank))))


def _read_rows(path: Path) -> list[dict]:
    """The rows of a CJE dataset file without their texts, which no number here needs (memory stays flat)."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            row = _cje_row(path, number, line)
            row.pop("prompt", None)
            row.pop("response", None)
            for name in ("judge_score", "oracle_label"):
                row.setdefault(name, row.get("metadata", {}).get(name))
            rows.append(row)
    return rows


CJE_LOGGED_FIELDS = ("prompt_id", "base_policy_logprob", "target_policy_logprobs")
CJE_FRESH_FIELDS = ("prompt_id",)


def _cje_row(path: Path, number: int, line: str) -> dict:
    """A row of a CJE dataset file, or an error naming the line and what it lacks."""
    expected = CJE_FRESH_FIELDS if path.parent.name == "fresh_draws" else CJE_LOGGED_FIELDS
    try:
        row = json.loads(line)
    except json.JSONDecodeError as error:
        raise Arena10kError(f"{path} line {number} is not JSON ({error.msg}): a CJE dataset has one JSON object a line.") from None
    missing = [name for name in expected if not isinstance(row, dict) or name not in row]
    if missing:
        raise Arena10kError(f"{path} line {number} is not a CJE dataset row: it has no {', '.join(missing)} (a logged row "
                            f"has {', '.join(CJE_LOGGED_FIELDS)}, and judge_score at the top or in metadata).")
    return row

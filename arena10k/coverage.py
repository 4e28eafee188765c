"""Which work items each checkpoint must hold for a set of prompts, and how many of them are done or failed.

Stage 6's coverage table, the status command and the estimate all count from here, so they always agree
on what "expected" and "remaining" mean.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from arena10k.checkpoint import ItemState
from arena10k.config import LOGGING_POLICY, TARGET_POLICIES, OracleConfig
from arena10k.stages.work import POLICIES, oracle_slice
from arena10k.workspace import item_key

CHECKPOINTS = ("generate", "teacher_force", "judge", "oracle_calibration", "oracle_validation")


@dataclass
class Coverage:
    expected: int = 0
    done: int = 0
    failed: Counter = field(default_factory=Counter)  # last error -> items whose latest attempt failed

    @property
    def missing(self) -> int:
        return self.expected - self.done - sum(self.failed.values())


def expected_keys(oracle: OracleConfig, prompt_ids: list[str]) -> dict[str, list[str]]:
    """Item keys per checkpoint, in the order the stages work on them; no oracle checkpoints when it is disabled."""
    every_policy = [item_key(pid, p) for pid in prompt_ids for p in POLICIES]
    keys = {"generate": every_policy, "teacher_force": every_policy, "judge": every_policy}
    if oracle.enabled:
        keys["oracle_calibration"] = [
            item_key(pid, LOGGING_POLICY) for pid in oracle_slice(prompt_ids, oracle.calibration_fraction, oracle.calibration_seed)
        ]
        keys["oracle_validation"] = [
            item_key(pid, p) for pid in oracle_slice(prompt_ids, oracle.validation_fraction, oracle.validation_seed)
            for p in TARGET_POLICIES
        ]
    return keys


def response_needed(name: str, key: str) -> str | None:
    """The generate item whose response an item of this checkpoint works on (teacher forcing scores P0's)."""
    if name == "generate":
        return None
    return item_key(key.partition("|")[0], LOGGING_POLICY) if name == "teacher_force" else key


def tally(keys: list[str], states: dict[str, ItemState]) -> Coverage:
    coverage = Coverage(expected=len(keys))
    for key in keys:
        state = states.get(key)
        if state is not None and state.record is not None:
            coverage.done += 1
        elif state is not None:
            coverage.failed[state.last_error] += 1
    return coverage

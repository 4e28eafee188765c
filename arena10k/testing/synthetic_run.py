"""A synthetic run: a data directory with the files a real run writes, filled with made-up records.

It lets the tools that read runs (status, estimate, report) be tested and benchmarked at any size without
running a model. Each checkpoint makes up its own records (`CheckpointSpec.synthetic`, in its stage's module): the
real dataclasses, and checkpoints carry the real fingerprints, so every reader sees exactly the shapes a run produces. Log-probs and scores are drawn per policy so that weight
and judge diagnostics have something to show: clones of the logging policy equal it exactly, the other
targets are further and further from it (SHAPES, in config order).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from arena10k.checkpoint import entry_line
from arena10k.config import ExperimentConfig
from arena10k.stages.base import Plan, SyntheticItem
from arena10k.stages.registry import STAGES
from arena10k.data import prompt_id_for
from arena10k.liveness import progress_line
from arena10k.records import SCHEMA_VERSION, Prompt
from arena10k.workspace import Workspace, policy_of, prompt_of

WORDS = tuple("the a model answer question explain why how data city river light music code test simple about".split())
# (mean log-ratio to the logging policy in nats, its spread, mean judge score): the logging policy and its
# clones, then the other targets in config order, cycling
LOGGED_SHAPE = (0.0, 0.0, 0.6)
SHAPES = ((-1.0, 1.5, 0.65), (-3.0, 3.0, 0.7), (-8.0, 4.0, 0.2))
REASONS = {"generate": ("prompt is 5000 tokens; with 48 more it exceeds the model's context of 4096", False),
           "teacher_force": ("prompt is 5000 tokens; with 49 more it exceeds the model's context of 4096", False)}
JUDGE_REASON = ("the judge's reply contains no score digit", True)


@dataclass
class Written:
    """What a checkpoint received, to check readers against."""

    done: int = 0
    failed: Counter = field(default_factory=Counter)  # reason -> items whose last attempt failed
    retried: int = 0  # items that failed once and then succeeded
    blocked: int = 0  # items not tried because the response they need failed


def write_run(root: Path, config: ExperimentConfig, n_prompts: int, *, settled: dict[str, float] | None = None,
              fail_every: int = 0, last_finished: float = 1.8e9, seconds_per_item: float = 1.0,
              seed: int = 0, plan: Plan = STAGES) -> dict[str, Written]:
    """Writes prompts and checkpoints, with a progress line per settled item.

    settled: share of each checkpoint's items already settled (default: all). fail_every: every n-th settled
    item fails for good, and every n-th + 1 fails once before succeeding. Items settle one after another,
    `seconds_per_item` apart, the last one at `last_finished`.
    """
    rng = np.random.default_rng(seed)
    workspace = Workspace(root)
    prompts = [_prompt(i, rng) for i in range(n_prompts)]
    workspace.save_prompts(prompts, {"synthetic": True}, {"synthetic": seed}, n_prompts)
    by_id = {p.prompt_id: p for p in prompts}
    records: dict[str, dict[str, dict]] = {}  # checkpoint -> key -> record, for the stages that build on them
    written: dict[str, Written] = {}
    finished: list[tuple[str, str]] = []  # (checkpoint, key) in the order a run settles them
    for name, keys in plan.expected_keys(config, list(by_id)).items():
        keys = keys[: round((settled or {}).get(name, 1.0) * len(keys))]
        if not keys:
            continue  # a stage that has not started has no files
        lines, counts = [], Written()
        done = records[name] = {}
        for index, key in enumerate(keys):
            prompt, policy = by_id[prompt_of(key)], policy_of(key)
            needs = plan.response_needed(config, name, key)
            if needs is not None and needs not in records["generate"]:
                counts.blocked += 1  # a real run never tries an item whose response failed
                continue
            failing = fail_every and index % fail_every == fail_every - 1
            retried = fail_every and index % fail_every == 0 and index > 0
            reason, retryable = REASONS.get(name, JUDGE_REASON)
            if failing:
                attempts = 1 if not retryable else config.max_attempts
                lines += [_failed_line(key, reason, retryable)] * attempts
                counts.failed[reason] += 1
            else:
                done[key] = plan.spec[name].synthetic(SyntheticItem(config, prompt, policy, records, rng, shape(config, policy), WORDS))
                lines += ([_failed_line(key, reason, retryable)] if retried else []) + [_ok_line(key, done[key])]
                counts.done += 1
                counts.retried += bool(retried)
            finished.append((name, key))
        plan.spec[name].open(workspace, config).close()  # the meta file with the stages' own fingerprints, as a real run writes
        _write_checkpoint(workspace, name, lines)
        written[name] = counts
    _write_progress(workspace, finished, last_finished, seconds_per_item)
    return written


def _write_progress(workspace: Workspace, finished: list[tuple[str, str]], last: float, seconds_per_item: float) -> None:
    lines: dict[str, list[str]] = {}
    for index, (name, key) in enumerate(finished):
        lines.setdefault(name, []).append(progress_line(key, last - (len(finished) - 1 - index) * seconds_per_item))
    for name, progress in lines.items():
        workspace.progress_path(name).parent.mkdir(parents=True, exist_ok=True)
        workspace.progress_path(name).write_text("".join(progress))


def _prompt(index: int, rng: np.random.Generator) -> Prompt:
    text = f"Question {index}: " + " ".join(rng.choice(WORDS, size=int(rng.integers(3, 120))))
    return Prompt(prompt_id_for(text), text, f"synthetic-{index}")


def _ok_line(key: str, record: dict) -> str:
    return entry_line({"schema": SCHEMA_VERSION, "key": key, "status": "ok", "record": record})


def _failed_line(key: str, error: str, retryable: bool) -> str:
    return entry_line({"schema": SCHEMA_VERSION, "key": key, "status": "failed", "error": error, "retryable": retryable, "raw": None})


def shape(config: ExperimentConfig, policy: str) -> tuple[float, float, float]:
    others = [p for p in config.target_policies if p not in config.clones()]
    return SHAPES[others.index(policy) % len(SHAPES)] if policy in others else LOGGED_SHAPE


def _write_checkpoint(workspace: Workspace, name: str, lines: list[str]) -> None:
    with open(workspace.checkpoint_path(name), "a", encoding="utf-8") as f:
        f.write("".join(lines))

"""What a stage is, and what follows from the stages' descriptions.

Each stage module defines one `Stage`; `registry.STAGES` is the `Plan` that lists them in order, and the runner,
coverage, status, the estimate, `--force` and the synthetic run writer all read it. A plan says which items a run
must hold, which of them a configuration change invalidates, and what `--force NAME` recomputes.

A unit of recomputation is (checkpoint, policy): each has its own fingerprint, so changing one target policy touches
only its units, changing the judge only the judge's, and changing the logging policy its own units plus every unit
that reads its responses (all of teacher forcing).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from arena10k.checkpoint import (Checkpoint, ItemState, describe_changes, failed_for_good, may_try, read_fingerprints,
                                 scan_states)
from arena10k.config import ExperimentConfig
from arena10k.errors import CheckpointMismatchError, ConfigError
from arena10k.records import Prompt
from arena10k.tokens import Calls, TokenCounts
from arena10k.workspace import Workspace, draw_prompt, item_key

RESPONSES = "generate"  # the checkpoint of the generated responses, which the items of other checkpoints read
Unit = tuple[str, str]  # (checkpoint name, policy)


def every_prompt(config: ExperimentConfig, prompt_ids: list[str]) -> list[str]:
    return prompt_ids


def one_draw(config: ExperimentConfig, policy: str) -> int:
    return 1


@dataclass(frozen=True)
class CheckpointSpec:
    """One JSONL checkpoint: an item per (prompt, policy, draw), a configuration fingerprint per policy.

    A fingerprint holds exactly the configuration a policy's items depend on, so a change recomputes only
    the policies it touches; `reads` names the policy whose generated response an item works on, so
    recomputing a response also recomputes what was derived from it.
    """

    name: str
    policies: Callable[[ExperimentConfig], tuple[str, ...]]
    fingerprint: Callable[[ExperimentConfig, str], dict]
    reads: Callable[[ExperimentConfig, str], str | None]  # None: works on no generated response
    prompts: Callable[[ExperimentConfig, list[str]], list[str]] = every_prompt  # the oracle labels seeded slices
    # Items per prompt and policy: a target's fresh_draws where the checkpoint holds every response (generate, judge).
    draws: Callable[[ExperimentConfig, str], int] = one_draw
    # What an item costs, for the estimate and the report's usage: (token counts, key, attempts, whether its output is
    # on record) -> the calls it makes. None: it calls no model.
    cost: Callable[[TokenCounts, str, int, bool], Calls] | None = None
    # Whether its items' calls can go through a provider's Batch API (models with batch: true; arena10k/batches.py).
    batchable: bool = False
    # A made-up record of an item, for the synthetic run writer (readers' tests and benchmarks at any size, no model).
    synthetic: Callable[[SyntheticItem], dict] | None = None

    def keys(self, config: ExperimentConfig, prompt_ids: list[str]) -> list[str]:
        """The items this checkpoint must hold, prompt by prompt, in the order the stage works on them."""
        return [item_key(draw_prompt(pid, draw), policy) for pid in self.prompts(config, prompt_ids)
                for policy in self.policies(config) for draw in range(self.draws(config, policy))]

    def fingerprints(self, config: ExperimentConfig) -> dict[str, dict]:
        return {policy: self.fingerprint(config, policy) for policy in self.policies(config)}

    def open(self, workspace: Workspace, config: ExperimentConfig) -> Checkpoint:
        return Checkpoint(workspace.checkpoint_path(self.name), self.name, self.fingerprints(config))


@dataclass(frozen=True)
class SyntheticItem:
    """What the synthetic run writer (arena10k/testing/synthetic_run.py) gives a checkpoint's `synthetic`."""

    config: ExperimentConfig
    prompt: Prompt
    policy: str
    records: dict[str, dict[str, dict]]  # checkpoint -> key -> record, of the checkpoints made before this one
    rng: np.random.Generator
    shape: tuple[float, float, float]  # the policy's mean log-ratio to the logging policy, its spread, its mean judge score
    words: tuple[str, ...]  # the vocabulary of made-up texts


@dataclass(frozen=True)
class StageRun:
    """What a stage's run is given: the config, the run directory, the number of prompts asked for on the command line
    (stage 1 reads it) and the plan of every stage (stage 6 checks every checkpoint's coverage)."""

    config: ExperimentConfig
    workspace: Workspace
    samples: int | str | None
    plan: Plan


@dataclass(frozen=True)
class Stage:
    name: str
    description: str  # one line, for --help and the stage scripts
    run: Callable[[StageRun], str]  # does the work, returns what to print
    checkpoints: tuple[CheckpointSpec, ...] = ()
    models: Callable[[ExperimentConfig], set[str]] = field(default=lambda config: set())  # model keys it calls
    # Whether its hosted models' log-probs must pass the preflight first (they make or score the importance weights).
    preflighted: bool = False


@dataclass(frozen=True)
class Plan:
    """The stages of a run, in order."""

    stages: tuple[Stage, ...]

    @cached_property
    def names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.stages)

    @cached_property
    def specs(self) -> tuple[CheckpointSpec, ...]:
        return tuple(spec for stage in self.stages for spec in stage.checkpoints)

    @cached_property
    def checkpoints(self) -> tuple[str, ...]:
        return tuple(spec.name for spec in self.specs)

    @cached_property
    def batchable(self) -> frozenset[str]:
        """The checkpoints whose calls can go through a Batch API."""
        return frozenset(spec.name for spec in self.specs if spec.batchable)

    @cached_property
    def spec(self) -> dict[str, CheckpointSpec]:
        return {spec.name: spec for spec in self.specs}

    def stage(self, name: str) -> Stage:
        return self.stages[self.names.index(name)]

    def stages_from(self, name: str) -> list[Stage]:
        return list(self.stages[self.names.index(name):])

    def check_policy_names(self, config: ExperimentConfig) -> None:
        """A policy named like a stage would make `--force NAME` ambiguous."""
        clashing = [name for name in config.policies if name in self.names]
        if clashing:
            raise ConfigError(f"policy name '{clashing[0]}' is a stage's name; `--force {clashing[0]}` would be ambiguous: "
                              "rename the policy.")

    def expected_keys(self, config: ExperimentConfig, prompt_ids: list[str]) -> dict[str, list[str]]:
        """Item keys per checkpoint, in the order the stages work on them (empty for a disabled oracle)."""
        return {spec.name: spec.keys(config, prompt_ids) for spec in self.specs}

    def response_needed(self, config: ExperimentConfig, name: str, key: str) -> str | None:
        """The generate item whose response an item of this checkpoint works on."""
        prompt_id, _, policy = key.rpartition("|")
        read = self.spec[name].reads(config, policy)
        return None if read is None else item_key(prompt_id, read)

    def will_run(self, config: ExperimentConfig, states: dict[str, dict[str, ItemState]], name: str, key: str) -> bool:
        """Whether finishing the run tries this item: it is not done, may be tried again, and the response it needs
        exists or may still be generated (not failed for good)."""
        needed = self.response_needed(config, name, key)
        return may_try(states[name].get(key), config.max_attempts) and (
            needed is None or not failed_for_good(states[RESPONSES].get(needed), config.max_attempts))

    def pending(self, config: ExperimentConfig, expected: dict[str, list[str]], states: dict[str, dict[str, ItemState]]
                ) -> dict[str, int]:
        """Per checkpoint, the items a rerun would still try (will_run)."""
        counts = {name: sum(self.will_run(config, states, name, key) for key in keys) for name, keys in expected.items()}
        return {name: count for name, count in counts.items() if count}

    def still_to_do(self, config: ExperimentConfig, workspace: Workspace, stages: list[Stage]) -> str | None:
        """After stage scripts ran: what their checkpoints still lack that a rerun (or an earlier stage) would do."""
        names = [spec.name for s in stages for spec in s.checkpoints]
        if not names or not workspace.prompts_path.exists():
            return None
        expected = self.expected_keys(config, [p.prompt_id for p in workspace.load_prompts()])
        states = {name: scan_states(workspace.checkpoint_path(name))[0] for name in self.checkpoints}
        left = {name: count for name, count in self.pending(config, expected, states).items() if name in names}
        if not left:
            return None
        waiting = {name: sum(1 for key in expected[name] if self.will_run(config, states, name, key)
                             and (needed := self.response_needed(config, name, key)) is not None
                             and states[RESPONSES].get(needed, ItemState()).record is None) for name in left}
        return "; ".join(f"{name}: {count} items still to do" + (
            f", {waiting[name]} of them waiting for responses stage 2 (generate) has not made: run "
            "scripts/02_generate_responses.py (or the runner) first" if waiting[name] else "")
            for name, count in left.items()) + "."

    def units(self, config: ExperimentConfig, checkpoints: tuple[CheckpointSpec, ...] | None = None) -> set[Unit]:
        return {(spec.name, policy) for spec in (self.specs if checkpoints is None else checkpoints)
                for policy in spec.policies(config)}

    def with_dependents(self, config: ExperimentConfig, seeds: set[Unit]) -> set[Unit]:
        """The units and every unit computed from their results (teacher forcing and judging read responses)."""
        every = [(spec, policy) for spec in self.specs for policy in spec.policies(config)]
        result = set(seeds)
        while True:
            more = {(spec.name, policy) for spec, policy in every if (RESPONSES, spec.reads(config, policy)) in result} - result
            if not more:
                return result
            result |= more

    def forced_units(self, config: ExperimentConfig, names: list[str]) -> set[Unit]:
        """What `--force NAME` recomputes: a stage (all its items), a policy (its items in every stage), or
        `stage:policy`; each with everything computed from what it recomputes."""
        seeds: set[Unit] = set()
        stages = ", ".join(self.names)
        for name in names:
            stage_name, _, policy = name.partition(":") if ":" in name else (
                (name, "", "") if name in self.names else ("", "", name))
            if stage_name and stage_name not in self.names:
                raise ConfigError(f"--force {name}: '{stage_name}' is not a stage ({stages}).")
            if policy and policy not in config.policies:
                raise ConfigError(f"--force {name}: '{policy}' is neither a stage ({stages}) "
                                  f"nor a policy of this config ({', '.join(config.policies)}).")
            checkpoints = self.stage(stage_name).checkpoints if stage_name else None
            seeds |= {(c, p) for c, p in self.units(config, checkpoints) if not policy or p == policy}
        return self.with_dependents(config, seeds)

    def changed_units(self, config: ExperimentConfig, workspace: Workspace, up_to: str) -> dict[Unit, list[str]]:
        """Units, in the stages up to `up_to`, whose stored fingerprint differs from the config's, with what changed.
        A policy that is new to a checkpoint has no stored fingerprint: its items are simply still to do."""
        changed = {}
        for stage in self.stages[: self.names.index(up_to) + 1]:
            for spec in stage.checkpoints:
                stored = read_fingerprints(workspace.checkpoint_meta_path(spec.name))
                for policy, fingerprint in spec.fingerprints(config).items():
                    if policy in stored and stored[policy] != fingerprint:
                        changed[spec.name, policy] = describe_changes(stored[policy], fingerprint)
        return changed

    def suggest_force(self, config: ExperimentConfig, stale: set[Unit]) -> list[str]:
        """The fewest `--force` arguments that recompute exactly the stale units: the largest stage or policy
        whose recomputation stays within them first, then `stage:policy` for what is left."""
        candidates = [*(s.name for s in self.stages[1:] if s.checkpoints), *config.policies,
                      *(f"{s.name}:{p}" for s in self.stages for spec in s.checkpoints for p in spec.policies(config))]
        fitting = [(self.forced_units(config, [c]), c) for c in candidates]
        fitting = sorted(((u, c) for u, c in fitting if u and u <= stale), key=lambda uc: -len(uc[0]))
        chosen, covered = [], set()
        for recomputed, name in fitting:
            if not recomputed <= covered:
                chosen.append(name)
                covered |= recomputed
        return chosen

    def check_changes(self, config: ExperimentConfig, workspace: Workspace, up_to: str, forced: set[Unit]) -> None:
        """Refuses to resume with results computed under another configuration, naming what changed, exactly
        what recomputing it means and the flag that does it. Called before any stage runs."""
        changed = {unit: why for unit, why in self.changed_units(config, workspace, up_to).items() if unit not in forced}
        if not changed:
            return
        stale = self.with_dependents(config, set(changed)) - forced
        flags = " ".join(f"--force {name}" for name in self.suggest_force(config, stale))
        what = sorted({line for lines in changed.values() for line in lines})
        prompt_ids = [p.prompt_id for p in workspace.load_prompts()]
        by_checkpoint: dict[str, list[str]] = defaultdict(list)
        for name, policy in sorted(stale, key=lambda u: (self.checkpoints.index(u[0]), list(config.policies).index(u[1]))):
            by_checkpoint[name].append(f"{policy} ({len(self.spec[name].prompts(config, prompt_ids))} items)")
        raise CheckpointMismatchError(
            "The configuration changed since these results were computed:\n  " + "\n  ".join(what)
            + "\nResuming would mix results of two configurations. Recomputing what the change touches means:\n  "
            + "\n  ".join(f"{name}: {', '.join(items)}" for name, items in by_checkpoint.items())
            + f"\nRun with {flags} to recompute exactly these (add --estimate to price them first), "
            "or restore the previous configuration to resume."
        )

    def renamed_policies(self, config: ExperimentConfig, workspace: Workspace) -> list[str]:
        """Policies new to this run whose responses would be exactly those of a policy it no longer has: a rename, which
        computes everything again under the new name. Said, not refused: a copy under a new name may be meant."""
        stored = read_fingerprints(workspace.checkpoint_meta_path(RESPONSES))
        gone = {old: fingerprint for old, fingerprint in stored.items() if old not in config.policies}
        lines = []
        for new in config.policies:
            if new in stored:
                continue
            mine = self.spec[RESPONSES].fingerprint(config, new)
            for old, fingerprint in gone.items():
                if fingerprint.get("seed") == mine["seed"] and fingerprint.get("policies", {}).get(old) == mine["policies"][new]:
                    lines.append(f"policy '{new}' is configured exactly as '{old}' was in this run: a policy's name is part "
                                 f"of its items' keys, so '{new}' is a new policy and all its items are computed again (those "
                                 f"of '{old}' stay on disk, unused); name it '{old}' again to reuse them.")
        return lines

    def models_called(self, config: ExperimentConfig, stages: list[Stage]) -> set[str]:
        return set().union(*(s.models(config) for s in stages))

"""The stages in order, and what follows from their descriptions: which items a run must hold, which of
them a configuration change invalidates, and what `--force NAME` recomputes.

A unit of recomputation is (checkpoint, policy): each has its own fingerprint, so changing one target
policy touches only its units, changing the judge only the judge's, and changing the logging policy its
own units plus every unit that reads its responses (all of teacher forcing).
"""

from __future__ import annotations

from collections import defaultdict

from arena10k.checkpoint import ItemState, describe_changes, failed_for_good, may_try, read_fingerprints, scan_states
from arena10k.config import STAGE_NAMES, ExperimentConfig
from arena10k.errors import CheckpointMismatchError, ConfigError
from arena10k.stages import analyze, generate, judge, phase2, prompts, teacher_force
from arena10k.stages.base import CheckpointSpec, Stage
from arena10k.workspace import Workspace, item_key

STAGES: tuple[Stage, ...] = (prompts.STAGE, generate.STAGE, teacher_force.STAGE, judge.JUDGE, judge.ORACLE, phase2.STAGE,
                             analyze.STAGE)
assert tuple(s.name for s in STAGES) == STAGE_NAMES, "config.STAGE_NAMES must list the registry's stages"
CHECKPOINT_SPECS: tuple[CheckpointSpec, ...] = tuple(spec for stage in STAGES for spec in stage.checkpoints)
CHECKPOINTS: tuple[str, ...] = tuple(spec.name for spec in CHECKPOINT_SPECS)
SPEC = {spec.name: spec for spec in CHECKPOINT_SPECS}

Unit = tuple[str, str]  # (checkpoint name, policy)


def stage(name: str) -> Stage:
    return STAGES[STAGE_NAMES.index(name)]


def stages_from(name: str) -> list[Stage]:
    return list(STAGES[STAGE_NAMES.index(name):])


def expected_keys(config: ExperimentConfig, prompt_ids: list[str]) -> dict[str, list[str]]:
    """Item keys per checkpoint, in the order the stages work on them (empty for a disabled oracle)."""
    return {spec.name: spec.keys(config, prompt_ids) for spec in CHECKPOINT_SPECS}


def response_needed(config: ExperimentConfig, name: str, key: str) -> str | None:
    """The generate item whose response an item of this checkpoint works on."""
    prompt_id, _, policy = key.rpartition("|")
    read = SPEC[name].reads(config, policy)
    return None if read is None else item_key(prompt_id, read)


def will_run(config: ExperimentConfig, states: dict[str, dict[str, ItemState]], name: str, key: str) -> bool:
    """Whether finishing the run tries this item: it is not done, may be tried again, and the response it needs exists
    or may still be generated (not failed for good)."""
    needed = response_needed(config, name, key)
    return may_try(states[name].get(key), config.max_attempts) and (
        needed is None or not failed_for_good(states["generate"].get(needed), config.max_attempts))


def pending(config: ExperimentConfig, expected: dict[str, list[str]], states: dict[str, dict[str, ItemState]]) -> dict[str, int]:
    """Per checkpoint, the items a rerun would still try (will_run)."""
    counts = {name: sum(will_run(config, states, name, key) for key in keys) for name, keys in expected.items()}
    return {name: count for name, count in counts.items() if count}


def still_to_do(config: ExperimentConfig, workspace: Workspace, stages: list[Stage]) -> str | None:
    """After stage scripts ran: what their checkpoints still lack that a rerun (or an earlier stage) would do."""
    names = [spec.name for s in stages for spec in s.checkpoints]
    if not names or not workspace.prompts_path.exists():
        return None
    expected = expected_keys(config, [p.prompt_id for p in workspace.load_prompts()])
    states = {name: scan_states(workspace.checkpoint_path(name))[0] for name in CHECKPOINTS}
    left = {name: count for name, count in pending(config, expected, states).items() if name in names}
    if not left:
        return None
    waiting = {name: sum(1 for key in expected[name] if will_run(config, states, name, key)
                         and (needed := response_needed(config, name, key)) is not None
                         and states["generate"].get(needed, ItemState()).record is None) for name in left}
    return "; ".join(f"{name}: {count} items still to do" + (
        f", {waiting[name]} of them waiting for responses stage 2 (generate) has not made: run "
        "scripts/02_generate_responses.py (or the runner) first" if waiting[name] else "")
        for name, count in left.items()) + "."


def units(config: ExperimentConfig, checkpoints: tuple[CheckpointSpec, ...] = CHECKPOINT_SPECS) -> set[Unit]:
    return {(spec.name, policy) for spec in checkpoints for policy in spec.policies(config)}


def with_dependents(config: ExperimentConfig, seeds: set[Unit]) -> set[Unit]:
    """The units and every unit computed from their results (teacher forcing and judging read responses)."""
    result = set(seeds)
    while True:
        more = {(spec.name, policy) for spec, policy in _all_units(config)
                if (generate.CHECKPOINT.name, spec.reads(config, policy)) in result} - result
        if not more:
            return result
        result |= more


def _all_units(config: ExperimentConfig):
    return [(spec, policy) for spec in CHECKPOINT_SPECS for policy in spec.policies(config)]


def forced_units(config: ExperimentConfig, names: list[str]) -> set[Unit]:
    """What `--force NAME` recomputes: a stage (all its items), a policy (its items in every stage), or
    `stage:policy`; each with everything computed from what it recomputes."""
    seeds: set[Unit] = set()
    for name in names:
        stage_name, _, policy = name.partition(":") if ":" in name else (
            (name, "", "") if name in STAGE_NAMES else ("", "", name))
        if stage_name and stage_name not in STAGE_NAMES:
            raise ConfigError(f"--force {name}: '{stage_name}' is not a stage ({', '.join(STAGE_NAMES)}).")
        if policy and policy not in config.policies:
            raise ConfigError(f"--force {name}: '{policy}' is neither a stage ({', '.join(STAGE_NAMES)}) "
                              f"nor a policy of this config ({', '.join(config.policies)}).")
        checkpoints = stage(stage_name).checkpoints if stage_name else CHECKPOINT_SPECS
        seeds |= {(c, p) for c, p in units(config, checkpoints) if not policy or p == policy}
    return with_dependents(config, seeds)


def changed_units(config: ExperimentConfig, workspace: Workspace, up_to: str) -> dict[Unit, list[str]]:
    """Units, in the stages up to `up_to`, whose stored fingerprint differs from the config's, with what changed.
    A policy that is new to a checkpoint has no stored fingerprint: its items are simply still to do."""
    changed = {}
    for stage_ in STAGES[: STAGE_NAMES.index(up_to) + 1]:
        for spec in stage_.checkpoints:
            stored = read_fingerprints(workspace.checkpoint_meta_path(spec.name))
            for policy, fingerprint in spec.fingerprints(config).items():
                if policy in stored and stored[policy] != fingerprint:
                    changed[spec.name, policy] = describe_changes(stored[policy], fingerprint)
    return changed


def suggest_force(config: ExperimentConfig, stale: set[Unit]) -> list[str]:
    """The fewest `--force` arguments that recompute exactly the stale units: the largest stage or policy
    whose recomputation stays within them first, then `stage:policy` for what is left."""
    candidates = [*(s.name for s in STAGES[1:] if s.checkpoints), *config.policies,
                  *(f"{s.name}:{p}" for s in STAGES for spec in s.checkpoints for p in spec.policies(config))]
    fitting = [(forced_units(config, [c]), c) for c in candidates]
    fitting = sorted(((u, c) for u, c in fitting if u and u <= stale), key=lambda uc: -len(uc[0]))
    chosen, covered = [], set()
    for recomputed, name in fitting:
        if not recomputed <= covered:
            chosen.append(name)
            covered |= recomputed
    return chosen


def check_changes(config: ExperimentConfig, workspace: Workspace, up_to: str, forced: set[Unit]) -> None:
    """Refuses to resume with results computed under another configuration, naming what changed, exactly
    what recomputing it means and the flag that does it. Called before any stage runs."""
    changed = {unit: why for unit, why in changed_units(config, workspace, up_to).items() if unit not in forced}
    if not changed:
        return
    stale = with_dependents(config, set(changed)) - forced
    flags = " ".join(f"--force {name}" for name in suggest_force(config, stale))
    what = sorted({line for lines in changed.values() for line in lines})
    prompt_ids = [p.prompt_id for p in workspace.load_prompts()]
    by_checkpoint: dict[str, list[str]] = defaultdict(list)
    for name, policy in sorted(stale, key=lambda u: (CHECKPOINTS.index(u[0]), list(config.policies).index(u[1]))):
        by_checkpoint[name].append(f"{policy} ({len(SPEC[name].prompts(config, prompt_ids))} items)")
    raise CheckpointMismatchError(
        "The configuration changed since these results were computed:\n  " + "\n  ".join(what)
        + "\nResuming would mix results of two configurations. Recomputing what the change touches means:\n  "
        + "\n  ".join(f"{name}: {', '.join(items)}" for name, items in by_checkpoint.items())
        + f"\nRun with {flags} to recompute exactly these (add --estimate to price them first), "
        "or restore the previous configuration to resume."
    )


def renamed_policies(config: ExperimentConfig, workspace: Workspace) -> list[str]:
    """Policies new to this run whose responses would be exactly those of a policy it no longer has: a rename, which
    computes everything again under the new name. Said, not refused: a copy under a new name may be meant."""
    stored = read_fingerprints(workspace.checkpoint_meta_path(generate.CHECKPOINT.name))
    gone = {old: fingerprint for old, fingerprint in stored.items() if old not in config.policies}
    lines = []
    for new in config.policies:
        if new in stored:
            continue
        mine = generate.CHECKPOINT.fingerprint(config, new)
        for old, fingerprint in gone.items():
            if fingerprint.get("seed") == mine["seed"] and fingerprint.get("policies", {}).get(old) == mine["policies"][new]:
                lines.append(f"policy '{new}' is configured exactly as '{old}' was in this run: a policy's name is part of "
                             f"its items' keys, so '{new}' is a new policy and all its items are computed again (those of "
                             f"'{old}' stay on disk, unused); name it '{old}' again to reuse them.")
    return lines


def models_called(config: ExperimentConfig, stages: list[Stage]) -> set[str]:
    return set().union(*(s.models(config) for s in stages))

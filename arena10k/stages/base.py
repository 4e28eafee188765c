"""The shape of a stage's description. Each stage module defines one `Stage`; `registry.STAGES` lists them in
order, and the runner, coverage, status, estimate, `--force` and the synthetic run writer all read them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from arena10k.config import ExperimentConfig
from arena10k.workspace import Workspace, item_key


def every_prompt(config: ExperimentConfig, prompt_ids: list[str]) -> list[str]:
    return prompt_ids


@dataclass(frozen=True)
class CheckpointSpec:
    """One JSONL checkpoint: an item per (prompt, policy), a configuration fingerprint per policy.

    A fingerprint holds exactly the configuration a policy's items depend on, so a change recomputes only
    the policies it touches; `reads` names the policy whose generated response an item works on, so
    recomputing a response also recomputes what was derived from it.
    """

    name: str
    policies: Callable[[ExperimentConfig], tuple[str, ...]]
    fingerprint: Callable[[ExperimentConfig, str], dict]
    reads: Callable[[ExperimentConfig, str], str | None]  # None: works on no generated response
    prompts: Callable[[ExperimentConfig, list[str]], list[str]] = every_prompt  # the oracle labels seeded slices

    def keys(self, config: ExperimentConfig, prompt_ids: list[str]) -> list[str]:
        """The items this checkpoint must hold, prompt by prompt, in the order the stage works on them."""
        return [item_key(pid, policy) for pid in self.prompts(config, prompt_ids) for policy in self.policies(config)]

    def fingerprints(self, config: ExperimentConfig) -> dict[str, dict]:
        return {policy: self.fingerprint(config, policy) for policy in self.policies(config)}


@dataclass(frozen=True)
class Stage:
    name: str
    description: str  # one line, for --help and the stage scripts
    run: Callable[[ExperimentConfig, Workspace, int | str | None], str]  # does the work, returns what to print
    checkpoints: tuple[CheckpointSpec, ...] = ()
    models: Callable[[ExperimentConfig], set[str]] = field(default=lambda config: set())  # model keys it calls

"""Stage 2: a response from every policy, logging and targets, to every prompt."""

from __future__ import annotations

from collections.abc import Callable

from arena10k.checkpoint import read_records
from arena10k.config import ExperimentConfig, PolicyConfig
from arena10k.providers import get_provider, stage_lanes
from arena10k.providers.base import GenerationRequest
from arena10k.records import Prompt, Response, from_dict, to_dict
from arena10k.runner import run_items
from arena10k.stages.base import CheckpointSpec, Stage
from arena10k.workspace import Workspace, derive_seed


def policy_messages(policy: PolicyConfig, prompt: str) -> tuple[dict, ...]:
    """The exact context a policy generates in; teacher forcing reuses it."""
    system = () if policy.system_prompt is None else ({"role": "system", "content": policy.system_prompt},)
    return (*system, {"role": "user", "content": prompt})


def responses_fingerprint(config: ExperimentConfig, policy: str) -> dict:
    """What a policy's responses depend on; every stage that reads them includes it in its own fingerprint."""
    return {"seed": config.seed, "policies": {policy: config.policy_identity(policy)}}


def policy_models(config: ExperimentConfig) -> set[str]:
    return {p.model for p in config.policies.values()}


def policy_lanes(config: ExperimentConfig) -> tuple[dict[str, int], Callable[[str], str]]:
    """run_items' lanes for generate and teacher_force: a lane per policy model, and the model an item
    (prompt_id|policy) calls."""
    return stage_lanes(config, policy_models(config)), lambda key: config.policies[key.rpartition("|")[2]].model


def run(config: ExperimentConfig, workspace: Workspace, samples: int | str | None = None) -> str:
    prompts = {p.prompt_id: p for p in workspace.load_prompts()}

    def make_work(key: str):
        prompt_id, _, policy = key.rpartition("|")
        return _work(config, policy, prompts[prompt_id])

    with workspace.open_checkpoint(CHECKPOINT, config) as checkpoint:
        return run_items("generate", checkpoint, CHECKPOINT.keys(config, list(prompts)), make_work, config.max_attempts,
                         *policy_lanes(config)).describe()


def _work(config: ExperimentConfig, name: str, prompt: Prompt):
    policy = config.policies[name]

    def work() -> dict:
        seed = derive_seed(config.seed, "generate", name, prompt.prompt_id)
        request = GenerationRequest(policy_messages(policy, prompt.prompt), policy.temperature, policy.max_tokens, seed)
        result = get_provider(config, policy.model).generate(request)
        return to_dict(Response(
            prompt_id=prompt.prompt_id, policy=name, text=result.text, finish_reason=result.finish_reason,
            n_tokens=result.n_tokens, model=config.models[policy.model].model, temperature=policy.temperature,
            top_p=policy.top_p, max_tokens=policy.max_tokens, seed=seed, tokenizer=result.tokenizer,
            token_ids=result.token_ids, token_logprobs=result.token_logprobs, stop_token_id=result.stop_token_id,
            stop_logprob=result.stop_logprob,
        ))

    return work


def responses(workspace: Workspace, keys: set[str]) -> dict[str, Response]:
    """The generated responses of these items (only their lines are decoded)."""
    if not keys:
        return {}
    return {key: from_dict(Response, r) for key, r in read_records(workspace.checkpoint_path("generate"), keys).items()}


CHECKPOINT = CheckpointSpec(
    name="generate",
    policies=lambda config: config.policy_names,
    fingerprint=responses_fingerprint,
    reads=lambda config, policy: None,
)
STAGE = Stage("generate", "a response from every policy to every prompt", run, (CHECKPOINT,), policy_models)

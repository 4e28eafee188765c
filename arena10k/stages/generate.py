"""Stage 2: a response from every policy, logging and targets, to every prompt."""

from __future__ import annotations

from collections.abc import Callable

from arena10k.batches import run_calls
from arena10k.checkpoint import read_records
from arena10k.config import ExperimentConfig
from arena10k.providers import stage_lanes
from arena10k.providers.base import Generation, GenerationRequest, ItemCalls
from arena10k.records import Prompt, Response, from_dict, to_dict
from arena10k.stages.base import CheckpointSpec, Stage, StageRun, SyntheticItem
from arena10k.tokens import Calls, TokenCounts
from arena10k.workspace import Workspace, derive_seed, draw_of, draw_prompt, policy_of, prompt_of


def policy_lanes(config: ExperimentConfig) -> tuple[dict[str, int], Callable[[str], str]]:
    """run_items' lanes for generate and teacher_force: a lane per policy model, and the model an item
    (prompt_id|policy) calls."""
    return stage_lanes(config, config.policy_models()), lambda key: config.policies[key.rpartition("|")[2]].model


def run(job: StageRun) -> str:
    config, workspace = job.config, job.workspace
    prompts = {p.prompt_id: p for p in workspace.load_prompts()}

    def make_calls(key: str) -> ItemCalls:
        return _calls(config, policy_of(key), prompts[prompt_of(key)], draw_of(key))

    with CHECKPOINT.open(workspace, config) as checkpoint:
        return run_calls("generate", checkpoint, CHECKPOINT.keys(config, list(prompts)), make_calls, config, workspace,
                         *policy_lanes(config)).describe()


def _calls(config: ExperimentConfig, name: str, prompt: Prompt, draw: int) -> ItemCalls:
    policy = config.policies[name]
    seed = derive_seed(config.seed, "generate", name, draw_prompt(prompt.prompt_id, draw))

    def record(results: list[Generation]) -> dict:
        result = results[0]
        return to_dict(Response(
            prompt_id=prompt.prompt_id, policy=name, text=result.text, finish_reason=result.finish_reason,
            n_tokens=result.n_tokens, model=config.models[policy.model].model, temperature=policy.temperature,
            top_p=policy.top_p, max_tokens=policy.max_tokens, seed=seed, tokenizer=result.tokenizer,
            token_ids=result.token_ids, token_logprobs=result.token_logprobs, stop_token_id=result.stop_token_id,
            stop_logprob=result.stop_logprob,
        ))

    request = GenerationRequest(policy.messages(prompt.prompt), policy.temperature, policy.max_tokens, seed)
    return ItemCalls(policy.model, (request,), record)


def responses(workspace: Workspace, keys: set[str]) -> dict[str, Response]:
    """The generated responses of these items (only their lines are decoded)."""
    if not keys:
        return {}
    return {key: from_dict(Response, r) for key, r in read_records(workspace.checkpoint_path("generate"), keys).items()}


def _cost(counts: TokenCounts, key: str, calls: int, output_known: bool) -> Calls:
    policy = counts.config.policies[policy_of(key)]
    output = counts.response(key) if output_known else calls * policy.max_tokens
    return Calls(policy.model, calls, counts.messages(policy.model, policy.messages(counts.prompt(key))), output)


def _synthetic(item: SyntheticItem) -> dict:
    config, rng, settings = item.config, item.rng, item.config.policies[item.policy]
    n_tokens = int(rng.integers(settings.max_tokens // 2, settings.max_tokens + 1))
    stopped = n_tokens < settings.max_tokens
    return to_dict(Response(
        prompt_id=item.prompt.prompt_id, policy=item.policy, text=" ".join(rng.choice(item.words, size=n_tokens)),
        finish_reason="stop" if stopped else "length", n_tokens=n_tokens, model=config.models[settings.model].model,
        temperature=settings.temperature, top_p=settings.top_p, max_tokens=settings.max_tokens,
        seed=int(rng.integers(2**32)), tokenizer="synthetic", token_ids=rng.integers(0, 49152, n_tokens).tolist(),
        token_logprobs=(-rng.exponential(1.0, n_tokens)).tolist(), stop_token_id=2 if stopped else None,
        stop_logprob=-0.1 if stopped else None,
    ))


CHECKPOINT = CheckpointSpec(
    name="generate",
    policies=lambda config: config.policy_names,
    fingerprint=lambda config, policy: config.responses_fingerprint(policy),
    reads=lambda config, policy: None,
    cost=_cost,
    synthetic=_synthetic,
    draws=ExperimentConfig.draws,
    batchable=True,
)
STAGE = Stage("generate", "a response from every policy to every prompt (fresh_draws of them from a target)", run, (CHECKPOINT,), ExperimentConfig.policy_models,
              preflighted=True)

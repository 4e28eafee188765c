"""Stages 4 and 5: the judge scores every response; the oracle, a stronger judge, labels seeded slices
(the logging policy's responses for calibration, the targets' for validation)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from arena10k import judging
from arena10k.batches import run_calls
from arena10k.config import ExperimentConfig, JudgeConfig
from arena10k.providers import stage_lanes
from arena10k.providers.base import Generation, ItemCalls
from arena10k.records import Judgement, Prompt, Response, to_dict
from arena10k.stages.base import CheckpointSpec, Stage, StageRun, SyntheticItem
from arena10k.stages.generate import responses
from arena10k.tokens import Calls, TokenCounts
from arena10k.workspace import Workspace, derive_seed, item_key

def _fingerprint(config: ExperimentConfig, judge: JudgeConfig, policy: str) -> dict:
    instructions = judging.judge_messages(judging.rubric(judge), "{prompt}", "{response}")
    settings = {"model": config.models[judge.model].model_dump()} | judging.scoring_settings(judge)
    return {**config.responses_fingerprint(policy), "judge": settings,
            "judge_prompt": hashlib.sha256(repr(instructions).encode()).hexdigest()[:16]}


def _calls(config: ExperimentConfig, judge: JudgeConfig, prompt: Prompt, response: Response) -> ItemCalls:
    def record(replies: list[Generation]) -> dict:
        reply, scores = judging.scores(judge, replies)
        return to_dict(Judgement(prompt.prompt_id, response.policy, config.models[judge.model].model, reply, **scores))

    return ItemCalls(judge.model, judging.grading_requests(judge, prompt.prompt, response.text), record)


def _run(spec: CheckpointSpec, judge: JudgeConfig, config: ExperimentConfig, workspace: Workspace) -> str:
    prompts = {p.prompt_id: p for p in workspace.load_prompts()}
    keys = spec.keys(config, list(prompts))  # prompt by prompt: consecutive calls share the rubric and the prompt
    with spec.open(workspace, config) as checkpoint:
        generated = responses(workspace, set(checkpoint.todo(keys, config.max_attempts)))

        def make_calls(key: str) -> ItemCalls | str:
            response = generated.get(key)
            return "no response" if response is None else _calls(config, judge, prompts[response.prompt_id], response)

        return run_calls(spec.name, checkpoint, keys, make_calls, config, workspace,
                         stage_lanes(config, {judge.model}), lambda key: judge.model).describe()


def oracle_slice(prompt_ids: list[str], fraction: float, seed: int) -> list[str]:
    """A seeded share of prompts. Ranking by a per-prompt hash keeps a prompt's membership stable
    when the experiment grows, and makes the slice independent of prompt order."""
    ranked = sorted(prompt_ids, key=lambda pid: derive_seed(seed, "oracle", pid))
    return sorted(ranked[: round(fraction * len(ranked))])


def _oracle_policies(config: ExperimentConfig, which: tuple[str, ...]) -> tuple[str, ...]:
    return which if config.oracle.enabled else ()


def _cost(judge_of: Callable[[ExperimentConfig], JudgeConfig]) -> Callable[[TokenCounts, str, int, bool], Calls]:
    def cost(counts: TokenCounts, key: str, calls: int, output_known: bool) -> Calls:
        judge = judge_of(counts.config)
        # The response is counted by its recorded length rather than tokenized again: one number per response.
        context = (counts.messages(judge.model, judging.judge_messages(judging.rubric(judge), "", ""))
                   + counts.text(judge.model, counts.prompt(key)) + counts.response(key))
        calls *= judging.calls_per_grading(judge)
        return Calls(judge.model, calls, context, calls * judge.max_tokens)

    return cost


def _synthetic_judgement(item: SyntheticItem, judge: JudgeConfig, quality: float) -> dict:
    quality = min(max(quality, 0.0), 1.0)
    digit = round(quality * judging.SCALE)
    return to_dict(Judgement(
        item.prompt.prompt_id, item.policy, item.config.models[judge.model].model, str(digit), score=digit / judging.SCALE,
        score_mean=quality, score_variance=float(item.rng.uniform(0.001, 0.05)),
        probability_mass=float(item.rng.uniform(0.8, 1)), method="greedy_digit+top_logprobs_distribution",
    ))


def _synthetic_judge(item: SyntheticItem) -> dict:
    return _synthetic_judgement(item, item.config.judge, float(item.rng.normal(item.shape[2], 0.15)))


def _synthetic_oracle(item: SyntheticItem) -> dict:
    """The oracle agrees with the judge, roughly."""
    judged = item.records.get("judge", {}).get(item_key(item.prompt.prompt_id, item.policy))
    quality = item.rng.normal(item.shape[2] if judged is None else judged["score_mean"], 0.1)
    return _synthetic_judgement(item, item.config.oracle, float(quality))


JUDGE_CHECKPOINT = CheckpointSpec(
    name="judge",
    policies=lambda config: config.policy_names,
    fingerprint=lambda config, policy: _fingerprint(config, config.judge, policy),
    reads=lambda config, policy: policy,
    cost=_cost(lambda config: config.judge),
    synthetic=_synthetic_judge,
    draws=ExperimentConfig.draws,
    batchable=True,
)
ORACLE_CALIBRATION = CheckpointSpec(
    name="oracle_calibration",
    policies=lambda config: _oracle_policies(config, (config.logging_policy,)),
    fingerprint=lambda config, policy: _fingerprint(config, config.oracle, policy),
    reads=lambda config, policy: policy,
    prompts=lambda config, ids: oracle_slice(ids, config.oracle.calibration_fraction, config.oracle.calibration_seed),
    cost=_cost(lambda config: config.oracle),
    synthetic=_synthetic_oracle,
    batchable=True,
)
ORACLE_VALIDATION = CheckpointSpec(
    name="oracle_validation",
    policies=lambda config: _oracle_policies(config, config.target_policies),
    fingerprint=lambda config, policy: _fingerprint(config, config.oracle, policy),
    reads=lambda config, policy: policy,
    prompts=lambda config, ids: oracle_slice(ids, config.oracle.validation_fraction, config.oracle.validation_seed),
    cost=_cost(lambda config: config.oracle),
    synthetic=_synthetic_oracle,
    batchable=True,
)


def _run_judge(job: StageRun) -> str:
    config, workspace = job.config, job.workspace
    return _run(JUDGE_CHECKPOINT, config.judge, config, workspace)


def _run_oracle(job: StageRun) -> str:
    config, workspace = job.config, job.workspace
    if not config.oracle.enabled:
        return "oracle: disabled in the config"
    return "\n".join(_run(spec, config.oracle, config, workspace) for spec in (ORACLE_CALIBRATION, ORACLE_VALIDATION))


JUDGE = Stage("judge", "a judge score, with its uncertainty, for every response", _run_judge, (JUDGE_CHECKPOINT,),
              lambda config: {config.judge.model})
ORACLE = Stage("oracle", "oracle labels on seeded slices of prompts", _run_oracle, (ORACLE_CALIBRATION, ORACLE_VALIDATION),
               lambda config: {config.oracle.model} if config.oracle.enabled else set())

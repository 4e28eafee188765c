"""Stages 4 and 5: the judge scores every response; the oracle, a stronger judge, labels seeded slices
(the logging policy's responses for calibration, the targets' for validation)."""

from __future__ import annotations

import hashlib

from arena10k import judging
from arena10k.config import ExperimentConfig, JudgeConfig, OracleConfig
from arena10k.providers import get_provider, stage_lanes
from arena10k.providers.base import GenerationRequest
from arena10k.records import Judgement, Prompt, Response, to_dict
from arena10k.runner import run_items
from arena10k.stages.base import CheckpointSpec, Stage
from arena10k.stages.generate import responses, responses_fingerprint
from arena10k.workspace import Workspace, derive_seed

# What a judge's score depends on besides its model and prompt; the oracle's slice settings choose items, they
# change no label.
JUDGE_SETTINGS = ("max_tokens", "top_logprobs")
SAMPLED_SETTINGS = ("method", "samples", "temperature")


def scoring_settings(judge: JudgeConfig) -> dict:
    """The sampled method's settings are added only where it is used, so that runs judged before it existed stay valid."""
    settings = {name: getattr(judge, name) for name in JUDGE_SETTINGS}
    return settings if judge.method == "top_logprobs" else settings | {name: getattr(judge, name) for name in SAMPLED_SETTINGS}


def rubric(judge: JudgeConfig) -> str:
    return judge.rubric or (judging.ORACLE_RUBRIC if isinstance(judge, OracleConfig) else judging.JUDGE_RUBRIC)


def _fingerprint(config: ExperimentConfig, judge: JudgeConfig, policy: str) -> dict:
    instructions = judging.judge_messages(rubric(judge), "{prompt}", "{response}")
    settings = {"model": config.models[judge.model].model_dump()} | scoring_settings(judge)
    return {**responses_fingerprint(config, policy), "judge": settings,
            "judge_prompt": hashlib.sha256(repr(instructions).encode()).hexdigest()[:16]}


def calls_per_grading(judge: JudgeConfig) -> int:
    return 1 if judge.method == "top_logprobs" else 1 + judge.samples


def grade(config: ExperimentConfig, judge: JudgeConfig, prompt: str, response: str) -> tuple[str, dict]:
    """One grading: the judge's (greedy) reply and its scores (ItemError when the reply holds no score)."""
    messages = judging.judge_messages(rubric(judge), prompt, response)
    provider = get_provider(config, judge.model)
    if judge.method == "top_logprobs":
        reply = provider.generate(GenerationRequest(messages, 0, judge.max_tokens, seed=0, top_logprobs=judge.top_logprobs))
        return reply.text, judging.score_reply(reply)
    greedy = provider.generate(GenerationRequest(messages, 0, judge.max_tokens, seed=0, logprobs=False))
    sampled = [provider.generate(GenerationRequest(messages, judge.temperature, judge.max_tokens, seed, logprobs=False)).text
               for seed in range(1, judge.samples + 1)]
    return greedy.text, judging.score_samples(greedy.text, sampled, judge.temperature)


def _work(config: ExperimentConfig, judge: JudgeConfig, prompt: Prompt, response: Response):
    def work() -> dict:
        reply, scores = grade(config, judge, prompt.prompt, response.text)
        return to_dict(Judgement(prompt.prompt_id, response.policy, config.models[judge.model].model, reply, **scores))

    return work


def _run(spec: CheckpointSpec, judge: JudgeConfig, config: ExperimentConfig, workspace: Workspace) -> str:
    prompts = {p.prompt_id: p for p in workspace.load_prompts()}
    keys = spec.keys(config, list(prompts))  # prompt by prompt: consecutive calls share the rubric and the prompt
    with workspace.open_checkpoint(spec, config) as checkpoint:
        generated = responses(workspace, set(checkpoint.todo(keys, config.max_attempts)))

        def make_work(key: str):
            response = generated.get(key)
            return "no response" if response is None else _work(config, judge, prompts[response.prompt_id], response)

        return run_items(spec.name, checkpoint, keys, make_work, config.max_attempts,
                         stage_lanes(config, {judge.model}), lambda key: judge.model).describe()


def oracle_slice(prompt_ids: list[str], fraction: float, seed: int) -> list[str]:
    """A seeded share of prompts. Ranking by a per-prompt hash keeps a prompt's membership stable
    when the experiment grows, and makes the slice independent of prompt order."""
    ranked = sorted(prompt_ids, key=lambda pid: derive_seed(seed, "oracle", pid))
    return sorted(ranked[: round(fraction * len(ranked))])


def _oracle_policies(config: ExperimentConfig, which: tuple[str, ...]) -> tuple[str, ...]:
    return which if config.oracle.enabled else ()


JUDGE_CHECKPOINT = CheckpointSpec(
    name="judge",
    policies=lambda config: config.policy_names,
    fingerprint=lambda config, policy: _fingerprint(config, config.judge, policy),
    reads=lambda config, policy: policy,
)
ORACLE_CALIBRATION = CheckpointSpec(
    name="oracle_calibration",
    policies=lambda config: _oracle_policies(config, (config.logging_policy,)),
    fingerprint=lambda config, policy: _fingerprint(config, config.oracle, policy),
    reads=lambda config, policy: policy,
    prompts=lambda config, ids: oracle_slice(ids, config.oracle.calibration_fraction, config.oracle.calibration_seed),
)
ORACLE_VALIDATION = CheckpointSpec(
    name="oracle_validation",
    policies=lambda config: _oracle_policies(config, config.target_policies),
    fingerprint=lambda config, policy: _fingerprint(config, config.oracle, policy),
    reads=lambda config, policy: policy,
    prompts=lambda config, ids: oracle_slice(ids, config.oracle.validation_fraction, config.oracle.validation_seed),
)


def _run_judge(config: ExperimentConfig, workspace: Workspace, samples: int | str | None = None) -> str:
    return _run(JUDGE_CHECKPOINT, config.judge, config, workspace)


def _run_oracle(config: ExperimentConfig, workspace: Workspace, samples: int | str | None = None) -> str:
    if not config.oracle.enabled:
        return "oracle: disabled in the config"
    return "\n".join(_run(spec, config.oracle, config, workspace) for spec in (ORACLE_CALIBRATION, ORACLE_VALIDATION))


JUDGE = Stage("judge", "a judge score, with its uncertainty, for every response", _run_judge, (JUDGE_CHECKPOINT,),
              lambda config: {config.judge.model})
ORACLE = Stage("oracle", "oracle labels on seeded slices of prompts", _run_oracle, (ORACLE_CALIBRATION, ORACLE_VALIDATION),
               lambda config: {config.oracle.model} if config.oracle.enabled else set())
